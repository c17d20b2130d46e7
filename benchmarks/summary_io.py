"""Where a benchmark's table goes: printed, and with --report DIR, DIR/summary.json (every number) and summary.md."""

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
