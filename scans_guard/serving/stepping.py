"""The scheduler's decoding step: one forward pass over every running row, each row's token, rows that end leave.

Mixed into `ContinuousBatcher` (`scans_guard.serving.scheduler`) as `Admission` is: every row feeds one token with its
own attention mask and position, under the running rows' `SteeringPlan`; each chooses its token with its own chooser
and `ReplyState.advance` ends its reply (EOS, stop string, length); finished rows leave the batch at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import torch

from ..core import ScansCore
from ..decoding.reply import StreamEvent
from ..model.kv_cache import KVBatch, cache_tensors, make_cache
from ..model.loading import ModelHandle
from ..model.prompt_batch import forward_step
from ..steering.plan import SteeringPlan
from .request_handle import RequestTimeoutError
from .scheduler_rows import QueuedRequest, RunningRow


class Stepping:
    """The scheduler's decoding step (mixed into `ContinuousBatcher`)."""

    engine: ScansCore
    _model: ModelHandle
    _batch: KVBatch | None
    _plan: SteeringPlan | None
    _cond: threading.Condition
    _waiting: collections.deque[QueuedRequest]
    _listeners: list[Callable[[int], None]]
    _eos: set[int]
    steps: int

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
        self.steps += 1
        for listener in list(self._listeners):  # before the tokens reach their callers: a finished call saw every step
            listener(len(batch.rows))
        tokens = [self._accept(row, row.chooser(logits[i : i + 1])) for i, row in enumerate(batch.rows)]
        batch.inputs = torch.tensor([t if t is not None else 0 for t in tokens], dtype=torch.long, device=mask.device)
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
