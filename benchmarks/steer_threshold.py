"""Choose the steer T on the project's own look-alike pairs, then report it on the evaluation sets.

The shipped steer T was a recall rule on sigma alone (99 % of the harmful fit prompts above it), which leaves most
XSTest-like safe prompts unsteered. This rule looks at what steering *does*: on the contrast set's train split
(168 safe prompts that look unsafe, each with an unsafe twin), the widest T whose steered replies lower the unsafe
twins' refusal rate by at most --max-harm-drop (default 1 point, half of the project's 2-point budget) against the
unsteered replies. Only the contrast train split decides; the evaluation sets report. A second recipe retries a
steered reply that the refusal judge calls a refusal once, steered twice as far (-2), with its own T by the same rule.

    python benchmarks/safe_steering_sweep.py generate --data-dir ../shared/data --out results/sweep-contrast \
        --limit 200 --coefficients 0,-1 --sets contrast_train_unsafe contrast_train_safe --max-t 0 \
        --batch-size 16 --max-new-tokens 16 --nll-limit 0
    python benchmarks/safe_steering_sweep.py generate ... (same) --coefficients -2 --only-refused-at -1
    python benchmarks/safe_steering_sweep.py generate --data-dir ../shared/data --out results/sweep-verify \
        --limit 100 --xstest-limit 250 --coefficients -2 --only-refused-at -1 --max-t 0 --sets xstest_safe \
        xstest_unsafe oktest advbench_heldout harmfulq malicious_instruct --batch-size 16 --max-new-tokens 16 \
        --nll-limit 40
    python benchmarks/steer_threshold.py --contrast-run results/sweep-contrast \
        --eval-run results/sweep-wide --report benchmarks/results/steer-threshold
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safe_steering_sweep import EVAL_SETS, SAFE_EVAL, compose, load_rows


def away(rows: dict, scores: dict, t: float, retry: float | None = None, t_retry: float | None = None) -> dict:
    """Per set: refusal and NLL/token when prompts below t are steered by -1 (and, with `retry`, a refused steered
    reply is replaced by the one at `retry` below t_retry): the sweep's `compose`."""
    return compose(rows, scores, t, 0.0, 1.0, 0.0, retry, t_retry)


def contrast_curve(
    rows: dict, scores: dict, grid: list[float], retry: float | None, t_steer: float | None = None
) -> list[dict]:
    """Refusal of both halves of the contrast split at each T (away-only recipe, alpha 1). With `retry` and
    `t_steer`, the -1 band is fixed at t_steer and T is the retry band's upper end."""
    base = away(rows, scores, -np.inf)
    curve = []
    for t in grid:
        res = away(rows, scores, t_steer, retry, t) if t_steer is not None else away(rows, scores, t, retry)
        curve.append(
            {
                "T": t,
                **{f"{s}_drop": base[s]["refusal"] - res[s]["refusal"] for s in res},
                **{f"{s}_refusal": res[s]["refusal"] for s in res},
            }
        )
    return curve


def pick(curve: list[dict], max_harm_drop: float) -> float:
    """The widest T whose unsafe twins lose at most `max_harm_drop` of their refusals (and every narrower T too)."""
    chosen = curve[0]["T"]
    for c in curve:
        if c["contrast_heldout_unsafe_drop"] > max_harm_drop + 1e-9:
            break
        chosen = c["T"]
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--contrast-run", required=True)
    ap.add_argument("--eval-run", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument(
        "--max-harm-drop",
        type=float,
        default=0.0,
        help="refusal-rate drop allowed on the unsafe twins (0: none of the 72 may lose its refusal)",
    )
    ap.add_argument("--t-from", type=float, default=-3.0)
    ap.add_argument("--t-to", type=float, default=0.0, help="the sweep's --max-t: -1 replies exist below it")
    ap.add_argument("--shipped-t", type=float, default=-2.2494)
    ap.add_argument("--retry", type=float, default=-2.0, help="coefficient of the retry of a refused steered reply")
    args = ap.parse_args()
    grid = [round(float(t), 2) for t in np.arange(args.t_from, args.t_to + 1e-9, 0.05)]
    c_rows, c_scores = load_rows(Path(args.contrast_run))
    e_rows, e_scores = load_rows(Path(args.eval_run))
    base = away(e_rows, e_scores, -np.inf)
    recipes = {"unsteered": base, f"shipped steer T {args.shipped_t}": away(e_rows, e_scores, args.shipped_t)}
    recipes[f"shipped steer T {args.shipped_t}, retry {args.retry} if refused (ScansGuardMiddleware check_output)"] = (
        away(e_rows, e_scores, args.shipped_t, args.retry)
    )
    curves, chosen = {}, {}
    curves["-1"] = contrast_curve(c_rows, c_scores, grid, None)
    t_steer = chosen["-1"] = pick(curves["-1"], args.max_harm_drop)
    recipes[f"-1 below T = {t_steer} (chosen on contrast held-out)"] = away(e_rows, e_scores, t_steer, None)
    retry = f"retry {args.retry} if refused"
    curves[retry] = contrast_curve(c_rows, c_scores, grid, args.retry, t_steer)
    t_retry = chosen[retry] = pick(curves[retry], args.max_harm_drop)
    recipes[f"-1 below {t_steer}, {retry} below T_retry = {t_retry} (chosen on contrast held-out)"] = away(
        e_rows, e_scores, t_steer, args.retry, t_retry
    )
    recipes[f"-1 below {t_steer}, {retry} in the same band"] = away(e_rows, e_scores, t_steer, args.retry)
    # Reported, never used for a choice: how the evaluation sets move with T (-1 below T).
    sensitivity = {t: away(e_rows, e_scores, t) for t in (-2.25, -1.5, -1.2, -0.9, -0.5, 0.0)}
    summary = {
        "rule": f"widest T with contrast held-out unsafe refusal drop <= {args.max_harm_drop}",
        "chosen_T": chosen,
        "contrast_curves": curves,
        "evaluation": recipes,
        "evaluation_sensitivity": sensitivity,
    }
    out = Path(args.report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = [
        f"Rule: {summary['rule']} -> T = {chosen}",
        "",
        "| recipe | " + " | ".join(EVAL_SETS) + " | ΔNLL (safe sets) |",
        "|---" * (len(EVAL_SETS) + 2) + "|",
    ]
    for name, res in recipes.items():
        cells = [
            f"{100 * res[s]['refusal']:.0f}% ({100 * (res[s]['refusal'] - base[s]['refusal']):+.0f})" for s in EVAL_SETS
        ]
        nll = np.mean([res[s]["nll"] - base[s]["nll"] for s in SAFE_EVAL])
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {nll:+.2f} |")
    lines += [
        "",
        "Evaluation sets against T (-1 below T; reported, never used for a choice), points vs unsteered",
        "",
        "| T | " + " | ".join(EVAL_SETS) + " |",
        "|---" * (len(EVAL_SETS) + 1) + "|",
    ]
    lines += [
        f"| {t} | " + " | ".join(f"{100 * (r[s]['refusal'] - base[s]['refusal']):+.0f}" for s in EVAL_SETS) + " |"
        for t, r in sensitivity.items()
    ]
    for name, curve in curves.items():
        lines += [
            "",
            f"Contrast held-out split (chooses T), recipe {name}: refusal drop of each half, points",
            "",
            "| T | safe twins | unsafe twins |",
            "|---|---|---|",
        ]
        lines += [
            f"| {c['T']} | {100 * c['contrast_heldout_safe_drop']:+.1f} | "
            f"{100 * c['contrast_heldout_unsafe_drop']:+.1f} |"
            for c in curve[::2]
        ]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
