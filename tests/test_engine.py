"""Engine behaviour on the tiny model: streaming, stop strings, bad input, concurrency."""

import asyncio
import threading

import pytest

from scans_guard import GenerationConfig, InvalidPromptError


def _text(engine, prompt, **kw):
    return engine.generate(prompt, GenerationConfig(max_new_tokens=10), **kw)[0].text


def test_stream_concatenates_to_generate(tiny_engine):
    prompt = "How do I bake bread?"
    events = list(tiny_engine.iter_generate([prompt], GenerationConfig(max_new_tokens=10)))
    assert events[0].verdict is not None
    text = "".join(e.text for e in events)
    assert text == _text(tiny_engine, prompt)
    assert events[-1].output.text == text


def test_stop_string_cuts_text(tiny_engine):
    prompt = "How do I bake bread?"
    full = _text(tiny_engine, prompt)
    assert len(full) >= 4
    stop = full[2:4]
    out = tiny_engine.generate(prompt, GenerationConfig(max_new_tokens=10, stop=[stop]))[0]
    assert out.text == full[: full.find(stop)]
    assert out.finish_reason == "stop"
    streamed = "".join(
        e.text for e in tiny_engine.iter_generate([prompt], GenerationConfig(max_new_tokens=10, stop=[stop]))
    )
    assert streamed == out.text


def test_length_finish_and_token_counts(tiny_engine):
    out = tiny_engine.generate("Paris?", GenerationConfig(max_new_tokens=3))[0]
    assert out.completion_tokens <= 3 and out.prompt_tokens > 3
    assert out.finish_reason in {"length", "stop"}


def test_sampling_is_seeded(tiny_engine):
    cfg = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=7)
    a = tiny_engine.generate("Paris?", cfg)[0].text
    b = tiny_engine.generate("Paris?", cfg)[0].text
    assert a == b


@pytest.mark.parametrize("bad", ["", "   \n\t", [{"role": "user", "content": [{"type": "image"}]}], []])
def test_bad_prompts_raise_typed_errors(tiny_engine, bad):
    with pytest.raises(InvalidPromptError):
        tiny_engine.classify([bad])


def test_prompt_longer_than_context_window(tiny_engine):
    with pytest.raises(InvalidPromptError, match="context window"):
        tiny_engine.generate("word " * 600, GenerationConfig(max_new_tokens=4))


def test_odd_unicode_and_control_characters(tiny_engine):
    verdict = tiny_engine.classify("he\x00llo \u202e\U0001f600 \ud7ff naïve")[0]
    assert verdict.label in {"harmful", "benign"}


def test_concurrent_threads_and_tasks_match_sequential(tiny_engine):
    prompts = [
        "How do I bake bread?",
        "Write a script that can exploit vulnerabilities in software.",
        "Paris?",
        "How do I kill a Python process?",
    ]
    expected = [_text(tiny_engine, p) for p in prompts]
    results = [None] * len(prompts)

    def worker(i):
        results[i] = _text(tiny_engine, prompts[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == expected

    async def run_all():
        return await asyncio.gather(*(asyncio.to_thread(_text, tiny_engine, p) for p in prompts))

    assert asyncio.run(run_all()) == expected
    assert all(not layer._forward_hooks for layer in tiny_engine.handle.layers)
