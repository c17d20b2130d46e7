"""What `ScansGuardMiddleware` keeps in an agent's state, the settings its checks read, and the steps its hooks run.

Each hook is written once, as a generator of steps (classify this, send that event, call the model with this
request), which a sync and an async driver run: the async one runs the blocking engine in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any, NotRequired, Protocol

from langchain.agents.middleware.types import AgentState
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage

from scans_guard.steering.retry import RetryPolicy

from ._convert import message_text
from ._decision import Decision, SafetyPolicy, Stage
from .chat_model import SafetyConsciousLLM

STATE_KEY = "scans_guard"
Step = tuple[str, Any]  # ("classify", messages) | ("event", fields) | ("call", ModelRequest)


class ScansGuardState(AgentState):
    """Agent state with the guard's record of the latest human turn: {"message_id", "band", "verdict", "error"}."""

    scans_guard: NotRequired[dict[str, Any]]


class GuardSettings(Protocol):
    """The middleware as its strategies and its output check read it (no import of the middleware module)."""

    llm: SafetyConsciousLLM | None
    replace_model: bool
    policy: SafetyPolicy
    block_grey: bool
    check_output: bool
    refusal_judge: Callable[[str, str], bool]
    retry: RetryPolicy | None
    logger: logging.Logger
    log_level: int | None

    @property
    def name(self) -> str: ...

    @property
    def strategy(self) -> str: ...

    @property
    def routes(self) -> Mapping[Any, BaseChatModel | str | None]: ...

    def _violation(
        self, decision: Decision, stage: Stage, content: str, replace: list[BaseMessage] | None
    ) -> dict[str, Any]: ...


def state_record(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guard's record of the latest human turn in an agent's state (`ScansGuardState`), if it holds one."""
    record = state.get(STATE_KEY)
    return record if isinstance(record, dict) and record else None


def readable_text(message: BaseMessage) -> str:
    """A message's text for log records and violation messages ("" when it has none that can be read)."""
    try:
        return message_text(message)
    except Exception:  # noqa: BLE001 - e.g. an image block: classification reports that error
        return ""


def latest(messages: Sequence[BaseMessage], kind: type) -> int | None:
    """The index of the last message of type `kind`, if any."""
    return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], kind)), None)


def drive(steps: Generator[Step, Any, Any], do: Callable[[Step], Any]) -> Any:
    """Run a hook's steps synchronously."""
    try:
        step = next(steps)
        while True:
            step = steps.send(do(step))
    except StopIteration as stop:
        return stop.value


async def adrive(steps: Generator[Step, Any, Any], do: Callable[[Step], Awaitable[Any]]) -> Any:
    """Run a hook's steps, awaiting each."""
    try:
        step = next(steps)
        while True:
            step = steps.send(await do(step))
    except StopIteration as stop:
        return stop.value
