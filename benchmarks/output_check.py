"""What output checking adds: on a prompt set, how many SCANS replies the middleware's `check_output` would replace.

    python benchmarks/output_check.py --set xstest --limit 100              # shipped set (safe and unsafe rows)
    python benchmarks/output_check.py --data-dir ../shared/data --set harmfulq --limit 100 --out results/oc.json
    python benchmarks/output_check.py --from-sweep results/sweep-wide \
        --out benchmarks/results/output-check/summary.json   # every evaluation set, from the sweep's 16-token replies

The rule is the middleware's (`ScansGuardMiddleware(check_output=True)`): a reply to a request whose band (guard
operating point, `scans_guard.sigma.decision.band`) is grey or harmful, and that the keyword judge does not find
refusing, is replaced by the violation message. Reported per label (harmful / benign rows of the set): replies
that comply without the check, and with it; on benign rows a replacement is a false positive. Needs the real model
(the default one unless --model/--artifact); the tiny model's gibberish would measure nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scans_guard import GenerationConfig, ScansEngine
from scans_guard.data import load_set
from scans_guard.sigma.decision import band, steering_coefficient
from scans_guard.steering.judge import KeywordJudge


def measure(
    engine: ScansEngine, prompts: list[tuple[str, bool]], max_new_tokens: int = 64, batch_size: int = 8
) -> dict:
    """{label: {n, complied, complied_with_check, replaced}} for (prompt, is_harmful) pairs."""
    judge, config = KeywordJudge(), GenerationConfig(max_new_tokens=max_new_tokens)
    out = {lab: {"n": 0, "complied": 0, "complied_with_check": 0, "replaced": 0} for lab in ("harmful", "benign")}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        for (prompt, harmful), reply in zip(chunk, engine.generate([p for p, _ in chunk], config)):
            v = reply.verdict
            refused = judge(prompt, reply.text)
            replaced = not refused and band(v.score, v.threshold, in_domain=v.in_domain) != "benign"
            row = out["harmful" if harmful else "benign"]
            row["n"] += 1
            row["complied"] += not refused
            row["complied_with_check"] += not refused and not replaced
            row["replaced"] += replaced
    return out


def from_sweep(directory: Path, steer_t: float, guard_t: float) -> dict:
    """The same counts per sweep set, from its stored replies: the shipped recipe's reply (-1 below steer T, else
    unsteered) and the check at the guard point. No generation; the sweep's sets are the evaluation sets."""
    from safe_steering_sweep import HARMFUL_SETS, load_rows

    rows, scores = load_rows(directory)
    out = {}
    for (s, p, c), r in sorted(rows.items()):
        if c != steering_coefficient(scores[p], steer_t, 0.0, 1.0, 0.0):  # the shipped recipe's reply only
            continue
        replaced = not r["refused"] and band(scores[p], guard_t) != "benign"
        row = out.setdefault(
            s, {"harmful": s in HARMFUL_SETS, "n": 0, "complied": 0, "complied_with_check": 0, "replaced": 0}
        )
        row["n"] += 1
        row["complied"] += not r["refused"]
        row["complied_with_check"] += not r["refused"] and not replaced
        row["replaced"] += replaced
    return out


def main(argv: list[str] | None = None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--set", default="xstest")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--limit", type=int, default=100, help="rows per label")
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--model", default=None)
    a.add_argument("--artifact", default=None)
    a.add_argument("--out", default=None)
    a.add_argument("--from-sweep", help="a safe-steering sweep directory: count from its replies, generate nothing")
    args = a.parse_args(argv)
    if args.from_sweep:
        from scans_guard.calibration.artifacts import Artifact, default_artifact_dir

        art = Artifact.load(args.artifact or default_artifact_dir(args.model))
        result = {
            "from_sweep": args.from_sweep,
            "steer_T": art.threshold("steer"),
            "guard_T": art.threshold("guard"),
            "by_set": from_sweep(Path(args.from_sweep), art.threshold("steer"), art.threshold("guard")),
        }
        return _write(result, args.out)
    engine = ScansEngine.load(args.model, args.artifact, progress=False)
    rows = load_set(args.set, args.data_dir)
    prompts = [
        (e.prompt, e.harmful) for lab in (True, False) for e in [r for r in rows if r.harmful == lab][: args.limit]
    ]
    result = {"set": args.set, "limit": args.limit, "by_label": measure(engine, prompts, args.max_new_tokens)}
    return _write(result, args.out)


def _write(result: dict, out: str | None) -> dict:
    print(json.dumps(result, indent=1))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
