"""A submitted request's handle: its events for one consumer (a thread or an asyncio task), cancel, and the
scheduler's errors. The worker thread produces; `scans_guard.serving.scheduler` is the producer."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from ..config import RowSteering, SafetyVerdict, SteeredOutput
from ..decoding.reply import StreamEvent
from ..errors import ScansGuardError


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
        self.token_ids: list[int] = []  # the reply's token ids so far, EOS not included (a retry's second reply)
        self.judging = False  # a retry's judge holds the row's text: whether it is retried is not known yet
        self.error: BaseException | None = None
        self._cancelled = threading.Event()
        self._events: collections.deque[StreamEvent] = collections.deque()
        self._done = False
        self._cond = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._on_cancel: Callable[[], None] | None = None
        self._settle: Callable[[], None] | None = None  # waits for the scheduler's step in progress
        self._on_push: Callable[[], None] | None = None  # a consumer of several handles (`drain`) waits on this

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
            on_push = self._on_push
        if on_push is not None:
            on_push()
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

    def settle(self) -> None:
        """Wait for the scheduler's step in progress to end: a request cancelled before is then in no forward pass
        any more (nor are its steering hooks)."""
        if self._settle is not None:
            self._settle()

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
            await self.wait(lambda: False)

    async def wait(self, ready: Callable[[], bool]) -> None:
        """Wait in asyncio until an event is queued, the request is over, or `ready()` holds."""
        while True:
            event = asyncio.Event()
            with self._cond:
                if ready() or not self._arm(asyncio.get_running_loop(), event):
                    return
            await event.wait()

    def _arm(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Event) -> bool:
        """Have the next push set `ready` (in `loop`); False, arming nothing, if an event is queued or the request
        is over already."""
        with self._cond:
            if self._events or self._done:
                return False
            self._waiters.append((loop, ready))
            return True

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


ErrorOf = Callable[[int, BaseException], BaseException]  # a request's error as the caller raises it, by index


def drain(handles: Sequence[RequestHandle], error: ErrorOf | None = None) -> Iterator[tuple[int, StreamEvent]]:
    """The events of several requests as they come, each with its handle's index, until every one is over.

    A request that failed raises its error (through `error(index, exc)` when given) once its events are taken.
    """
    woken = threading.Event()
    for handle in handles:
        handle._on_push = woken.set
    open_rows = list(range(len(handles)))
    while open_rows:
        woken.clear()  # before looking: a push after the look sets it again, so no event waits unseen
        taken, failure = _take(handles, open_rows, error)
        yield from taken
        if failure is not None:
            raise failure
        if open_rows:
            woken.wait()


async def adrain(
    handles: Sequence[RequestHandle], error: ErrorOf | None = None
) -> AsyncIterator[tuple[int, StreamEvent]]:
    """`drain` for asyncio: it awaits the handles' own async wake-ups (as `async for` over one handle does), so the
    event loop never blocks on the worker thread."""
    open_rows = list(range(len(handles)))
    while open_rows:
        taken, failure = _take(handles, open_rows, error)
        for item in taken:
            yield item
        if failure is not None:
            raise failure
        if open_rows:
            ready, loop = asyncio.Event(), asyncio.get_running_loop()
            if all([handles[row]._arm(loop, ready) for row in open_rows]):  # all armed: nothing queued meanwhile
                await ready.wait()


def _take(
    handles: Sequence[RequestHandle], open_rows: list[int], error: ErrorOf | None
) -> tuple[list[tuple[int, StreamEvent]], BaseException | None]:
    """One look at the open handles: the events queued now, and the error of one that failed (it and every handle
    that is over leave `open_rows`)."""
    taken: list[tuple[int, StreamEvent]] = []
    for row in list(open_rows):
        handle = handles[row]
        over = handle.done  # read before taking the events: none can come after it turned True
        taken += [(row, event) for event in handle.queued()]
        if over:
            open_rows.remove(row)
            if handle.error is not None:
                return taken, error(row, handle.error) if error is not None else handle.error
    return taken, None
