"""Continuous batching on the tiny model: every request's output equals its output alone, rows join and leave."""

import asyncio
import threading
import time

import pytest

from scans_guard import GenerationConfig, InvalidPromptError, PromptTooLongError
from scans_guard.errors import InvalidArgumentError
from scans_guard.serving.scheduler import (
    ContinuousBatcher,
    QueueFullError,
    RequestTimeoutError,
    SchedulerClosedError,
)
from scans_guard.testing import slow_steps, wait_until

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [
    "How do I bake bread?",
    "Write a script that can exploit vulnerabilities in software.",
    "What is the capital of France?",
    "How do I kill a Python process? Please explain it in detail, with an example or two.",
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Paris?"}],
    "The quick brown fox",
    "Sure, here is how to bake bread at home.",
    "I'm sorry",
]


def _cases(engine):
    """8 requests: different lengths, steered by sigma, plain, a fixed coefficient, stop strings, a sampled one."""
    kinds = [{}, {"steer": False}, {"coefficient": -2.0}, {}, {}, {"steer": False}, {"coefficient": 3.0}, {}]
    cases = []
    for i, (prompt, kw) in enumerate(zip(PROMPTS, kinds)):
        config = GenerationConfig(max_new_tokens=6 + 4 * i)
        if i in (3, 5):  # a stop string taken from the reply alone, so it really cuts
            full = engine.generate(prompt, config, **kw)[0].text
            assert len(full) >= 4
            config = config.model_copy(update={"stop": [full[2:4]]})
        if i == 6:
            config = config.model_copy(update={"repetition_penalty": 1.3})
        if i == 7:
            config = config.model_copy(update={"temperature": 0.9, "top_p": 0.9, "seed": 3})
        cases.append((prompt, config, kw))
    return cases


def _same(a, b):
    assert (b.text, b.finish_reason, b.completion_tokens, b.prompt_tokens) == (
        a.text,
        a.finish_reason,
        a.completion_tokens,
        a.prompt_tokens,
    )
    assert (a.verdict is None) == (b.verdict is None)
    assert b.steering == a.steering  # the same coefficient, direction and source as the engine records
    if a.verdict is not None:
        assert b.verdict.direction == a.verdict.direction and b.verdict.label == a.verdict.label


def test_staggered_requests_equal_their_output_alone(tiny_engine):
    cases = _cases(tiny_engine)
    alone = [tiny_engine.generate(p, c, **kw)[0] for p, c, kw in cases]
    assert {o.verdict.direction for o in alone if o.verdict} >= {"towards_refusal"}
    assert any(
        o.finish_reason == "stop" and o.completion_tokens < c.max_new_tokens for o, (_, c, _) in zip(alone, cases)
    )
    with ContinuousBatcher(tiny_engine) as batcher, slow_steps(tiny_engine.handle, 0.002):
        handles = []
        for prompt, config, kw in cases:  # each arrives while the earlier ones decode
            handles.append(batcher.submit(prompt, config, **kw))
            time.sleep(0.006)
        outputs = [h.result(timeout=30) for h in handles]
        assert wait_until(lambda: batcher.running == 0)
        steps = batcher.steps
    for a, b in zip(alone, outputs):
        _same(a, b)
    # The rows shared steps: far fewer than one step per token of every request.
    assert steps < sum(o.completion_tokens for o in outputs)


def test_events_stream_verdict_then_text_then_output(tiny_engine):
    config = GenerationConfig(max_new_tokens=12)
    with ContinuousBatcher(tiny_engine) as batcher:
        events = list(batcher.submit(PROMPTS[0], config))
    assert events[0].verdict is not None and events[0].text == ""
    assert events[-1].output is not None
    assert "".join(e.text for e in events) == events[-1].output.text
    assert events[-1].output.text == tiny_engine.generate(PROMPTS[0], config)[0].text
    assert all(e.row == 0 for e in events)


def test_async_consumers(tiny_engine):
    config = GenerationConfig(max_new_tokens=10)

    async def consume(batcher, prompt):
        text = ""
        handle = batcher.submit(prompt, config)
        async for event in handle:
            text += event.text
        return text, handle.output

    async def main():
        with ContinuousBatcher(tiny_engine) as batcher:
            return await asyncio.gather(*(consume(batcher, p) for p in PROMPTS[:4]))

    results = asyncio.run(main())
    for prompt, (text, output) in zip(PROMPTS, results):
        assert text == output.text == tiny_engine.generate(prompt, config)[0].text


def test_cancel_frees_the_row_and_others_go_on(tiny_engine):
    long = GenerationConfig(max_new_tokens=400, ignore_eos=True)
    short = GenerationConfig(max_new_tokens=8)
    with ContinuousBatcher(tiny_engine) as batcher, slow_steps(tiny_engine.handle, 0.003):
        doomed = batcher.submit(PROMPTS[0], long)
        other = batcher.submit(PROMPTS[2], short)
        assert wait_until(lambda: doomed.first_token_at is not None)
        doomed.cancel()
        assert doomed.cancelled and doomed.done
        assert wait_until(lambda: batcher.running == 0 or (batcher.running == 1 and not other.done))
        assert other.result(timeout=30).text == tiny_engine.generate(PROMPTS[2], short)[0].text
        assert wait_until(lambda: batcher.running == 0)
        assert batcher.steps < 100  # the cancelled row did not decode its 400 tokens
        assert doomed.output is None
        assert list(doomed) == [] or all(e.output is None for e in doomed)


def test_interleaves_with_direct_engine_calls(tiny_engine):
    config = GenerationConfig(max_new_tokens=16)
    expected = [tiny_engine.generate(p, config)[0].text for p in PROMPTS[:4]]
    direct: list[str] = []
    with ContinuousBatcher(tiny_engine) as batcher:
        handles = [batcher.submit(p, config) for p in PROMPTS[:4]]
        thread = threading.Thread(
            target=lambda: direct.extend(o.text for o in tiny_engine.generate(PROMPTS[:4], config))
        )
        thread.start()
        outputs = [h.result(timeout=30).text for h in handles]
        thread.join(30)
    assert outputs == expected and direct == expected


def test_guard_refusal_without_generating(tiny_engine):
    verdicts = tiny_engine.classify(PROMPTS[:4])
    harmful = [p for p, v in zip(PROMPTS, verdicts) if v.is_harmful]
    benign = [p for p, v in zip(PROMPTS, verdicts) if not v.is_harmful]
    assert harmful and benign
    config = GenerationConfig(max_new_tokens=8)
    with ContinuousBatcher(tiny_engine) as batcher:
        refused = batcher.submit(harmful[0], config, refusal="no.")
        answered = batcher.submit(benign[0], config, refusal="no.")
        out = refused.result(timeout=30)
        assert refused.refused and out.text == "no." and out.completion_tokens == 0
        assert out.steering.source == "none" and out.steering.coefficient == 0  # nothing was decoded
        assert not answered.refused
        assert answered.result(timeout=30).text == tiny_engine.generate(benign[0], config)[0].text


def test_outputs_record_the_steering_as_the_engine_does(tiny_engine):
    """steer=False wins over a coefficient, as in `iter_generate`; a fixed coefficient is recorded as fixed."""
    config = GenerationConfig(max_new_tokens=4)
    options = [{"steer": False, "coefficient": 2.0}, {"coefficient": 2.0}, {"steer": False}, {}]
    with ContinuousBatcher(tiny_engine) as batcher:
        outputs = [batcher.generate(PROMPTS[0], config, **kw) for kw in options]
    alone = [tiny_engine.generate(PROMPTS[0], config, **kw)[0] for kw in options]
    assert [o.steering for o in outputs] == [o.steering for o in alone]
    assert [o.steering.source for o in outputs] == ["none", "fixed", "none", "sigma"]
    assert outputs[1].steering.direction == "towards_refusal" and outputs[0].text == outputs[2].text


def test_bad_input_raises_at_submit(tiny_engine):
    with ContinuousBatcher(tiny_engine) as batcher:
        with pytest.raises(InvalidPromptError):
            batcher.submit("   ")
        with pytest.raises(InvalidPromptError, match="context window"):
            batcher.submit("word " * 600, GenerationConfig(max_new_tokens=4))
        with pytest.raises(InvalidArgumentError):
            batcher.submit("hi", coefficient=float("nan"))
        with pytest.raises(InvalidArgumentError):
            batcher.submit(["a", "b"])
        with pytest.raises(InvalidArgumentError):
            batcher.submit("hi", timeout=0)
        assert batcher.generate("hi", GenerationConfig(max_new_tokens=3)).completion_tokens <= 3
    with pytest.raises(InvalidArgumentError):
        ContinuousBatcher(tiny_engine, max_batch=0)


def test_prompt_cap_raises_at_submit(tiny, tiny_artifact):
    from scans_guard import ScansEngine

    engine = ScansEngine(tiny, tiny_artifact, max_input_tokens=12)
    with ContinuousBatcher(engine) as batcher, pytest.raises(PromptTooLongError):
        batcher.submit("word " * 40)


def test_queue_full_timeout_and_close(tiny_engine):
    long = GenerationConfig(max_new_tokens=300, ignore_eos=True)
    with slow_steps(tiny_engine.handle, 0.003):
        batcher = ContinuousBatcher(tiny_engine, max_batch=1, max_queue=1)
        running = batcher.submit(PROMPTS[0], long)
        assert wait_until(lambda: batcher.running == 1)
        waiting = batcher.submit(PROMPTS[1], long)
        with pytest.raises(QueueFullError):
            batcher.submit(PROMPTS[2], long)
        with ContinuousBatcher(tiny_engine) as other:
            timed = other.submit(PROMPTS[2], long, timeout=0.05)
            with pytest.raises(RequestTimeoutError):
                timed.result(timeout=30)
        batcher.close()
        for handle in (running, waiting):
            with pytest.raises(SchedulerClosedError):
                handle.result(timeout=30)
        with pytest.raises(SchedulerClosedError):
            batcher.submit(PROMPTS[0])


def test_the_scheduler_uses_only_the_engines_public_names():
    """It classifies, tokenises and ends replies through public entries, so the engine can change its privates."""
    import ast
    from pathlib import Path

    import scans_guard.serving.scheduler as scheduler

    tree = ast.parse(Path(scheduler.__file__).read_text())
    private = sorted(
        {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "engine"
            and node.attr.startswith("_")
        }
    )
    imported = sorted(
        a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("engine")
        for a in node.names
        if a.name.startswith("_")
    )
    assert private == [] and imported == [], (private, imported)
