"""Count the lines of scans_guard/ at a git revision or in the working tree, so size claims are reproducible.

Prints, for the engine (scans_guard/*.py and scans_guard/eval/*.py without the server feature) and for the
server feature apart: all lines, and code lines (non-blank, not a comment, not a docstring).
Usage: python scripts/count_lines.py [REV]   (no REV: the working tree)
"""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from pathlib import Path

SERVER_MODULES = {"scheduler.py", "batch_rows.py", "kv_batch.py", "request_handle.py", "serve_cli.py", "bench_serve.py"}


def _files(rev: str | None) -> dict[str, str]:
    """Path -> source of every scans_guard .py file at `rev` (None: the working tree)."""
    if rev is None:
        return {str(p): p.read_text() for p in Path("scans_guard").rglob("*.py")}
    names = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "scans_guard"], check=True, capture_output=True, text=True
    ).stdout.split()
    return {
        n: subprocess.run(["git", "show", f"{rev}:{n}"], check=True, capture_output=True, text=True).stdout
        for n in names
        if n.endswith(".py")
    }


def _part(path: str) -> str | None:
    """'engine', 'server' or None (a file in neither count, e.g. a deeper package)."""
    parts = Path(path).parts[1:]
    if parts[0] == "server" or (len(parts) == 1 and parts[0] in SERVER_MODULES):
        return "server"
    return "engine" if len(parts) == 1 or (len(parts) == 2 and parts[0] == "eval") else None


def code_lines(source: str) -> int:
    """Non-blank lines that are neither comments nor (module, class or function) docstrings."""
    doc_lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        if (
            isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    code: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            code.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in doc_lines)
    return len(code)


def main() -> None:
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    totals = {"engine": [0, 0], "server": [0, 0]}
    for path, source in _files(rev).items():
        part = _part(path)
        if part is not None:
            totals[part][0] += len(source.splitlines())
            totals[part][1] += code_lines(source)
    print(f"revision: {rev or 'working tree'}")
    for part, (lines, code) in totals.items():
        print(f"{part:7s} lines {lines:5d}  code lines {code:5d}")


if __name__ == "__main__":
    main()
