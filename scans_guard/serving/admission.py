"""Admission to the running batch: newcomers' passes, batched, and where each row's decoding starts.

One rule decides a row's first input, for every request: an unsteered row takes its first token from the logits of
its pass (sigma's, or a prefill's) and feeds that token next; a steered row whose prompt the sigma pass cached drops
its last prompt token from the cache and feeds it again, so steering starts at the last prompt token and never
touches the earlier ones; a prefilled row (plain, a fixed coefficient, a retry, or a classified row that does not
reuse the sigma pass's cache) is prefilled with its steering from the last prompt token on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from ..config import RowSteering, SafetyVerdict, SteeredOutput
from ..core import ScansCore
from ..decoding.grammar_mask import ConstrainedRows
from ..decoding.reply import StreamEvent
from ..errors import NonFiniteScoreError
from ..model.kv_cache import KVBatch, cache_tensors
from ..model.loading import ModelHandle
from ..model.prompt_batch import PromptBatch, prefill
from ..sigma.readings import user_text
from ..steering.plan import SteeringPlan, _TokenChooser
from .scheduler_rows import QueuedRequest, RunningRow

log = logging.getLogger(__name__)


class Admission:
    """The scheduler's admission step (mixed into `ContinuousBatcher`)."""

    engine: ScansCore
    _model: ModelHandle
    _batch: KVBatch | None
    _plan: SteeringPlan | None

    def _accept(self, row: RunningRow, token_tensor: torch.Tensor) -> int | None:  # the scheduler's
        raise NotImplementedError

    def _admit(self, requests: list[QueuedRequest]) -> None:
        """Newcomers' passes, batched: one sigma pass per operating point, one prefill for the unclassified."""
        requests = [r for r in requests if not r.handle.done]  # cancelled, or failed while waiting
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
        """One sigma pass over the newcomers (its cache kept for the rows that reuse it); each row then joins as the
        rule of this module starts it."""
        t0 = time.perf_counter()
        try:
            sp, verdicts = self.engine.classify_rows(
                [r.conversation for r in requests],
                [r.prompt for r in requests],
                keep_cache=any(r.reuse_cache for r in requests),
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
        first_token: list[tuple[int, RowSteering]] = []
        steered: list[tuple[int, RowSteering]] = []
        fresh: list[tuple[int, RowSteering]] = []  # classified rows that do not reuse the sigma pass's cache
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
            (fresh if not request.reuse_cache else steered if row.coefficient != 0 else first_token).append((i, row))
        if fresh:
            self._admit_prefilled([requests[i] for i, _ in fresh], [c for _, c in fresh], classify_s)
        if not (first_token or steered) or sp.cache is None:
            return
        keys, values = cache_tensors(sp.cache)
        mask = sp.prompt_batch.attention_mask
        full = KVBatch(
            keys,
            values,
            mask,
            torch.tensor([len(r.prompt) for r in requests], device=mask.device),
            torch.zeros(len(requests), dtype=torch.long, device=mask.device),
            [],
        )
        if first_token:  # unsteered: token 1 comes from the sigma pass
            rows = [self._active(requests[i], c, classify_s) for i, c in first_token]
            self._join(full, [i for i, _ in first_token], rows, sp.last_prompt_logits)
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

    def _admit_prefilled(
        self,
        requests: list[QueuedRequest],
        steering: Sequence[RowSteering] | None = None,
        classify_s: float | None = None,
    ) -> None:
        """One prefill over newcomers, each steered by `steering` (default: its fixed steering) from its last prompt
        token on; token 1 comes from its logits. `classify_s`: the sigma pass the rows had (default: their own)."""
        steering = steering if steering is not None else [r.fixed for r in requests]
        prompts = PromptBatch.left_pad(
            [r.prompt for r in requests], self._model.tokenizer.pad_token_id, self._model.device
        )
        plan = SteeringPlan(tuple(steering))
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
        rows = [
            self._active(r, s, classify_s if classify_s is not None else r.classify_s)
            for r, s in zip(requests, steering)
        ]
        self._join(full, list(range(len(requests))), rows, out.logits[:, -1, :].float())

    def _active(self, request: QueuedRequest, steering: RowSteering, classify_s: float) -> RunningRow:
        prompts = PromptBatch.left_pad([request.prompt], self._model.tokenizer.pad_token_id, self._model.device)
        gate = None
        if request.retry is not None and steering.source == "sigma" and steering.coefficient < 0:
            gate = request.retry.gate(user_text(request.conversation), self._model.tokenizer)
        request.handle.steering, request.handle.judging = steering, gate is not None
        row = RunningRow(
            request=request,
            chooser=_TokenChooser(request.config, prompts, ConstrainedRows.build(self._model, [request.grammar])),
            steering=steering,
            classify_s=classify_s,
            gate=gate,
        )
        request.handle.token_ids = row.state.ids  # the reply's ids as they are chosen (a retry's start afresh)
        request.handle._notify()
        return row

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
