#!/usr/bin/env python3
"""Replace every prompt of an unshipped set in result files by its key (`scans_guard.data.prompt_key`).

The sets with no stated licence (OKTest, HarmfulQ, MaliciousInstruct, held-out harmless, RepE) may be read at
evaluation time but not redistributed, so committed results name their prompts by key. Which texts to replace is
decided by the texts themselves, read from the data directory (a sweep set such as `tune_benign` mixes RepE and
OKTest prompts). Every string is mapped by the same function wherever it occurs (a generation row's prompt, a
scores.json key, a sets.json list, a report line), so the analyses read the same rows before and after; a reply
that quotes a whole prompt gets the key in its place. Idempotent: a second run changes nothing.

    python scripts/redact_results.py benchmarks/results docs/results          # in place
    python scripts/redact_results.py results/sweep --out /tmp/redacted --data-dir ../shared/data

Files: .json and .jsonl are parsed (keys and values; unchanged lines and files keep their bytes, changed ones keep
their JSON layout); any other UTF-8 file is treated as text; binary files are left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scans_guard.data import QUOTE_MIN_LEN, prompt_key, unshipped_prompts  # noqa: E402
from scans_guard.model.paths import DATA_ENV  # noqa: E402


class Redactor:
    """Maps any string to its redacted form: a whole unshipped prompt becomes its key, a long one inside text too."""

    def __init__(self, prompts: set[str]) -> None:
        self.keys = {p: prompt_key(p) for p in prompts}
        self.quotable = sorted((p for p in prompts if len(p) >= QUOTE_MIN_LEN), key=len, reverse=True)
        self.replaced = 0

    def text(self, s: str) -> str:
        if s in self.keys:
            self.replaced += 1
            return self.keys[s]
        for p in self.quotable:
            if p in s:
                self.replaced += s.count(p)
                s = s.replace(p, self.keys[p])
        return s

    def json(self, obj: object) -> object:
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            return [self.json(v) for v in obj]
        if isinstance(obj, dict):
            return {self.text(k): self.json(v) for k, v in obj.items()}
        return obj


def _dumps_like(original: str, obj: object) -> str:
    """`obj` as JSON in the layout of `original` (indent, ASCII escapes), default: indent 1, escaped."""
    parsed = json.loads(original)
    body = original.rstrip("\n")
    for indent in (None, 1, 2, 4):
        for ascii_only in (True, False):
            if json.dumps(parsed, indent=indent, ensure_ascii=ascii_only) == body:
                return json.dumps(obj, indent=indent, ensure_ascii=ascii_only) + original[len(body) :]
    return json.dumps(obj, indent=1) + original[len(body) :]


def redact_content(name: str, content: str, redactor: Redactor) -> str:
    """The redacted content of one file (by its suffix: JSON lines, JSON, or text)."""
    if name.endswith(".jsonl"):
        lines = content.splitlines(keepends=True)
        out = []
        for line in lines:
            if not line.strip():
                out.append(line)
                continue
            obj = json.loads(line)
            new = redactor.json(obj)
            out.append(line if new == obj else _dumps_like(line, new))
        return "".join(out)
    if name.endswith(".json"):
        obj = json.loads(content)
        new = redactor.json(obj)
        return content if new == obj else _dumps_like(content, new)
    return redactor.text(content)


def files_under(path: Path) -> list[tuple[Path, Path]]:
    """(file, its path relative to the output root) for a file or every file under a directory."""
    if path.is_file():
        return [(path, Path(path.name))]
    return [(f, Path(path.name) / f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file()]


def redact_paths(paths: list[Path], prompts: set[str], out: Path | None = None) -> dict[str, int]:
    """Redact every file under `paths` in place (or into `out`); {file: prompts replaced} for the files changed."""
    changed, redactor = {}, Redactor(prompts)  # built once: 1,000+ keys and the quotable texts sorted by length
    for root in paths:
        for src, rel in files_under(root):
            dest = src if out is None else out / rel
            try:
                content = src.read_text(encoding="utf-8")
            except UnicodeDecodeError:  # a plot or other binary file
                content = None
            before = redactor.replaced
            new = content if content is None else redact_content(src.name, content, redactor)
            if out is not None:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if new is None or new == content:
                    shutil.copyfile(src, dest)
            if new is not None and new != content:
                dest.write_text(new, encoding="utf-8")
                changed[str(src)] = redactor.replaced - before
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", type=Path, help="result files or directories")
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"holds the unshipped CSVs (default: ${DATA_ENV}, else ../shared/data beside the repository)",
    )
    ap.add_argument("--out", type=Path, help="write redacted copies here instead of rewriting in place")
    args = ap.parse_args(argv)
    data_dir = args.data_dir or Path(os.environ.get(DATA_ENV) or REPO.parent / "shared" / "data")
    prompts = unshipped_prompts(data_dir)
    changed = redact_paths(args.paths, prompts, args.out)
    for name, n in changed.items():
        print(f"{name}: {n} prompts replaced")
    print(f"{len(changed)} files changed ({len(prompts)} unshipped prompts from {data_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
