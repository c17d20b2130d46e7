"""Which blocks, and how far, to steer a model whose refused benign prompts sigma already steers? (1.5B and 0.5B)

    # unsteered replies and sigma scores of the tuning sets (the artifact's own steer T decides who is steered)
    python benchmarks/safe_steering_sweep.py generate --model qwen2.5-coder-1.5b-instruct --data-dir ../shared/data \
        --out results/span15-base --limit 150 --coefficients 0 --max-t -3.2381 --min-t 100 --batch-size 16 \
        --max-new-tokens 16 --nll-limit 0 --sets tune_benign tune_harmful contrast_heldout_safe contrast_heldout_unsafe
    # copies of the shipped artifact steering other blocks (21-27: its layer analysis' span, the earlier recipe)
    python benchmarks/steer_span.py artifacts --artifact artifacts/qwen2.5-coder-1.5b-instruct --spans 21-27 9-18 14-20
    # per span: copy the base run, steer only the rows refused unsteered
    python benchmarks/safe_steering_sweep.py generate ... --artifact results/artifact-SPAN --out results/span15-SPAN \
        --coefficients=-1,-2,-4 --only-refused-at 0
    python benchmarks/steer_span.py nll --model qwen2.5-coder-1.5b-instruct --runs results/span15-21-27 \
        results/span15-9-18 results/span15-14-20
    python benchmarks/steer_span.py analyze --steer-t -3.2381 --runs 21-27=results/span15-21-27 \
        9-18=results/span15-9-18 14-20=results/span15-14-20 --report benchmarks/results/steer-span-1.5b

Only replies refused unsteered are regenerated steered (a reply answered unsteered is counted as answered under
steering too: steering away is not expected to add refusals). Fluency: `nll` scores each steered reply under the
unsteered model (mean NLL per token); the reference is the unsteered model's own answers (replies not refused) to
the benign prompts, so a steered answer is compared with a natural one, not with the refusal it replaced. The table
gives, per span and coefficient, the refusal rate of each set with the prompts below the steer T steered, and how
many of the steered-and-refused prompts each setting un-refuses. The span is chosen on the tuning sets above;
`analyze` over runs of the evaluation sets (docs/results.md) only reports the check. The same commands for
the 0.5B (its shipped steer T -2.2494, spans 8-15 4-11 10-17 12-19 6-17, no --model) are in docs/results.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safe_steering_sweep import BY_RECIPE, HARMFUL_SETS, load_rows
from summary_io import read_rows, write_summary

from scans_guard.calibration.artifacts import Artifact


def parse_span(text: str) -> list[int]:
    lo, hi = (int(x) for x in text.split("-"))
    return list(range(lo, hi + 1))


def rates(by_key: dict, scores: dict, steer_t: float, coef: float) -> dict:
    """Per set: n, refusal rate unsteered and with `coef` below steer_t, and refused-below-T prompts un-refused."""
    out = {}
    for s in sorted({k[0] for k in by_key}):
        prompts = sorted({k[1] for k in by_key if k[0] == s and k[2] == 0.0})
        base = [by_key[(s, p, 0.0)]["refused"] for p in prompts]
        steered, reached, unrefused, missing = [], 0, 0, 0
        for p, refused in zip(prompts, base):
            if refused and scores[p] < steer_t:
                reached += 1
                r = by_key.get((s, p, coef))
                missing += r is None
                still = r["refused"] if r is not None else True
                unrefused += not still
                steered.append(still)
            else:
                steered.append(refused)
        out[s] = {
            "n": len(prompts),
            "unsteered": sum(base) / len(prompts),
            "steered": sum(steered) / len(prompts),
            "refused_below_t": reached,
            "unrefused": unrefused,
            "missing": missing,
        }
    return out


def cmd_nll(args: argparse.Namespace) -> None:
    """Fill in nll_sum / nll_tokens of every steered reply, and of the unsteered answers of benign prompts."""
    from safe_steering_sweep import require_plain, response_nll

    from scans_guard import ScansEngine

    for run in args.runs:
        require_plain(Path(run))
    engine = ScansEngine.load(args.model, args.artifact)
    scored: dict[tuple[str, str], tuple[float, int]] = {}  # the runs share their unsteered rows
    for run in args.runs:
        path = Path(run) / "generations.jsonl"
        rows = read_rows(path)
        for r in rows:
            wanted = r["coefficient"] < 0 or (
                r["coefficient"] == 0 and not r["refused"] and r["set"] not in HARMFUL_SETS
            )
            if wanted and not r["nll_tokens"]:
                key = (r["prompt"], r["response"])
                if key not in scored:
                    scored[key] = response_nll(engine, *key)
                r["nll_sum"], r["nll_tokens"] = scored[key]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(run, sum(bool(r["nll_tokens"]) for r in rows), "replies scored")


def mean_nll(rows: list[dict]) -> float:
    tokens = sum(r["nll_tokens"] for r in rows)
    return sum(r["nll_sum"] for r in rows) / tokens if tokens else float("nan")


def cmd_artifacts(args: argparse.Namespace) -> None:
    art = Artifact.load(args.artifact)
    for span in args.spans:
        path = art.with_recipe(steer_layers=parse_span(span)).save(Path(args.out_root) / f"artifact-{span}")
        print(path)


# The retry (RetryPolicy's default: once, at twice the coefficient), composed from a run's rows at both coefficients:
# the first reply, or the second where the first was refused. Stored under this key.
RETRY = -998.0
RETRY_OF = {-2.0: -4.0}


def _coefficient_label(coef: float) -> str:
    return {BY_RECIPE: "by recipe", RETRY: "-2, retried at -4"}.get(coef, f"{coef:g}")


def with_retry(by_key: dict) -> dict:
    """by_key plus RETRY rows where a run has both coefficients of a retry."""
    out = dict(by_key)
    for first, second in RETRY_OF.items():
        if not any(k[2] == second for k in by_key):
            continue
        for (s, p, c), r in by_key.items():
            if c == first:
                out[(s, p, RETRY)] = by_key.get((s, p, second), r) if r["refused"] else r
    return out


def cmd_analyze(args: argparse.Namespace) -> None:
    table, answers = [], {}  # answers: the model's own (unsteered, not refused) replies to benign prompts, all runs
    for spec in args.runs:
        name, run = spec.split("=", 1)
        by_key, scores = load_rows(Path(run))
        by_key = with_retry(by_key)
        for coef in sorted({k[2] for k in by_key if k[2] < 0}, reverse=True):
            steered = [r for k, r in by_key.items() if k[2] == coef and k[0] not in HARMFUL_SETS]
            table.append(
                {
                    "span": name,
                    "coefficient": coef,
                    "sets": rates(by_key, scores, args.steer_t, coef),
                    "nll_steered_benign": mean_nll(steered),
                }
            )
        answers |= {
            k: r
            for k, r in by_key.items()
            if k[2] == 0 and not r["refused"] and k[0] not in HARMFUL_SETS and r["nll_tokens"]
        }
    reference = mean_nll(list(answers.values()))
    sets = sorted(table[0]["sets"])
    lines = [
        "| span | coefficient | " + " | ".join(sets) + " | NLL/token of steered benign replies |",
        "|---|---|" + "---|" * (len(sets) + 1),
    ]
    base = table[0]["sets"]
    lines.append(
        "| unsteered | 0 | "
        + " | ".join(f"{100 * base[s]['unsteered']:.0f}%" for s in sets)
        + f" | {reference:.2f} (its answers to benign prompts) |"
    )
    for row in table:
        cells = [
            f"{100 * v['steered']:.0f}% ({v['unrefused']}/{v['refused_below_t']} un-refused"
            + (f", {v['missing']} missing" if v["missing"] else "")
            + ")"
            for v in (row["sets"][s] for s in sets)
        ]
        lines.append(
            f"| {row['span']} | {_coefficient_label(row['coefficient'])} | "
            + " | ".join(cells)
            + f" | {row['nll_steered_benign']:.2f} |"
        )
    write_summary(args.report, table, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("artifacts", help="copies of an artifact with other steering layers")
    a.add_argument("--artifact", required=True)
    a.add_argument("--spans", nargs="+", required=True, help="e.g. 9-18 14-20")
    a.add_argument("--out-root", default="results")
    n = sub.add_parser("nll", help="score steered replies (and unsteered benign answers) under the unsteered model")
    n.add_argument("--model", default=None)
    n.add_argument("--artifact", default=None)
    n.add_argument("--runs", nargs="+", required=True)
    z = sub.add_parser("analyze")
    z.add_argument("--steer-t", type=float, required=True)
    z.add_argument("--runs", nargs="+", required=True, help="SPAN=RUN_DIR")
    z.add_argument("--report")
    args = parser.parse_args()
    {"artifacts": cmd_artifacts, "nll": cmd_nll, "analyze": cmd_analyze}[args.cmd](args)


if __name__ == "__main__":
    main()
