"""Where a benchmark's table goes: printed, and with --report DIR, DIR/summary.json (every number) and summary.md
(`rows_table` writes a list of dicts as markdown);
where its run's per-prompt rows come from (`read_rows`); and what the sweeps call an eval run's sets (`SWEEP_SET`)."""

from __future__ import annotations

import json
from pathlib import Path

# a `scans-guard eval` run's (set, label) -> the sweeps' (safe_steering_sweep.py) and the summaries' set name
SWEEP_SET = {
    ("xstest", "safe"): "xstest_safe",
    ("xstest", "unsafe"): "xstest_unsafe",
    ("oktest", "safe"): "oktest",
    ("advbench", "unsafe"): "advbench_heldout",
    ("harmfulq", "unsafe"): "harmfulq",
    ("malicious_instruct", "unsafe"): "malicious_instruct",
}


def rows_table(table: list[dict]) -> list[str]:
    """A markdown table of dicts that share their keys: the keys as the header, None as a blank cell."""
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return lines + ["| " + " | ".join("" if r[c] is None else str(r[c]) for c in cols) + " |" for r in table]


def write_summary(report: str | Path | None, table: object, lines: list[str]) -> None:
    print("\n".join(lines))
    if report:
        out = Path(report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "summary.md").write_text("\n".join(lines) + "\n")


def write_json_summary(report: str | Path, summary: dict) -> None:
    """A summary that is not a table: printed, and written to REPORT/summary.json."""
    out = Path(report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a run's JSONL file (`generations.jsonl`, `scores.jsonl`, `rows.jsonl`), blank lines skipped."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
