#!/usr/bin/env python3
"""Originality check for scans_guard/data/contrast.csv (stdlib only).

For every prompt of the contrastive calibration set, print the nearest prompt of
the evaluation sets and its similarity (difflib.SequenceMatcher ratio on
lowercased text, and word-trigram Jaccard).  Exit non-zero if any ratio is
>= 0.75, any trigram Jaccard is >= 0.5, a prompt appears twice inside
contrast.csv, or the file's structure is wrong.

Usage:  python scripts/check_contrast_overlap.py [DATA_DIR] [--quiet] [--file=PATH]

--file checks another file of the same columns (default: contrast.csv), such as contrast_requests.csv.

DATA_DIR holds the benchmark CSVs that are not shipped with the package
(default: ../shared/data relative to the repository root).  Files that are
absent are skipped with a note.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import sys
from collections import Counter, defaultdict
from difflib import SequenceMatcher
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PKG_DATA = REPO / "scans_guard" / "data"
CONTRAST = PKG_DATA / "contrast.csv"

RATIO_MAX = 0.75
JACCARD_MAX = 0.5

# Evaluation sets shipped with the package.
PKG_FILES = ["xstest.csv", "advbench.csv"]
# Evaluation sets read from the data directory (copies of the shipped ones included).
DIR_FILES = [
    "oktest.csv",
    "oktest_heldout.csv",
    "harmfulq.csv",
    "malicious_instruct.csv",
    "heldout_harmless.csv",
    "repe_harmful_harmless_test.csv",
    "repe_harmful_harmless_train.csv",
    "xstest_v2.csv",
    "advbench_harmful_behaviors.csv",
]

HEADER = ["pair_id", "category", "split", "label", "prompt"]
WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def norm(text: str) -> str:
    return " ".join(text.lower().split())


def trigrams(text: str) -> frozenset:
    words = WORD.findall(text.lower())
    return frozenset(zip(words, words[1:], words[2:]))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


def load_prompts(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        return [r["prompt"] for r in csv.DictReader(fh) if r.get("prompt")]


_REFS: list = []


def nearest(prompt: str):
    """Nearest evaluation prompt by SequenceMatcher ratio and by trigram Jaccard."""
    q = norm(prompt)
    qt, qc = trigrams(q), Counter(q)
    best_j, best_j_ref = 0.0, None
    bounds = []
    for i, (src, ref, rt, rc) in enumerate(_REFS):
        j = jaccard(qt, rt)
        if j > best_j:
            best_j, best_j_ref = j, (src, ref)
        # SequenceMatcher.quick_ratio(): an upper bound on ratio()
        bounds.append((2.0 * sum((qc & rc).values()) / (len(q) + len(ref)), i))
    bounds.sort(reverse=True)
    sm = SequenceMatcher(autojunk=False)
    sm.set_seq2(q)
    best_r, best_r_ref = 0.0, None
    for bound, i in bounds:
        if bound <= best_r:
            break  # no remaining prompt can beat the best exact ratio
        sm.set_seq1(_REFS[i][1])
        ratio = sm.ratio()
        if ratio > best_r:
            best_r, best_r_ref = ratio, _REFS[i][:2]
    return best_r, best_r_ref, best_j, best_j_ref


def check_structure(rows: list[dict]) -> list[str]:
    errors = []
    by_pair = defaultdict(list)
    for r in rows:
        by_pair[r["pair_id"]].append(r)
        if r["label"] not in ("safe", "unsafe"):
            errors.append(f"pair {r['pair_id']}: bad label {r['label']!r}")
        if r["split"] not in ("train", "heldout"):
            errors.append(f"pair {r['pair_id']}: bad split {r['split']!r}")
        if r["prompt"] != r["prompt"].strip():
            errors.append(f"pair {r['pair_id']}: leading/trailing space")
    for pid, pair in by_pair.items():
        labels = sorted(p["label"] for p in pair)
        if labels != ["safe", "unsafe"]:
            errors.append(f"pair {pid}: labels {labels}, want one safe and one unsafe")
        if len({(p["category"], p["split"]) for p in pair}) != 1:
            errors.append(f"pair {pid}: category/split differ within the pair")
    counts = Counter(norm(r["prompt"]) for r in rows)
    for text, n in counts.items():
        if n > 1:
            errors.append(f"duplicate prompt inside the file ({n}x): {text}")
    return errors


def main(argv: list[str]) -> int:
    quiet = "--quiet" in argv
    files = [a.split("=", 1)[1] for a in argv if a.startswith("--file=")]
    contrast = Path(files[-1]) if files else CONTRAST
    args = [a for a in argv if not a.startswith("--")]
    data_dir = Path(args[0]) if args else (REPO / ".." / "shared" / "data").resolve()

    with contrast.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != HEADER:
            print(f"FAIL: header {reader.fieldnames}, want {HEADER}")
            return 1
        rows = list(reader)

    errors = check_structure(rows)

    # (source, lowered prompt, trigrams, character bag)
    refs: list[tuple[str, str, frozenset, Counter]] = []
    seen = set()
    sources = [PKG_DATA / f for f in PKG_FILES] + [data_dir / f for f in DIR_FILES]
    for path in sources:
        if not path.exists():
            print(f"note: {path} absent, skipped")
            continue
        n = 0
        for p in load_prompts(path):
            low = norm(p)
            if low in seen:
                continue
            seen.add(low)
            refs.append((path.name, low, trigrams(low), Counter(low)))
            n += 1
        print(f"loaded {n:4d} new prompts from {path}")
    if not refs:
        print("FAIL: no evaluation prompts found")
        return 1

    max_ratio = max_jac = 0.0
    flagged = 0
    global _REFS
    _REFS = refs
    prompts = [r["prompt"] for r in rows]
    workers = max(1, min(os.cpu_count() or 1, 16))
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            results = pool.map(nearest, prompts, chunksize=4)
    else:
        results = [nearest(p) for p in prompts]
    for r, (best_r, best_r_ref, best_j, best_j_ref) in zip(rows, results):
        bad = best_r >= RATIO_MAX or best_j >= JACCARD_MAX
        flagged += bad
        max_ratio, max_jac = max(max_ratio, best_r), max(max_jac, best_j)
        if bad or not quiet:
            mark = "FAIL" if bad else "ok  "
            print(
                f"{mark} pair {r['pair_id']:>3} {r['label']:<6} ratio={best_r:.3f} jaccard={best_j:.3f} | {r['prompt']}"
            )
            print(f"       nearest (ratio): [{best_r_ref[0]}] {best_r_ref[1]}")
            if best_j_ref and best_j_ref != best_r_ref:
                print(f"       nearest (trigram): [{best_j_ref[0]}] {best_j_ref[1]}")

    for e in errors:
        print(f"FAIL: {e}")
    print(
        f"\n{len(rows)} prompts checked against {len(refs)} evaluation prompts; "
        f"max ratio {max_ratio:.3f} (limit {RATIO_MAX}), "
        f"max trigram Jaccard {max_jac:.3f} (limit {JACCARD_MAX}); "
        f"{flagged} too close, {len(errors)} structural errors"
    )
    return 1 if flagged or errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
