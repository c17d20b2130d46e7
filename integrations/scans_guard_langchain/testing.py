"""A tiny random model with a calibrated artifact, built in code in a few seconds (no files, no downloads).

For tests and for the examples' `--tiny` mode: its replies are gibberish, but classification, steering,
streaming and every LangChain code path run exactly as they do on a real model.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from scans_guard import CalibrationConfig, ScansEngine

TINY_ENV = "SCANS_GUARD_TINY"


def tiny_requested(argv: list[str] | None = None) -> bool:
    """True if `--tiny` is among argv or $SCANS_GUARD_TINY is set to 1/true/yes."""
    return "--tiny" in (argv or []) or os.environ.get(TINY_ENV, "").lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=1)
def tiny_engine() -> ScansEngine:
    """The tiny Qwen2 of `scans_guard.testing.tiny_model()` with an artifact calibrated on it (cached)."""
    from scans_guard.calibration.fit import calibrate
    from scans_guard.testing import tiny_model

    handle = tiny_model("qwen2", seed=0)
    config = CalibrationConfig(
        n_anchors=8, n_threshold=8, steer_layers=[1, 2], classify_layers=[1, 2], alpha_benign=4.0, alpha_harmful=4.0
    )
    return ScansEngine(handle, calibrate(handle, config, progress=False))


def tiny_llm(**fields: Any):
    """A SafetyConsciousLLM on `tiny_engine()` (max_tokens 16 and policy "steer" unless given: the tiny model's random
    sigma would block arbitrary prompts under the default guard+steer)."""
    from .chat_model import SafetyConsciousLLM

    return SafetyConsciousLLM(engine=tiny_engine(), **{"max_tokens": 16, "policy": "steer", **fields})


def example_llm(argv: list[str] | None = None, **fields: Any):
    """The examples' model: the tiny one with --tiny / SCANS_GUARD_TINY=1, else the embedded default model."""
    from .chat_model import SafetyConsciousLLM

    if tiny_requested(argv):
        return tiny_llm(**fields)
    return SafetyConsciousLLM.from_default(**fields)


class ScriptedEngine(ScansEngine):
    """An engine that classifies for real but answers with scripted replies, streamed a few characters at a time.

    For tests and examples of what a real model's reply *text* would do (tool calls, JSON, refusals) on the tiny
    model, whose own replies are gibberish. Every conversation it was asked to answer is kept in `seen`, its
    GenerationConfig (a constraint, say) in `configs`.
    """

    def __init__(self, engine: ScansEngine, replies: list[str]):
        super().__init__(
            engine.handle, engine.artifact, check_fingerprint=False, max_input_tokens=engine.max_input_tokens
        )
        self.replies = list(replies)
        self.seen: list[Any] = []
        self.coefficients: list[Any] = []
        self.configs: list[Any] = []

    def iter_generate(
        self, conversations: Any, config: Any = None, *, steer: bool = True, coefficient: Any = None, **kwargs: Any
    ):
        from scans_guard.config import SteeredOutput
        from scans_guard.engine import StreamEvent

        (conversation,) = conversations
        self.seen.append(conversation)
        self.coefficients.append(coefficient)
        self.configs.append(config)
        verdict = self.classify([conversation])[0] if steer and coefficient is None else None
        yield StreamEvent(row=0, verdict=verdict)
        text = self.replies.pop(0)
        for i in range(0, len(text), 3):
            yield StreamEvent(row=0, text=text[i : i + 3])
        yield StreamEvent(
            row=0,
            output=SteeredOutput(
                text=text,
                verdict=verdict,
                prompt_tokens=len(self.handle.chat_ids(conversation)),
                completion_tokens=len(self.handle.encode(text, content=True)),
                finish_reason="stop",
            ),
        )

    async def aiter_generate(self, conversations: Any, config: Any = None, **kwargs: Any):
        """The scripted reply for asyncio callers (`ainvoke`, `astream`), as `iter_generate` streams it."""
        for event in self.iter_generate(conversations, config, **kwargs):
            yield event


def scripted_llm(replies: list[str], engine: ScansEngine | None = None, **fields: Any):
    """A SafetyConsciousLLM whose replies are `replies`, in order (classification is real, on `engine` or the
    tiny engine; policy "steer" unless given, as `tiny_llm`)."""
    from .chat_model import SafetyConsciousLLM

    return SafetyConsciousLLM(engine=ScriptedEngine(engine or tiny_engine(), replies), **{"policy": "steer", **fields})
