"""Refusal rates per evaluation set under each generation policy: unsteered, steer (SCANS), guard and guard+steer.

    python benchmarks/policy_refusal.py --sweep results/sweep-probe --data-dir ../shared/data \
        --report benchmarks/results/policy-refusal-0.5b
    python benchmarks/policy_refusal.py --eval results/eval-1.5b-full --report benchmarks/results/policy-refusal-1.5b

The replies of a sweep (`safe_steering_sweep.py`: every prompt unsteered, and at -1 where the shipped recipe steers)
or of a `scans-guard eval` run (its unsteered and scans conditions) are composed with verdicts (sigma with its
readings, the domain check) and `GuardPolicy`. A sweep's verdicts are the engine's current ones, recomputed here; an
eval run's are its own (`scores.jsonl`: the verdicts its SCANS replies were steered by), so no model is loaded. A
blocked prompt counts as refused under guard and guard+steer, any other is answered as the run's reply at its
verdict's coefficient (0 under guard). A prompt whose coefficient has no reply is counted in `missing` and left out.
With the eval run's `retry.jsonl` (`retry_on_eval.py`), `steer` and `guard+steer` are also given with the opt-in
retry. No prompt is written out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import SWEEP_SET, read_rows, rows_table, write_summary  # noqa: E402

from scans_guard import ScansEngine  # noqa: E402
from scans_guard.config import SafetyVerdict  # noqa: E402
from scans_guard.data import load_set, prompt_key  # noqa: E402
from scans_guard.eval.runner import verdict_of  # noqa: E402
from scans_guard.sigma.decision import GuardPolicy  # noqa: E402

# the sweep's set -> (benchmark set, label)
SETS = {sweep_set: key for key, sweep_set in SWEEP_SET.items()}


def texts_by_key(data_dir: str | None) -> dict[str, str]:
    """Every prompt's text by its key (the sweep names unshipped prompts by key)."""
    out = {}
    for name, _ in SETS.values():
        try:
            out |= {prompt_key(e.prompt): e.prompt for e in load_set(name, data_dir)}
        except FileNotFoundError:
            continue
    return out


def sweep_rows(run: Path) -> list[dict]:
    """A sweep's generation rows: set, prompt, coefficient, refused."""
    return read_rows(run / "generations.jsonl")


def eval_rows(run: Path) -> list[dict]:
    """A `scans-guard eval` run's unsteered and scans replies as sweep rows; the unsteered reply is the one at
    coefficient 0 (a scans row the verdict left unsteered is the same greedy reply)."""
    rows = read_rows(run / "generations.jsonl")
    by_condition = {"scans": [], "unsteered": []}  # scans first, so that the unsteered row wins at coefficient 0
    for row in rows:
        sweep_set = SWEEP_SET.get((row["set"], row["label"]))
        if sweep_set is not None and row["condition"] in by_condition:
            coefficient = 0.0 if row["condition"] == "unsteered" else float(row["coefficient"])
            by_condition[row["condition"]].append(
                {"set": sweep_set, "prompt": row["prompt"], "coefficient": coefficient, "refused": row["refused"]}
            )
    return by_condition["scans"] + by_condition["unsteered"]


def eval_verdicts(run: Path) -> dict[tuple[str, str], SafetyVerdict]:
    """A `scans-guard eval` run's own verdicts (its `scores.jsonl`), by (sweep set, prompt key): the verdicts its
    SCANS replies were steered by."""
    verdicts = {}
    for row in read_rows(run / "scores.jsonl"):
        sweep_set = SWEEP_SET.get((row["set"], row["label"]))
        if sweep_set is not None:
            verdicts[(sweep_set, prompt_key(row["prompt"]))] = verdict_of(row)
    return verdicts


def eval_retries(run: Path) -> dict[tuple[str, str], bool] | None:
    """An eval run's retry rows (`retry_on_eval.py`), by (sweep set, prompt key): refused after the retry."""
    path = run / "retry.jsonl"
    if not path.exists():
        return None
    return {
        (SWEEP_SET[(r["set"], r["label"])], prompt_key(r["prompt"])): bool(r["refused"])
        for r in read_rows(path)
        if (r["set"], r["label"]) in SWEEP_SET
    }


def compose(
    engine: ScansEngine | None,
    rows: list[dict],
    data_dir: str | None,
    verdicts: dict[tuple[str, str], SafetyVerdict] | None = None,
    retries: dict[tuple[str, str], bool] | None = None,
) -> list[dict]:
    """The refusal table; the verdicts are `verdicts` where given (an eval run's own), else the engine's. With
    `retries` ({(set, key): refused after the retry}, `retry_on_eval.py`), also `steer` and `guard+steer` with the
    opt-in retry: a prompt without a retry row keeps its SCANS reply (the retry leaves it alone)."""
    texts = texts_by_key(data_dir) if verdicts is None else {}
    replies: dict[tuple[str, str, float], bool] = {}
    for row in rows:
        key = row["prompt"] if row["prompt"].startswith("sha256:") else prompt_key(row["prompt"])
        replies[(row["set"], key, float(row["coefficient"]))] = bool(row["refused"])
    guard, table = GuardPolicy(), []
    for set_name in SETS:
        keys = sorted({k for s, k, _ in replies if s == set_name})
        if verdicts is None:
            assert engine is not None
            keys = [k for k in keys if k in texts]
            found = engine.classify([texts[k] for k in keys], batch_size=8) if keys else []
        else:
            keys = [k for k in keys if (set_name, k) in verdicts]
            found = [verdicts[(set_name, k)] for k in keys]
        counts = dict.fromkeys(("plain", "steer", "guard", "guard+steer", "retry", "guard+retry", "blocked"), 0)
        counts |= {"steered": 0, "missing": 0}
        n = 0
        for key, v in zip(keys, found):
            scans = replies.get((set_name, key, float(v.coefficient)))
            if scans is None:
                counts["missing"] += 1
                continue
            n += 1
            plain = replies[(set_name, key, 0.0)]
            blocked = guard.decide(v).blocked
            counts["plain"] += plain
            counts["steer"] += scans
            counts["guard"] += blocked or plain
            counts["guard+steer"] += blocked or scans
            retried = scans if retries is None else retries.get((set_name, key), scans)
            counts["retry"] += retried
            counts["guard+retry"] += blocked or retried
            counts["blocked"] += blocked
            counts["steered"] += v.coefficient != 0
        pct = {
            k: round(100 * counts[k] / n, 1) if n else None
            for k in ("plain", "steer", "guard", "guard+steer", "retry", "guard+retry", "blocked")
        }
        table.append(
            {
                "set": set_name,
                "label": SETS[set_name][1],
                "n": n,
                "missing": counts["missing"],
                "steered": counts["steered"],
                "blocked_pct": pct["blocked"],
                "refused_unsteered": pct["plain"],
                "refused_steer": pct["steer"],
                "refused_guard": pct["guard"],
                "refused_guard_steer": pct["guard+steer"],
                "guard_steer_minus_steer": None if n == 0 else round(pct["guard+steer"] - pct["steer"], 1),
            }
        )
        if retries is not None:
            table[-1] |= {"refused_steer_retry": pct["retry"], "refused_guard_steer_retry": pct["guard+retry"]}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", help="a safe_steering_sweep.py run directory")
    source.add_argument("--eval", help="a `scans-guard eval` run directory with the unsteered and scans conditions")
    parser.add_argument("--data-dir", help="benchmark CSVs that do not ship (their prompts are keys in the sweep)")
    parser.add_argument("--model")
    parser.add_argument("--artifact")
    parser.add_argument("--report", help="write summary.json and summary.md here")
    args = parser.parse_args()
    if args.eval:  # the run's own verdicts: no model needed
        run = Path(args.eval)
        table = compose(None, eval_rows(run), None, eval_verdicts(run), eval_retries(run))
    else:
        engine = ScansEngine.load(args.model, args.artifact, progress=False)
        table = compose(engine, sweep_rows(Path(args.sweep)), args.data_dir)
    lines = rows_table(table)
    write_summary(args.report, table, lines)


if __name__ == "__main__":
    main()
