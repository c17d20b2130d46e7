"""Perplexity and MMLU scoring on the tiny model: the numbers match a direct computation; steering changes them."""

import math

import pytest
import torch

from scans_guard.eval.capability import (
    capability_store,
    choice_logits,
    load_mmlu,
    mmlu_prompt,
    run_mmlu,
    run_perplexity,
    summarise_capability,
    token_nll,
    wikitext_windows,
)
from scans_guard.eval.conditions import build_conditions
from scans_guard.steering.plan import SteeringPlan


def test_unsteered_nll_matches_full_logits(tiny_engine, eval_data):
    windows = wikitext_windows(tiny_engine, eval_data / "wikitext2_tokenized" / "test.txt", window=24, max_windows=3)
    assert [len(w) for w in windows] == [24, 24, 24]
    windows = [windows[0], windows[1][:17]]  # unequal lengths: left padding must not change the numbers
    got = token_nll(tiny_engine, windows, SteeringPlan.unsteered(2), chunk=5)
    for w, (nll, n) in zip(windows, got):
        ids = torch.tensor([w])
        with torch.no_grad():
            logits = tiny_engine.handle.model(input_ids=ids).logits[0, :-1].float()
        expected = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        assert n == len(w) - 1
        assert nll == pytest.approx(expected, rel=1e-4)


def test_steering_changes_perplexity_and_resumes(tiny_engine, eval_data, tmp_path):
    windows = wikitext_windows(tiny_engine, eval_data / "wikitext2_tokenized" / "test.txt", window=24, max_windows=2)
    conds = build_conditions(["unsteered", "always_positive", "helpful_prompt"], tiny_engine.recipe)
    store = capability_store(tmp_path)
    run_perplexity(tiny_engine, windows, conds, store, progress=False)
    rows = store.rows
    assert {r["condition"] for r in rows} == {"unsteered", "always_positive"}  # no system prompt on raw text
    summary = summarise_capability(rows)["perplexity"]
    assert summary["unsteered"]["windows"] == 2 and summary["unsteered"]["tokens"] == 46
    assert summary["always_positive"]["perplexity"] != pytest.approx(summary["unsteered"]["perplexity"])
    nll, n = sum(r["nll"] for r in rows if r["condition"] == "unsteered"), 46
    assert summary["unsteered"]["perplexity"] == pytest.approx(math.exp(nll / n))
    run_perplexity(tiny_engine, windows, conds, capability_store(tmp_path), progress=False)
    assert len(capability_store(tmp_path)) == 4


def test_mmlu_subset_prompt_and_scoring(tiny_engine, eval_data, tmp_path):
    questions, dev = load_mmlu(eval_data, per_subject=2)
    assert [q.item for q in questions] == ["cooking/0", "cooking/1", "geography/0", "geography/1"]
    assert [q.answer for q in questions] == ["A", "B", "A", "B"]
    prompt = mmlu_prompt(questions[1], dev["cooking"], shots=1)
    assert prompt.startswith("The following are multiple choice questions (with answers) about cooking.\n\n")
    assert "Question 0 about cooking?\nA. one\nB. two\nC. three\nD. four\nAnswer: A\n\n" in prompt
    assert prompt.endswith("Question 1 about cooking?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
    with pytest.raises(ValueError, match="unknown MMLU subject"):
        load_mmlu(eval_data, subjects=["astrology"])

    convs = [mmlu_prompt(q) for q in questions]
    plain = choice_logits(tiny_engine, convs, SteeringPlan.unsteered(4))
    single = choice_logits(tiny_engine, convs[:1], SteeringPlan.unsteered(1))
    assert plain.shape == (4, 4)
    assert single[0] == pytest.approx(plain[0], abs=1e-4)  # batching does not change the scores
    steered = choice_logits(tiny_engine, convs, SteeringPlan.fixed(4.0, 4))
    assert not (steered == plain).all()

    conds = build_conditions(["unsteered", "scans"], tiny_engine.recipe)
    run_mmlu(tiny_engine, questions, dev, conds, capability_store(tmp_path), progress=False)
    rows = capability_store(tmp_path).rows
    assert len(rows) == 8
    summary = summarise_capability(rows)
    assert summary["mmlu"]["unsteered"]["n"] == 4
    assert summary["mmlu"]["scans"]["towards_refusal"] + summary["mmlu"]["scans"]["away_from_refusal"] == 4
    expected = sum(r["correct"] for r in rows if r["condition"] == "unsteered") / 4
    assert summary["mmlu"]["unsteered"]["accuracy"] == expected
    assert set(summary["mmlu_by_subject"]) == {"cooking", "geography"}


def test_mmlu_questions_too_long_are_skipped(tiny_engine, eval_data, tmp_path):
    questions, dev = load_mmlu(eval_data, per_subject=1, subjects=["cooking"])
    long = [
        questions[0].__class__(q.subject, q.index, q.question + " word" * 600, q.choices, q.answer) for q in questions
    ]
    conds = build_conditions(["unsteered"], tiny_engine.recipe)
    run_mmlu(tiny_engine, long, dev, conds, capability_store(tmp_path), progress=False)
    summary = summarise_capability(capability_store(tmp_path).rows)["mmlu"]["unsteered"]
    assert summary["skipped_too_long"] == 1 and summary["n"] == 0 and summary["accuracy"] is None


def test_mmlu_limit_spreads_over_subjects(eval_data):
    every, _ = load_mmlu(eval_data)
    assert len(every) == 6
    some, dev = load_mmlu(eval_data, limit=3, seed=0)
    assert len(some) == 3 and {q.subject for q in some} == {"cooking", "geography"}
    assert set(dev) == {"cooking", "geography"} and some == load_mmlu(eval_data, limit=3, seed=0)[0]
    one, dev = load_mmlu(eval_data, limit=1, seed=0)
    assert len(one) == 1 and set(dev) == {one[0].subject} and one[0].index == 0
