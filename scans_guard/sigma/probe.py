"""The sigma probe: a logistic regression on one layer's transition t^l that tells look-alike prompts apart.

The paper's sigma averages cos(t^l, d_harm^l) over layers, with d_harm the mean transition of AdvBench anchors. On
the default model that ranks XSTest's safe look-alikes ("How do I shoot a photo?") among the harmful prompts
(AUROC 0.755). A linear probe on the same transitions, trained on the project's contrast set (safe prompts that
look unsafe, each paired with an unsafe twin: scans_guard/data/CONTRAST.md) plus the anchors, separates them
(benchmarks/sigma_variants.py). It reads the same single forward pass: no extra cost per prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from ..data import contrast_set
from ..model.loading import ModelHandle
from .classifier import transitions_for


@dataclass
class ProbeFit:
    layer: int
    weight: torch.Tensor  # [hidden] float32
    bias: float
    c: float
    cv_auroc: float
    prompts: list[str]  # plain training prompts: contrast train split, then harmful anchors, then benign anchors
    labels: np.ndarray  # [n_prompts + n_framed] 1 = harmful: the plain prompts', then the framed ones'
    transitions: torch.Tensor  # [n_prompts + n_framed, n_layers, hidden], plain rows first, reused by calibration
    framed: int = 0  # framed training conversations after the plain prompts
    contrast: list[str] = field(default_factory=lambda: ["contrast.csv"])  # contrast files of the plain prompts

    @property
    def data(self) -> str:
        """What the plain prompts are, as the artifact records it."""
        files = "" if self.contrast == ["contrast.csv"] else f" ({', '.join(self.contrast)})"
        return f"contrast train split{files} + harmful/benign anchors"

    @property
    def plain(self) -> slice:
        """The rows of `labels` and `transitions` that belong to `prompts`."""
        return slice(0, len(self.prompts))

    def report(self) -> dict:
        return {
            "layer": self.layer,
            "C": self.c,
            "cv_auroc": self.cv_auroc,
            "n_train": len(self.labels),
            "n_harmful": int(self.labels.sum()),
            "n_framed": self.framed,
            "data": self.data + (" + the same prompts in the train framings" if self.framed else ""),
        }


def cv_auroc(x: np.ndarray, y: np.ndarray, c: float, folds: int = 5, seed: int = 0) -> float:
    """Mean held-out AUROC of an L2 logistic regression over stratified folds."""
    aucs = []
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(C=c, max_iter=3000).fit(x[tr], y[tr])
        aucs.append(roc_auc_score(y[te], model.decision_function(x[te])))
    return float(np.mean(aucs))


def plain_training_set(
    anchors: tuple[list[str], list[str]], contrast: Sequence[str] = ("contrast.csv",)
) -> tuple[list[str], list[int]]:
    """(prompts, labels with 1 = harmful) the probe is trained on: the train split of each contrast file, then the
    harmful anchors, then the benign ones."""
    pairs = [e for name in contrast for e in contrast_set("train", name)]
    prompts = [e.prompt for e in pairs] + anchors[0] + anchors[1]
    return prompts, [int(e.harmful) for e in pairs] + [1] * len(anchors[0]) + [0] * len(anchors[1])


def fit_probe(
    handle: ModelHandle,
    anchors: tuple[list[str], list[str]],
    r_pos: str,
    layers: list[int] | None = None,
    strengths: tuple[float, ...] = (0.01, 0.05, 0.2),
    batch_size: int = 8,
    progress: bool = False,
    seed: int = 0,
    framed: Sequence[tuple[str | list[dict], int]] = (),
    contrast: Sequence[str] = ("contrast.csv",),
) -> ProbeFit:
    """Train the probe on the train split of the `contrast` files plus the anchors, and on `framed` (conversation,
    label) pairs: those prompts wrapped in adversarial framings. Layer and L2 strength by 5-fold CV over all of them."""
    prompts, plain_labels = plain_training_set(anchors, contrast)
    labels = np.array(plain_labels + [y for _, y in framed])
    all_layers = list(range(handle.n_layers))
    transitions = transitions_for(handle, prompts, all_layers, r_pos, batch_size, progress, desc="probe training")
    if framed:
        extra = transitions_for(
            handle, [c for c, _ in framed], all_layers, r_pos, batch_size, progress, desc="probe training (framed)"
        )
        transitions = torch.cat([transitions, extra])
    candidates = layers or list(range(2, handle.n_layers, 2)) or all_layers
    best = max(
        (
            (cv_auroc(transitions[:, layer].double().numpy(), labels, c, seed=seed), layer, c)
            for layer in candidates
            for c in strengths
        ),
        key=lambda x: x[0],
    )
    auroc, layer, c = best
    model = LogisticRegression(C=c, max_iter=3000).fit(transitions[:, layer].double().numpy(), labels)
    return ProbeFit(
        layer=layer,
        weight=torch.tensor(model.coef_[0], dtype=torch.float32),
        bias=float(model.intercept_[0]),
        c=c,
        cv_auroc=auroc,
        prompts=prompts,
        labels=labels,
        transitions=transitions,
        framed=len(framed),
        contrast=list(contrast),
    )
