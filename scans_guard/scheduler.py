"""Continuous batching: requests join the running batch at the next decoding step and leave as soon as they end.

`ContinuousBatcher(engine)` owns one worker thread and one running batch. `submit(conversation, config, ...)` returns
a `RequestHandle` at once; its `StreamEvent`s (the engine's: the verdict, text pieces, then the output) can be
iterated in a thread or awaited in asyncio, and `cancel()` ends the request at the next step.

Each step of the worker:

1. Admission. Waiting requests (up to `max_batch` rows in all) are classified together: one `ScansEngine.classify_rows`
   pass over all newcomers that need sigma (its KV cache kept, as `iter_generate` does), one prefill over those that
   do not (plain, or a fixed coefficient). A row's first input is then decided as the engine decides it alone: an
   unsteered row takes its first token from the pass's logits and feeds that token next; a steered row drops its last
   prompt token from the cache and feeds it again, so steering starts at the last prompt token and never touches the
   earlier ones. Newcomers' caches are merged into the running batch by left-padding every row to a common length
   (keys and values `[batch, heads, seq, head_dim]` per layer; the padding is masked out).
2. One forward pass over every running row: one input token each, the row's own attention mask and position, and
   the steering hooks adding each row's own delta (`coefficient * v^l`, a `[batch, hidden]` tensor per layer).
3. Each row chooses its token with its own sampling settings (transformers' processors, its own seeded generator),
   and its reply ends (EOS, stop string, length) and its text is cut and held back by `ReplyState.advance`, the
   engine's own code, so it ends exactly as it would alone.
4. Rows that finished, were cancelled or ran out of time leave the batch at once (the cache's batch dimension is
   index-selected and columns that are padding in every remaining row are dropped).

Retry (`submit(..., retry=RetryPolicy(...))`, as `ScansEngine.iter_generate`'s): a row sigma steered away from refusal
holds its text back in a `JudgeGate` until the judge has read its first `judge_tokens` tokens (or the row ended). If
the judge passes it, the held text is released and the row streams on; if the judge finds a refusal, the row leaves
the batch at once (its first reply is never streamed, nor decoded further) and its request goes back to the front of
the queue as a fixed-coefficient row (factor x the verdict's coefficient), on the same handle: it re-joins through the
prefill of step 1, so the client sees one stream (the verdict, the retried reply, the output).

Every forward pass runs inside `engine.steering.apply(plan)` (the running rows' `SteeringPlan`): under the model's
lock, one step at a time, with its hooks registered and removed inside it, so direct engine calls on the same model
interleave with the batch as they do with each other. Greedy output of each request is the output it gets alone (up
to float rounding of a different batch shape, as with the engine's own batching), and records the same steering.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TypedDict, Unpack

import torch

from .batch_rows import QueuedRequest, RunningRow
from .batching import PromptBatch, prefill
from .config import GenerationConfig, RowSteering, SafetyVerdict, SteeredOutput
from .constrained import CompiledConstraint, ConstrainedRows
from .decision import GuardPolicy
from .engine import Conversation, ScansEngine, StreamEvent, user_text
from .errors import InvalidArgumentError, NonFiniteScoreError
from .kv_batch import KVBatch, cache_tensors, make_cache
from .request_handle import (  # noqa: F401  (re-exported: the scheduler's public names live here too)
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SchedulerClosedError,
    SchedulerError,
)
from .retry import RetryPolicy
from .steering import SteeringPlan, _TokenChooser

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


class ContinuousBatcher:
    """Serve many requests on one engine with continuous batching (see the module docstring).

    `max_batch`: rows decoding at once; `max_queue`: requests waiting to join (more raise QueueFullError);
    `on_step(batch_size)`: called after every decoding step (metrics).
    """

    def __init__(
        self,
        engine: ScansEngine,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_queue: int = DEFAULT_MAX_QUEUE,
        on_step: Callable[[int], None] | None = None,
    ):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.engine = engine
        self._model = engine.handle  # the ModelHandle
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_step = on_step
        self._waiting: collections.deque[QueuedRequest] = collections.deque()
        self._batch: KVBatch | None = None
        self._plan: SteeringPlan | None = None  # of the current batch rows; None: recompute
        self._cond = threading.Condition()
        self._closed = False
        self._ids = itertools.count(1)
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
        """
        config = config or GenerationConfig()
        if isinstance(conversation, list) and conversation and not isinstance(conversation[0], dict):
            raise InvalidArgumentError("submit takes one conversation; submit each of a batch separately")
        fixed = SteeringPlan.from_options(1, steer, coefficient).rows[0]  # a bad coefficient fails here
        if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidArgumentError(f"retry must be a RetryPolicy or None, got {type(retry).__name__}")
        self.engine.artifact.threshold(operating_point)  # an unknown operating point fails here
        prompt = self.engine.prompt_rows([conversation], config.max_new_tokens)[0]
        grammar = CompiledConstraint(self._model, config.constraint) if config.constraint is not None else None
        handle = RequestHandle(next(self._ids), len(prompt))
        request = QueuedRequest(
            conversation=conversation,
            prompt=prompt,
            config=config,
            classify=coefficient is None and (steer or refusal is not None),
            steer=steer and coefficient is None,
            fixed=fixed,
            refusal=refusal,
            operating_point=operating_point,
            handle=handle,
            deadline=None if timeout is None else time.perf_counter() + timeout,
            retry=RetryPolicy.applies(retry, steer, coefficient),
            guard=guard or GuardPolicy(),
            grammar=grammar,
        )
        with self._cond:
            if self._closed:
                raise SchedulerClosedError("the scheduler is closed")
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting (max_queue={self.max_queue})")
            handle._on_cancel = self._wake
            self._waiting.append(request)
            self._ensure_worker()
            self._cond.notify_all()
        return handle

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

    def __enter__(self) -> ContinuousBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker -------------------------------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

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
                    self._cond.wait()
                if self._closed:
                    return
                free = self.max_batch - self.running
                admit = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                self._expire()
                if admit:
                    self._admit(admit)
                if self._batch is not None:
                    self._step()
            except Exception as exc:  # a failed step: fail the requests of that step, keep serving the others
                log.exception("continuous batching step failed")
                self._fail_step(exc, admit)

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

    # -- admission ------------------------------------------------------------------------------------------
    def _admit(self, requests: list[QueuedRequest]) -> None:
        """Newcomers' passes, batched: one sigma pass per operating point, one prefill for the unclassified."""
        requests = [r for r in requests if not r.handle.cancelled]
        sigma = [r for r in requests if r.classify]
        for point in sorted({r.operating_point for r in sigma}):
            self._isolated(self._admit_classified, [r for r in sigma if r.operating_point == point], point)
        plain = [r for r in requests if not r.classify]
        if plain:
            self._isolated(self._admit_prefilled, plain)

    @staticmethod
    def _isolated(admit: Callable, group: list[QueuedRequest], *args: object) -> None:
        """A pass that fails fails its own requests only; the running batch goes on."""
        try:
            admit(group, *args)
        except Exception as exc:
            log.exception("admitting %d request(s) failed", len(group))
            for request in group:
                request.handle._push(error=exc)

    def _admit_classified(self, requests: list[QueuedRequest], operating_point: str) -> None:
        """One sigma pass over the newcomers (its cache kept); each row then joins as the engine would start it."""
        t0 = time.perf_counter()
        try:
            sp, verdicts = self.engine.classify_rows(
                [r.conversation for r in requests],
                [r.prompt for r in requests],
                keep_cache=True,
                operating_point=operating_point,
            )
        except NonFiniteScoreError as exc:  # fail that request alone (a guarded one is blocked), classify the others
            failed = requests[exc.index]
            if failed.refusal is not None:
                self._refuse(failed, failed.refusal, None, 0.0, t0)
            else:
                failed.handle._push(error=NonFiniteScoreError(0))
            rest = requests[: exc.index] + requests[exc.index + 1 :]
            if rest:
                self._admit_classified(rest, operating_point)
            return
        classify_s = time.perf_counter() - t0
        keys, values = cache_tensors(sp.cache)
        mask = sp.prompt_batch.attention_mask
        logits = sp.last_prompt_logits
        first_token: list[tuple[int, RowSteering]] = []
        steered: list[tuple[int, RowSteering]] = []
        plan = SteeringPlan.from_verdicts(verdicts)
        for i, (request, verdict) in enumerate(zip(requests, verdicts)):
            handle = request.handle
            handle.verdict = verdict
            handle._push(StreamEvent(row=0, verdict=verdict))
            if handle.cancelled:
                continue
            if request.refusal is not None and request.guard.decide(verdict).blocked:
                self._refuse(request, request.refusal, verdict, classify_s, t0)
                continue
            row = plan.rows[i] if request.steer else RowSteering()
            (steered if row.coefficient != 0 else first_token).append((i, row))
        full = KVBatch(
            keys,
            values,
            mask,
            torch.tensor([len(r.prompt) for r in requests], device=mask.device),
            torch.zeros(len(requests), dtype=torch.long, device=mask.device),
            [],
        )
        if first_token:  # unsteered: token 1 comes from the sigma pass, as in iter_generate
            rows = [self._active(requests[i], c, classify_s) for i, c in first_token]
            self._join(full, [i for i, _ in first_token], rows, logits)
        if steered:  # steering starts at the last prompt token: drop it from the cache and feed it again
            rows = [self._active(requests[i], c, classify_s) for i, c in steered]
            cropped = KVBatch(
                [k[..., :-1, :] for k in keys],
                [v[..., :-1, :] for v in values],
                mask[:, :-1],
                full.positions - 1,
                sp.prompt_batch.input_ids[:, -1],
                [],
            )
            self._join(cropped, [i for i, _ in steered], rows, None)

    @staticmethod
    def _refuse(
        request: QueuedRequest, refusal: str, verdict: SafetyVerdict | None, classify_s: float, t0: float
    ) -> None:
        """Answer a request the guard blocked with its refusal text, without decoding."""
        handle = request.handle
        handle.refused = True
        handle._push(
            StreamEvent(
                row=0,
                output=SteeredOutput.blocked(
                    refusal,
                    verdict,
                    len(request.prompt),
                    {"classify_s": classify_s, "generate_s": 0.0, "queue_s": t0 - handle.submitted_at},
                ),
            ),
            done=True,
        )

    def _admit_prefilled(self, requests: list[QueuedRequest]) -> None:
        """One prefill over newcomers without classification (plain, or a fixed coefficient from their last prompt
        token on, as `steered_decode` prefills them); token 1 comes from its logits."""
        prompts = PromptBatch.left_pad(
            [r.prompt for r in requests], self._model.tokenizer.pad_token_id, self._model.device
        )
        plan = SteeringPlan(tuple(r.fixed for r in requests))
        width = prompts.input_ids.shape[1]
        with torch.inference_mode(), self.engine.steering.apply(plan, start_column=width - 1):
            out = prefill(self._model.model, prompts, use_cache=True, logits_to_keep=1)
        if out.logits is None:
            raise RuntimeError(f"{self._model.name} returned no logits")
        keys, values = cache_tensors(out.cache)
        full = KVBatch(
            keys,
            values,
            prompts.attention_mask,
            torch.tensor(prompts.lengths, device=prompts.attention_mask.device),
            torch.zeros(len(requests), dtype=torch.long, device=prompts.attention_mask.device),
            [],
        )
        rows = [self._active(r, r.fixed, r.classify_s) for r in requests]
        self._join(full, list(range(len(requests))), rows, out.logits[:, -1, :].float())

    def _active(self, request: QueuedRequest, steering: RowSteering, classify_s: float) -> RunningRow:
        prompts = PromptBatch.left_pad([request.prompt], self._model.tokenizer.pad_token_id, self._model.device)
        gate = None
        if request.retry is not None and steering.source == "sigma" and steering.coefficient < 0:
            gate = request.retry.gate(user_text(request.conversation), self._model.tokenizer)
        request.handle.steering, request.handle.judging = steering, gate is not None
        request.handle._notify()
        return RunningRow(
            request=request,
            chooser=_TokenChooser(request.config, prompts, ConstrainedRows.build(self._model, [request.grammar])),
            steering=steering,
            classify_s=classify_s,
            gate=gate,
        )

    def _join(self, group: KVBatch, index: list[int], rows: list[RunningRow], logits: torch.Tensor | None) -> None:
        """Rows `index` of `group` (a newcomers' pass) join the running batch as `rows`; with `logits`, each first
        chooses its token from them."""
        part = group.select(index, rows)
        now = time.perf_counter()
        for row in rows:  # a retried request keeps its first start: its generate_s covers both replies
            row.request.handle.started_at = row.request.handle.started_at or now
        if logits is not None:
            tokens = [self._accept(row, row.chooser(logits[i : i + 1])) for row, i in zip(rows, index)]
            part.inputs = torch.tensor(
                [t if t is not None else 0 for t in tokens], dtype=torch.long, device=part.mask.device
            )
            keep = [j for j, t in enumerate(tokens) if t is not None]
            if len(keep) < len(rows):
                part = part.select(keep)
        if part.rows:
            self._batch = KVBatch.merge(self._batch, part)
            self._plan = None

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
        with torch.inference_mode(), self.engine.steering.apply(self._plan):
            out = self._model.model(
                input_ids=batch.inputs[:, None],
                attention_mask=mask,
                position_ids=batch.positions[:, None],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
        logits = out.logits[:, -1, :].float()
        batch.keys, batch.values = cache_tensors(out.cache)
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
        started = handle.started_at or handle.submitted_at
        handle._push(
            StreamEvent(
                row=0,
                output=SteeredOutput(
                    text=state.emitted,
                    verdict=handle.verdict,
                    steering=row.steering,
                    prompt_tokens=len(request.prompt),
                    completion_tokens=len(state.ids),
                    finish_reason=state.finish,
                    first_reply=request.first_reply,
                    timings={
                        "classify_s": row.classify_s,
                        "generate_s": time.perf_counter() - started,
                        "queue_s": max(0.0, started - handle.submitted_at - row.classify_s),
                    },
                ),
            ),
            done=True,
        )
        return None
