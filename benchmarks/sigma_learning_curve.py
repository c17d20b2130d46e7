"""Would more contrast pairs help sigma? The shipped probe recipe refitted on fractions of the contrast train split.

    python benchmarks/sigma_learning_curve.py --features results/sigma-features-sure \
        --out benchmarks/results/sigma-learning-curve

Pairs (never single prompts) are sampled from the train split, five draws per fraction; everything else is the
shipped recipe (`sigma_variants.py`'s last variant: contrast train + anchors, layer and C by 5-fold CV). The choice
this informs (write more pairs or not) reads only the contrast held-out AUROC, the project's own split; the XSTest
AUROC is reported beside it and never used for a choice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sigma_variants import build_variants, evaluate, load_all

from scans_guard.data import contrast_pairs

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def curve(data: dict, draws: int = 5) -> list[dict]:
    train = data["contrast_train"]
    pair = contrast_pairs()
    pairs = np.array([pair[p] for p in train.prompts])
    ids = np.unique(pairs)
    rng = np.random.default_rng(0)
    rows = []
    for frac in FRACTIONS:
        for draw in range(draws if frac < 1 else 1):
            keep = rng.permutation(ids)[: round(frac * len(ids))]
            variant = build_variants(train.t.shape[1])[-1]  # the shipped probe recipe
            variant.fit({**data, "contrast_train": train.take(np.isin(pairs, keep))})
            r = evaluate(variant, data)  # scores every set with the probe fitted on the fraction
            rows.append(
                {
                    "fraction": frac,
                    "draw": draw,
                    "pairs": len(keep),
                    "span": r["span"],
                    "C": r["C"],
                    "contrast_heldout_auroc": r["contrast_heldout_auroc"],
                    "xstest_auroc": r["xstest_auroc"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--features", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rows = curve(load_all(Path(args.features)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "| train pairs | draws | contrast held-out AUROC (mean ± sd) | XSTest AUROC (reported, never used) |",
        "|---|---|---|---|",
    ]
    for frac in FRACTIONS:
        sel = [r for r in rows if r["fraction"] == frac]
        ch, xs = (np.array([r[k] for r in sel]) for k in ("contrast_heldout_auroc", "xstest_auroc"))
        lines.append(
            f"| {sel[0]['pairs']} ({frac:.0%}) | {len(sel)} | {ch.mean():.3f} ± {ch.std():.3f} | "
            f"{xs.mean():.3f} ± {xs.std():.3f} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
