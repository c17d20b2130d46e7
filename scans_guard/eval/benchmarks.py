"""Which prompt sets the evaluation reads, how they pair up for classification, and which prompts it leaves out.

Sets come from the package (AdvBench, TruthfulQA, XSTest) or from a data directory (`--data-dir`, else
$SCANS_GUARD_DATA; no default); nothing is downloaded. Calibration anchors are always removed and the prompts the
threshold T was fitted on (e.g. the tuning half of HarmfulQ) are removed by default (`exclude_threshold_fit`; kept,
they are counted in the report): both by the sha256 of each prompt, as the artifact records them.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from ..calibration.artifacts import Artifact, ArtifactMeta, text_sha256
from ..data import EXTERNAL, SHIPPED, Example, load_set
from ..errors import ArtifactError
from ..model.paths import missing_data_dir_hint

log = logging.getLogger(__name__)

# The evaluation sets, in report order, with the paper's names.
SETS: dict[str, str] = {
    "xstest": "XSTest v2",
    "oktest": "OKTest",
    "harmfulq": "HarmfulQ",
    "truthfulqa": "TruthfulQA (minus anchors)",
    "advbench": "AdvBench (minus anchors)",
    "repe_test": "RepE test (minus anchors)",
    "heldout_harmless": "Held-out harmless",
    "malicious_instruct": "MaliciousInstruct",
}

# Classification benchmarks: a safe and an unsafe side, from one set or two.
SUITES: dict[str, tuple[str, ...]] = {
    "xstest": ("xstest",),
    "oktest+harmfulq": ("oktest", "harmfulq"),
    "truthfulqa+advbench": ("truthfulqa", "advbench"),
    "repe_test": ("repe_test",),
    "heldout_harmless+malicious_instruct": ("heldout_harmless", "malicious_instruct"),
}


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: its set, gold label (safe/unsafe) and its index in the source file."""

    set: str
    label: str
    prompt: str
    index: int

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.set, self.label, self.prompt)


@dataclass
class CalibrationPrompts:
    """The prompts the artifact was fitted on, by the sha256 the artifact records for each."""

    anchor_hashes: set[str] = field(default_factory=set)
    anchors_verified: bool = False
    threshold_fit_hashes: set[str] = field(default_factory=set)
    threshold_fit_verified: bool = False
    notes: list[str] = field(default_factory=list)

    def is_anchor(self, prompt: str) -> bool:
        return text_sha256(prompt) in self.anchor_hashes

    def in_threshold_fit(self, prompt: str) -> bool:
        return text_sha256(prompt) in self.threshold_fit_hashes


def calibration_prompts(artifact: Artifact | ArtifactMeta | dict) -> CalibrationPrompts:
    """The anchors and T-fit prompts an artifact (or its meta) records; what it does not record is noted."""
    meta = artifact.meta if isinstance(artifact, Artifact) else artifact
    meta = ArtifactMeta.parse(meta) if isinstance(meta, dict) else meta
    out = CalibrationPrompts()
    try:
        out.anchor_hashes, out.anchors_verified = meta.anchor_hashes(), bool(meta.anchors)
    except ArtifactError as exc:
        out.notes.append(f"{exc}: none excluded (results may include calibration prompts)")
        log.warning(out.notes[-1])
    if not meta.anchors:
        out.notes.append("the artifact records no anchors: nothing excluded")
    fit = meta.fit_hashes()
    if fit is None:
        out.notes.append("the artifact does not record the prompts T was fitted on: T-fit prompts not identified")
    else:
        out.threshold_fit_hashes, out.threshold_fit_verified = fit, True
    return out


class SetInfo(BaseModel):
    """What was loaded for one set and what was left out."""

    name: str
    total: int
    anchors_removed: int
    threshold_fit_removed: int
    threshold_fit_overlap: int  # T-fit prompts still in the evaluated prompts
    duplicates_removed: int
    evaluated: int
    labels: dict[str, int]


def limit_prompts(prompts: list[EvalPrompt], limit: int | None, seed: int) -> list[EvalPrompt]:
    """At most `limit` prompts, drawn with a seeded RNG and balanced across labels; source order kept."""
    if limit is None or len(prompts) <= limit:
        return prompts
    rng = random.Random(seed)
    by_label: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        by_label.setdefault(p.label, []).append(p)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_label.items())]
    chosen: list[EvalPrompt] = []
    while len(chosen) < limit:
        for pool in pools:
            if pool and len(chosen) < limit:
                chosen.append(pool.pop())
    return sorted(chosen, key=lambda p: p.index)


def generation_prompts(
    sets: dict[str, list[EvalPrompt]], limit: int | None, full: Sequence[str] = (), seed: int = 0
) -> dict[str, list[EvalPrompt]]:
    """The prompts that get replies: at most `limit` per set (label-balanced, seeded), every prompt of `full`'s sets.

    sigma(q) is one forward pass and generation dozens, so a long run scores every prompt and replies to a sample.
    """
    return {name: ps if name in full else limit_prompts(ps, limit, seed) for name, ps in sets.items()}


def load_benchmarks(
    sets: list[str] | None,
    data_dir: str | os.PathLike | None,
    calib: CalibrationPrompts,
    limit: int | None = None,
    seed: int = 0,
    exclude_threshold_fit: bool = True,
) -> tuple[dict[str, list[EvalPrompt]], dict[str, SetInfo], list[str]]:
    """Load the evaluation sets: ({set: prompts}, {set: info}, names of sets skipped for lack of data).

    `sets=None` means every set in SETS, skipping (with a warning) those that need a data directory when there is
    none; a set named explicitly must be available.
    """
    explicit = sets is not None
    names = list(SETS) if sets is None else sets
    unknown = [n for n in names if n not in SETS and n not in SHIPPED and n not in EXTERNAL]
    if unknown:
        raise ValueError(f"unknown set(s) {unknown}; known: {list(SETS)}")
    loaded: dict[str, list[EvalPrompt]] = {}
    infos: dict[str, SetInfo] = {}
    skipped: list[str] = []
    for name in names:
        if name not in SHIPPED and (data_dir is None or not (Path(data_dir) / EXTERNAL[name]).is_file()):
            if explicit:
                where = data_dir if data_dir is not None else f"(none given: {missing_data_dir_hint()})"
                raise FileNotFoundError(f"set {name} needs {EXTERNAL[name]} in the data directory {where}")
            skipped.append(name)
            continue
        examples: list[Example] = load_set(name, data_dir)
        seen: set[tuple[str, str]] = set()
        kept: list[EvalPrompt] = []
        n_anchor = n_fit = n_dup = 0
        for i, ex in enumerate(examples):
            if calib.is_anchor(ex.prompt):
                n_anchor += 1
                continue
            if exclude_threshold_fit and calib.in_threshold_fit(ex.prompt):
                n_fit += 1
                continue
            if (ex.prompt, ex.label) in seen:
                n_dup += 1
                continue
            seen.add((ex.prompt, ex.label))
            kept.append(EvalPrompt(name, ex.label, ex.prompt, i))
        kept = limit_prompts(kept, limit, seed)
        loaded[name] = kept
        infos[name] = SetInfo(
            name=name,
            total=len(examples),
            anchors_removed=n_anchor,
            threshold_fit_removed=n_fit,
            threshold_fit_overlap=sum(calib.in_threshold_fit(p.prompt) for p in kept),
            duplicates_removed=n_dup,
            evaluated=len(kept),
            labels={lab: sum(p.label == lab for p in kept) for lab in ("safe", "unsafe")},
        )
    if skipped:
        log.warning("skipping %s: no data directory with them (%s)", ", ".join(skipped), missing_data_dir_hint())
    return loaded, infos, skipped
