"""The measured tables of README.md and docs/results.md are the committed summaries' numbers, the results folders
hold summaries only, and the prose names no work sessions or tracker items; fast, no model."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PER_PROMPT = {"rows.jsonl", "generations.jsonl", "scores.jsonl", "scores.json", "sets.json", "capability.jsonl"}


@pytest.fixture(scope="module")
def render_tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_tables", REPO / "scripts" / "render_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_match_their_summaries(render_tables):
    assert render_tables.stale() == [], "run: python scripts/render_tables.py"
    assert render_tables.main(["--check"]) == 0


def test_every_table_region_is_rendered_somewhere(render_tables):
    used = {m["name"] for doc in render_tables.DOCS for m in render_tables.REGION.finditer((REPO / doc).read_text())}
    assert used == set(render_tables.TABLES)


def test_a_hand_edited_number_is_caught(render_tables, tmp_path):
    for doc in render_tables.DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / doc, tmp_path / doc)
    readme = tmp_path / "README.md"
    text = readme.read_text()
    region = text.index("<!-- table:policies-1.5b -->")
    edited = text[:region] + text[region:].replace("17.6 %", "16.6 %", 1)
    assert edited != text
    readme.write_text(edited)
    assert render_tables.stale(root=tmp_path) == ["README.md: policies-1.5b"]


def test_the_policy_composition_agrees_with_the_eval_it_composes(render_tables):
    """policy-refusal-1.5b composes the default model's eval run; its guard+steer and steer columns must be the run's
    own guard_steer and scans rates, set by set."""
    rates = {
        (r["condition"], r["set"], r["label"]): r
        for r in json.loads(render_tables.EVAL_1_5B.read_text())["refusal"]["rates"]
    }
    policy = json.loads((RESULTS / "policy-refusal-1.5b" / "summary.json").read_text())
    for row in policy:
        (key,) = [k for k, name in render_tables.SWEEP_SET.items() if name == row["set"]]
        assert row["n"] == rates[("guard_steer", *key)]["n"]
        assert row["refused_guard_steer"] == round(100 * rates[("guard_steer", *key)]["rate"], 1), row["set"]
        assert row["refused_steer"] == round(100 * rates[("scans", *key)]["rate"], 1), row["set"]
        assert row["refused_unsteered"] == round(100 * rates[("unsteered", *key)]["rate"], 1), row["set"]


def test_an_unknown_table_name_is_an_error(render_tables):
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        render_tables.render("<!-- table:nope -->\n<!-- /table:nope -->")


def test_results_folders_hold_summaries_each_named_with_its_command():
    index = (RESULTS / "README.md").read_text()
    for entry in sorted(RESULTS.iterdir()):
        if entry.name != "README.md":
            stem = entry.name.split("-1.5b")[0].split("-0.5b")[0]
            assert f"`{entry.name}" in index or f"`{stem}" in index, (
                f"{entry.name} is not in benchmarks/results/README.md"
            )
    committed = [p for root in (RESULTS, REPO / "docs" / "results") for p in root.rglob("*") if p.name in PER_PROMPT]
    assert committed == [], "per-prompt rows belong in a scratch results/ directory (benchmarks/results/README.md)"


def _prose_files() -> list[Path]:
    """The repository's text files, without hidden folders, virtual environments or scratch results/."""
    skip = {"__pycache__", "node_modules", "build", "dist"}
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in skip and (root, d) != (str(REPO), "results")]
        out += [Path(root) / f for f in files if Path(f).suffix in {".md", ".py", ".toml", ".sh", ".txt"}]
    return out


def test_prose_names_no_sessions_or_issue_numbers():
    pattern = re.compile(r"\bsession[ -][0-9]|\bissue[ #]*[0-9]|[(]issue\b|\bissue's\b", re.I)
    found = [
        f"{path.relative_to(REPO)}: {m[0]}"
        for path in _prose_files()
        for m in pattern.finditer(path.read_text(errors="replace"))
    ]
    assert found == []
