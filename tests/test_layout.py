"""The package's layout holds: no import circles, and the runtime never imports the benchmark or the evaluation.

Every module of scans_guard is parsed (nothing is imported), and every import counts: module level, inside functions
and under TYPE_CHECKING alike, so a lazy import cannot hide a circle. Subpackages: model (the model and its hooks),
sigma, decoding, steering, calibration and serving make up the runtime with the top-level modules; bench and eval
sit on top of it, and cli.py (the command line) ties all of them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG_DIR = Path(__file__).resolve().parents[1] / "scans_guard"
ON_TOP = {"bench", "eval"}  # measure and evaluate the runtime; nothing in it imports them
ENTRY_POINTS = {"scans_guard.cli"}  # the command line: the one module that imports every part


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG_DIR.rglob("*.py"):
        parts = ["scans_guard", *path.relative_to(PKG_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The scans_guard modules `name` imports anywhere in its file (`from . import x` names the submodule x)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + (node.module.split(".") if node.module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in MODULES else module)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PKG_DIR / parts[1]).is_dir()) else None


def test_the_graph_sees_the_package():
    """The parse finds the modules and their imports, lazy ones included (a broken walk would pass every check below
    vacuously)."""
    assert {"scans_guard", "scans_guard.engine", "scans_guard.cli"} <= set(MODULES)
    assert "scans_guard.engine" in GRAPH["scans_guard"]
    assert "scans_guard.eval.cli" in GRAPH["scans_guard.cli"]
    assert "scans_guard.calibration.fit" in GRAPH["scans_guard.cli"]  # inside cmd_calibrate
    assert "scans_guard.bench.config" in GRAPH["scans_guard.bench.speed"]  # under TYPE_CHECKING


def test_no_import_cycle_among_modules():
    assert _cycles(GRAPH) == []


def test_subpackages_depend_one_way():
    """model <- sigma, decoding <- steering, calibration <- serving <- bench, eval: no two subpackages import each
    other, through any of their modules."""
    packages: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        src = _subpackage(module)
        if src is not None:
            targets = {_subpackage(m) for m in imported}
            packages.setdefault(src, set()).update(t for t in targets if t is not None and t != src)
    assert {"model", "sigma", "steering", "serving", "bench", "eval"} <= set(packages)
    assert _cycles(packages) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _subpackage(m) not in ON_TOP and m not in ENTRY_POINTS))
def test_runtime_imports_neither_bench_nor_eval(module: str):
    assert sorted(m for m in GRAPH[module] if _subpackage(m) in ON_TOP) == []


def test_cycle_finder():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
