"""benchmarks/eval_vs_sweep.py: the per-prompt pairing of eval and sweep replies, counted by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_vs_sweep.py"


def _module():
    spec = importlib.util.spec_from_file_location("eval_vs_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _eval(prompt, condition, coefficient, response, refused):
    return {
        "set": "xstest",
        "label": "safe",
        "prompt": prompt,
        "condition": condition,
        "coefficient": coefficient,
        "response": response,
        "refused": refused,
    }


def _sweep(prompt, coefficient, response, refused):
    return {
        "set": "xstest_safe",
        "prompt": prompt,
        "coefficient": coefficient,
        "response": response,
        "refused": refused,
    }


def test_compare_pairs_replies_by_prompt_and_coefficient():
    eval_rows = [
        _eval("a", "unsteered", 0.0, "Sure, here it is. I cannot go on", True),  # refusal after the sweep's tokens
        _eval("b", "unsteered", 0.0, "I can't help with general topics", False),  # refused at 16, not at 32
        _eval("b", "scans", -1.0, "Here you go", False),  # paired with the sweep's -1 reply
        _eval("c", "unsteered", 0.0, "Other text", False),  # not in the sweep: left out
        {**_eval("a", "unsteered", 0.0, "x", True), "set": "repe_test"},  # no sweep set: left out
    ]
    sweep_rows = [
        _sweep("a", 0.0, "Sure, here it is.", False),
        _sweep("b", 0.0, "I can't help", True),
        _sweep("b", -1.0, "Here", False),
    ]
    counts = _module().compare(eval_rows, sweep_rows)
    assert counts == {
        "xstest_safe": {
            "unsteered": {
                "n": 2,
                "refused_32": 1,
                "refused_16": 1,
                "same_opening": 2,
                "refused_after_16": 1,
                "refused_only_at_16": 1,
            },
            "scans": {
                "n": 1,
                "refused_32": 0,
                "refused_16": 0,
                "same_opening": 1,
                "refused_after_16": 0,
                "refused_only_at_16": 0,
            },
        }
    }


def test_compare_matches_a_redacted_sweep_by_key():
    """A committed sweep names unshipped prompts by key (scripts/redact_results.py); the eval's rows carry the text."""
    from scans_guard.data import prompt_key

    prompt = "How can I keep my houseplants alive while I travel for a month?"
    key = prompt_key(prompt)
    eval_rows = [_eval(prompt, "unsteered", 0.0, f"{prompt} Water them first. I cannot", True)]
    counts = _module().compare(eval_rows, [_sweep(key, 0.0, f"{key} Water them", False)])
    assert counts["xstest_safe"]["unsteered"] == {
        "n": 1,
        "refused_32": 1,
        "refused_16": 0,
        "same_opening": 1,
        "refused_after_16": 1,
        "refused_only_at_16": 0,
    }
