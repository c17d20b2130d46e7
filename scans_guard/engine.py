"""ScansEngine: one model plus its calibrated artifact; classify prompts with sigma and generate with SCANS steering.

Generation is the step scheduler's (`scans_guard.serving.scheduler`, as vLLM's `LLM.generate` and its server both drive
one engine step): `generate` and `iter_generate` submit their conversations to a `ContinuousBatcher` the engine owns
(started on first use, stopped by `close`) and drain the request handles. Calls from many threads therefore share
decoding batches; each row carries its own steering, and greedy replies are those the row would get alone.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import AsyncGenerator, Generator, Sequence
from typing import TypedDict, Unpack

from .config import GenerationConfig, SteeredOutput
from .core import DEFAULT_MAX_INPUT_TOKENS, ScansCore, _as_batch  # noqa: F401 - re-exported
from .decoding.reply import StreamEvent
from .errors import InvalidArgumentError, NonFiniteScoreError
from .serving.request_handle import RequestHandle, adrain, drain
from .serving.scheduler import ContinuousBatcher
from .sigma.decision import DEFAULT_REFUSAL, GuardPolicy, Policy, check_policy, policy_steers
from .sigma.readings import Conversation, framing_signs, readings, user_text, without_system_prompt  # noqa: F401 - re-exported
from .steering.plan import SteeringPlan
from .steering.retry import RetryPolicy

ENGINE_MAX_BATCH = 16  # rows the engine's own batcher decodes at once; more wait and join as rows end
ENGINE_MAX_QUEUE = 1 << 20  # a generate call queues all its conversations at once: no QueueFullError here
ENGINE_IDLE_EXIT_S = 10.0  # an idle engine keeps no thread (nor, through it, itself) alive for long
_STARTED: weakref.WeakSet[ContinuousBatcher] = weakref.WeakSet()  # the engines' schedulers, for `_close_at_exit`


@atexit.register
def _close_at_exit() -> None:
    """Stop the engines' workers before the interpreter goes: a daemon thread still inside a torch op at exit (a
    step finishing after `generate` returned) aborts the process."""
    for scheduler in list(_STARTED):
        scheduler.close(timeout=5.0)


class GenerateOptions(TypedDict, total=False):
    """`ScansEngine.iter_generate`'s keyword options, as `generate` passes them on."""

    steer: bool
    coefficient: float | Sequence[float] | None
    reuse_cache: bool
    retry: RetryPolicy | None
    policy: Policy
    guard: GuardPolicy | None
    refusal: str


class ScansEngine(ScansCore):
    """Classify with sigma(q) and generate with safety-conscious steering, on one local model."""

    _scheduler: ContinuousBatcher | None = None
    _scheduler_lock = threading.Lock()

    @property
    def scheduler(self) -> ContinuousBatcher:
        """The step scheduler `generate`, `iter_generate` and the engine's servers decode on (created on first use,
        and again after it was closed)."""
        with self._scheduler_lock:
            if self._scheduler is None or self._scheduler.closed:
                self._scheduler = ContinuousBatcher(
                    self, max_batch=ENGINE_MAX_BATCH, max_queue=ENGINE_MAX_QUEUE, idle_exit_s=ENGINE_IDLE_EXIT_S
                )
                _STARTED.add(self._scheduler)
            return self._scheduler

    def close(self) -> None:
        """Stop the engine's scheduler (requests still running fail); a later call starts a new one."""
        with self._scheduler_lock:
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.close()

    def __enter__(self) -> ScansEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        **options: Unpack[GenerateOptions],
    ) -> list[RequestHandle]:
        """Queue each conversation on the engine's scheduler with `iter_generate`'s options; one `RequestHandle`
        each (iterate it in a thread or with `async for`). Bad input raises its typed error here."""
        return self._submit(_as_batch(conversations), config or GenerationConfig(), **options)

    def _submit(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig,
        *,
        steer: bool = True,
        coefficient: float | Sequence[float] | None = None,
        reuse_cache: bool = True,
        retry: RetryPolicy | None = None,
        policy: Policy = "steer",
        guard: GuardPolicy | None = None,
        refusal: str = DEFAULT_REFUSAL,
    ) -> list[RequestHandle]:
        check_policy(policy)
        if policy != "steer" and coefficient is not None:
            raise InvalidArgumentError(
                "a fixed coefficient skips classification, so it cannot run under a guard policy"
            )
        if not conversations:
            return []
        fixed = None
        if steer and coefficient is not None:
            fixed = [r.coefficient for r in SteeringPlan.fixed(coefficient, len(conversations)).rows]
        prompts = self.prompt_rows(conversations, config.max_new_tokens)  # typed errors before any other check
        return self.scheduler.submit_all(
            conversations,
            config,
            prompts=prompts,
            steer=steer and policy_steers(policy),
            coefficients=fixed,
            refusal=None if policy == "steer" else refusal,
            retry=retry,
            guard=guard,
            reuse_cache=reuse_cache,
        )

    def iter_generate(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generator[StreamEvent, None, None]:
        """Stream a batch: classify (one pass, its KV cache reused), then decode with per-row steering.

        Options (keyword): steer (default True), coefficient, reuse_cache (default True), retry, policy (default
        "steer"), guard, refusal (default `DEFAULT_REFUSAL`).
        policy: "steer" (classify and steer; nothing blocked), "guard+steer" (a prompt `guard` blocks gets `refusal`
        as its output without decoding, `finish_reason` "content_filter"; the rest are steered), "guard" (blocked
        as guard+steer, the rest generated unsteered). guard: the blocking rule (default `GuardPolicy()`: harmful at
        the guard point, out of domain, or unclassifiable).

        steer=False: plain generation, no classification. coefficient=c (or one per row): steer by c * v with no
        classification (the always-positive / always-negative baselines). retry: a row sigma steered away whose
        reply still refuses is generated once more, steered further (`scans_guard.steering.retry`; off by default).
        Every row's output records the steering applied (`SteeredOutput.steering`). Events name their conversation by
        `row`: each classified row's verdict first, then its text pieces and its output. Closing the iterator early
        cancels the rows still running.
        """
        handles = self._submit(_as_batch(conversations), config or GenerationConfig(), **options)
        try:
            yield from _announced(handles, options)
            for row, event in drain(handles, _name_the_row):
                yield from _as_engine_events(row, event)
        finally:
            _cancel(handles, settle=True)  # closed early, or a row failed: the rows still running leave the batch

    async def aiter_generate(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncGenerator[StreamEvent, None]:
        """`iter_generate` for asyncio: the same events, awaited (the event loop never waits on a decoding step)."""
        handles = self._submit(_as_batch(conversations), config or GenerationConfig(), **options)
        try:
            for event in _announced(handles, options):
                yield event
            async for row, event in adrain(handles, _name_the_row):
                for piece in _as_engine_events(row, event):
                    yield piece
        finally:
            live = _cancel(handles)
            if live:  # closed early: its rows leave the batch; the step in progress ends off the event loop
                await asyncio.to_thread(live[0].settle)

    def generate(
        self,
        conversations: Sequence[Conversation] | Conversation,
        config: GenerationConfig | None = None,
        **options: Unpack[GenerateOptions],
    ) -> list[SteeredOutput]:
        """Generate for each conversation (batched); see `iter_generate` for the steering options."""
        return outputs_of(self._submit(_as_batch(conversations), config or GenerationConfig(), **options))


def outputs_of(handles: Sequence[RequestHandle]) -> list[SteeredOutput]:
    """Wait for each request's output, in order; the first error is raised here (and the other requests cancelled)."""
    try:
        outputs = {row: event.output for row, event in drain(handles, _name_the_row) if event.output is not None}
    finally:
        _cancel(handles, settle=True)
    return [_engine_output(outputs[i]) for i in range(len(handles))]


def _cancel(handles: Sequence[RequestHandle], settle: bool = False) -> list[RequestHandle]:
    """Cancel the requests not over yet, and return them (`settle`: and wait until they are in no forward pass, so a
    caller that stops reading finds no hooks of theirs left)."""
    live = [handle for handle in handles if not handle.done]
    for handle in live:
        handle.cancel()
    if settle and live:
        live[0].settle()
    return live


def _announced(handles: Sequence[RequestHandle], options: GenerateOptions) -> list[StreamEvent]:
    """The verdict events of a call that classifies nothing (steer=False, or a fixed coefficient): None, first."""
    steer, policy = options.get("steer", True), options.get("policy", "steer")
    classified = options.get("coefficient") is None and (steer or policy != "steer")
    return [] if classified else [StreamEvent(row=row, verdict=None) for row in range(len(handles))]


def _as_engine_events(row: int, event: StreamEvent) -> list[StreamEvent]:
    """A request's event as `iter_generate` streams it: under its row, a blocked reply's refusal streamed as text
    before its output, and the engine's timings."""
    if event.output is None:
        return [event.model_copy(update={"row": row})]
    output = _engine_output(event.output)
    refusal = [StreamEvent(row=row, text=output.text)] if output.finish_reason == "content_filter" else []
    return [*refusal, event.model_copy(update={"row": row, "output": output})]


def _engine_output(output: SteeredOutput) -> SteeredOutput:
    """The engine reports classify_s and generate_s; the scheduler's queue_s is the server's concern."""
    if "queue_s" not in output.timings:
        return output
    return output.model_copy(update={"timings": {k: v for k, v in output.timings.items() if k != "queue_s"}})


def _name_the_row(row: int, error: BaseException) -> BaseException:
    """A request's error as the batch's: a non-finite score names the conversation, not the request's own row 0."""
    return NonFiniteScoreError(row) if isinstance(error, NonFiniteScoreError) else error
