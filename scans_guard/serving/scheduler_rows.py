"""The continuous batcher's rows: a request waiting to join, a row of the running batch, and a held row's retry.

A row sigma steered away under a `RetryPolicy` holds its text in a `JudgeGate` until the judge decides; a refusal turns
its request into a fixed-coefficient request (factor x the verdict's coefficient) on the same handle, which the
batcher puts back at the front of its queue (`scans_guard.serving.scheduler`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

from ..config import GenerationConfig, RowSteering, SteeredOutput
from ..decoding.grammar_mask import CompiledConstraint
from ..decoding.reply import ReplyState
from ..sigma.decision import GuardPolicy
from ..sigma.readings import Conversation
from ..steering.plan import _TokenChooser
from ..steering.retry import JudgeGate, RetryPolicy
from .request_handle import RequestHandle


@dataclass
class QueuedRequest:
    """A submitted request, waiting to join the batch (or queued again for its retry)."""

    conversation: Conversation
    prompt: list[int]
    config: GenerationConfig
    max_batch: int | None  # joins only a batch of fewer rows (None: the batcher's max_batch)
    classify: bool  # run the sigma pass
    steer: bool  # steer by the verdict (with classify)
    fixed: RowSteering  # the steering of a request that is not classified (plain, a fixed coefficient, a retry)
    refusal: str | None  # guard mode: answer a request the guard blocks with this text, without generating
    operating_point: str
    handle: RequestHandle
    deadline: float | None
    retry: RetryPolicy | None = None  # judge a reply sigma steered away; None: do not (or already retried)
    first_reply: str | None = None  # a retried request's first reply, as far as the judge read it
    classify_s: float = 0.0  # a retried request's sigma pass, before its first reply
    guard: GuardPolicy = field(default_factory=GuardPolicy)  # what a guarded request (refusal set) blocks
    grammar: CompiledConstraint | None = None  # config.constraint compiled for the model (at submit)
    reuse_cache: bool = True  # a classified row decodes on the sigma pass's KV cache (False: prefilled afresh)


@dataclass
class RunningRow:
    """A row of the running batch."""

    request: QueuedRequest
    chooser: _TokenChooser
    steering: RowSteering  # what this row adds at the steer layers; its output records it
    state: ReplyState = field(default_factory=ReplyState)
    steps: int = 0
    classify_s: float = 0.0
    gate: JudgeGate | None = None  # a reply held back until the retry's judge decides
    again: QueuedRequest | None = None  # after the judge found a refusal: the request to queue again

    def output(self) -> SteeredOutput:
        """The ended reply as its request's output, with the steering applied and where the time went."""
        request, state, handle = self.request, self.state, self.request.handle
        assert state.finish is not None  # only an ended reply has an output
        started = handle.started_at or handle.submitted_at
        return SteeredOutput(
            text=state.emitted,
            verdict=handle.verdict,
            steering=self.steering,
            prompt_tokens=len(request.prompt),
            completion_tokens=len(state.ids),
            finish_reason=state.finish,
            first_reply=request.first_reply,
            timings={
                "classify_s": self.classify_s,
                "generate_s": time.perf_counter() - started,
                "queue_s": max(0.0, started - handle.submitted_at - self.classify_s),
            },
        )

    def judged(self, piece: str) -> str | None:
        """Feed a held row's new text to its gate: the text to stream now ("" while held), or None once the row
        must leave the batch: the judge found a refusal (`again` is set) or raised (the request fails alone)."""
        gate, request = self.gate, self.request
        if gate is None:  # nothing held back
            return piece
        try:
            if not gate.feed(piece, self.state.finish is not None):
                return ""
        except Exception as exc:  # a caller's judge that raises fails its own request, not the batch
            request.handle._push(error=exc)
            return None
        self.gate = None
        if not gate.refused:
            return gate.text
        retry, verdict = request.retry, request.handle.verdict
        assert retry is not None and verdict is not None  # a gate is made only for a classified row with a retry
        self.again = dataclasses.replace(
            request,
            classify=False,
            steer=False,
            fixed=retry.steering(verdict),
            retry=None,
            first_reply=gate.text,
            classify_s=self.classify_s,
        )
        return None
