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
    from scans_guard.calibration import calibrate
    from scans_guard.testing import tiny_model

    handle = tiny_model("qwen2", seed=0)
    config = CalibrationConfig(n_anchors=8, n_threshold=8, steer_layers=[1, 2], classify_layers=[1, 2],
                               alpha_benign=4.0, alpha_harmful=4.0)
    return ScansEngine(handle, calibrate(handle, config, progress=False))


def tiny_llm(**fields: Any):
    """A SafetyConsciousLLM on `tiny_engine()` (max_tokens 16 unless given)."""
    from .chat_model import SafetyConsciousLLM

    return SafetyConsciousLLM(engine=tiny_engine(), **{"max_tokens": 16, **fields})


def example_llm(argv: list[str] | None = None, **fields: Any):
    """The examples' model: the tiny one with --tiny / SCANS_GUARD_TINY=1, else the embedded default model."""
    from .chat_model import SafetyConsciousLLM

    if tiny_requested(argv):
        return tiny_llm(**fields)
    return SafetyConsciousLLM.from_default(**fields)
