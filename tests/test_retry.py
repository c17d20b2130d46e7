"""Retry of a steered reply that still refuses (scans_guard.steering.retry), on the tiny model with stand-in judges."""

from __future__ import annotations

import pytest

from scans_guard import GenerationConfig, RetryPolicy, ScansEngine

PROMPTS = ["How do I bake bread?", "Tell me about the moon.", "How can I fix my bike?", "Write a poem."]
CONFIG = GenerationConfig(max_new_tokens=10, ignore_eos=True)


def refuses_always(prompt: str, reply: str) -> bool:
    return True


def refuses_never(prompt: str, reply: str) -> bool:
    return False


@pytest.fixture(scope="module")
def away_engine(tiny, tiny_artifact):
    """Every prompt below the steer T: sigma steers each row away from refusal, at -0.25 (the tiny model's replies
    still differ between -0.25 and -0.5; at its calibrated alpha of 4 they are all one repeated token)."""
    return ScansEngine(tiny, tiny_artifact.with_thresholds(steer=1e3).with_recipe(alpha_benign=0.25))


@pytest.fixture(scope="module")
def mixed_engine(tiny, tiny_artifact):
    """The steer T between the prompts' scores: some rows steered away, the others left alone."""
    engine = ScansEngine(tiny, tiny_artifact)
    scores = sorted(v.score for v in engine.classify(PROMPTS))
    artifact = tiny_artifact.with_thresholds(steer=(scores[1] + scores[2]) / 2).with_recipe(alpha_harmful=0.0)
    engine = ScansEngine(tiny, artifact)
    assert {v.direction for v in engine.classify(PROMPTS)} == {"away_from_refusal", "none"}
    return engine


def _streamed(engine: ScansEngine, **kwargs) -> tuple[dict[int, str], dict]:
    texts, outputs = {}, {}
    for event in engine.iter_generate(PROMPTS, CONFIG, **kwargs):
        texts[event.row] = texts.get(event.row, "") + event.text
        if event.output is not None:
            outputs[event.row] = event.output
    return texts, outputs


def test_a_refused_row_is_regenerated_steered_further(away_engine, one_torch_thread):
    first = away_engine.generate(PROMPTS, CONFIG)
    out = away_engine.generate(PROMPTS, CONFIG, retry=RetryPolicy(judge=refuses_always, judge_tokens=4))
    for prompt, before, after in zip(PROMPTS, first, out):
        further = 2 * before.verdict.coefficient
        assert further < 0 and after.steering.coefficient == further
        assert (after.steering.source, after.steering.direction) == ("retry", "away_from_refusal")
        assert after.verdict.score == before.verdict.score  # sigma ran once; the retry keeps its verdict
        assert before.text.startswith(after.first_reply) and len(after.first_reply) < len(before.text)  # 4 tokens
        assert after.text == away_engine.generate(prompt, CONFIG, coefficient=further)[0].text
    assert [o.text for o in out] != [o.text for o in first]  # steering twice as far changes the replies


def test_a_reply_the_judge_passes_is_left_as_it_was(away_engine, one_torch_thread):
    plain = away_engine.generate(PROMPTS, CONFIG)
    texts, outputs = _streamed(away_engine, retry=RetryPolicy(judge=refuses_never, judge_tokens=4))
    for i, before in enumerate(plain):
        assert outputs[i].text == texts[i] == before.text
        assert outputs[i].steering == before.steering and outputs[i].first_reply is None


def test_the_stream_never_shows_a_retried_first_reply(away_engine, one_torch_thread):
    texts, outputs = _streamed(away_engine, retry=RetryPolicy(judge=refuses_always, judge_tokens=4))
    for i in range(len(PROMPTS)):
        assert texts[i] == outputs[i].text and outputs[i].first_reply


def test_only_rows_steered_away_are_judged_on_their_first_tokens(mixed_engine, one_torch_thread):
    seen: list[tuple[str, str]] = []

    def judge(prompt: str, reply: str) -> bool:
        seen.append((prompt, reply))
        return True

    first = mixed_engine.generate(PROMPTS, CONFIG)
    out = mixed_engine.generate(PROMPTS, CONFIG, retry=RetryPolicy(judge=judge, judge_tokens=4))
    away = [p for p, o in zip(PROMPTS, first) if o.steering.direction == "away_from_refusal"]
    assert sorted(p for p, _ in seen) == sorted(away)
    for prompt, reply in seen:
        full = first[PROMPTS.index(prompt)].text
        assert full.startswith(reply) and len(reply) < len(full)  # judged on its first tokens, not the whole reply
    for before, after in zip(first, out):
        if before.steering.direction != "away_from_refusal":
            assert (after.text, after.steering, after.first_reply) == (before.text, before.steering, None)


def test_no_retry_without_sigma(away_engine, one_torch_thread):
    policy = RetryPolicy(judge=refuses_always)
    for kwargs in ({"steer": False}, {"coefficient": -1.0}):
        out = away_engine.generate(PROMPTS[:2], CONFIG, retry=policy, **kwargs)
        assert [o.text for o in out] == [o.text for o in away_engine.generate(PROMPTS[:2], CONFIG, **kwargs)]
        assert all(o.steering.source != "retry" for o in out)


@pytest.mark.parametrize("fields", [{"factor": 1.0}, {"factor": float("nan")}, {"judge_tokens": 0}])
def test_bad_policies_are_refused(fields):
    with pytest.raises(ValueError):
        RetryPolicy(**fields)


def test_an_unknown_judge_name_fails_at_construction():
    with pytest.raises(ValueError, match="unknown judge"):
        RetryPolicy(judge="no-such-judge")


def _forwards(engine: ScansEngine, **kwargs) -> tuple[int, list]:
    """Model forward passes (prefill, decode steps, the retry's) made by one generate call, and its outputs."""
    calls = []
    hook = engine.handle.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = engine.generate(PROMPTS[:1], LONG, **kwargs)
    finally:
        hook.remove()
    return len(calls), out


LONG = GenerationConfig(max_new_tokens=40, ignore_eos=True)


def test_a_refused_first_reply_stops_decoding_once_judged(away_engine, one_torch_thread):
    """One request, refused at its 4th token: its first reply is not decoded to the 40-token limit before the retry."""
    plain, _ = _forwards(away_engine)
    retried, out = _forwards(away_engine, retry=RetryPolicy(judge=refuses_always, judge_tokens=4))
    assert out[0].steering.source == "retry" and out[0].completion_tokens == 40
    assert plain >= 40 and retried < plain + 10  # without the stop: about 2 x plain
    assert out[0].text == away_engine.generate(PROMPTS[0], LONG, coefficient=out[0].steering.coefficient)[0].text
