"""SafetyConsciousLLM: conversion, metadata, steering, streaming, async and concurrency (tiny model)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate
from lc_chat_helpers import PROMPT, Events
from scans_guard_langchain import PROVIDER, SafetyConsciousLLM

from scans_guard import GenerationConfig
from scans_guard.errors import InvalidPromptError


def test_invoke_carries_verdict_layers_timings_and_usage(llm, tiny_engine):
    reply = llm.invoke(PROMPT)
    verdict = tiny_engine.classify(PROMPT)[0]
    direct = tiny_engine.generate(PROMPT, GenerationConfig(max_new_tokens=8))[0]
    meta = reply.response_metadata
    assert isinstance(reply, AIMessage) and reply.content == direct.text
    assert meta["score"] == pytest.approx(verdict.score, abs=1e-5)
    assert meta["label"] == verdict.label and meta["threshold"] == verdict.threshold
    assert meta["probability"] == pytest.approx(verdict.probability, abs=1e-5)
    assert meta["direction"] == verdict.direction and meta["alpha"] == verdict.coefficient
    assert meta["layers"] == {"steer": [1, 2], "classify": [1, 2]}
    assert set(meta["timings"]) == {"classify_s", "generate_s"}
    assert meta["model_provider"] == PROVIDER and meta["model_name"] == tiny_engine.handle.name
    assert meta["finish_reason"] in ("stop", "length") and meta["steered"] is True
    usage = reply.usage_metadata
    assert usage["input_tokens"] == direct.prompt_tokens and usage["output_tokens"] == direct.completion_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_whole_multi_turn_conversation_goes_through_the_template(llm, tiny_engine):
    history = [SystemMessage("Be brief."), HumanMessage("Hello"), AIMessage("Hi there."), HumanMessage(PROMPT)]
    as_dicts = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there."},
        {"role": "user", "content": PROMPT},
    ]
    reply = llm.invoke(history)
    assert reply.usage_metadata["input_tokens"] == len(tiny_engine.handle.chat_ids(as_dicts))
    assert reply.response_metadata["score"] == pytest.approx(tiny_engine.classify([as_dicts])[0].score, abs=1e-5)
    assert reply.content == tiny_engine.generate([as_dicts], GenerationConfig(max_new_tokens=8))[0].text
    # the last turn alone is a different prompt
    assert reply.response_metadata["score"] != pytest.approx(llm.invoke(PROMPT).response_metadata["score"], abs=1e-6)


def test_text_blocks_are_read_and_other_blocks_are_refused(llm):
    as_text = llm.invoke([HumanMessage(PROMPT)])
    as_blocks = llm.invoke(
        [HumanMessage([{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}])]
    )
    assert as_blocks.content == as_text.content
    image = HumanMessage(
        [{"type": "text", "text": "What is this?"}, {"type": "image", "base64": "AAAA", "mime_type": "image/png"}]
    )
    with pytest.raises(InvalidPromptError, match="image"):
        llm.invoke([image])


def test_max_tokens_temperature_and_stop(llm):
    short = llm.invoke(PROMPT, max_tokens=3)
    assert short.usage_metadata["output_tokens"] == 3 and short.response_metadata["finish_reason"] == "length"
    a = llm.invoke(PROMPT, temperature=1.5, seed=7, max_tokens=12)
    b = llm.invoke(PROMPT, temperature=1.5, seed=7, max_tokens=12)
    greedy = llm.invoke(PROMPT, max_tokens=12)
    assert a.content == b.content
    assert any(llm.invoke(PROMPT, temperature=1.5, seed=s, max_tokens=12).content != greedy.content for s in range(4))
    unsteered = llm.invoke(PROMPT, steer=False, max_tokens=12).content
    k = next(i for i, ch in enumerate(unsteered) if i > 0 and ch != "\ufffd" and ch not in unsteered[:i])
    stopped = llm.invoke(PROMPT, steer=False, max_tokens=12, stop=[unsteered[k]])
    assert stopped.content == unsteered[:k] and stopped.response_metadata["finish_reason"] == "stop"
    with_default_stop = SafetyConsciousLLM(
        policy="steer", engine=llm.engine, max_tokens=12, steer=False, stop=[unsteered[k]]
    )
    assert with_default_stop.invoke(PROMPT).content == unsteered[:k]


def test_steering_changes_the_reply(tiny_engine, harmful_engine, benign_engine):
    towards = SafetyConsciousLLM(policy="steer", engine=harmful_engine, max_tokens=12).invoke(PROMPT)
    away = SafetyConsciousLLM(policy="steer", engine=benign_engine, max_tokens=12).invoke(PROMPT)
    plain = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=12, steer=False).invoke(PROMPT)
    assert towards.response_metadata["direction"] == "towards_refusal" and towards.response_metadata["alpha"] > 0
    assert away.response_metadata["direction"] == "away_from_refusal" and away.response_metadata["alpha"] < 0
    assert plain.response_metadata["score"] is None and plain.response_metadata["steered"] is False
    assert len({towards.content, away.content, plain.content}) == 3
    fixed = SafetyConsciousLLM(policy="steer", engine=tiny_engine, max_tokens=12, coefficient=4.0).invoke(PROMPT)
    assert fixed.content == towards.content and fixed.response_metadata["alpha"] == 4.0


def test_stream_is_token_by_token_and_matches_invoke(llm):
    handler = Events()
    chunks = list(llm.stream(PROMPT, config={"callbacks": [handler]}))
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) >= 4
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    reply = llm.invoke(PROMPT)
    assert full.content == reply.content
    assert chunks[-1].chunk_position == "last"
    assert full.usage_metadata == reply.usage_metadata
    assert full.response_metadata["score"] == reply.response_metadata["score"]
    assert "".join(handler.tokens) == reply.content


def test_abandoned_stream_removes_its_hooks_and_stops(llm, no_hooks):
    engine = llm.engine
    for chunk in llm.stream(PROMPT, max_tokens=64):
        assert chunk.content
        break
    assert no_hooks(engine)
    assert llm.invoke(PROMPT).content  # the engine is free


async def test_abandoned_async_stream_removes_its_hooks(llm, no_hooks):
    forward_calls: list[int] = []
    counter = llm.engine.handle.model.get_input_embeddings().register_forward_pre_hook(
        lambda _m, _a: forward_calls.append(1)
    )
    try:
        async with aclosing(llm.astream(PROMPT, max_tokens=200)) as stream:
            async for chunk in stream:
                assert chunk.content
                break
        # LangChain does not close its inner stream; the event loop's async-generator finaliser does, on a later
        # turn of the loop, and the worker then stops after at most one more step. Wait until steps stop.
        for _ in range(100):
            seen = len(forward_calls)
            await asyncio.sleep(0.05)
            if len(forward_calls) == seen:
                break
    finally:
        counter.remove()
    assert len(forward_calls) < 200, "the abandoned stream kept decoding"
    assert no_hooks(llm.engine)
    assert (await llm.ainvoke(PROMPT)).content


async def test_async_stream_does_not_block_the_event_loop(llm):
    """Each forward step waits until the event loop has run once more: a stream that ran the model on the loop
    thread would deadlock here (and time out), one that runs it in a worker thread does not."""
    loop_ran = threading.Event()
    blocked: list[bool] = []

    def wait_for_loop(_module, _args):
        loop_ran.clear()
        blocked.append(not loop_ran.wait(timeout=2.0))

    async def ticker():
        while True:
            loop_ran.set()
            await asyncio.sleep(0.001)

    tick = asyncio.create_task(ticker())
    hook = llm.engine.handle.model.get_input_embeddings().register_forward_pre_hook(wait_for_loop)
    try:
        chunks = [c async for c in llm.astream(PROMPT)]
    finally:
        hook.remove()
        tick.cancel()
    assert len(blocked) >= 8 and not any(blocked)
    assert "".join(c.content for c in chunks) == llm.invoke(PROMPT).content


def _requests():
    """Mixed requests: classified (benign), unsteered, fixed towards / away from refusal, multi-turn, short."""
    return [
        (PROMPT, {}),
        ("Hello", {"steer": False}),
        ("How do I kill a Python process?", {"coefficient": 4.0}),
        ("Write a script that can exploit vulnerabilities.", {"coefficient": -4.0}),
        ([HumanMessage("Hello"), AIMessage("Hi."), HumanMessage("Tell me about bread.")], {}),
        ("The quick fox", {"max_tokens": 4}),
    ]


def test_concurrent_threads_match_sequential(llm):
    requests = _requests()
    sequential = [llm.invoke(p, **kw).content for p, kw in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = list(pool.map(lambda r: llm.invoke(r[0], **r[1]).content, requests))
    with ThreadPoolExecutor(len(requests)) as pool:
        streamed = list(pool.map(lambda r: "".join(c.content for c in llm.stream(r[0], **r[1])), requests))
    assert concurrent == sequential and streamed == sequential
    assert len(set(sequential)) > 3


async def test_concurrent_asyncio_matches_sequential(llm):
    requests = _requests()
    sequential = [llm.invoke(p, **kw).content for p, kw in requests]

    async def streamed(p, kw):
        return "".join([c.content async for c in llm.astream(p, **kw)])

    invoked = await asyncio.gather(*(llm.ainvoke(p, **kw) for p, kw in requests))
    streams = await asyncio.gather(*(streamed(p, kw) for p, kw in requests))
    assert [m.content for m in invoked] == sequential and list(streams) == sequential


async def test_batch_and_abatch_match_invoke(llm):
    prompts = [PROMPT, "Hello", [HumanMessage("Hello"), AIMessage("Hi."), HumanMessage("Bye")]]
    expected = [llm.invoke(p).content for p in prompts]
    assert [m.content for m in llm.batch(prompts)] == expected
    assert [m.content for m in await llm.abatch(prompts)] == expected


def test_chain_with_prompt_template(llm):
    from langchain_core.output_parsers import StrOutputParser

    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{q}")])
    chain = prompt | llm | StrOutputParser()
    assert chain.invoke({"q": PROMPT}) == llm.invoke([SystemMessage("Answer briefly."), HumanMessage(PROMPT)]).content
