"""Retry in the continuous batcher: the same replies as the engine's retry, the first reply never streamed."""

from __future__ import annotations

import time

import pytest

from scans_guard import GenerationConfig, RetryPolicy, ScansEngine
from scans_guard.serving.scheduler import ContinuousBatcher
from scans_guard.testing import slow_steps, wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "How do I bake bread?",
    "Tell me about the moon.",
    "How can I fix my bike?",
    "Write a poem.",
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Paris?"}],
]
CONFIG = GenerationConfig(max_new_tokens=10, ignore_eos=True)


def refuses_always(prompt: str, reply: str) -> bool:
    return True


def refuses_never(prompt: str, reply: str) -> bool:
    return False


class Recorder:
    """A judge that refuses (or not) and records what it read, per prompt."""

    def __init__(self, refuses: bool):
        self.refuses, self.read = refuses, {}

    def __call__(self, prompt: str, reply: str) -> bool:
        self.read.setdefault(prompt, []).append(reply)
        return self.refuses


@pytest.fixture(scope="module")
def away_engine(tiny, tiny_artifact):
    """Every prompt below the steer T: sigma steers each row away from refusal, at -0.25 (as tests/test_retry.py)."""
    return ScansEngine(tiny, tiny_artifact.with_thresholds(steer=1e3).with_recipe(alpha_benign=0.25))


def _cases():
    """Staggered requests: sigma-steered (all steered away), one sampled with a seed, one plain, one fixed."""
    sampled = CONFIG.model_copy(update={"temperature": 0.9, "top_p": 0.9, "seed": 3})
    return [(p, CONFIG, {}) for p in PROMPTS] + [
        (PROMPTS[0], sampled, {}),
        (PROMPTS[1], CONFIG, {"steer": False}),
        (PROMPTS[2], CONFIG, {"coefficient": -1.0}),
    ]


def _submit_staggered(batcher, cases, policy):
    handles = []
    for prompt, config, kw in cases:  # each arrives while the earlier ones decode
        handles.append(batcher.submit(prompt, config, retry=policy, **kw))
        time.sleep(0.004)
    return handles


@pytest.mark.parametrize("judge_tokens", [4, 64])
def test_staggered_retries_equal_the_engines(away_engine, judge_tokens):
    """judge_tokens=64: the judge reads each whole 10-token first reply; judge_tokens=4: the batcher drops the
    first reply as soon as the judge decides (the engine decodes it on, unseen); both record what the judge read."""
    cases = _cases()
    policy = RetryPolicy(judge=refuses_always, judge_tokens=judge_tokens)
    alone = [away_engine.generate(p, c, retry=policy, **kw)[0] for p, c, kw in cases]
    first = [away_engine.generate(p, c, **kw)[0] for p, c, kw in cases]
    recorder = Recorder(refuses=True)
    with ContinuousBatcher(away_engine) as batcher, slow_steps(away_engine.handle, 0.002):
        handles = _submit_staggered(batcher, cases, policy.model_copy(update={"judge": recorder}))
        outputs = [h.result(timeout=60) for h in handles]
        assert wait_until(lambda: batcher.running == 0 and batcher.waiting == 0)
    cut = 0
    for (prompt, _, kw), a, b, f in zip(cases, alone, outputs, first):
        assert (b.text, b.steering, b.finish_reason, b.completion_tokens) == (
            a.text,
            a.steering,
            a.finish_reason,
            a.completion_tokens,
        )
        if kw:  # plain and fixed rows are not judged, not retried
            assert b.first_reply is None and b.steering.source != "retry" and b.text == f.text
            continue
        assert b.steering.source == "retry" and b.steering.coefficient == 2 * f.steering.coefficient < 0
        assert b.verdict.coefficient == a.verdict.coefficient  # one sigma pass, its verdict kept
        assert b.verdict.score == pytest.approx(a.verdict.score, rel=1e-4)  # (up to a batch shape's rounding)
        assert b.first_reply in recorder.read[prompt if isinstance(prompt, str) else prompt[-1]["content"]]
        assert b.first_reply == a.first_reply and f.text.startswith(b.first_reply)
        if judge_tokens == 64:
            assert b.first_reply == f.text
        cut += len(b.first_reply) < len(f.text)
    assert judge_tokens == 64 or cut  # some first replies were dropped before their end
    assert [o.text for o in outputs[:5]] != [o.text for o in first[:5]]  # steering twice as far changed them


def test_the_stream_is_the_verdict_then_only_the_retried_reply(away_engine):
    recorder = Recorder(refuses=True)
    policy = RetryPolicy(judge=recorder, judge_tokens=3)
    with ContinuousBatcher(away_engine) as batcher:
        handles = [batcher.submit(p, CONFIG, retry=policy) for p in PROMPTS]
        streams = [list(h) for h in handles]
    for prompt, events in zip(PROMPTS, streams):
        assert events[0].verdict is not None and events[-1].output is not None
        assert all(e.verdict is None for e in events[1:]) and all(e.output is None for e in events[:-1])
        out = events[-1].output
        streamed = "".join(e.text for e in events)
        assert streamed == out.text and out.steering.source == "retry"
        assert (
            out.first_reply
            == away_engine.generate(prompt, GenerationConfig(max_new_tokens=10, ignore_eos=True))[0].text[
                : len(out.first_reply)
            ]
        )
        assert not streamed.startswith(out.first_reply)  # the dropped first reply never reached the stream


def test_a_judge_that_never_refuses_changes_nothing(away_engine):
    recorder = Recorder(refuses=False)
    with ContinuousBatcher(away_engine) as batcher:
        plain = [batcher.generate(p, CONFIG) for p in PROMPTS]
        handles = [batcher.submit(p, CONFIG, retry=RetryPolicy(judge=recorder, judge_tokens=4)) for p in PROMPTS]
        streams = [list(h) for h in handles]
    assert len(recorder.read) == len(PROMPTS)  # every row was judged, once
    assert all(len(read) == 1 for read in recorder.read.values())
    for before, events in zip(plain, streams):
        out = events[-1].output
        assert "".join(e.text for e in events) == out.text == before.text
        assert out.steering == before.steering and out.first_reply is None


def test_a_refused_row_leaves_the_batch_at_once(away_engine):
    """The engine decodes a refused first reply to its end; the batcher drops it when the judge decides."""
    config = GenerationConfig(max_new_tokens=40, ignore_eos=True)
    with ContinuousBatcher(away_engine) as batcher:
        out = batcher.generate(PROMPTS[0], config, retry=RetryPolicy(judge=refuses_always, judge_tokens=2))
        steps = batcher.steps
    assert out.steering.source == "retry" and out.completion_tokens == 40
    assert steps < 50  # the first reply's few judged tokens, then the retry's 40 (the engine: 80)


def test_a_judge_that_raises_fails_its_request_alone(away_engine):
    def broken(prompt: str, reply: str) -> bool:
        raise RuntimeError("judge down")

    with ContinuousBatcher(away_engine) as batcher:
        failing = batcher.submit(PROMPTS[0], CONFIG, retry=RetryPolicy(judge=broken, judge_tokens=2))
        other = batcher.submit(PROMPTS[1], CONFIG)
        with pytest.raises(RuntimeError, match="judge down"):
            failing.result(timeout=30)
        assert other.result(timeout=30).text == away_engine.generate(PROMPTS[1], CONFIG)[0].text


def test_no_retry_without_sigma_and_bad_policies(away_engine):
    with ContinuousBatcher(away_engine) as batcher:
        for kw in ({"steer": False}, {"coefficient": -1.0}):
            out = batcher.generate(PROMPTS[0], CONFIG, retry=RetryPolicy(judge=refuses_always), **kw)
            assert out.text == away_engine.generate(PROMPTS[0], CONFIG, **kw)[0].text
            assert out.steering.source != "retry" and out.first_reply is None
        with pytest.raises(ValueError, match="RetryPolicy"):
            batcher.submit(PROMPTS[0], CONFIG, retry=True)
