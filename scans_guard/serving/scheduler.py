"""Continuous batching: requests join the running batch at the next decoding step and leave as soon as they end.

`ContinuousBatcher(engine)` owns one worker thread and one running batch. `submit(conversation, config, ...)` returns
a `RequestHandle` at once; its `StreamEvent`s (the engine's: the verdict, text pieces, then the output) can be
iterated in a thread or awaited in asyncio, and `cancel()` ends the request at the next step.

Each step of the worker:

1. Admission (`scans_guard.serving.admission`). Waiting requests (up to `max_batch` rows in all) are classified
  together: one
   sigma pass over all newcomers that need sigma (its KV cache kept), one prefill over those that do not (plain, or a
   fixed coefficient); each row's first input follows the one rule written there. Newcomers' caches are merged into
   the running batch by left-padding every row to a common length (the padding is masked out).
2. One forward pass over every running row: one input token each, the row's own attention mask and position, and
   the steering hooks adding each row's own delta (`coefficient * v^l`, a `[batch, hidden]` tensor per layer).
3. Each row chooses its token with its own sampling settings (transformers' processors, its own seeded generator);
   `ReplyState.advance` ends its reply (EOS, stop string, length) and cuts and holds back its text.
4. Rows that finished, were cancelled or ran out of time leave the batch at once (the cache's batch dimension is
   index-selected and columns that are padding in every remaining row are dropped).

Retry (`submit(..., retry=RetryPolicy(...))`, as `ScansEngine.iter_generate`'s): a row sigma steered away from refusal
holds its text back in a `JudgeGate` until the judge has read its first `judge_tokens` tokens (or the row ended). If
the judge passes it, the held text is released and the row streams on; if the judge finds a refusal, the row leaves
the batch at once (its first reply is never streamed, nor decoded further) and its request goes back to the front of
the queue as a fixed-coefficient row (factor x the verdict's coefficient), on the same handle: it re-joins through the
prefill of step 1, so the client sees one stream (the verdict, the retried reply, the output).

Every forward pass runs inside `engine.steering.apply(plan)` (the running rows' `SteeringPlan`): under the model's
lock, with its hooks registered and removed inside it, so batchers on one model interleave their steps. Greedy output
of each request is the output it gets alone (up to float rounding of a different batch shape). `ScansEngine.generate`
decodes here too (on a batcher the engine owns), so calls from many threads share batches, and so does the server
(`scans_guard.serving.server`), on the same batcher. The decoding step itself is `scans_guard.serving.stepping`'s;
`decode_token_ids` decodes token rows on a batcher for comparisons and benchmarks: there is no other decoding loop.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypedDict, Unpack

from ..config import GenerationConfig, SteeredOutput
from ..core import ScansCore
from ..decoding.grammar_mask import CompiledConstraint
from ..errors import InvalidArgumentError
from ..model.kv_cache import KVBatch
from ..sigma.decision import GuardPolicy
from ..sigma.readings import Conversation
from ..steering.plan import SteeringPlan
from ..steering.retry import RetryPolicy
from .admission import Admission
from .request_handle import (  # noqa: F401  (re-exported: the scheduler's public names live here too)
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SchedulerClosedError,
    SchedulerError,
    drain,
)
from .scheduler_rows import QueuedRequest
from .stepping import Stepping

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64


class SubmitOptions(TypedDict, total=False):
    """`ContinuousBatcher.submit`'s keyword options, as `generate` passes them on."""

    steer: bool
    coefficient: float | None
    refusal: str | None
    operating_point: str
    timeout: float | None
    retry: RetryPolicy | None
    guard: GuardPolicy | None
    reuse_cache: bool
    max_batch: int | None
    max_queue: int | None


class ContinuousBatcher(Stepping, Admission):
    """Serve many requests on one engine with continuous batching (see the module docstring).

    `max_batch`: rows decoding at once; `max_queue`: requests waiting to join (more raise QueueFullError), both the
    defaults of each submit's own limits; `on_step(batch_size)`: called after every decoding step (metrics; more with
    `add_step_listener`); `idle_exit_s`: the worker thread ends after this long with nothing to do (None: it waits
    for work until `close`), the next `submit` starts another.
    """

    def __init__(
        self,
        engine: ScansCore,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_step: Callable[[int], None] | None = None,
        idle_exit_s: float | None = None,
    ):
        self.engine = engine
        self._model = engine.handle  # the ModelHandle
        self.max_batch, self.max_queue = _limit("max_batch", max_batch), _limit("max_queue", max_queue)
        self.idle_exit_s = idle_exit_s
        self._listeners: list[Callable[[int], None]] = [on_step] if on_step is not None else []
        self._stepping = threading.Lock()  # held by the worker through each admission and step (`settle`)
        self._waiting: collections.deque[QueuedRequest] = collections.deque()
        self._batch: KVBatch | None = None
        self._plan: SteeringPlan | None = None  # of the current batch rows; None: recompute
        self._cond, self._closed, self._ids = threading.Condition(), False, itertools.count(1)
        self._thread: threading.Thread | None = None
        self._eos = engine.handle.eos_token_ids()  # tokens that end a reply (unless ignore_eos)
        self.steps = 0  # decoding steps run (all rows together)

    # -- public API ---------------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Requests submitted and not yet in the batch."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        batch = self._batch
        return len(batch.rows) if batch is not None else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def add_step_listener(self, listener: Callable[[int], None]) -> None:
        """Call `listener(batch_size)` after every decoding step's forward pass, before its tokens reach their callers
        (a server's metrics), until removed."""
        self._listeners.append(listener)

    def remove_step_listener(self, listener: Callable[[int], None]) -> None:
        self._listeners.remove(listener)

    def fail(self, handles: Sequence[RequestHandle], error: BaseException) -> None:
        """End these requests with `error` (a server shutting down fails its own, not the others on the scheduler);
        they leave the queue or the batch at the next step."""
        for handle in handles:
            handle._push(error=error)
        self._wake()

    def submit(
        self,
        conversation: Conversation,
        config: GenerationConfig | None = None,
        *,
        steer: bool = True,
        coefficient: float | None = None,
        refusal: str | None = None,
        operating_point: str = "guard",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        guard: GuardPolicy | None = None,
        reuse_cache: bool = True,
        max_batch: int | None = None,
        max_queue: int | None = None,
    ) -> RequestHandle:
        """Queue one conversation; returns at once. Bad input raises the engine's typed errors here.

        steer / coefficient: as `ScansEngine.iter_generate` (steer=False: plain; coefficient: fixed, unclassified);
        every output records the steering applied (`SteeredOutput.steering`).
        refusal: guard mode: a request that `guard` blocks (default `GuardPolicy()`: harmful at the guard point, out of
        domain, or unclassifiable) gets this text as its output without any decoding (the handle's `refused` is set;
        finish_reason "content_filter"); the others are generated as usual (steered unless steer=False).
        timeout: seconds from now until the request fails with RequestTimeoutError.
        retry: a reply sigma steered away that the judge finds refusing is generated once more, steered further (as
        `ScansEngine.iter_generate`; only with sigma steering). Its first reply is never streamed.
        reuse_cache: a classified request decodes on its sigma pass's KV cache (False: its prompt is prefilled again).
        max_batch / max_queue: the request's own limits (as `submit_all`'s).
        """
        if isinstance(conversation, list) and conversation and not isinstance(conversation[0], dict):
            raise InvalidArgumentError("submit takes one conversation; submit each of a batch separately")
        return self.submit_all(
            [conversation],
            config,
            steer=steer,
            coefficients=None if coefficient is None else [coefficient],
            refusal=refusal,
            operating_point=operating_point,
            timeout=timeout,
            retry=retry,
            guard=guard,
            reuse_cache=reuse_cache,
            max_batch=max_batch,
            max_queue=max_queue,
        )[0]

    def submit_all(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig | Sequence[GenerationConfig] | None = None,
        *,
        steer: bool = True,
        coefficients: Sequence[float] | None = None,
        refusal: str | None = None,
        operating_point: str = "guard",
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        guard: GuardPolicy | None = None,
        reuse_cache: bool = True,
        prompts: Sequence[list[int]] | None = None,
        max_batch: int | None = None,
        max_queue: int | None = None,
    ) -> list[RequestHandle]:
        """Queue several conversations at once (as `submit`; `config`: one for all or one per conversation;
        `coefficients`: one per conversation, or None; `prompts`: their `engine.prompt_rows`, if made already): all or
        none are queued, and they join the batch at one step when there is room. Bad input raises the engine's typed
        errors, naming the conversation, before any is queued. `max_batch` / `max_queue`: this call's own limits (a
        server's): its requests join only a batch of fewer than max_batch rows, and are refused with QueueFullError
        while max_queue or more wait (default: the batcher's)."""
        n = len(conversations)
        configs = _per_row(config, n)
        fixed = SteeringPlan.from_options(n, steer, coefficients).rows  # a bad coefficient fails here
        row_cap = None if max_batch is None else _limit("max_batch", max_batch)
        queue_cap = self.max_queue if max_queue is None else _limit("max_queue", max_queue)
        if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        self.engine.artifact.threshold(operating_point)  # an unknown operating point fails here
        if prompts is None:
            prompts = self.engine.prompt_rows(conversations, max(c.max_new_tokens for c in configs)) if n else []
        compiled = {id(c): CompiledConstraint(self._model, c.constraint) for c in configs if c.constraint is not None}
        deadline = None if timeout is None else time.perf_counter() + timeout
        requests = [
            QueuedRequest(
                conversation=conversation,
                prompt=prompt,
                config=config,
                max_batch=row_cap,
                classify=coefficients is None and (steer or refusal is not None),
                steer=steer and coefficients is None,
                fixed=row,
                refusal=refusal,
                operating_point=operating_point,
                handle=RequestHandle(next(self._ids), len(prompt)),
                deadline=deadline,
                retry=RetryPolicy.applies(retry, steer, coefficients),
                guard=guard or GuardPolicy(),
                grammar=compiled.get(id(config)),
                reuse_cache=reuse_cache,
            )
            for conversation, prompt, row, config in zip(conversations, prompts, fixed, configs)
        ]
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if len(self._waiting) + n > queue_cap:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={queue_cap})")
            for request in requests:
                request.handle._on_cancel, request.handle._settle = self._wake, self.settle
                self._waiting.append(request)
            if requests:
                self._ensure_worker()
            self._cond.notify_all()
        return [r.handle for r in requests]

    def generate(
        self, conversation: Conversation, config: GenerationConfig | None = None, **options: Unpack[SubmitOptions]
    ) -> SteeredOutput:
        """Submit and wait for the output (blocking)."""
        output = self.submit(conversation, config, **options).result()
        if output is None:  # only its handle cancels a request, and this one is never handed out
            raise RuntimeError("the request was cancelled")
        return output

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the worker; requests still waiting or running fail with SchedulerClosedError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._fail_all(SchedulerClosedError("the scheduler was closed"))

    def settle(self) -> None:
        """Wait until the step in progress, if any, has ended: a request cancelled before is then in no forward pass
        (the next step drops it first), so none of its hooks is left."""
        if threading.current_thread() is not self._thread:
            self._stepping.acquire()
            self._stepping.release()

    def __enter__(self) -> ContinuousBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker -------------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()  # a cancelled request leaves at once

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="scans-guard-batcher", daemon=True)
            self._thread.start()

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            waiting, self._waiting = list(self._waiting), collections.deque()
        self._fail_step(error, waiting)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._batch:
                    idle = not self._cond.wait(self.idle_exit_s)  # timed out (never without idle_exit_s)
                    if idle and not self._closed and not self._waiting and not self._batch:
                        self._thread = None  # the next submit starts another worker
                        return
                if self._closed:
                    return
                admit: list[QueuedRequest] = []  # in order, each while the batch has fewer rows than its limit
                while self._waiting and self.running + len(admit) < (self._waiting[0].max_batch or self.max_batch):
                    admit.append(self._waiting.popleft())
            try:
                with self._stepping:
                    self._expire()
                    if admit:
                        self._admit(admit)
                    if self._batch is not None:
                        self._step()
            except Exception as exc:  # a failed step: fail the requests of that step, keep serving the others
                log.exception("continuous batching step failed")
                self._fail_step(exc, admit)
            del admit  # an idle worker holds no request: a finished one's handle is its consumer's alone

    def _fail_step(self, error: BaseException, admitted: list[QueuedRequest]) -> None:
        """Fail the running rows and `admitted` (a no-op for those already answered). After a failed step the worker
        stays alive: requests still waiting join the next step and later ones are served as usual."""
        batch, self._batch, self._plan = self._batch, None, None
        for request in admitted + ([row.request for row in batch.rows] if batch else []):
            request.handle._push(error=error)

    def _expire(self) -> None:
        """Fail waiting requests past their deadline and drop cancelled ones from the queue."""
        now = time.perf_counter()
        with self._cond:
            keep: collections.deque[QueuedRequest] = collections.deque()
            for request in self._waiting:
                if request.handle.done:  # cancelled, or failed by `fail`
                    continue
                if request.deadline is not None and now > request.deadline:
                    request.handle._push(error=RequestTimeoutError("the request timed out waiting to join the batch"))
                    continue
                keep.append(request)
            self._waiting = keep


def _limit(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


def _per_row(config: GenerationConfig | Sequence[GenerationConfig] | None, n: int) -> list[GenerationConfig]:
    """One config per row: `config` for all (default `GenerationConfig()`), or the rows' own."""
    if config is None or isinstance(config, GenerationConfig):
        return [config or GenerationConfig()] * n
    if len(config) != n:
        raise InvalidArgumentError(f"{len(config)} configs for {n} rows")
    return list(config)


def decode_token_ids(
    scheduler: ContinuousBatcher,
    conversations: Sequence[Conversation],
    config: GenerationConfig | Sequence[GenerationConfig] | None = None,
    coefficients: Sequence[float] | None = None,
) -> list[list[int]]:
    """Decode `conversations` on `scheduler` unclassified (plain, or steered by fixed `coefficients`) and return each
    reply's token ids, EOS not included: the one decoding loop, for comparisons with other decoders (transformers'
    `generate`) and for timing its steps. `config`: one for all, or one per conversation."""
    handles = scheduler.submit_all(conversations, config, steer=coefficients is not None, coefficients=coefficients)
    try:
        for _ in drain(handles):
            pass
    finally:
        for handle in handles:  # a request that failed ends the others (no-op for those done)
            handle.cancel()
        if handles:
            handles[0].settle()
    return [handle.token_ids for handle in handles]
