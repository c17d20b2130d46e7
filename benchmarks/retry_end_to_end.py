"""The engine's own steering, with and without the opt-in retry, on the evaluation sets: end to end, not composed.

    python benchmarks/retry_end_to_end.py run --data-dir ../shared/data --out results/retry-e2e
    python benchmarks/retry_end_to_end.py report --out results/retry-e2e --sweep results/sweep-wide \
        --report benchmarks/results/retry-end-to-end

`run` sends every prompt of the sweep's evaluation samples (the same seed and sizes as docs/steering.md: all
450 XSTest, 100 per other set) through `ScansEngine.generate(..., retry=RetryPolicy())` with the shipped artifact:
sigma decides, rows below the steer T get -1, a steered reply the keyword judge finds refusing is generated again at
-2. Greedy, 16 new tokens (the sweep's), so the retry's judge reads the whole first reply. One row per prompt, appended
as each batch finishes (a killed run continues). `report` gives each set's refusal rate unsteered (the sweep's
coefficient-0 rows: same prompts, same greedy decoding), with the shipped recipe (the engine's first reply) and with
the retry (its final reply), and how often the engine's replies equal the sweep's composition (the -1 row, and the
-2 row where it retried): the composed numbers in docs/results.md are what the engine does if they agree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safe_steering_sweep import load_rows, prompt_sets
from summary_io import read_rows, write_summary
from tqdm import tqdm

from scans_guard import GenerationConfig, ScansEngine
from scans_guard.data import prompt_key
from scans_guard.model.paths import require_data_dir
from scans_guard.steering.judge import KeywordJudge
from scans_guard.steering.retry import RetryPolicy

SETS = ["xstest_safe", "xstest_unsafe", "oktest", "advbench_heldout", "harmfulq", "malicious_instruct"]


def cmd_run(args: argparse.Namespace) -> None:
    engine = ScansEngine.load(args.model, args.artifact)
    judge, policy = KeywordJudge(), RetryPolicy()
    sets = prompt_sets(
        str(require_data_dir(args.data_dir, "the retry run")),
        engine,
        args.limit,
        args.seed,
        args.xstest_limit,
        args.sets,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "rows.jsonl"
    done = {(r["set"], r["prompt"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
    todo = sorted(((s, p) for s in sets for p in sets[s] if (s, p) not in done), key=lambda sp: len(sp[1]))
    config = GenerationConfig(max_new_tokens=args.max_new_tokens)
    with open(path, "a") as f:
        for i in tqdm(range(0, len(todo), args.batch_size), desc="generate (sigma, steering, retry)"):
            chunk = todo[i : i + args.batch_size]
            for (s, p), o in zip(chunk, engine.generate([p for _, p in chunk], config, retry=policy)):
                first = o.first_reply if o.first_reply is not None else o.text
                f.write(
                    json.dumps(
                        {
                            "set": s,
                            "prompt": p,
                            "score": o.verdict.score,
                            "source": o.steering.source,
                            "coefficient": o.steering.coefficient,
                            "first_reply": first,
                            "response": o.text,
                            "first_refused": judge(p, first),
                            "refused": judge(p, o.text),
                        }
                    )
                    + "\n"
                )
            f.flush()


def _pts(rate: float, unsteered: float | None) -> str:
    """A refusal rate and its change from the unsteered rate, in points; a dash without an unsteered rate."""
    return "—" if unsteered is None else f"{100 * rate:.0f}% ({100 * (rate - unsteered):+.0f})"


def cmd_report(args: argparse.Namespace) -> None:
    rows = read_rows(Path(args.out) / "rows.jsonl")
    sweep, _ = load_rows(Path(args.sweep))
    lines = [
        "| set | n | unsteered (sweep) | shipped: -1 below steer T (engine) | + retry at -2 (engine) | "
        "steered / retried | engine = composed sweep |",
        "|---|---|---|---|---|---|---|",
    ]
    table = {}
    for s in [s for s in SETS if any(r["set"] == s for r in rows)]:
        mine = [r for r in rows if r["set"] == s]
        base, agree, compared = [], 0, 0
        for r in mine:
            # a committed (redacted) sweep names unshipped prompts by key: match the text, else its key
            k = (s, r["prompt"] if (s, r["prompt"], 0.0) in sweep else prompt_key(r["prompt"]))
            base.append(sweep[(*k, 0.0)]["refused"] if (*k, 0.0) in sweep else None)
            if r["coefficient"] < 0:
                first, final = sweep.get((*k, -1.0)), sweep.get((*k, -2.0)) if r["source"] == "retry" else None
                if first is not None and (r["source"] != "retry" or final is not None):
                    compared += 1
                    agree += first["response"] == r["first_reply"] and (
                        final is None or final["response"] == r["response"]
                    )
        known = [b for b in base if b is not None]
        row = {
            "n": len(mine),
            "unsteered": sum(known) / len(known) if known else None,
            "shipped": sum(r["first_refused"] for r in mine) / len(mine),
            "retry": sum(r["refused"] for r in mine) / len(mine),
            "steered": sum(r["coefficient"] < 0 for r in mine),
            "retried": sum(r["source"] == "retry" for r in mine),
            "agree": agree,
            "compared": compared,
            "missing_unsteered": len(base) - len(known),
        }
        table[s] = row
        unsteered = row["unsteered"]
        lines.append(
            f"| {s} | {row['n']} | "
            + ("—" if unsteered is None else f"{100 * unsteered:.0f}%")
            + f" | {_pts(row['shipped'], unsteered)} | {_pts(row['retry'], unsteered)} | "
            f"{row['steered']} / {row['retried']} | "
            f"{agree}/{compared} |"
        )
    write_summary(args.report, table, lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", default=None)
    r.add_argument("--artifact", default=None)
    r.add_argument("--data-dir", default=None)
    r.add_argument("--out", required=True)
    r.add_argument("--sets", nargs="+", default=SETS)
    r.add_argument("--limit", type=int, default=100)
    r.add_argument("--xstest-limit", type=int, default=250)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--max-new-tokens", type=int, default=16)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True)
    p.add_argument("--sweep", required=True, help="a safe_steering_sweep run of the same prompts (0, -1, -2 rows)")
    p.add_argument("--report")
    args = parser.parse_args()
    {"run": cmd_run, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
