"""The `threads` section of `scans-guard bench`: N threads each calling `ScansEngine.generate` on one prompt, against
one static batch of the same N prompts in one call, on the same engine.

Both decode on the engine's step scheduler, so the threads' rows share decoding batches as they arrive; the ratio of
their aggregate tokens/s to the static batch's shows what arriving one by one costs (1.0: nothing).
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar, cast

from pydantic import BaseModel

from ..config import GenerationConfig
from .config import BenchConfig

if TYPE_CHECKING:
    from ..engine import ScansEngine

T = TypeVar("T")


class ThreadsResult(BaseModel):
    """Aggregate tokens/s of `threads` concurrent one-prompt `generate` calls vs one `generate` call of them all."""

    threads: int
    max_new_tokens: int
    threads_tokens_per_s: float  # median over repeats: completion tokens of every call / wall time
    static_tokens_per_s: float
    ratio: float  # threads_tokens_per_s / static_tokens_per_s
    threads_s: list[float]  # each repeat's wall time
    static_s: list[float]
    completion_tokens: int  # of one repeat of the threads (every call together)
    same_tokens: bool  # both modes decoded as many tokens in every repeat (equal work)


def released_together(calls: Sequence[Callable[[], T]]) -> tuple[float, list[T]]:
    """Each call in its own thread, all released at once: (wall seconds until the last one ends, results in order).

    A call that raised is re-raised here, in the caller's thread (the first in order)."""
    results: list[T | BaseException | None] = [None] * len(calls)
    start = threading.Barrier(len(calls) + 1)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # re-raised below, in the caller's thread
            results[i] = exc

    workers = [threading.Thread(target=run, args=(i,), name=f"bench-call-{i}", daemon=True) for i in range(len(calls))]
    for worker in workers:
        worker.start()
    start.wait()
    t0 = time.perf_counter()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - t0
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return wall, cast("list[T]", results)


def _threaded(engine: ScansEngine, prompts: Sequence[str], config: GenerationConfig) -> tuple[float, int]:
    """Wall seconds and completion tokens of one `generate` call per prompt, each in its own thread, begun together."""

    def one(prompt: str) -> int:
        return engine.generate(prompt, config)[0].completion_tokens

    wall, tokens = released_together([functools.partial(one, p) for p in prompts])
    return wall, sum(tokens)


def _static(engine: ScansEngine, prompts: Sequence[str], config: GenerationConfig) -> tuple[float, int]:
    t0 = time.perf_counter()
    outputs = engine.generate(list(prompts), config)
    return time.perf_counter() - t0, sum(o.completion_tokens for o in outputs)


def bench_threads(engine: ScansEngine, pool: Sequence[str], cfg: BenchConfig) -> ThreadsResult:
    """`cfg.generate_threads` prompts from `pool` (cycled), each mode `cfg.warmup` untimed then `cfg.repeats` timed."""
    n = cfg.generate_threads
    prompts = [pool[i % len(pool)] for i in range(n)]
    config = GenerationConfig(max_new_tokens=cfg.max_new_tokens, ignore_eos=cfg.force_length)
    for _ in range(cfg.warmup):
        _threaded(engine, prompts, config)
        _static(engine, prompts, config)
    threaded, static = [], []
    for _ in range(cfg.repeats):  # interleaved, so a change of load on the machine touches both
        threaded.append(_threaded(engine, prompts, config))
        static.append(_static(engine, prompts, config))
    threads_tps = statistics.median(tokens / wall for wall, tokens in threaded)
    static_tps = statistics.median(tokens / wall for wall, tokens in static)
    return ThreadsResult(
        threads=n,
        max_new_tokens=cfg.max_new_tokens,
        threads_tokens_per_s=threads_tps,
        static_tokens_per_s=static_tps,
        ratio=threads_tps / static_tps,
        threads_s=[wall for wall, _ in threaded],
        static_s=[wall for wall, _ in static],
        completion_tokens=threaded[0][1],
        same_tokens=all(a == b for (_, a), (_, b) in zip(threaded, static)),
    )
