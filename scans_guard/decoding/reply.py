"""How one reply ends and what of its text may be emitted (`ReplyState`, advanced by the step scheduler for every
request), and the events a reply streams as (`StreamEvent`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from ..config import GenerationConfig, SafetyVerdict, SteeredOutput


class StreamEvent(BaseModel):
    """A piece of a streamed generation: new text of one row; `output` is set on the row's last event."""

    row: int
    text: str = ""
    verdict: SafetyVerdict | None = None
    output: SteeredOutput | None = None


@dataclass
class ReplyState:
    """Decoding state of one reply: ids so far, text already emitted, and why it ended (None while it runs)."""

    ids: list[int] = field(default_factory=list)
    emitted: str = ""
    finish: str | None = None

    def advance(self, token: int, step: int, config: GenerationConfig, eos: set[int], tokenizer) -> str:
        """Record the token of decoding step `step` (1-based): the end of the reply (EOS, a stop string, or
        max_new_tokens) sets `finish`; returns the text newly safe to emit ("" if none)."""
        if token in eos:
            self.finish = "stop"
        else:
            self.ids.append(token)
        text, hit_stop = self._visible_text(tokenizer, config.stop, final=self.finish is not None)
        if hit_stop:
            self.finish = "stop"
        elif step == config.max_new_tokens and self.finish is None:
            self.finish = "length"
            text, _ = self._visible_text(tokenizer, config.stop, final=True)
        if len(text) <= len(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def _visible_text(self, tokenizer, stop: list[str], final: bool) -> tuple[str, bool]:
        """Text safe to emit so far and whether a stop string was hit (the text is cut before it).

        Until the reply ends, a trailing partial UTF-8 character and a tail that could begin a stop string
        are held back, so streamed chunks never need to be taken back.
        """
        text = tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for s in stop if (i := text.find(s)) >= 0]
        if cuts:
            return text[: min(cuts)], True
        if final:
            return text, False
        text = text.rstrip("\ufffd")
        hold = max((len(s) - 1 for s in stop), default=0)
        for k in range(min(hold, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in stop):
                return text[:-k], False
        return text, False
