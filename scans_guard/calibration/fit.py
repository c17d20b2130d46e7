"""Calibrate SCANS for a model: refusal vectors, d_harm, layer analysis and threshold T, written as an artifact."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score

from ..config import CalibrationConfig, SteeringRecipe
from ..data import anchor_split, load_set, sample_prompts, tune_eval_split
from ..model.loading import ModelHandle
from ..sigma.classifier import harm_direction, sigma_scores, transitions_for
from ..sigma.decision import flags
from ..sigma.probe import ProbeFit, fit_probe, plain_training_set
from .artifacts import AnchorSet, Artifact, ArtifactMeta, OperatingPoint, PlattFit, PromptSplit, text_sha256
from .framings import Conversation, framed_examples
from .safety_layers import middle_third, principal_directions, refusal_span, second_half, vocabulary_projection
from .vectors import last_token_activations, refusal_vectors

log = logging.getLogger(__name__)


def best_threshold(scores: np.ndarray, harmful: np.ndarray) -> tuple[float, float]:
    """(T, F1) maximising F1 with harmful as the positive class; T sits midway between neighbouring scores.

    One pass of `precision_recall_curve` (its thresholds are the distinct scores, ascending, plus "flag nothing");
    F1 is computed from exact counts as `f1_score` does, so ties resolve to the lowest T as a per-candidate search.
    """
    scores, harmful = np.asarray(scores, dtype=np.float64), np.asarray(harmful).astype(int)
    order = np.unique(scores)
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    n_pos = int(harmful.sum())
    if n_pos == 0:
        return float(candidates[0]), 0.0
    _, recall, thresholds = precision_recall_curve(harmful, scores)
    n_flagged = np.append(len(scores) - np.searchsorted(np.sort(scores), thresholds, side="left"), 0)
    f1s = 2 * np.rint(recall * n_pos) / (n_pos + n_flagged)
    i = int(np.argmax(f1s))
    return float(candidates[i]), float(f1s[i])


def recall_threshold(scores: np.ndarray, harmful: np.ndarray, target: float) -> float:
    """Highest T (midway between scores) with recall(harmful) >= target."""
    pos = np.sort(scores[harmful == 1])
    k = int(np.floor((1 - target) * len(pos) + 1e-9))  # harmful prompts allowed below T
    if k == 0:
        below = scores[scores < pos[0]]
        return float((pos[0] + below.max()) / 2) if below.size else float(pos[0] - 1e-6)
    return float((pos[k - 1] + pos[k]) / 2)


def operating_point(scores: np.ndarray, harmful: np.ndarray, threshold: float, rule: str) -> OperatingPoint:
    """A threshold with its recall, false-positive rate and F1 on the fit prompts."""
    predicted = flags(scores, threshold)
    return OperatingPoint(
        threshold=threshold,
        rule=rule,
        recall=float(predicted[harmful == 1].mean()),
        false_positive_rate=float(predicted[harmful == 0].mean()),
        f1=float(f1_score(harmful, predicted, zero_division=0)),
    )


def platt_fit(scores: np.ndarray, harmful: np.ndarray, centre: float) -> PlattFit:
    """P(harmful | score) by logistic regression on score - centre with no intercept: P = 0.5 exactly at the centre
    (the guard point), so probability and label agree."""
    model = LogisticRegression(C=1e4, fit_intercept=False).fit((scores - centre)[:, None], harmful)
    a = float(model.coef_[0, 0])
    return PlattFit(a=a, b=-a * centre)


def threshold_split(
    config: CalibrationConfig, anchors: tuple[list[str], list[str]]
) -> tuple[str, list[str], list[str]]:
    """Prompts T is fitted on.

    With a data directory: harmful = RepE-train instructions (minus anchors) + the tuning half of HarmfulQ (questions,
    like XSTest's unsafe prompts); benign = RepE-train harmless instructions + OKTest held-out. Matched in form, so
    the fit measures harm rather than command-vs-question, and disjoint from every evaluation set. Without one:
    held-out AdvBench vs TruthfulQA, whose difference in form makes every layer look perfect.
    """
    n = config.n_threshold
    if config.threshold_data_dir:
        repe = load_set("repe_train", config.threshold_data_dir)
        harmfulq_tune, _ = tune_eval_split(load_set("harmfulq", config.threshold_data_dir), config.seed)
        repe_harmful = [e for e in repe if e.harmful]
        n_repe = min(n, len({e.prompt for e in repe_harmful} - set(anchors[0])))
        harmful = sample_prompts(repe_harmful, n_repe, config.seed, exclude=set(anchors[0]))
        harmful += sample_prompts(harmfulq_tune, min(n, len(harmfulq_tune)), config.seed)
        benign = [e for e in repe if not e.harmful] + load_set("oktest_heldout", config.threshold_data_dir)
        return (
            "repe_train (minus anchors) + harmfulq tuning half vs repe_train harmless + oktest_heldout",
            harmful,
            sample_prompts(benign, min(2 * n, len(benign)), config.seed),
        )
    adv, tqa = load_set("advbench"), load_set("truthfulqa")
    return (
        "held-out advbench vs truthfulqa",
        sample_prompts(adv, min(n, len(adv) - len(anchors[0])), config.seed, exclude=set(anchors[0])),
        sample_prompts(tqa, min(n, len(tqa) - len(anchors[1])), config.seed, exclude=set(anchors[1])),
    )


@dataclass
class _ThresholdFit:
    """The prompts T is fitted on, their sigma scores and labels, and the d_harm (and classify layers) scored with."""

    description: str
    harmful: list[str]
    benign: list[str]
    scores: np.ndarray  # [n] float64
    labels: np.ndarray  # [n] 1 = harmful
    d_harm: torch.Tensor  # [n_classify_layers, hidden]
    classify_layers: list[int]


def _steering_vectors(
    handle: ModelHandle, config: CalibrationConfig, anchors: tuple[list[str], list[str]], progress: bool
) -> tuple[torch.Tensor, list, list[int]]:
    """(refusal vectors [n_layers, hidden], vocabulary projection per layer, steer layers) from the anchors."""
    bs = config.batch_size
    acts_h = last_token_activations(handle, anchors[0], batch_size=bs, progress=progress, desc="harmful anchors")
    acts_b = last_token_activations(handle, anchors[1], batch_size=bs, progress=progress, desc="benign anchors")
    projection = vocabulary_projection(handle, principal_directions(acts_h, acts_b))
    if config.steer_layers == "auto":
        steer_layers = refusal_span(projection)
        if steer_layers is None:
            log.warning("no layer's projection shows refusal tokens; steering the middle third")
            steer_layers = middle_third(handle.n_layers)
    else:
        steer_layers = config.steer_layers or middle_third(handle.n_layers)
    return refusal_vectors(acts_h, acts_b), projection, steer_layers


def _threshold_fit(
    handle: ModelHandle,
    config: CalibrationConfig,
    anchors: tuple[list[str], list[str]],
    classify_layers: list[int],
    probe: ProbeFit | None,
    progress: bool,
) -> _ThresholdFit:
    """Score the T-fit prompts; with a probe, its plain training prompts (contrast train + anchors) join the fit,
    their transitions reused, and d_harm is the mean over its harmful anchors."""
    bs = config.batch_size
    description, fit_h, fit_b = threshold_split(config, anchors)
    if probe is None:
        d_harm = harm_direction(
            transitions_for(handle, anchors[0], classify_layers, config.r_pos, bs, progress, desc="harmful transitions")
        )
        extra_t, extra_y, extra_prompts = torch.zeros(0, len(classify_layers), handle.hidden_size), [], []
    else:
        classify_layers = sorted(set(classify_layers) | {probe.layer})
        plain = probe.plain  # framed training conversations stay out of the T fit: T is fitted on plain prompts
        extra_t, extra_y = probe.transitions[plain, classify_layers], list(probe.labels[plain])
        extra_prompts = probe.prompts
        d_harm = harm_direction(extra_t[[p in set(anchors[0]) for p in extra_prompts]])
        description += " + " + probe.data.replace("harmful/benign anchors", "anchors")
    head = None if probe is None else (classify_layers.index(probe.layer), probe.weight, probe.bias)
    t_h = transitions_for(handle, fit_h, classify_layers, config.r_pos, bs, progress, desc="threshold (harmful)")
    t_b = transitions_for(handle, fit_b, classify_layers, config.r_pos, bs, progress, desc="threshold (benign)")
    scores = sigma_scores(torch.cat([t_h, t_b, extra_t]), d_harm, head)[0].numpy().astype(np.float64)
    labels = np.array([1] * len(fit_h) + [0] * len(fit_b) + extra_y)
    return _ThresholdFit(
        description,
        fit_h + [p for p, y in zip(extra_prompts, extra_y) if y],
        fit_b + [p for p, y in zip(extra_prompts, extra_y) if not y],
        scores,
        labels,
        d_harm,
        classify_layers,
    )


def _operating_points(config: CalibrationConfig, fit: _ThresholdFit) -> tuple[dict[str, OperatingPoint], dict]:
    """The steer and guard points and the T-fit report."""
    scores, labels = fit.scores, fit.labels
    f1_threshold, best_f1 = best_threshold(scores, labels)
    if config.threshold is not None:
        threshold, rule = config.threshold, "given"
    elif config.target_recall is None:
        threshold, rule = f1_threshold, "max F1"
    else:
        threshold = recall_threshold(scores, labels, config.target_recall)
        rule = f"harmful recall >= {config.target_recall}"
    guard = recall_threshold(scores, labels, config.guard_recall)
    points = {
        "steer": operating_point(scores, labels, threshold, rule),
        "guard": operating_point(
            scores, labels, guard, f"harmful recall >= {config.guard_recall}, lowest false-positive rate"
        ),
    }
    report = {
        "data": fit.description,
        "n_harmful": len(fit.harmful),
        "n_benign": len(fit.benign),
        "threshold_data_sha256": text_sha256(fit.harmful + fit.benign),
        "positive_class": "harmful",
        **points["steer"].model_dump(exclude={"threshold"}),
        "auroc": float(roc_auc_score(labels, scores)),
        "best_f1": best_f1,
        "best_f1_threshold": f1_threshold,
    }
    return points, report


def _framed_training(config: CalibrationConfig, anchors: tuple[list[str], list[str]]) -> list[tuple[Conversation, int]]:
    """The probe's plain training prompts (contrast train split + anchors) in the train framings, labelled by the
    prompt they wrap; `config.probe_framings` of each kind per template."""
    if not config.probe_framings:
        return []
    prompts, labels = plain_training_set(anchors, config.probe_contrast)
    harmful = [p for p, y in zip(prompts, labels) if y]
    benign = [p for p, y in zip(prompts, labels) if not y]
    conversations, framed_labels, _ = framed_examples(harmful, benign, config.probe_framings, config.seed)
    return list(zip(conversations, framed_labels))


def calibrate(
    handle: ModelHandle,
    config: CalibrationConfig | None = None,
    *,
    progress: bool = True,
    notes: dict | None = None,
) -> Artifact:
    """Compute everything SCANS needs for `handle`'s model from anchors and return it as an Artifact.

    The artifact records the sha256 of every prompt it was fitted on (anchors, T fit, probe training).
    """
    config = config or CalibrationConfig()
    harmful, benign = anchor_split(config.n_anchors, config.seed)
    classify_layers = config.classify_layers or second_half(handle.n_layers)
    for layer in (config.steer_layers if isinstance(config.steer_layers, list) else []) + classify_layers:
        if layer >= handle.n_layers:
            raise ValueError(f"layer {layer} does not exist: the model has {handle.n_layers} blocks")
    vectors, projection, steer_layers = _steering_vectors(handle, config, (harmful, benign), progress)
    probe = (
        fit_probe(
            handle,
            (harmful, benign),
            config.r_pos,
            config.probe_layers,
            batch_size=config.batch_size,
            progress=progress,
            seed=config.seed,
            framed=_framed_training(config, (harmful, benign)),
            contrast=config.probe_contrast,
        )
        if config.sigma_probe
        else None
    )
    fit = _threshold_fit(handle, config, (harmful, benign), classify_layers, probe, progress)
    points, report = _operating_points(config, fit)
    recipe = SteeringRecipe(
        steer_layers=steer_layers,
        classify_layers=fit.classify_layers,
        threshold=points["steer"].threshold,
        alpha_benign=config.alpha_benign,
        alpha_harmful=config.alpha_harmful,
        grey_zone=config.grey_zone,
        r_pos=config.r_pos,
        probe_layer=probe.layer if probe else None,
        probe_bias=probe.bias if probe else 0.0,
    )
    splits = {"threshold_fit": PromptSplit.of(fit.description, fit.harmful + fit.benign)}
    if probe is not None:
        splits["probe_train"] = PromptSplit.of(probe.report()["data"], probe.prompts)
    meta = ArtifactMeta(
        model_name=handle.name,
        model_fingerprint=handle.fingerprint(),
        chat_template_sha256=text_sha256(handle.tokenizer.chat_template),
        recipe=recipe,
        anchors={
            "harmful": AnchorSet.of("advbench", harmful, config.seed),
            "benign": AnchorSet.of("truthfulqa", benign, config.seed),
        },
        threshold_fit=report,
        splits=splits,
        operating_points=points,
        platt=platt_fit(fit.scores, fit.labels, points["guard"].threshold),
        layer_analysis=[p.model_dump() for p in projection],
        notes={
            "calibration_config": config.model_dump(),
            **({"probe": probe.report()} if probe else {}),
            **(notes or {}),
        },
    )
    log.info(
        "calibrated %s: T=%.4f F1=%.3f AUROC=%.3f on %s",
        handle.name,
        recipe.threshold,
        report["f1"],
        report["auroc"],
        fit.description,
    )
    return Artifact(meta, vectors, fit.d_harm, probe.weight if probe else None)
