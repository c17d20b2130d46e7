"""`ScansGuardMiddleware`'s strategies: one object per strategy says what the input decision does.

A strategy says whether the human turn is classified before the model runs (`classifies_input`), what that
decision adds to the agent state (`input_update`) and which model, or canned reply, answers a call (`model_request`).
"""

from __future__ import annotations

from typing import Any

from langchain.agents.middleware.types import ModelRequest
from langchain_core.messages import AIMessage, HumanMessage

from scans_guard.config import SafetyVerdict

from ._agent_state import GuardSettings, readable_text, state_record
from ._decision import Decision
from .chat_model import SafetyConsciousLLM, refusal_message


class _Steer:
    """Every model call is answered by a SafetyConsciousLLM under this strategy's policy: it classifies the whole
    conversation it is given (system prompt, tool calls and tool results included), blocks what the guard rejects
    ("guard+steer") and steers the rest; tools are bound to it as usual."""

    classifies_input = False

    def __init__(self, name: str) -> None:
        self.name = self.policy = name

    def model_request(self, mw: GuardSettings, request: ModelRequest) -> ModelRequest | AIMessage:
        model = request.model
        if not isinstance(model, SafetyConsciousLLM):
            if not mw.replace_model:
                raise TypeError(
                    f"strategy={self.name!r} answers with a SafetyConsciousLLM, but the agent's model is "
                    f"{type(model).__name__}: pass the steered model to create_agent, or set "
                    "replace_model=True to answer with the middleware's guard model instead"
                )
            assert mw.llm is not None  # a strategy that steers has one (checked on construction)
            model = mw.llm
        if model.policy != self.policy:
            model = model.model_copy(update={"policy": self.policy, "guard": mw.policy})
        return request.override(model=model) if model is not request.model else request

    def input_update(self, mw: GuardSettings, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


class _Block:
    """A harmful (with block_grey, also grey) human turn is a violation before the agent's model runs."""

    name, classifies_input = "block", True

    def model_request(self, mw: GuardSettings, request: ModelRequest) -> ModelRequest | AIMessage:
        return request

    def input_update(self, mw: GuardSettings, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        if decision.action != "block":
            return {}
        return mw._violation(decision, "input", readable_text(human), None)


class _Route:
    """Each model call goes to routes[band]: a chat model, a canned reply (str) or None (the agent's model)."""

    name, classifies_input = "route", True

    def model_request(self, mw: GuardSettings, request: ModelRequest) -> ModelRequest | AIMessage:
        record = state_record(request.state)
        if record is None:
            return request
        band = record["band"]
        route = mw.routes.get(band, mw.routes.get("harmful") if band == "grey" else None)
        if route is None:
            return request
        if isinstance(route, str):
            verdict = SafetyVerdict.model_validate(record["verdict"]) if record.get("verdict") else None
            return refusal_message(route, verdict=verdict, source=mw.name, extra={"band": band})
        return request.override(model=route)

    def input_update(self, mw: GuardSettings, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


class _Log(_Block):
    """Classification and reporting only."""

    name = "log"

    def input_update(self, mw: GuardSettings, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


STRATEGIES: dict[str, Any] = {
    "guard+steer": _Steer("guard+steer"),
    "steer": _Steer("steer"),
    "block": _Block(),
    "route": _Route(),
    "log": _Log(),
}
STEERING = ("steer", "guard+steer")
"""The strategies whose replies come from the steered model, carrying its verdict."""
