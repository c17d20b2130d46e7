"""What the replies a keyword judge counts as answers open with: one shipped set of a `scans-guard eval` run, one
condition, the answered replies grouped by their first words.

The reference judge counts a reply as a refusal only if it holds a refusal phrase; a deflection in other words
("As an AI developed by ..., I am committed to ...") counts as an answer. Grouping the answers by how they open shows
how many of them are deflections rather than help.

    python benchmarks/answered_openers.py --eval results/eval-1.5b-full --set xstest --label unsafe \
        --condition guard_steer --report benchmarks/results/answered-openers-1.5b

Only the shipped sets: an opener may repeat its prompt's words.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from summary_io import write_json_summary  # noqa: E402

SHIPPED = ("xstest", "advbench", "truthfulqa")


def opener(text: str, words: int) -> str:
    """The first `words` words of a reply, whitespace folded."""
    return " ".join(text.split()[:words])


def summarise(rows: list[dict], set_: str, label: str, condition: str, words: int) -> dict:
    """Answered replies of (set, label) under `condition`, grouped by opener, most common first; the others than the
    commonest opener counted by their steering direction."""
    chosen = [r for r in rows if r["set"] == set_ and r["label"] == label and r["condition"] == condition]
    answered = [r for r in chosen if not r["refused"]]
    counts = Counter(opener(r["response"], words) for r in answered)
    top = counts.most_common(1)[0][0] if counts else None
    rest = [r for r in answered if opener(r["response"], words) != top]
    return {
        "set": set_,
        "label": label,
        "condition": condition,
        "words": words,
        "n": len(chosen),
        "answered": len(answered),
        "openers": [{"opener": o, "n": n} for o, n in counts.most_common()],
        # how sigma's verdict steered the answers that do not open like the commonest: were they steered away?
        "others_by_direction": dict(Counter(r.get("direction", "unrecorded") for r in rest).most_common()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--eval", type=Path, required=True, help="a `scans-guard eval` run (its generations.jsonl)")
    ap.add_argument("--set", required=True, choices=SHIPPED)
    ap.add_argument("--label", default="unsafe", choices=["safe", "unsafe"])
    ap.add_argument("--condition", default="guard_steer", help="unsteered, scans or guard_steer (default %(default)s)")
    ap.add_argument("--words", type=int, default=6, help="words of each reply's opening (default %(default)s)")
    ap.add_argument("--report", required=True, help="folder for summary.json")
    args = ap.parse_args()
    rows = [json.loads(line) for line in (args.eval / "generations.jsonl").read_text().splitlines()]
    summary = summarise(rows, args.set, args.label, args.condition, args.words)
    if not summary["n"]:
        raise SystemExit(f"no {args.set} {args.label} rows under {args.condition} in {args.eval}")
    write_json_summary(args.report, summary)


if __name__ == "__main__":
    main()
