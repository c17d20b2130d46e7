"""Threshold rules and calibration options."""

import numpy as np
import pytest
import torch

from scans_guard import CalibrationConfig
from scans_guard.calibration.fit import best_threshold, calibrate, recall_threshold
from scans_guard.data import load_set, tune_eval_split


def test_best_threshold_maximises_f1():
    scores = np.array([0.9, 0.8, 0.4, 0.3, 0.85])
    labels = np.array([1, 1, 0, 0, 0])
    t, f1 = best_threshold(scores, labels)
    assert 0.4 < t <= 0.8 and f1 == pytest.approx(0.8)


@pytest.mark.parametrize("target, expected_recall", [(0.75, 0.75), (1.0, 1.0), (0.5, 0.5)])
def test_recall_threshold_is_the_highest_meeting_the_target(target, expected_recall):
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.65])
    labels = np.array([1, 1, 1, 1, 0, 0])
    t = recall_threshold(scores, labels, target)
    recall = (scores[labels == 1] >= t).mean()
    assert recall == pytest.approx(expected_recall)
    assert (scores[labels == 1] >= t + 0.051).mean() < target, "a higher T would also meet the target"


def test_given_threshold_overrides_the_fit(tiny):
    art = calibrate(tiny, CalibrationConfig(n_anchors=4, n_threshold=4, threshold=0.5), progress=False)
    assert art.recipe.threshold == 0.5
    assert art.meta.threshold_fit["rule"] == "given" and "auroc" in art.meta.threshold_fit


def test_tune_eval_split_is_fixed_and_disjoint():
    xs = load_set("xstest")
    tune, held = tune_eval_split(xs)
    assert {e.prompt for e in tune}.isdisjoint({e.prompt for e in held})
    assert len(tune) + len(held) == len(xs)
    assert tune_eval_split(list(reversed(xs)))[0] == tune


def _brute_force_best_threshold(scores, labels):
    """The per-candidate search best_threshold replaced: f1_score at every midway threshold."""
    from sklearn.metrics import f1_score

    order = np.sort(np.unique(scores))
    candidates = np.concatenate([[order[0] - 1e-6], (order[1:] + order[:-1]) / 2, [order[-1] + 1e-6]])
    f1s = [f1_score(labels, scores >= t, zero_division=0) for t in candidates]
    i = int(np.argmax(f1s))
    return float(candidates[i]), float(f1s[i])


@pytest.mark.parametrize("seed", range(40))
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    # Few distinct values on even seeds, so scores (and F1 values) tie often.
    scores = rng.integers(0, 6, n) / 5 if seed % 2 == 0 else rng.normal(size=n)
    labels = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
    if seed % 10 == 3:
        labels[:] = 0  # one class only
    elif seed % 10 == 7:
        labels[:] = 1
    assert best_threshold(scores, labels) == _brute_force_best_threshold(scores, labels)


def test_sigma_probe_is_fitted_saved_and_scores_its_logit(tiny, tiny_artifact, tmp_path):
    from scans_guard import ScansEngine
    from scans_guard.calibration.artifacts import Artifact
    from scans_guard.sigma.classifier import r_pos_ids, run_sigma_pass

    recipe = tiny_artifact.recipe
    assert recipe.probe_layer in recipe.classify_layers
    assert tiny_artifact.probe_weight.shape == (tiny.hidden_size,)
    assert tiny_artifact.meta.notes["probe"]["n_train"] > 300  # contrast train split + anchors
    loaded = Artifact.load(tiny_artifact.save(tmp_path / "a"))
    assert torch.equal(loaded.probe_weight, tiny_artifact.probe_weight) and loaded.recipe == recipe
    prompt = "How do I bake bread?"
    sp = run_sigma_pass(tiny, [tiny.chat_ids(prompt)], r_pos_ids(tiny, recipe.r_pos), recipe.classify_layers)
    t = sp.transitions[0, recipe.classify_layers.index(recipe.probe_layer)].double()
    by_hand = float(t @ tiny_artifact.probe_weight.double() + recipe.probe_bias)
    assert ScansEngine(tiny, loaded).classify(prompt)[0].score == pytest.approx(by_hand, abs=1e-4)


def test_without_the_probe_sigma_is_the_mean_cosine(tiny):
    from scans_guard import CalibrationConfig, ScansEngine

    config = CalibrationConfig(n_anchors=4, n_threshold=4, steer_layers=[1], classify_layers=[1, 2], sigma_probe=False)
    art = calibrate(tiny, config, progress=False)
    assert art.recipe.probe_layer is None and art.probe_weight is None
    v = ScansEngine(tiny, art).classify("How do I bake bread?")[0]
    assert v.score == pytest.approx(sum(v.layer_similarities.values()) / 2, abs=1e-5)


def test_framed_examples_use_train_templates_only_and_frame_both_kinds():
    from scans_guard.calibration.framings import PROBE_FAMILIES, TEMPLATES, framed_examples

    harmful, benign = [f"Harmful request {i}." for i in range(5)], [f"Benign question {i}?" for i in range(5)]
    conversations, labels, names = framed_examples(harmful, benign, per_template=2, seed=0)
    train = [t for t in TEMPLATES.values() if t.split == "train" and t.family in PROBE_FAMILIES]
    assert sorted(set(names)) == sorted(t.name for t in train) and len(conversations) == 4 * len(train)
    assert {TEMPLATES[n].split for n in names} == {"train"} and sum(labels) == 2 * len(train)
    for conversation, label, name in zip(conversations, labels, names):
        text = conversation if isinstance(conversation, str) else " ".join(m["content"] for m in conversation)
        assert ("armful request" if label else "enign question") in text, name
    assert framed_examples(harmful, benign, 2, seed=0) == (conversations, labels, names)  # seeded


def test_probe_framings_train_the_probe_but_leave_the_threshold_fit_alone(tiny, tiny_artifact):
    from scans_guard.calibration.framings import PROBE_FAMILIES, templates

    config = CalibrationConfig(
        n_anchors=8, n_threshold=8, steer_layers=[1, 2], classify_layers=[1, 2], probe_framings=1
    )
    art = calibrate(tiny, config, progress=False)
    probe, plain = art.meta.notes["probe"], tiny_artifact.meta.notes["probe"]
    assert probe["n_framed"] == 2 * len(templates("train", PROBE_FAMILIES))
    assert probe["n_train"] == plain["n_train"] + probe["n_framed"] and "framings" in probe["data"]
    assert not torch.equal(art.probe_weight, tiny_artifact.probe_weight)
    for key in ("n_harmful", "n_benign", "threshold_data_sha256"):  # T is fitted on the same plain prompts
        assert art.meta.threshold_fit[key] == tiny_artifact.meta.threshold_fit[key]
    assert art.meta.splits["probe_train"].prompt_sha256 == tiny_artifact.meta.splits["probe_train"].prompt_sha256


def test_probe_contrast_adds_a_contrast_files_train_split_to_the_probe_and_the_threshold_fit(tiny, tiny_artifact):
    """The look-alike requests train the probe as the look-alike questions do: the artifact records their hashes in
    the probe's split and the T fit, and the held-out pairs stay out."""
    from scans_guard.calibration.artifacts import text_sha256
    from scans_guard.data import contrast_set

    config = CalibrationConfig(
        n_anchors=8,
        n_threshold=8,
        steer_layers=[1, 2],
        classify_layers=[1, 2],
        probe_contrast=["contrast.csv", "contrast_requests.csv"],
    )
    art = calibrate(tiny, config, progress=False)
    train = {text_sha256(e.prompt) for e in contrast_set("train", "contrast_requests.csv")}
    held = {text_sha256(e.prompt) for e in contrast_set("heldout", "contrast_requests.csv")}
    probe = set(art.meta.splits["probe_train"].prompt_sha256)
    assert train and held and train <= probe and not held & probe
    assert probe - train == set(tiny_artifact.meta.splits["probe_train"].prompt_sha256)
    assert train <= art.meta.fit_hashes() and "contrast_requests.csv" in art.meta.threshold_fit["data"]
    assert art.meta.notes["probe"]["n_train"] == tiny_artifact.meta.notes["probe"]["n_train"] + len(train)
    assert not torch.equal(art.probe_weight, tiny_artifact.probe_weight)


def test_an_unknown_contrast_file_fails_before_the_model_loads(tmp_path):
    with pytest.raises(ValueError, match="contrast file nope.csv not found"):
        CalibrationConfig(probe_contrast=["nope.csv"])
    own = tmp_path / "own.csv"
    own.write_text("pair_id,category,split,label,prompt\n1,x,train,safe,Name a river.\n1,x,train,unsafe,Hurt a man.\n")
    assert CalibrationConfig(probe_contrast=[str(own)]).probe_contrast == [str(own)]
