"""LangChain integration of scans-guard: a steered chat model, sigma(q) as a classifier, guards and middleware.

    from scans_guard_langchain import SafetyConsciousLLM
    llm = SafetyConsciousLLM.from_default()
    llm.invoke("How do I kill a Python process?").response_metadata["label"]

The agent middleware (`ScansGuardMiddleware`) needs the `langchain` package (v1); everything else needs only
`langchain-core`.
"""

from __future__ import annotations

from typing import Any

from ._convert import message_text, messages_to_conversation, state_to_conversation, to_conversation
from ._decision import Decision, decide, violation_text
from ._messages import verdict_from_metadata
from ._report import EVENT_NAME, LOGGER_NAME
from .adapters import DEFAULT_REFUSAL, SafetyBlocker, SafetyGuard, SafetyLogger, SafetyPolicy, SafetyRouter
from .chat_model import PROVIDER, SafetyConsciousLLM, refusal_message
from .classifier import SafetyClassifier, ScansDecisionModel
from .errors import HarmfulPromptError, ScansGuardTimeoutError

__all__ = [
    "DEFAULT_REFUSAL",
    "EVENT_NAME",
    "LOGGER_NAME",
    "PROVIDER",
    "Decision",
    "HarmfulPromptError",
    "SafetyBlocker",
    "SafetyClassifier",
    "SafetyConsciousLLM",
    "SafetyGuard",
    "SafetyLogger",
    "SafetyPolicy",
    "SafetyRouter",
    "ScansGuardTimeoutError",
    "ScansDecisionModel",
    "ScansGuardMiddleware",
    "message_text",
    "messages_to_conversation",
    "refusal_message",
    "state_to_conversation",
    "to_conversation",
    "decide",
    "verdict_from_metadata",
    "violation_text",
]


def __getattr__(name: str) -> Any:
    if name in ("ScansGuardMiddleware", "ScansGuardState"):  # imports langchain (v1), which is optional
        from . import middleware

        return getattr(middleware, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
