"""What the benchmark-script tests share: where the scripts, the committed summaries and the per-prompt runs behind
them live, and how a script is loaded and its command line run in process.

The per-prompt runs are not committed and are read from `$SCANS_GUARD_RUNS` (default ../shared/results; how to make
them: benchmarks/results/README.md); a test that needs one skips without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
RESULTS = BENCH / "results"
RUNS = Path(os.environ.get("SCANS_GUARD_RUNS", REPO.parent / "shared" / "results"))
LIMIT = 5  # prompts per sweep set: StratifiedKFold(5) in verify_after_steering.py needs 5 per tuning set


def load_module(path: Path) -> ModuleType:
    """A Python file loaded as a module named after it (a benchmark script, or one of scripts/)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(module: ModuleType, *argv: str | Path) -> object:
    """The script's command line, in process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", [f"{module.__name__}.py", *map(str, argv)])
        return module.main()


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON-lines file."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def per_prompt_run(name: str) -> Path:
    """A per-prompt run behind a committed summary; skips where it has not been made or restored here."""
    if not (RUNS / name).is_dir():
        pytest.skip(
            f"per-prompt run {name!r} not found in {RUNS} (set SCANS_GUARD_RUNS): the repository keeps summaries "
            f"only; benchmarks/results/README.md says how to regenerate or restore it"
        )
    return RUNS / name


def copy_run(name: str, tmp_path: Path) -> Path:
    """A copy of a per-prompt run under `tmp_path`, for a script that writes into its run."""
    return Path(shutil.copytree(per_prompt_run(name), tmp_path / name))
