"""Prompts of unshipped sets are committed only as keys: the key, scripts/redact_results.py, the eval report's
examples, and a check that no tracked file quotes such a prompt."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scans_guard.data import QUOTE_MIN_LEN, load_set, prompt_key, unshipped_prompts

REPO = Path(__file__).resolve().parents[1]
OK_PROMPT = "How can I make my sourdough starter rise faster in a cold kitchen?"  # stands in for an OKTest row
HQ_PROMPT = "How do I pick a lock?"  # a short one: keyed as a whole string only
SHIPPED_PROMPT = load_set("xstest")[0].prompt


def _script():
    spec = importlib.util.spec_from_file_location("redact_results", REPO / "scripts" / "redact_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_csv(path: Path, prompts: list[str], label: str) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "label"])
        w.writerows([p, label] for p in prompts)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _write_csv(d / "oktest.csv", [OK_PROMPT, SHIPPED_PROMPT], "safe")  # XSTest's row is shipped anyway
    _write_csv(d / "harmfulq.csv", [HQ_PROMPT], "unsafe")
    return d


def test_prompt_key_is_a_short_sha256():
    key = prompt_key(OK_PROMPT)
    assert key == "sha256:" + hashlib.sha256(OK_PROMPT.encode()).hexdigest()[:16]
    assert prompt_key(OK_PROMPT + " ") != key


def test_unshipped_prompts_leave_out_shipped_texts(data_dir, tmp_path):
    assert unshipped_prompts(data_dir) == {OK_PROMPT, HQ_PROMPT}
    with pytest.raises(FileNotFoundError, match="none of the unshipped sets"):
        unshipped_prompts(tmp_path)


def _sweep_dir(root: Path) -> Path:
    run = root / "results" / "sweep"
    run.mkdir(parents=True)
    sets = {"tune_benign": [OK_PROMPT, SHIPPED_PROMPT], "harmfulq": [HQ_PROMPT]}
    (run / "sets.json").write_text(json.dumps(sets, indent=1))
    (run / "scores.json").write_text(json.dumps({OK_PROMPT: -3.5, SHIPPED_PROMPT: -1.25, HQ_PROMPT: 2.0}))
    rows = [
        {
            "set": "tune_benign",
            "prompt": OK_PROMPT,
            "coefficient": 0.0,
            "response": f'You asked "{OK_PROMPT}" Here is how.',
            "refused": False,
            "nll_sum": 1.5,
            "nll_tokens": 3,
        },
        {
            "set": "tune_benign",
            "prompt": SHIPPED_PROMPT,
            "coefficient": 0.0,
            "response": "Sure.",
            "refused": False,
            "nll_sum": 0.0,
            "nll_tokens": 0,
        },
        {
            "set": "harmfulq",
            "prompt": HQ_PROMPT,
            "coefficient": -1.0,
            "response": "I'm sorry, but I can't.",
            "refused": True,
            "nll_sum": 0.0,
            "nll_tokens": 0,
        },
    ]
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "report.md").write_text(f"An example: {OK_PROMPT}\nA short one stays in text: {HQ_PROMPT}\n")
    (run / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    return run


def test_redaction_keys_scores_sets_and_rows_alike_and_is_idempotent(data_dir, tmp_path):
    run = _sweep_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert _script().main([str(run), "--data-dir", str(data_dir)]) == 0
    ok, hq = prompt_key(OK_PROMPT), prompt_key(HQ_PROMPT)
    sets = json.loads((run / "sets.json").read_text())
    scores = json.loads((run / "scores.json").read_text())
    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    assert sets == {"tune_benign": [ok, SHIPPED_PROMPT], "harmfulq": [hq]}
    assert scores == {ok: -3.5, SHIPPED_PROMPT: -1.25, hq: 2.0}
    assert [r["prompt"] for r in rows] == [ok, SHIPPED_PROMPT, hq]
    assert rows[0]["response"] == f'You asked "{ok}" Here is how.'  # a reply quoting the whole prompt
    assert rows[1]["response"] == "Sure." and rows[0]["nll_sum"] == 1.5
    assert (run / "sets.json").read_text() == json.dumps(sets, indent=1)  # layout kept
    assert (run / "report.md").read_text() == f"An example: {ok}\nA short one stays in text: {HQ_PROMPT}\n"
    assert (run / "plot.png").read_bytes() == before["plot.png"]
    assert len(HQ_PROMPT) < QUOTE_MIN_LEN
    after = {p.name: p.read_bytes() for p in run.iterdir()}
    _script().main([str(run), "--data-dir", str(data_dir)])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == after  # idempotent


def test_generation_refuses_a_redacted_run(data_dir, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from safe_steering_sweep import require_plain

    run = _sweep_dir(tmp_path)
    require_plain(run)  # plain text: a resumable run
    _script().main([str(run), "--data-dir", str(data_dir)])
    with pytest.raises(SystemExit, match="redacted copy"):
        require_plain(run)


def test_redaction_into_another_directory_leaves_the_source(data_dir, tmp_path):
    run = _sweep_dir(tmp_path)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    _script().main([str(run), "--data-dir", str(data_dir), "--out", str(tmp_path / "out")])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    copied = tmp_path / "out" / "sweep"
    assert sorted(p.name for p in copied.iterdir()) == sorted(before)
    assert prompt_key(OK_PROMPT) in json.loads((copied / "scores.json").read_text())


def test_report_examples_quote_only_shipped_sets():
    from scans_guard.eval.markdown import _examples

    def rows(set_name, label, prompt):
        return [
            {
                "set": set_name,
                "label": label,
                "prompt": prompt,
                "condition": cond,
                "score": -3.0,
                "direction": "away_from_refusal",
                "response": reply,
                "refused": refused,
            }
            for cond, reply, refused in (
                ("unsteered", "I'm sorry, but I can't.", True),
                ("scans", f"About {prompt}: yes.", False),
            )
        ]

    md = "\n".join(_examples(rows("oktest", "safe", OK_PROMPT) + rows("xstest", "safe", SHIPPED_PROMPT)))
    assert OK_PROMPT not in md and md.count(prompt_key(OK_PROMPT)) == 2  # the prompt line and the reply
    assert SHIPPED_PROMPT in md


def test_no_tracked_file_quotes_an_unshipped_prompt(shared_data):
    """Tracked text files may name a prompt of an unshipped set only by its key (scripts/redact_results.py)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: no tracked files to check")
    prompts = [p for p in unshipped_prompts(shared_data) if len(p) >= QUOTE_MIN_LEN]
    forms = {p: (p, json.dumps(p)[1:-1]) for p in prompts}  # as written, and as JSON escapes it
    found = {}
    for name in filter(None, listed.stdout.decode().split("\0")):
        try:
            text = (REPO / name).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
        hits = [p for p, fs in forms.items() if any(f in text for f in fs)]
        if hits:
            found[name] = len(hits)
    assert not found, f"prompts of unshipped sets in {found}: run `{sys.executable} scripts/redact_results.py PATH`"
