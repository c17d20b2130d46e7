"""What output checking adds: on a prompt set, how many SCANS replies the middleware's `check_output` would replace.

    python benchmarks/output_check.py --set xstest --limit 100              # shipped set (safe and unsafe rows)
    python benchmarks/output_check.py --data-dir ../shared/data --set harmfulq --limit 100 --out results/oc.json

The rule is the middleware's (`ScansGuardMiddleware(check_output=True)`): a reply to a request whose band (guard
operating point, `scans_guard.decision.band`) is grey or harmful, and that the keyword judge does not find
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
from scans_guard.decision import band
from scans_guard.judge import KeywordJudge


def measure(engine: ScansEngine, prompts: list[tuple[str, bool]], max_new_tokens: int = 64,
            batch_size: int = 8) -> dict:
    """{label: {n, complied, complied_with_check, replaced}} for (prompt, is_harmful) pairs."""
    judge, config = KeywordJudge(), GenerationConfig(max_new_tokens=max_new_tokens)
    out = {lab: {"n": 0, "complied": 0, "complied_with_check": 0, "replaced": 0} for lab in ("harmful", "benign")}
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
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


def main(argv: list[str] | None = None) -> dict:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--set", default="xstest")
    a.add_argument("--data-dir", default=None)
    a.add_argument("--limit", type=int, default=100, help="rows per label")
    a.add_argument("--max-new-tokens", type=int, default=64)
    a.add_argument("--model", default=None)
    a.add_argument("--artifact", default=None)
    a.add_argument("--out", default=None)
    args = a.parse_args(argv)
    engine = ScansEngine.load(args.model, args.artifact, progress=False)
    rows = load_set(args.set, args.data_dir)
    prompts = [(e.prompt, e.harmful) for lab in (True, False) for e in [r for r in rows if r.harmful == lab]
               [: args.limit]]
    result = {"set": args.set, "limit": args.limit, "by_label": measure(engine, prompts, args.max_new_tokens)}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
