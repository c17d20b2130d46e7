"""Retry a reply steered away from refusal that still refuses: once, steered `factor` times as far.

On the default model one coefficient does not un-refuse every benign prompt sigma reaches: a quarter of OKTest still
refuses at -1. Retrying those at -2 meets the project's benign goals (XSTest safe -16, OKTest -24 points, measured
end to end: benchmarks/retry_end_to_end.py) at +0.18 nats/token, but 2 more HarmfulQ prompts that sigma scores benign
then comply, and a retried reply is less fluent (docs/steering.md), so it is opt-in.
Only rows sigma steered away are judged; their first `judge_tokens` tokens are held back from the stream until the
judge has read them (the measured recipe judged 16-token replies). The step scheduler runs the retry
(`scans_guard.serving.scheduler_rows`): a refused row leaves the batch and is queued again, steered further, on the same
request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..config import RowSteering, SafetyVerdict
from .judge import RefusalJudge, get_judge

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class RetryPolicy(BaseModel):
    """When and how far to retry a steered reply that still refuses."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    factor: float = Field(2.0, gt=1, description="the retry's coefficient: factor x the first one (-1 -> -2)")
    judge_tokens: int = Field(16, ge=1, description="tokens of the first reply the judge reads before deciding")
    judge: str | Callable[[str, str], bool] = Field(
        "keyword",
        description="refusal judge: a name for scans_guard.steering.judge.get_judge, or a callable(prompt, reply)",
    )

    @field_validator("judge")
    @classmethod
    def _known_judge(cls, judge: str | Callable[[str, str], bool]) -> str | Callable[[str, str], bool]:
        if isinstance(judge, str):
            get_judge(judge)  # an unknown name fails here, not after the first reply
        return judge

    @staticmethod
    def applies(retry: RetryPolicy | None, steer: bool, coefficient: object) -> RetryPolicy | None:
        """The retry a request gets: only sigma's own steering is retried (never plain or fixed-coefficient rows)."""
        return retry if steer and coefficient is None else None

    def refusal_judge(self) -> RefusalJudge:
        return get_judge(self.judge) if isinstance(self.judge, str) else self.judge

    def steering(self, verdict: SafetyVerdict) -> RowSteering:
        """What the retry adds: factor x the verdict's coefficient (no second sigma pass)."""
        return RowSteering.of(self.factor * verdict.coefficient, "retry", "steer")

    def gate(self, prompt: str, tokenizer: PreTrainedTokenizerBase, judge: RefusalJudge | None = None) -> JudgeGate:
        """A gate for one reply to `prompt` (`judge`: this policy's, already built, to share it between rows)."""
        return JudgeGate(prompt, judge or self.refusal_judge(), tokenizer, self.judge_tokens)


@dataclass
class JudgeGate:
    """One reply steered away, held back until the judge decides (fed by the step scheduler, token by token)."""

    prompt: str
    judge: RefusalJudge
    tokenizer: PreTrainedTokenizerBase
    judge_tokens: int
    text: str = ""  # the reply so far, held back from the stream
    refused: bool | None = None  # None: the judge has not decided yet

    def feed(self, piece: str, ended: bool) -> bool:
        """Hold `piece` (`ended`: the reply ended with it); True once the judge has read `judge_tokens` tokens or
        the whole reply and decided (`refused`; `text` is what it read)."""
        self.text += piece
        if not ended and len(self.tokenizer.encode(self.text, add_special_tokens=False)) < self.judge_tokens:
            return False
        self.refused = bool(self.judge(self.prompt, self.text))
        return True
