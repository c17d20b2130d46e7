"""Variants of the step away from refusal, as artifacts for `safe_steering_sweep.py generate --artifact`.

Each variant is a copy of a model's shipped artifact with one change to how a prompt sigma calls benign is steered:

- `ablate`: the refusal direction's component is removed at the steer blocks (h - (h . v)v) instead of adding -αv;
- `false-refusal`: -α u is added, u the false-refusal direction: mean over the contrast set's *train* safe look-alikes
  minus the benign anchors, orthogonalised against v (computed here on the model; tuning data only);
- `margin`: α grows with sigma's margin below the steer T (α = alpha_benign + slope * (T - score), capped).

    python benchmarks/away_variants.py --model qwen2.5-coder-1.5b-instruct --out-root results/away15
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scans_guard.calibration.artifacts import Artifact, default_artifact_dir
from scans_guard.calibration.vectors import false_refusal_vectors, last_token_activations
from scans_guard.data import anchor_split, contrast_set, text_sha256
from scans_guard.model.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--artifact", default=None, help="default: the one shipped for the model")
    ap.add_argument("--out-root", type=Path, required=True)
    ap.add_argument("--slope", type=float, default=0.5, help="margin variant: alpha added per unit of score below T")
    ap.add_argument("--alpha-max", type=float, default=4.0, help="margin variant: cap of alpha")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    base = Artifact.load(args.artifact or default_artifact_dir(args.model))
    base.with_recipe(away_step="ablate").save(args.out_root / "ablate")
    base.with_recipe(alpha_benign_slope=args.slope, alpha_benign_max=args.alpha_max).save(args.out_root / "margin")
    handle = load_model(args.model)
    look_alikes = [e.prompt for e in contrast_set("train") if not e.harmful]
    anchors = base.meta.anchors["benign"]
    benign = anchor_split(anchors.n, anchors.seed)[1]
    if text_sha256(benign) != anchors.sha256:
        raise SystemExit("the benign anchors recomputed from the artifact's count and seed do not match its hash")
    acts_s = last_token_activations(handle, look_alikes, args.batch_size, progress=True, desc="safe look-alikes")
    acts_b = last_token_activations(handle, benign, args.batch_size, progress=True, desc="benign anchors")
    u = false_refusal_vectors(acts_s, acts_b, base.refusal_vectors)
    fr = Artifact(base.meta, base.refusal_vectors, base.d_harm, base.probe_weight, u)
    fr.with_recipe(away_direction="false_refusal").save(args.out_root / "false-refusal")
    print(f"wrote {args.out_root}/ablate, margin, false-refusal ({len(look_alikes)} look-alikes, {len(benign)} benign)")


if __name__ == "__main__":
    main()
