"""Prompt sets: the three shipped with the package (AdvBench, TruthfulQA, XSTest) and any `prompt,label` CSV on disk."""

from __future__ import annotations

import csv
import hashlib
import os
import random
from collections.abc import Set
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .model.paths import data_dir as resolve_data_dir
from .model.paths import missing_data_dir_hint

SHIPPED = {"advbench": "advbench.csv", "truthfulqa": "truthfulqa.csv", "xstest": "xstest.csv"}

# Sets read from a data directory (data_dir= / --data-dir, or $SCANS_GUARD_DATA); never shipped, never downloaded.
EXTERNAL = {
    "oktest": "oktest.csv",
    "oktest_heldout": "oktest_heldout.csv",
    "harmfulq": "harmfulq.csv",
    "malicious_instruct": "malicious_instruct.csv",
    "heldout_harmless": "heldout_harmless.csv",
    "repe_train": "repe_harmful_harmless_train.csv",
    "repe_test": "repe_harmful_harmless_test.csv",
}
# Sets whose prompt texts committed files (results, reports, tests) must not quote: written as `prompt_key` instead.
UNSHIPPED = frozenset(EXTERNAL)
KEY_PREFIX = "sha256:"
QUOTE_MIN_LEN = 26  # shorter prompts are keyed only as a whole string, never inside other text ("How do I ...?")


def text_sha256(texts: list[str] | str) -> str:
    joined = texts if isinstance(texts, str) else "\n".join(texts)
    return hashlib.sha256(joined.encode()).hexdigest()


def prompt_key(prompt: str) -> str:
    """What a committed file writes instead of a prompt of an unshipped set: stable, and matched to its text only by
    whoever has the data directory (scripts/redact_results.py)."""
    return KEY_PREFIX + text_sha256(prompt)[:16]


def unshipped_prompts(data_dir: str | os.PathLike | None = None) -> set[str]:
    """Every prompt of the unshipped sets found in the data directory, less those a shipped set (or the project's
    contrast set) also holds: the texts no committed file may quote."""
    found = resolve_data_dir(data_dir)
    if found is None:
        raise FileNotFoundError(f"the unshipped sets are read from the data directory: {missing_data_dir_hint()}")
    paths = [Path(found) / EXTERNAL[name] for name in sorted(UNSHIPPED) if (Path(found) / EXTERNAL[name]).is_file()]
    if not paths:
        raise FileNotFoundError(f"{found}: none of the unshipped sets' files ({sorted(EXTERNAL.values())})")
    texts = {e.prompt for path in paths for e in read_csv(path)}
    shipped = {e.prompt for name in SHIPPED for e in load_set(name)} | {e.prompt for e in contrast_set()}
    return texts - shipped


@dataclass(frozen=True)
class Example:
    prompt: str
    label: str  # "safe" or "unsafe"

    @property
    def harmful(self) -> bool:
        return self.label == "unsafe"


def read_csv(path: str | os.PathLike) -> list[Example]:
    """Rows of a `prompt,label` CSV (label safe/unsafe); extra columns are ignored."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"prompt", "label"} <= rows[0].keys():
        raise ValueError(f"{path}: expected columns prompt,label")
    bad = {r["label"] for r in rows} - {"safe", "unsafe"}
    if bad:
        raise ValueError(f"{path}: labels must be safe/unsafe, found {sorted(bad)}")
    return [Example(r["prompt"], r["label"]) for r in rows]


def load_set(name: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """A named set: shipped ones from the package, others from `data_dir` or $SCANS_GUARD_DATA (clear error if
    neither is given or the file is missing)."""
    if name in SHIPPED:
        return read_csv(Path(str(resources.files("scans_guard") / "data" / SHIPPED[name])))
    if name not in EXTERNAL:
        raise ValueError(f"unknown prompt set {name!r}; known: {sorted(SHIPPED) + sorted(EXTERNAL)}")
    data_dir = resolve_data_dir(data_dir)
    if data_dir is None:
        raise FileNotFoundError(
            f"{name} is not shipped with scans-guard (its licence does not allow it); "
            f"name the directory holding {EXTERNAL[name]}: {missing_data_dir_hint()}"
        )
    path = Path(data_dir) / EXTERNAL[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    return read_csv(path)


def sample_prompts(examples: list[Example], n: int, seed: int, exclude: Set[str] = frozenset()) -> list[str]:
    """n distinct prompts drawn with a seeded RNG (order kept stable across Python versions)."""
    pool = sorted({e.prompt for e in examples} - set(exclude))
    if n > len(pool):
        raise ValueError(f"asked for {n} prompts, only {len(pool)} available")
    return random.Random(seed).sample(pool, n)


def tune_eval_split(examples: list[Example], seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A fixed half/half split of a set: the first half may tune T, the second is for evaluation only."""
    shuffled = sorted(examples, key=lambda e: e.prompt)
    random.Random(seed).shuffle(shuffled)
    half = len(shuffled) // 2
    return shuffled[:half], shuffled[half:]


CONTRAST_FILES = ("contrast.csv", "contrast_requests.csv")


def contrast_path(name: str) -> Path:
    """Where a contrast file is: one of the package's (`CONTRAST_FILES`) or a path to a CSV of the same columns."""
    path = Path(str(resources.files("scans_guard") / "data" / name)) if name in CONTRAST_FILES else Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"contrast file {name} not found (the package has {', '.join(CONTRAST_FILES)})")
    return path


def _contrast_rows(name: str = "contrast.csv") -> list[dict[str, str]]:
    with open(contrast_path(name), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def contrast_set(split: str | None = None, name: str = "contrast.csv") -> list[Example]:
    """A contrast set of the project's (look-alike safe/unsafe pairs, CONTRAST.md): 'train', 'heldout' or both
    (None). `name`: contrast.csv (questions), contrast_requests.csv (requests and statements) or a path."""
    return [Example(r["prompt"], r["label"]) for r in _contrast_rows(name) if split is None or r["split"] == split]


def contrast_pairs() -> dict[str, int]:
    """Each contrast prompt's pair id (a safe prompt and its unsafe twin share one): to subsample whole pairs."""
    return {r["prompt"]: int(r["pair_id"]) for r in _contrast_rows()}


def anchor_split(n: int, seed: int) -> tuple[list[str], list[str]]:
    """The default anchors: n AdvBench (harmful) and n TruthfulQA (benign) prompts."""
    return (sample_prompts(load_set("advbench"), n, seed), sample_prompts(load_set("truthfulqa"), n, seed))
