"""Typed errors of the LangChain integration."""

from __future__ import annotations

from scans_guard.config import SafetyVerdict
from scans_guard.errors import ScansGuardError

_WHAT = {"input": "prompt", "output": "reply", "tool_result": "tool result"}


class HarmfulPromptError(ScansGuardError):
    """A guard blocked a prompt (`stage` "input"), a reply ("output": it complied with a grey or harmful request) or
    a tool result ("tool_result"): `verdict` is sigma's verdict (None when classification failed and the guard
    fails closed; `cause` then holds the classification error)."""

    def __init__(
        self,
        verdict: SafetyVerdict | None,
        *,
        band: str = "harmful",
        cause: BaseException | None = None,
        message: str | None = None,
        stage: str = "input",
    ):
        self.verdict = verdict
        self.band = band
        self.cause = cause
        self.stage = stage
        if message is None:
            if verdict is None:
                message = (
                    f"prompt blocked: classification failed ({type(cause).__name__}: {cause}) "
                    "and the guard fails closed"
                )
            else:
                message = (
                    f"{_WHAT.get(stage, stage)} blocked as {band}: sigma score {verdict.score:.4f} "
                    f"(threshold {verdict.threshold:.4f}, label {verdict.label})"
                )
        super().__init__(message)


class ScansGuardTimeoutError(ScansGuardError, TimeoutError):
    """A call ran past the chat model's `timeout`: decoding stopped between two steps (the classification pass
    itself is not interrupted; `max_input_tokens` bounds it). `elapsed_s` is how long it had run."""

    def __init__(self, timeout: float, elapsed_s: float):
        self.timeout = timeout
        self.elapsed_s = elapsed_s
        super().__init__(f"generation stopped after {elapsed_s:.2f} s: over the timeout of {timeout:g} s")
