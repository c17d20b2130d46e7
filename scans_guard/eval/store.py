"""Append-only JSONL files that make a run resumable: rows already written are skipped on the next run.

Each batch is appended and fsync'ed as it finishes, so a killed run loses at most the batch in flight. A last line
left half-written by a kill is cut off when the file is opened again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path


class JsonlStore:
    """Rows of one JSONL file, identified by the values of `key_fields`."""

    def __init__(self, path: str | os.PathLike, key_fields: Sequence[str]):
        self.path = Path(path)
        self.key_fields = tuple(key_fields)
        self._rows: list[dict] = []
        self._keys: set[tuple] = set()
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # a kill left a partial last line: drop it so appends start on a fresh line
            with open(self.path, "r+b") as f:
                f.truncate(end)
            data = data[:end]
        for line in data.decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._add(row)

    def _add(self, row: dict) -> None:
        key = self.key(row)
        if key not in self._keys:
            self._keys.add(key)
            self._rows.append(row)

    def key(self, row: dict) -> tuple:
        return tuple(row.get(k) for k in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[dict]:
        return list(self._rows)

    def append(self, rows: Iterable[dict]) -> None:
        new = [r for r in rows if self.key(r) not in self._keys]
        if not new:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for row in new:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        for row in new:
            self._add(row)
