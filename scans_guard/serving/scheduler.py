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
decodes here too (on a batcher the engine owns), so calls from many threads share batches.
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

import torch

from ..config import GenerationConfig, SteeredOutput
from ..core import ScansCore
from ..decoding.grammar_mask import CompiledConstraint
from ..decoding.reply import StreamEvent
from ..errors import InvalidArgumentError
from ..model.kv_cache import KVBatch, cache_tensors, make_cache
from ..model.prompt_batch import forward_step
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
)
from .scheduler_rows import QueuedRequest, RunningRow

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


class ContinuousBatcher(Admission):
    """Serve many requests on one engine with continuous batching (see the module docstring).

    `max_batch`: rows decoding at once; `max_queue`: requests waiting to join (more raise QueueFullError);
    `on_step(batch_size)`: called after every decoding step (metrics); `idle_exit_s`: the worker thread ends after
    this long with nothing to do (None: it waits for work until `close`), the next `submit` starts another.
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
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.engine = engine
        self._model = engine.handle  # the ModelHandle
        self.max_batch, self.max_queue, self.on_step, self.idle_exit_s = max_batch, max_queue, on_step, idle_exit_s
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
        )[0]

    def submit_all(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
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
    ) -> list[RequestHandle]:
        """Queue several conversations at once (as `submit`; `coefficients`: one per conversation, or None; `prompts`:
        their `engine.prompt_rows`, if made already): all or none are queued, and they join the batch at one step when
        there is room. Bad input raises the engine's typed errors, naming the conversation, before any is queued."""
        config = config or GenerationConfig()
        n = len(conversations)
        fixed = SteeringPlan.from_options(n, steer, coefficients).rows  # a bad coefficient fails here
        if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        self.engine.artifact.threshold(operating_point)  # an unknown operating point fails here
        if prompts is None:
            prompts = self.engine.prompt_rows(conversations, config.max_new_tokens) if n else []
        grammar = CompiledConstraint(self._model, config.constraint) if config.constraint is not None else None
        deadline = None if timeout is None else time.perf_counter() + timeout
        requests = [
            QueuedRequest(
                conversation=conversation,
                prompt=prompt,
                config=config,
                classify=coefficients is None and (steer or refusal is not None),
                steer=steer and coefficients is None,
                fixed=row,
                refusal=refusal,
                operating_point=operating_point,
                handle=RequestHandle(next(self._ids), len(prompt)),
                deadline=deadline,
                retry=RetryPolicy.applies(retry, steer, coefficients),
                guard=guard or GuardPolicy(),
                grammar=grammar,
                reuse_cache=reuse_cache,
            )
            for conversation, prompt, row in zip(conversations, prompts, fixed)
        ]
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if len(self._waiting) + n > self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
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
                free = self.max_batch - self.running
                admit = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
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
                if request.handle.cancelled:
                    continue
                if request.deadline is not None and now > request.deadline:
                    request.handle._push(error=RequestTimeoutError("the request timed out waiting to join the batch"))
                    continue
                keep.append(request)
            self._waiting = keep

    # -- decoding -------------------------------------------------------------------------------------------
    def _step(self) -> None:
        batch = self._batch
        if batch is None:
            return
        now = time.perf_counter()
        gone = []
        for i, row in enumerate(batch.rows):
            request = row.request
            if not request.handle.done and request.deadline is not None and now > request.deadline:
                request.handle._push(error=RequestTimeoutError("the request timed out"))
            if request.handle.done:  # cancelled, timed out or closed: leave before the forward pass
                gone.append(i)
        if gone:
            self._drop(gone)
            batch = self._batch
            if batch is None:
                return
        if self._plan is None:
            self._plan = SteeringPlan(tuple(row.steering for row in batch.rows))
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        cache = make_cache(batch.keys, batch.values)
        inputs, positions = batch.inputs[:, None], batch.positions[:, None]  # [batch, 1]
        with self.engine.steering.apply(self._plan):
            grown, logits = forward_step(self._model.model, inputs, mask, positions, cache)
        batch.keys, batch.values = cache_tensors(grown)
        batch.mask = mask
        batch.positions = batch.positions + 1
        tokens = [self._accept(row, row.chooser(logits[i : i + 1])) for i, row in enumerate(batch.rows)]
        batch.inputs = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long, device=mask.device)
        self.steps += 1
        if self.on_step is not None:
            self.on_step(len(batch.rows))
        finished = [i for i, t in enumerate(tokens) if t is None]
        if finished:
            self._drop(finished)

    def _drop(self, index: list[int]) -> None:
        batch = self._batch
        if batch is None:
            return
        gone = set(index)
        keep = [i for i in range(len(batch.rows)) if i not in gone]
        self._batch = batch.select(keep) if keep else None
        self._plan = None

    def _accept(self, row: RunningRow, token_tensor: torch.Tensor) -> int | None:
        """Record one chosen token of `row` (as `iter_generate` does); the token to feed next, or None if it ended."""
        token = int(token_tensor.reshape(-1)[0])
        request, state, handle = row.request, row.state, row.request.handle
        if handle.done:
            return None
        config = request.config
        row.steps += 1
        handle.generated_tokens = row.steps
        if handle.first_token_at is None:
            handle.first_token_at = time.perf_counter()
        row.chooser.emitted(token_tensor.reshape(1))
        eos = set() if config.ignore_eos else self._eos
        piece = state.advance(token, row.steps, config, eos, self._model.tokenizer)
        if row.gate is not None and (piece or state.finish is not None):
            released = row.judged(piece)
            if released is None:  # refused (the row leaves now, queued again steered further) or the judge failed
                if row.again is not None:
                    with self._cond:
                        self._waiting.appendleft(row.again)
                return None
            piece = released
        if piece:
            handle._push(StreamEvent(row=0, text=piece))
        if state.finish is None:
            return token
        handle._push(StreamEvent(row=0, output=row.output()), done=True)
        return None
