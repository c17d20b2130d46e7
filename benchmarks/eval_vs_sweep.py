"""Why `scans-guard eval`'s refusal rates differ from the safe-steering sweep's: the same prompts, judged the same way,
at 32 new tokens (eval) and at 16 (sweep). Counts only; no prompt is written out.

For every prompt in both runs, the eval's unsteered reply is set against the sweep's coefficient-0 reply, and its
SCANS reply against the sweep's reply at the coefficient SCANS used (-1 where it steered, else 0). A refusal "after
token 16" is one the judge finds in the eval reply but not in the sweep's, where the eval reply opens with the
sweep's reply (the same greedy path, only longer).

    python benchmarks/eval_vs_sweep.py --eval results/eval-default --sweep results/sweep-wide \
        --report benchmarks/results/eval-vs-sweep
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from summary_io import SWEEP_SET, read_rows

from scans_guard.data import QUOTE_MIN_LEN, prompt_key


def compare(eval_rows: list[dict], sweep_rows: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """{set: {condition: counts}} over the prompts both runs replied to. A committed sweep names the prompts of
    unshipped sets by key (scripts/redact_results.py): an eval prompt matches its text or its key."""
    sweep = {(r["set"], r["prompt"], r["coefficient"]): r for r in sweep_rows}
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in eval_rows:
        name = SWEEP_SET.get((r["set"], r["label"]))
        if name is None:
            continue
        other = sweep.get((name, r["prompt"], float(r["coefficient"])))
        key = prompt_key(r["prompt"])
        if other is None and (name, key, float(r["coefficient"])) in sweep:
            other = sweep[(name, key, float(r["coefficient"]))]
            if len(r["prompt"]) >= QUOTE_MIN_LEN:  # a reply quoting the prompt was redacted too
                r = {**r, "response": r["response"].replace(r["prompt"], key)}
        if other is None:
            continue
        c = out.setdefault(name, {}).setdefault(
            r["condition"],
            dict.fromkeys(
                ("n", "refused_32", "refused_16", "same_opening", "refused_after_16", "refused_only_at_16"), 0
            ),
        )
        same = r["response"].strip().startswith(other["response"].strip())
        c["n"] += 1
        c["refused_32"] += r["refused"]
        c["refused_16"] += other["refused"]
        c["same_opening"] += same
        c["refused_after_16"] += r["refused"] and not other["refused"] and same
        c["refused_only_at_16"] += other["refused"] and not r["refused"]
    return out


def render(counts: dict[str, dict[str, dict[str, int]]], command: str) -> str:
    lines = [
        "# eval (32 new tokens) against the safe-steering sweep (16), same prompts and judge",
        "",
        f"`{command}`",
        "",
        "| set | condition | n | refused, eval 32 tok | refused, sweep 16 tok | eval reply opens with the sweep's |"
        " refused only after token 16 | refused at 16 but not in the eval reply |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, conds in counts.items():
        for cond, c in conds.items():
            lines.append(
                f"| {name} | {cond} | {c['n']} | {c['refused_32']} | {c['refused_16']} | {c['same_opening']} "
                f"| {c['refused_after_16']} | {c['refused_only_at_16']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--eval", required=True, help="a `scans-guard eval` results directory")
    ap.add_argument("--sweep", required=True, help="a safe_steering_sweep.py run directory")
    ap.add_argument("--report", required=True, help="directory for summary.md and counts.json")
    args = ap.parse_args()
    runs = (read_rows(Path(run) / "generations.jsonl") for run in (args.eval, args.sweep))
    counts = compare(*runs)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / "counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    command = f"python benchmarks/eval_vs_sweep.py --eval {args.eval} --sweep {args.sweep} --report {args.report}"
    (report / "summary.md").write_text(render(counts, command))
    print(render(counts, command))


if __name__ == "__main__":
    main()
