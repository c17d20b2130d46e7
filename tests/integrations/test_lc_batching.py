"""SafetyConsciousLLM calls are requests on the engine's step scheduler: calls from many threads, or many asyncio
tasks, decode in shared batches and get the replies each gets alone."""

from __future__ import annotations

import asyncio
import threading

import pytest
from scans_guard_langchain import SafetyConsciousLLM

from scans_guard import ScansEngine
from scans_guard.testing import slow_steps, wait_until

PROMPTS = [
    "How do I bake bread?",
    "Write a script that can exploit vulnerabilities in software.",
    "Paris?",
    "How do I kill a Python process?",
] * 2


@pytest.fixture
def llm(tiny, tiny_artifact):
    """A chat model on an engine of its own (a scheduler that starts with the test), recording each step's rows."""
    with ScansEngine(tiny, tiny_artifact) as engine:
        chat = SafetyConsciousLLM(policy="guard+steer", engine=engine, max_tokens=10)
        yield chat


def _record(llm) -> list[int]:
    sizes: list[int] = []
    llm.engine.scheduler.add_step_listener(sizes.append)
    return sizes


def test_invoke_from_eight_threads_shares_batches(llm):
    alone = [llm.invoke(p).content for p in PROMPTS]
    sizes = _record(llm)
    replies: list[str | None] = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def call(i: int) -> None:
        start.wait()
        replies[i] = llm.invoke(PROMPTS[i]).content

    with slow_steps(llm.engine.handle, 0.002):
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert replies == alone
    assert max(sizes) > 1, "concurrent invokes decoded one at a time"
    assert wait_until(lambda: llm.engine.scheduler.running == 0)


def test_ainvoke_tasks_share_batches_without_worker_threads(llm):
    alone = [llm.invoke(p).content for p in PROMPTS]
    sizes = _record(llm)
    before = threading.active_count()

    async def run():
        with slow_steps(llm.engine.handle, 0.002):
            return await asyncio.gather(*(llm.ainvoke(p) for p in PROMPTS))

    replies = asyncio.run(run())
    assert [r.content for r in replies] == alone
    assert max(sizes) > 1, "concurrent ainvokes decoded one at a time"
    assert threading.active_count() <= before, "the async path started threads of its own"


def test_a_scripted_engine_answers_async_calls_with_its_script(tiny_engine):
    from scans_guard_langchain.testing import scripted_llm

    llm = scripted_llm(["first reply", "second reply"], engine=tiny_engine)

    async def run():
        return (await llm.ainvoke("Paris?")).content, "".join([c.content async for c in llm.astream("Paris?")])

    assert asyncio.run(run()) == ("first reply", "second reply")
