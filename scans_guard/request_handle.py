"""A submitted request's handle: its events for one consumer (a thread or an asyncio task), cancel, and the
scheduler's errors. The worker thread produces; `scans_guard.scheduler` is the producer."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import Callable

from .config import RowSteering, SafetyVerdict, SteeredOutput
from .engine import StreamEvent
from .errors import ScansGuardError


class SchedulerError(ScansGuardError):
    """Base of the continuous-batching scheduler's errors."""


class QueueFullError(SchedulerError):
    """Too many requests are waiting to join the batch (HTTP 429)."""


class RequestTimeoutError(SchedulerError):
    """The request did not finish within its time limit."""


class SchedulerClosedError(SchedulerError):
    """The scheduler was closed before the request finished."""


class RequestHandle:
    """One submitted request: its events, in order, for one consumer (a thread or an asyncio task).

    Events are the engine's `StreamEvent`s with `row=0`: the verdict (when the request is classified), text pieces,
    and finally the output. Iteration ends after the output, after `cancel()`, or raises the request's error.
    """

    def __init__(self, request_id: int, prompt_tokens: int):
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None  # joined the batch (after its sigma pass or prefill)
        self.first_token_at: float | None = None  # its first token was chosen
        self.finished_at: float | None = None
        self.verdict: SafetyVerdict | None = None
        self.output: SteeredOutput | None = None
        self.refused = False  # answered with the refusal text without generating (guard mode)
        # What the row decoding this request adds (set when it joins the batch; a retry's once it re-joins) and the
        # tokens it has chosen so far: what a request that is cut or fails before its output has cost.
        self.steering: RowSteering | None = None
        self.generated_tokens = 0
        self.judging = False  # a retry's judge holds the row's text: whether it is retried is not known yet
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._done = False
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_cancel: Callable[[], None] | None = None

    # -- producer side (the worker thread) --------------------------------------------------------------------
    def _push(self, event: StreamEvent | None = None, *, done: bool = False, error: BaseException | None = None):
        with self._cond:
            if self._done:
                return
            if event is not None:
                self._events.append(event)
                if event.output is not None:
                    self.output = event.output
            if done or error is not None:
                self._done = True
                self.error = error
                self.finished_at = time.perf_counter()
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for loop, ready in waiters:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # that event loop is closed: nobody waits there any more
                pass

    def _notify(self) -> None:
        """Wake the consumer without an event: its row joined the batch (`steering` and `judging` are set)."""
        self._push()

    # -- consumer side ------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """End the request: it leaves the batch (or the queue) at the next step; iteration stops."""
        if self._done:
            return
        self._cancelled.set()
        self._push(done=True)
        if self._on_cancel is not None:
            self._on_cancel()

    def _pop(self) -> StreamEvent | None:
        """The next event, or None when the request is over (raising its error, if any); caller holds _cond."""
        if self._events:
            return self._events.popleft()
        if self.error is not None:
            raise self.error
        return None

    def next_event(self, timeout: float | None = None) -> StreamEvent | None:
        """Block for the next event; None once the request is over. TimeoutError if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._events and not self._done:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("no event within the timeout")
                self._cond.wait(left)
            return self._pop()

    def __iter__(self):
        return self

    def __next__(self) -> StreamEvent:
        event = self.next_event()
        if event is None:
            raise StopIteration
        return event

    def __aiter__(self):
        return self

    async def __anext__(self) -> StreamEvent:
        while True:
            with self._cond:
                if self._events or self._done:
                    event = self._pop()
                    if event is None:
                        raise StopAsyncIteration
                    return event
                ready = asyncio.Event()
                self._waiters.append((asyncio.get_running_loop(), ready))
            await ready.wait()

    async def wait(self, ready: Callable[[], bool]) -> None:
        """Wait in asyncio until an event is queued, the request is over, or `ready()` holds."""
        while True:
            with self._cond:
                if self._events or self._done or ready():
                    return
                event = asyncio.Event()
                self._waiters.append((asyncio.get_running_loop(), event))
            await event.wait()

    def queued(self) -> list[StreamEvent]:
        """The events queued now, taken without waiting (an error is raised by iteration, after them)."""
        with self._cond:
            events, self._events = list(self._events), collections.deque()
        return events

    def result(self, timeout: float | None = None) -> SteeredOutput | None:
        """Wait for the output (None if cancelled); raises the request's error."""
        for _event in iter(lambda: self.next_event(timeout), None):
            pass
        return self.output

    async def aresult(self) -> SteeredOutput | None:
        async for _ in self:
            pass
        return self.output
