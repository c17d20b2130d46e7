"""A LangChain v1 agent middleware that puts sigma(q) and SCANS steering into `create_agent` agents."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    hook_config,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables.config import run_in_executor

from scans_guard.config import SafetyVerdict
from scans_guard.engine import ScansEngine

from ._convert import last_user_text, messages_to_conversation
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from .adapters import DEFAULT_REFUSAL, Band, OnError, SafetyPolicy
from .chat_model import SafetyConsciousLLM, refusal_message
from .classifier import SafetyClassifier
from .errors import HarmfulPromptError

Strategy = Literal["steer", "block", "route", "log"]
STATE_KEY = "scans_guard"


class ScansGuardState(AgentState):
    """Agent state with the guard's record of the latest human turn: {"message_id", "band", "verdict", "error"}."""

    scans_guard: NotRequired[dict[str, Any]]


class ScansGuardMiddleware(AgentMiddleware):
    """Guard an agent with sigma(q) and SCANS, in the manner of `PIIMiddleware`.

    Strategies:

    - "steer" (default): every model call is answered by the steered `SafetyConsciousLLM` (the agent's own model
      when it is one, else the one passed as `guard`). The LLM classifies the full conversation it is given
      (system prompt and tool turns included) and steers; the verdict from its reply is logged. It has no tool
      calling, so use it for agents without tools.
    - "block": `before_model` classifies the conversation in the agent state up to the latest human message once
      per human turn (an agent's `system_prompt` lives outside the state and is not part of it: the developer's
      prompt is trusted, and by the engine's rule a system prompt can only raise a score, never lower it);
      harmful (and, with `block_grey`, grey) turns end the run with a refusal AIMessage (`jump_to: "end"`;
      `on_block="refuse"`, default) or raise `HarmfulPromptError` (`on_block="raise"`).
    - "route": same classification; `wrap_model_call` sends the call to `routes[band]`: a chat model, a str
      (a canned reply, no model call) or None (the agent's model). "grey" falls back to the "harmful" route.
    - "log": classification and reporting only.

    Every verdict is reported: a log record (logger `scans_guard_langchain.middleware`, fields as `extra`, prompt
    text only with `log_prompts=True`) and a `scans_guard_verdict` custom callback event (with "steer", the steered
    model sends that event itself, in the same run). The verdict of the latest
    human turn is kept in state under "scans_guard" (block/route/log), so the agent's later model calls in the same
    turn (after tool results) reuse it instead of classifying again.

    on_error (classification failed, e.g. prompt longer than the context window, an image block): "raise"
    (default) propagates the error and stops the run, as LangChain's decision-driven middleware does; "block"
    fails closed (the turn is treated as harmful); "allow" fails open (treated as benign).
    """

    state_schema = ScansGuardState

    def __init__(
        self,
        guard: SafetyConsciousLLM | SafetyClassifier | ScansEngine,
        *,
        strategy: Strategy = "steer",
        routes: Mapping[Band, BaseChatModel | str | None] | None = None,
        policy: SafetyPolicy | None = None,
        on_block: Literal["refuse", "raise"] = "refuse",
        refusal: str = DEFAULT_REFUSAL,
        block_grey: bool = False,
        on_error: OnError = "raise",
        log_level: int | None = logging.INFO,
        log_prompts: bool = False,
        emit_events: bool = True,
    ) -> None:
        super().__init__()
        if strategy not in ("steer", "block", "route", "log"):
            raise ValueError(f"strategy must be steer, block, route or log, got {strategy!r}")
        self.llm = guard if isinstance(guard, SafetyConsciousLLM) else None
        if isinstance(guard, SafetyConsciousLLM):
            self.classifier = guard.classifier
        elif isinstance(guard, SafetyClassifier):
            self.classifier = guard
        elif isinstance(guard, ScansEngine):
            self.classifier = SafetyClassifier(engine=guard)
        else:
            raise TypeError(f"guard must be a SafetyConsciousLLM, SafetyClassifier or ScansEngine, "
                            f"got {type(guard).__name__}")
        if strategy == "route" and not routes:
            raise ValueError("strategy='route' needs routes={band: model | canned reply | None}")
        self.strategy = strategy
        self.routes = dict(routes or {})
        self.policy = policy or SafetyPolicy()
        self.on_block = on_block
        self.refusal = refusal
        self.block_grey = block_grey
        self.on_error = on_error
        self.log_level = log_level
        self.log_prompts = log_prompts
        self.emit_events = emit_events
        self.logger = logging.getLogger(f"{LOGGER_NAME}.middleware")

    @property
    def name(self) -> str:
        return f"ScansGuardMiddleware[{self.strategy}]"

    # -- classification (block / route / log) ----------------------------------------------------------------
    @staticmethod
    def _latest_human(messages: list[BaseMessage]) -> int | None:
        for i in range(len(messages) - 1, -1, -1):
            if isinstance(messages[i], HumanMessage):
                return i
        return None

    def _pending(self, state: Mapping[str, Any]) -> tuple[list[BaseMessage], HumanMessage] | None:
        """The conversation to classify, or None when there is no human turn or it was already classified."""
        if self.strategy == "steer":
            return None
        messages = list(state.get("messages") or [])
        idx = self._latest_human(messages)
        if idx is None:
            return None
        human = messages[idx]
        record = state.get(STATE_KEY)
        if record and human.id is not None and record.get("message_id") == human.id:
            return None
        return messages[: idx + 1], human

    def _classify(self, messages: list[BaseMessage]) -> SafetyVerdict | BaseException:
        try:
            return self.classifier.classify([messages_to_conversation(messages)])[0]
        except Exception as exc:  # noqa: BLE001 - handled by on_error
            return exc

    def _decide(self, messages: list[BaseMessage], human: HumanMessage,
                result: SafetyVerdict | BaseException) -> tuple[dict[str, Any], dict[str, Any]]:
        verdict, error = (None, result) if isinstance(result, BaseException) else (result, None)
        if verdict is not None:
            band: Band = self.policy.band(verdict)
        elif self.on_error == "block":
            band = "harmful"
        elif self.on_error == "allow":
            band = "benign"
        else:
            band = None  # type: ignore[assignment]
        prompt = None
        if self.log_prompts:
            try:
                prompt = last_user_text(messages_to_conversation([human]))
            except Exception:  # noqa: BLE001
                prompt = None
        fields = verdict_fields(verdict, band=band, source=self.name, prompt=prompt, error=error)
        log_verdict(self.logger, self.log_level if error is None else logging.WARNING, fields)
        if band is None:
            raise error  # type: ignore[misc]
        record = {"message_id": human.id, "band": band, "verdict": verdict.model_dump() if verdict else None,
                  "error": fields.get("scans_error")}
        update: dict[str, Any] = {STATE_KEY: record}
        if self.strategy == "block" and (band == "harmful" or (band == "grey" and self.block_grey)):
            if self.on_block == "raise":
                raise HarmfulPromptError(verdict, band=band, cause=error)
            update["messages"] = [refusal_message(self.refusal, verdict=verdict, source=self.name,
                                                  extra={"band": band})]
            update["jump_to"] = "end"
        return update, fields

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: ScansGuardState, runtime: Any) -> dict[str, Any] | None:
        pending = self._pending(state)
        if pending is None:
            return None
        messages, human = pending
        update, fields = self._decide(messages, human, self._classify(messages))
        if self.emit_events:
            emit_event(None, fields)
        return update

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: ScansGuardState, runtime: Any) -> dict[str, Any] | None:
        pending = self._pending(state)
        if pending is None:
            return None
        messages, human = pending
        result = await run_in_executor(None, self._classify, messages)  # the engine blocks: keep the loop free
        update, fields = self._decide(messages, human, result)
        if self.emit_events:
            await aemit_event(None, fields)
        return update

    # -- model calls (steer / route) -------------------------------------------------------------------------
    def _route(self, request: ModelRequest) -> ModelRequest | AIMessage:
        if self.strategy == "steer":
            if isinstance(request.model, SafetyConsciousLLM):
                return request
            if self.llm is None:
                raise ValueError("strategy='steer' needs a SafetyConsciousLLM as guard (or as the agent's model)")
            return request.override(model=self.llm)
        if self.strategy != "route":
            return request
        record = request.state.get(STATE_KEY)
        if not record:
            return request
        band = record["band"]
        route = self.routes.get(band, self.routes.get("harmful") if band == "grey" else None)
        if route is None:
            return request
        if isinstance(route, str):
            verdict = SafetyVerdict.model_validate(record["verdict"]) if record.get("verdict") else None
            return refusal_message(route, verdict=verdict, source=self.name, extra={"band": band})
        return request.override(model=route)

    def _report_reply(self, response: Any) -> None:
        """Log the steered model's verdict (strategy steer), read from its reply's response_metadata."""
        if self.strategy != "steer":
            return
        messages = response.result if isinstance(response, ModelResponse) else [response]
        meta = next((m.response_metadata for m in messages if isinstance(m, AIMessage)), {})
        if meta.get("score") is None:
            return
        fields = {"scans_source": self.name, "scans_band": meta.get("label"), "scans_score": meta["score"],
                  "scans_label": meta.get("label"), "scans_threshold": meta.get("threshold"),
                  "scans_probability": meta.get("probability"), "scans_direction": meta.get("direction"),
                  "scans_coefficient": meta.get("alpha"), "scans_refusal": meta.get("refusal")}
        log_verdict(self.logger, self.log_level, fields)

    def wrap_model_call(self, request: ModelRequest,
                        handler: Callable[[ModelRequest], ModelResponse]) -> ModelResponse | AIMessage:
        routed = self._route(request)
        if isinstance(routed, AIMessage):
            return routed
        response = handler(routed)
        self._report_reply(response)  # a log record; the steered model itself sent the verdict event
        return response

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        routed = self._route(request)
        if isinstance(routed, AIMessage):
            return routed
        response = await handler(routed)
        self._report_reply(response)
        return response


__all__ = ["STATE_KEY", "ScansGuardMiddleware", "ScansGuardState", "Strategy"]
