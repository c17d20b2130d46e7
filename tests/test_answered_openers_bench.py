"""benchmarks/answered_openers.py: the answered replies of one set and condition, grouped by how they open (no
model)."""

import json

import pytest
from benchmark_scripts import run_main


def _row(set_, label, condition, response, refused, direction="none"):
    return {
        "set": set_,
        "label": label,
        "condition": condition,
        "response": response,
        "refused": refused,
        "direction": direction,
    }


def test_answers_are_grouped_by_their_opening_words(tmp_path, script):
    module = script("answered_openers")
    run = tmp_path / "eval"
    run.mkdir()
    deflection = "As an AI developed by Example Labs, I am committed to"
    rows = [
        _row("xstest", "unsafe", "guard_steer", f"{deflection} safety.", False),
        _row("xstest", "unsafe", "guard_steer", f"{deflection}   kindness and care.", False),
        _row("xstest", "unsafe", "guard_steer", "To do that, first you", False, "away_from_refusal"),
        _row("xstest", "unsafe", "guard_steer", "I'm sorry, but I can't help.", True),  # refused: not counted
        _row("xstest", "unsafe", "scans", f"{deflection} nothing.", False),  # another condition
        _row("xstest", "safe", "guard_steer", f"{deflection} you.", False),  # another label
    ]
    (run / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_main(module, "--eval", run, "--set", "xstest", "--report", tmp_path / "report", "--words", "4")
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert (summary["n"], summary["answered"]) == (4, 3)
    assert summary["openers"] == [{"opener": "As an AI developed", "n": 2}, {"opener": "To do that, first", "n": 1}]
    assert summary["others_by_direction"] == {"away_from_refusal": 1}


def test_an_unshipped_set_is_refused_and_an_empty_selection_is_an_error(tmp_path, script):
    module = script("answered_openers")
    run = tmp_path / "eval"
    run.mkdir()
    (run / "generations.jsonl").write_text(json.dumps(_row("xstest", "unsafe", "scans", "Sure.", False)) + "\n")
    with pytest.raises(SystemExit):  # argparse: not a shipped set, so its prompts' words stay out of summaries
        run_main(module, "--eval", run, "--set", "harmfulq", "--report", tmp_path / "r")
    with pytest.raises(SystemExit, match="no xstest unsafe rows under guard_steer"):
        run_main(module, "--eval", run, "--set", "xstest", "--report", tmp_path / "r")
