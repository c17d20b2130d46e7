"""Retry a reply steered away from refusal that still refuses: once, steered `factor` times as far.

On the default model one coefficient does not un-refuse every benign prompt sigma reaches: a quarter of OKTest still
refuses at -1. Retrying those at -2 meets the project's benign goals (XSTest safe -16, OKTest -24 points, measured
end to end: benchmarks/retry_end_to_end.py) at +0.18 nats/token, but 2 more HarmfulQ prompts that sigma scores benign
then comply, and a retried reply is less fluent (docs/steering.md), so it is opt-in.
Only rows sigma steered away are judged; their first `judge_tokens` tokens are held back from the stream until the
judge has read them (the measured recipe judged 16-token replies).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .config import GenerationConfig, RowSteering, SafetyVerdict
from .judge import RefusalJudge, get_judge

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .engine import Conversation, ScansEngine, StreamEvent


class RetryPolicy(BaseModel):
    """When and how far to retry a steered reply that still refuses."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)

    factor: float = Field(2.0, gt=1, description="the retry's coefficient: factor x the first one (-1 -> -2)")
    judge_tokens: int = Field(16, ge=1, description="tokens of the first reply the judge reads before deciding")
    judge: str | Callable[[str, str], bool] = Field(
        "keyword", description="refusal judge: a name for scans_guard.judge.get_judge, or a callable(prompt, reply)"
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
    """One reply steered away, held back until the judge decides: the engine and the continuous batcher both feed
    it, so a reply is judged on the same text whichever decodes it."""

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


@dataclass
class _Held:
    """A row steered away and its gate."""

    verdict: SafetyVerdict
    gate: JudgeGate


def retry_refused(
    engine: ScansEngine,
    conversations: Sequence[Conversation],
    events: Generator[StreamEvent, None, None],
    config: GenerationConfig,
    policy: RetryPolicy,
) -> Generator[StreamEvent, None, None]:
    """Pass `events` through; a row steered away whose first reply the judge calls a refusal is regenerated after
    the batch at factor x its coefficient (no second sigma pass), its output keeping the verdict and what the judge
    read of the first reply (as the continuous batcher records it). A refused row decodes on, unseen, only while
    other rows still need the batch: once every row has ended or been refused, the batch stops and the retry starts
    (a single refused request never decodes its first reply past the judge)."""
    from .engine import user_text

    judge, tokenizer = policy.refusal_judge(), engine.handle.tokenizer
    held: dict[int, _Held] = {}
    open_rows = set(range(len(conversations)))  # rows whose first reply the caller still waits for
    for event in events:
        r = event.row
        if event.verdict is not None and event.verdict.coefficient < 0:
            held[r] = _Held(event.verdict, policy.gate(user_text(conversations[r]), tokenizer, judge))
        if event.output is not None and event.output.finish_reason == "content_filter":
            held.pop(r, None)  # blocked by the guard: its refusal message is not a reply to judge
        h = held.get(r)
        if h is None or event.verdict is not None:
            yield event
        elif h.gate.refused is None and h.gate.feed(event.text, event.output is not None) and not h.gate.refused:
            del held[r]  # the judge let it pass: release what was held back, then stream on
            yield event.model_copy(update={"text": h.gate.text})
        # otherwise held back until the judge decides, or (refused) the rest of the first reply is dropped
        if event.output is not None or (h is not None and h.gate.refused):
            open_rows.discard(r)
        if not open_rows and any(x.gate.refused for x in held.values()):
            events.close()  # every other row has ended: stop decoding refused first replies, go to the retry
            break
    yield from _retry(engine, conversations, config, policy, {r: h for r, h in held.items() if h.gate.refused})


def _retry(
    engine: ScansEngine,
    conversations: Sequence[Conversation],
    config: GenerationConfig,
    policy: RetryPolicy,
    retried: dict[int, _Held],
) -> Iterator[StreamEvent]:
    """The refused rows once more, at factor x their coefficient, reported under their own row numbers."""
    rows = list(retried)
    if not rows:
        return
    steering = [policy.steering(retried[r].verdict) for r in rows]
    coefficients = [s.coefficient for s in steering]
    for event in engine.iter_generate([conversations[r] for r in rows], config, coefficient=coefficients):
        r = rows[event.row]
        if event.verdict is not None or (event.output is None and not event.text):
            continue
        update: dict = {"row": r}
        if event.output is not None:
            update["output"] = event.output.model_copy(
                update={
                    "verdict": retried[r].verdict,
                    "first_reply": retried[r].gate.text,
                    "steering": steering[event.row],
                }
            )
        yield event.model_copy(update=update)
