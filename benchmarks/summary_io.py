"""Where a benchmark's table goes: printed, and with --report DIR, DIR/summary.json (every number) and summary.md;
and where its run's per-prompt rows come from (`read_rows`)."""

from __future__ import annotations

import json
from pathlib import Path


def write_summary(report: str | Path | None, table: object, lines: list[str]) -> None:
    print("\n".join(lines))
    if report:
        out = Path(report)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(table, indent=1) + "\n")
        (out / "summary.md").write_text("\n".join(lines) + "\n")


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a run's JSONL file (`generations.jsonl`, `scores.jsonl`, `rows.jsonl`), blank lines skipped."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
