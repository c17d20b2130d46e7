"""Continuous batching: requests join the running batch at the next decoding step and leave as soon as they end.

`ContinuousBatcher(engine)` owns one worker thread and one running batch. `submit(conversation, config, ...)` returns
a `RequestHandle` at once; its `StreamEvent`s (the engine's: the verdict, text pieces, then the output) can be
iterated in a thread or awaited in asyncio, and `cancel()` ends the request at the next step.

Each step of the worker:

1. Admission. Waiting requests (up to `max_batch` rows in all) are classified together: one `ScansEngine._sigma`
   pass over all newcomers that need sigma (its KV cache kept, as `iter_generate` does), one prefill over those that
   do not (plain, or a fixed coefficient). A row's first input is then decided as the engine decides it alone: an
   unsteered row takes its first token from the pass's logits and feeds that token next; a steered row drops its last
   prompt token from the cache and feeds it again, so steering starts at the last prompt token and never touches the
   earlier ones. Newcomers' caches are merged into the running batch by left-padding every row to a common length
   (keys and values `[batch, heads, seq, head_dim]` per layer; the padding is masked out).
2. One forward pass over every running row: one input token each, the row's own attention mask and position, and
   the steering hooks adding each row's own delta (`coefficient * v^l`, a `[batch, hidden]` tensor per layer).
3. Each row chooses its token with its own sampling settings (transformers' processors, its own seeded generator),
   and its text is cut and held back exactly as `ScansEngine._visible_text` does.
4. Rows that finished, were cancelled or ran out of time leave the batch at once (the cache's batch dimension is
   index-selected and columns that are padding in every remaining row are dropped).

Every forward pass runs under the model's lock (`ModelHandle.lock`), one step at a time, with its hooks registered
and removed inside it, so direct engine calls on the same model interleave with the batch as they do with each
other. Greedy output of each request is the output it gets alone (up to float rounding of a different batch shape,
as with the engine's own batching).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .batching import PromptBatch, prefill
from .config import GenerationConfig, SafetyVerdict, SteeredOutput
from .engine import Conversation, ScansEngine, StreamEvent, _coefficients, _Row
from .errors import InvalidArgumentError, NonFiniteScoreError, ScansGuardError, UnsupportedArchitectureError
from .hooks import add_to_block_outputs
from .steering import _TokenChooser, steering_deltas

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 16
DEFAULT_MAX_QUEUE = 64


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

    def result(self, timeout: float | None = None) -> SteeredOutput | None:
        """Wait for the output (None if cancelled); raises the request's error."""
        for event in iter(lambda: self.next_event(timeout), None):
            pass
        return self.output

    async def aresult(self) -> SteeredOutput | None:
        async for _ in self:
            pass
        return self.output


@dataclass
class _Request:
    conversation: Conversation
    prompt: list[int]
    config: GenerationConfig
    classify: bool  # run the sigma pass
    steer: bool  # steer by the verdict (with classify)
    coefficient: float | None  # fixed steering, no classification
    refusal: str | None  # guard mode: answer a harmful request with this text, without generating
    operating_point: str
    handle: RequestHandle
    deadline: float | None


@dataclass
class _Active:
    """A row of the running batch."""

    request: _Request
    chooser: _TokenChooser
    coefficient: float
    state: _Row = field(default_factory=_Row)
    steps: int = 0
    classify_s: float = 0.0


@dataclass
class _Batch:
    """The running batch: per-layer KV tensors, masks and positions, one row per active request."""

    keys: list[torch.Tensor]  # per layer [batch, heads, seq, head_dim]
    values: list[torch.Tensor]
    mask: torch.Tensor  # [batch, seq] 1 = real token
    positions: torch.Tensor  # [batch] position of the next input token
    inputs: torch.Tensor  # [batch] next input token
    rows: list[_Active]

    def select(self, index: Sequence[int], rows: list[_Active] | None = None) -> _Batch:
        """Rows `index` only (named `rows`, default: their own), without columns that are padding in all of them."""
        idx = torch.tensor(list(index), dtype=torch.long, device=self.mask.device)
        batch = _Batch([k[idx] for k in self.keys], [v[idx] for v in self.values], self.mask[idx],
                       self.positions[idx], self.inputs[idx], rows if rows is not None else [self.rows[i] for i in index])
        batch._trim()
        return batch

    def _trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        if self.mask.shape[1] == 0 or not self.rows:
            return
        first = int((self.mask != 0).int().argmax(dim=1).min()) if bool(self.mask.any()) else self.mask.shape[1]
        if first > 0:
            self.keys = [k[:, :, first:] for k in self.keys]
            self.values = [v[:, :, first:] for v in self.values]
            self.mask = self.mask[:, first:]

    @staticmethod
    def merge(a: _Batch | None, b: _Batch) -> _Batch:
        """Rows of `a` then `b`, left-padded to a common cache length."""
        if a is None or not a.rows:
            return b
        width = max(a.mask.shape[1], b.mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        return _Batch([torch.cat([pad(x, 2), pad(y, 2)]) for x, y in zip(a.keys, b.keys)],
                      [torch.cat([pad(x, 2), pad(y, 2)]) for x, y in zip(a.values, b.values)],
                      torch.cat([pad(a.mask, 1), pad(b.mask, 1)]), torch.cat([a.positions, b.positions]),
                      torch.cat([a.inputs, b.inputs]), a.rows + b.rows)


def _cache_tensors(cache: object) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values of a transformers DynamicCache of full-attention layers."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(layer, "is_sliding", False) or not hasattr(layer, "keys") for layer in layers):
        raise UnsupportedArchitectureError(
            f"continuous batching needs a dynamic full-attention KV cache, got {type(cache).__name__}")
    return [layer.keys for layer in layers], [layer.values for layer in layers]


def _make_cache(keys: list[torch.Tensor], values: list[torch.Tensor]) -> object:
    """A DynamicCache whose layers hold these tensors (no copy; the forward pass appends to them)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for k, v in zip(keys, values):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


class ContinuousBatcher:
    """Serve many requests on one engine with continuous batching (see the module docstring).

    `max_batch`: rows decoding at once; `max_queue`: requests waiting to join (more raise QueueFullError);
    `on_step(batch_size)`: called after every decoding step (metrics).
    """

    def __init__(self, engine: ScansEngine, *, max_batch: int = DEFAULT_MAX_BATCH,
                 max_queue: int = DEFAULT_MAX_QUEUE, on_step: Callable[[int], None] | None = None):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.engine = engine
        self.handle = engine.handle
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.on_step = on_step
        self._waiting: collections.deque[_Request] = collections.deque()
        self._batch: _Batch | None = None
        self._deltas: dict[int, torch.Tensor] | None = None  # of the current batch rows; None: recompute
        self._cond = threading.Condition()
        self._closed = False
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._eos = None
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
    ) -> RequestHandle:
        """Queue one conversation; returns at once. Bad input raises the engine's typed errors here.

        steer / coefficient: as `ScansEngine.iter_generate` (steer=False: plain; coefficient: fixed, unclassified).
        refusal: guard mode: a request labelled harmful at `operating_point` gets this text as its output without any
        decoding (the handle's `refused` is set); the others are generated as usual (steered unless steer=False).
        timeout: seconds from now until the request fails with RequestTimeoutError.
        """
        config = config or GenerationConfig()
        if isinstance(conversation, list) and conversation and not isinstance(conversation[0], dict):
            raise InvalidArgumentError("submit takes one conversation; submit each of a batch separately")
        if coefficient is not None:
            coefficient = float(_coefficients(coefficient, 1)[0])
        if timeout is not None and not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise InvalidArgumentError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.engine.artifact.threshold(operating_point)  # an unknown operating point fails here
        prompt = self.engine._prompt_rows([conversation], config.max_new_tokens)[0]
        handle = RequestHandle(next(self._ids), len(prompt))
        request = _Request(conversation=conversation, prompt=prompt, config=config,
                           classify=coefficient is None and (steer or refusal is not None),
                           steer=steer and coefficient is None, coefficient=coefficient, refusal=refusal,
                           operating_point=operating_point, handle=handle,
                           deadline=None if timeout is None else time.perf_counter() + timeout)
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

    def generate(self, conversation: Conversation, config: GenerationConfig | None = None,
                 **kwargs: object) -> SteeredOutput:
        """Submit and wait for the output (blocking)."""
        return self.submit(conversation, config, **kwargs).result()

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
        batch, self._batch = self._batch, None
        for request in waiting + ([row.request for row in batch.rows] if batch else []):
            request.handle._push(error=error)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._batch:
                    self._cond.wait()
                if self._closed:
                    return
                free = self.max_batch - self.running
                admit = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            self._expire()
            if admit:
                self._admit(admit)
            if self._batch is None:
                continue
            try:
                self._step()
            except Exception as exc:  # a failed forward pass: fail what is running, keep serving
                log.exception("continuous batching step failed")
                batch, self._batch, self._deltas = self._batch, None, None
                for row in batch.rows:
                    row.request.handle._push(error=exc)

    def _expire(self) -> None:
        """Fail waiting requests past their deadline and drop cancelled ones from the queue."""
        now = time.perf_counter()
        with self._cond:
            keep = collections.deque()
            for request in self._waiting:
                if request.handle.cancelled:
                    continue
                if request.deadline is not None and now > request.deadline:
                    request.handle._push(error=RequestTimeoutError("the request timed out waiting to join the batch"))
                    continue
                keep.append(request)
            self._waiting = keep

    # -- admission ------------------------------------------------------------------------------------------
    def _admit(self, requests: list[_Request]) -> None:
        """Newcomers' passes, batched: one sigma pass per operating point, one prefill for the unclassified. A pass
        that fails fails its own requests only; the running batch goes on."""
        requests = [r for r in requests if not r.handle.cancelled]
        sigma = [r for r in requests if r.classify]
        groups = [(self._admit_classified, [r for r in sigma if r.operating_point == point], point)
                  for point in sorted({r.operating_point for r in sigma})]
        plain = [r for r in requests if not r.classify]
        if plain:
            groups.append((self._admit_prefilled, plain, None))
        for admit, group, *args in groups:
            try:
                admit(group, *[a for a in args if a is not None])
            except Exception as exc:
                log.exception("admitting %d request(s) failed", len(group))
                for request in group:
                    request.handle._push(error=exc)

    def _admit_classified(self, requests: list[_Request], operating_point: str) -> None:
        """One sigma pass over the newcomers (its cache kept); each row then joins as the engine would start it."""
        t0 = time.perf_counter()
        try:
            sp, verdicts = self.engine._sigma([r.conversation for r in requests], [r.prompt for r in requests],
                                              keep_cache=True, operating_point=operating_point)
        except NonFiniteScoreError as exc:  # fail that request alone, classify the others again
            requests[exc.index].handle._push(error=NonFiniteScoreError(0))
            rest = requests[:exc.index] + requests[exc.index + 1:]
            if rest:
                self._admit_classified(rest, operating_point)
            return
        classify_s = time.perf_counter() - t0
        keys, values = _cache_tensors(sp.cache)
        mask = sp.prompt_batch.attention_mask
        logits = sp.last_prompt_logits
        first_token, steered = [], []
        for i, (request, verdict) in enumerate(zip(requests, verdicts)):
            handle = request.handle
            handle.verdict = verdict
            handle._push(StreamEvent(row=0, verdict=verdict))
            if handle.cancelled:
                continue
            if request.refusal is not None and verdict.is_harmful:
                handle.refused = True
                handle._push(StreamEvent(row=0, output=SteeredOutput(
                    text=request.refusal, verdict=verdict, prompt_tokens=len(request.prompt), completion_tokens=0,
                    finish_reason="stop", timings={"classify_s": classify_s, "generate_s": 0.0,
                                                   "queue_s": t0 - handle.submitted_at})), done=True)
                continue
            coefficient = verdict.coefficient if request.steer else 0.0
            (steered if coefficient != 0 else first_token).append((i, coefficient))
        full = _Batch(keys, values, mask, torch.tensor([len(r.prompt) for r in requests], device=mask.device),
                      torch.zeros(len(requests), dtype=torch.long, device=mask.device), [])
        if first_token:  # unsteered: token 1 comes from the sigma pass, as in iter_generate
            rows = [self._active(requests[i], c, classify_s) for i, c in first_token]
            self._join(full, [i for i, _ in first_token], rows, logits)
        if steered:  # steering starts at the last prompt token: drop it from the cache and feed it again
            rows = [self._active(requests[i], c, classify_s) for i, c in steered]
            cropped = _Batch([k[..., :-1, :] for k in keys], [v[..., :-1, :] for v in values], mask[:, :-1],
                             full.positions - 1, sp.prompt_batch.input_ids[:, -1], [])
            self._join(cropped, [i for i, _ in steered], rows, None)

    def _admit_prefilled(self, requests: list[_Request]) -> None:
        """One prefill over newcomers without classification (plain, or a fixed coefficient from their last prompt
        token on, as `steered_decode` prefills them); token 1 comes from its logits."""
        prompts = PromptBatch.left_pad([r.prompt for r in requests], self.handle.tokenizer.pad_token_id,
                                       self.handle.device)
        coefs = torch.tensor([r.coefficient or 0.0 for r in requests])
        deltas = self._steering(coefs)
        width = prompts.input_ids.shape[1]
        with torch.inference_mode(), self.handle.lock, \
                add_to_block_outputs(self.handle.layers, deltas, start_column=width - 1):
            out = prefill(self.handle.model, prompts, use_cache=True, logits_to_keep=1)
        keys, values = _cache_tensors(out.cache)
        full = _Batch(keys, values, prompts.attention_mask,
                      torch.tensor(prompts.lengths, device=prompts.attention_mask.device),
                      torch.zeros(len(requests), dtype=torch.long, device=prompts.attention_mask.device), [])
        rows = [self._active(r, float(c), 0.0) for r, c in zip(requests, coefs.tolist())]
        self._join(full, list(range(len(requests))), rows, out.logits[:, -1, :].float())

    def _active(self, request: _Request, coefficient: float, classify_s: float) -> _Active:
        prompts = PromptBatch.left_pad([request.prompt], self.handle.tokenizer.pad_token_id, self.handle.device)
        return _Active(request=request, chooser=_TokenChooser(request.config, prompts), coefficient=coefficient,
                       classify_s=classify_s)

    def _join(self, group: _Batch, index: list[int], rows: list[_Active], logits: torch.Tensor | None) -> None:
        """Rows `index` of `group` (a newcomers' pass) join the running batch as `rows`; with `logits`, each first
        chooses its token from them."""
        part = group.select(index, rows)
        now = time.perf_counter()
        for row in rows:
            row.request.handle.started_at = now
        if logits is not None:
            tokens = [self._accept(row, row.chooser(logits[i:i + 1])) for row, i in zip(rows, index)]
            part.inputs = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long,
                                       device=part.mask.device)
            keep = [j for j, t in enumerate(tokens) if t is not None]
            if len(keep) < len(rows):
                part = part.select(keep)
        if part.rows:
            self._batch = _Batch.merge(self._batch, part)
            self._deltas = None

    # -- decoding -------------------------------------------------------------------------------------------
    def _steering(self, coefs: torch.Tensor) -> dict[int, torch.Tensor]:
        if not bool(coefs.any()):
            return {}
        return steering_deltas(self.engine._vectors, self.engine.recipe.steer_layers, coefs, self.handle)

    def _step(self) -> None:
        batch = self._batch
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
        if self._deltas is None:
            self._deltas = self._steering(torch.tensor([row.coefficient for row in batch.rows]))
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        cache = _make_cache(batch.keys, batch.values)
        with torch.inference_mode(), self.handle.lock, \
                add_to_block_outputs(self.handle.layers, self._deltas, start_column=0):
            out = self.handle.model(input_ids=batch.inputs[:, None], attention_mask=mask,
                                    position_ids=batch.positions[:, None], cache=cache, use_cache=True,
                                    logits_to_keep=1)
        logits = out.logits[:, -1, :].float()
        batch.keys, batch.values = _cache_tensors(out.cache)
        batch.mask = mask
        batch.positions = batch.positions + 1
        tokens = [self._accept(row, row.chooser(logits[i:i + 1])) for i, row in enumerate(batch.rows)]
        batch.inputs = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long,
                                    device=mask.device)
        self.steps += 1
        if self.on_step is not None:
            self.on_step(len(batch.rows))
        finished = [i for i, t in enumerate(tokens) if t is None]
        if finished:
            self._drop(finished)

    def _drop(self, index: list[int]) -> None:
        batch = self._batch
        gone = set(index)
        keep = [i for i in range(len(batch.rows)) if i not in gone]
        self._batch = batch.select(keep) if keep else None
        self._deltas = None

    def _accept(self, row: _Active, token_tensor: torch.Tensor) -> int | None:
        """Record one chosen token of `row` (as `iter_generate` does); the token to feed next, or None if it ended."""
        token = int(token_tensor.reshape(-1)[0])
        request, state, handle = row.request, row.state, row.request.handle
        if handle.done:
            return None
        config = request.config
        row.steps += 1
        if handle.first_token_at is None:
            handle.first_token_at = time.perf_counter()
        row.chooser.emitted(token_tensor.reshape(1))
        if self._eos is None:
            self._eos = self.handle.eos_token_ids()
        if token in self._eos and not config.ignore_eos:
            state.finish = "stop"
        else:
            state.ids.append(token)
        text, hit_stop = self.engine._visible_text(state, config.stop, final=state.finish is not None)
        if hit_stop:
            state.finish = "stop"
        elif row.steps == config.max_new_tokens and state.finish is None:
            state.finish = "length"
            text, _ = self.engine._visible_text(state, config.stop, final=True)
        if len(text) > len(state.emitted):
            handle._push(StreamEvent(row=0, text=text[len(state.emitted):]))
            state.emitted = text
        if state.finish is None:
            return token
        started = handle.started_at or handle.submitted_at
        handle._push(StreamEvent(row=0, output=SteeredOutput(
            text=state.emitted, verdict=handle.verdict, prompt_tokens=len(request.prompt),
            completion_tokens=len(state.ids), finish_reason=state.finish,
            timings={"classify_s": row.classify_s, "generate_s": time.perf_counter() - started,
                     "queue_s": max(0.0, started - handle.submitted_at - row.classify_s)})), done=True)
        return None
