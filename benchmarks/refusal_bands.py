"""Where the refusals left under SCANS sit on sigma's scale: below the steer T, in the grey band up to the guard T,
or at and above it.

A refused prompt below the steer T was steered and still refused; one in the grey band was left unsteered, so a
higher steer T could reach it (and would steer the harmful prompts there too); one at or above the guard T is
blocked under guard+steer whatever the steering does, so only a better ranking by sigma can move it.

    python benchmarks/refusal_bands.py --eval results/eval-1.5b-full --report benchmarks/results/refusal-bands-1.5b
    python benchmarks/refusal_bands.py --sweep results/v15-shipped --coefficient -2 \
        --report benchmarks/results/refusal-bands-1.5b-tuning

An eval run gives its unsteered and SCANS replies and its own verdicts (`scores.jsonl`); a sweep
(`safe_steering_sweep.py generate`) gives the unsteered replies and, with --coefficient, the replies at it of the
prompts below the steer T (a prompt without one, answered unsteered under `--only-refused-at 0`, counts as
answered; one refused unsteered without one is left out). The thresholds are the artifact's (--model/--artifact;
default: the default model's). No prompt is written out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import read_rows, write_summary  # noqa: E402

from scans_guard.calibration.artifacts import Artifact, default_artifact_dir  # noqa: E402

BANDS = ("below_steer", "grey", "at_guard")


def band(score: float, steer_t: float, guard_t: float) -> str:
    return "below_steer" if score < steer_t else "grey" if score < guard_t else "at_guard"


def eval_prompts(run: Path) -> list[dict]:
    """One row per prompt of an eval run: set (name/label), score, refused unsteered, refused under SCANS."""
    scores = {}
    for r in read_rows(run / "scores.jsonl"):
        scores[(r["set"], r["label"], r["prompt"])] = r["score"]
    replies: dict[tuple, dict[str, bool]] = defaultdict(dict)
    for r in read_rows(run / "generations.jsonl"):
        replies[(r["set"], r["label"], r["prompt"])][r["condition"]] = r["refused"]
    return [
        {"set": f"{k[0]}_{k[1]}", "score": scores[k], "unsteered": c["unsteered"], "scans": c["scans"]}
        for k, c in replies.items()
        if {"unsteered", "scans"} <= c.keys() and k in scores
    ]


def sweep_prompts(run: Path, coefficient: float, steer_t: float) -> list[dict]:
    """One row per prompt of a sweep: its unsteered reply, and its reply at `coefficient` where it is below T."""
    scores = json.loads((run / "scores.json").read_text())
    replies: dict[tuple, dict[float, bool]] = defaultdict(dict)
    for r in read_rows(run / "generations.jsonl"):
        replies[(r["set"], r["prompt"])][float(r["coefficient"])] = r["refused"]
    out = []
    for (set_name, prompt), by in replies.items():
        if 0.0 not in by:
            continue
        score = scores[prompt]
        if score >= steer_t:
            scans = by[0.0]
        elif coefficient in by or not by[0.0]:
            scans = by.get(coefficient, False)
        else:
            continue  # refused unsteered below T, steered reply not generated yet
        out.append({"set": set_name, "score": score, "unsteered": by[0.0], "scans": scans})
    return out


def table(prompts: list[dict], steer_t: float, guard_t: float) -> list[dict]:
    rows = []
    for set_name in sorted({p["set"] for p in prompts}):
        mine = [p for p in prompts if p["set"] == set_name]
        n = len(mine)
        row: dict = {
            "set": set_name,
            "n": n,
            "refused_unsteered_pct": round(100 * sum(p["unsteered"] for p in mine) / n, 1),
            "refused_scans_pct": round(100 * sum(p["scans"] for p in mine) / n, 1),
        }
        for b in BANDS:
            inside = [p for p in mine if band(p["score"], steer_t, guard_t) == b]
            row[f"n_{b}"] = len(inside)
            row[f"scans_refused_{b}"] = sum(p["scans"] for p in inside)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--eval", type=Path, help="a `scans-guard eval` run with the unsteered and scans conditions")
    source.add_argument("--sweep", type=Path, help="a safe_steering_sweep.py run directory")
    ap.add_argument("--coefficient", type=float, default=-2.0, help="the sweep's steered coefficient (default -2)")
    ap.add_argument("--model", default=None, help="whose shipped artifact gives the thresholds (default model)")
    ap.add_argument("--artifact", default=None)
    ap.add_argument("--report")
    args = ap.parse_args()
    art = Artifact.load(args.artifact or default_artifact_dir(args.model))
    steer_t, guard_t = art.recipe.threshold, art.meta.operating_points["guard"].threshold
    if args.eval:
        prompts = eval_prompts(args.eval)
    else:
        prompts = sweep_prompts(args.sweep, args.coefficient, steer_t)
    rows = table(prompts, steer_t, guard_t)
    cols = list(rows[0])
    lines = [
        f"steer T {steer_t:.4f}, guard T {guard_t:.4f}; SCANS refusals by band: below the steer T (steered), grey "
        "(unsteered, answered under guard+steer as under steer), at or above the guard T (blocked under guard+steer)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    write_summary(args.report, {"steer_t": steer_t, "guard_t": guard_t, "sets": rows}, lines)


if __name__ == "__main__":
    main()
