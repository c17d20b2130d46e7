"""A LangChain v1 agent middleware that puts sigma(q) and SCANS steering into `create_agent` agents.

One strategy object per strategy (steer, block, route, log) says what the input decision does; the hooks are
shared. Each hook is written once, as a generator of steps (classify this, send that event, call the model with
this request), which a sync and an async driver run: the async one runs the blocking engine in a worker thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Literal, NotRequired

from langchain.agents.middleware.types import (
    AgentMiddleware,
    AgentState,
    ModelRequest,
    ModelResponse,
    hook_config,
)
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables.config import run_in_executor

from scans_guard.config import SafetyVerdict
from scans_guard.engine import ScansEngine
from scans_guard.judge import KeywordJudge

from ._convert import message_text, messages_to_conversation
from ._decision import DEFAULT_REFUSAL, Decision, ExitBehavior, OnError, SafetyPolicy, Stage, decide, violation_text
from ._messages import verdict_from_metadata
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from .chat_model import SafetyConsciousLLM, refusal_message
from .classifier import SafetyClassifier
from .errors import HarmfulPromptError

Strategy = Literal["guard+steer", "steer", "block", "route", "log"]
Band = Literal["harmful", "grey", "benign"]
STATE_KEY = "scans_guard"
Step = tuple[str, Any]  # ("classify", messages) | ("event", fields) | ("call", ModelRequest)


class ScansGuardState(AgentState):
    """Agent state with the guard's record of the latest human turn: {"message_id", "band", "verdict", "error"}."""

    scans_guard: NotRequired[dict[str, Any]]


def _text(message: BaseMessage) -> str:
    """A message's text for log records and violation messages ("" when it has none that can be read)."""
    try:
        return message_text(message)
    except Exception:  # noqa: BLE001 - e.g. an image block: classification reports that error
        return ""


# -- strategies: what the input decision does -------------------------------------------------------------------
class _Steer:
    """Every model call is answered by a SafetyConsciousLLM under this strategy's policy: it classifies the whole
    conversation it is given (system prompt, tool calls and tool results included), blocks what the guard rejects
    ("guard+steer") and steers the rest; tools are bound to it as usual."""

    classifies_input = False

    def __init__(self, name: str) -> None:
        self.name = self.policy = name

    def model_request(self, mw: ScansGuardMiddleware, request: ModelRequest) -> ModelRequest | AIMessage:
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

    def input_update(self, mw: ScansGuardMiddleware, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


class _Block:
    """A harmful (with block_grey, also grey) human turn is a violation before the agent's model runs."""

    name, classifies_input = "block", True

    def model_request(self, mw: ScansGuardMiddleware, request: ModelRequest) -> ModelRequest | AIMessage:
        return request

    def input_update(self, mw: ScansGuardMiddleware, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        if decision.action != "block":
            return {}
        return mw._violation(decision, "input", _text(human), None)


class _Route:
    """Each model call goes to routes[band]: a chat model, a canned reply (str) or None (the agent's model)."""

    name, classifies_input = "route", True

    def model_request(self, mw: ScansGuardMiddleware, request: ModelRequest) -> ModelRequest | AIMessage:
        record = _record(request.state)
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

    def input_update(self, mw: ScansGuardMiddleware, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


class _Log(_Block):
    """Classification and reporting only."""

    name = "log"

    def input_update(self, mw: ScansGuardMiddleware, decision: Decision, human: HumanMessage) -> dict[str, Any]:
        return {}


STRATEGIES: dict[str, Any] = {
    "guard+steer": _Steer("guard+steer"),
    "steer": _Steer("steer"),
    "block": _Block(),
    "route": _Route(),
    "log": _Log(),
}


def _drive(steps: Generator[Step, Any, Any], do: Callable[[Step], Any]) -> Any:
    """Run a hook's steps synchronously."""
    try:
        step = next(steps)
        while True:
            step = steps.send(do(step))
    except StopIteration as stop:
        return stop.value


async def _adrive(steps: Generator[Step, Any, Any], do: Callable[[Step], Awaitable[Any]]) -> Any:
    try:
        step = next(steps)
        while True:
            step = steps.send(await do(step))
    except StopIteration as stop:
        return stop.value


def _record(state: Mapping[str, Any]) -> dict[str, Any] | None:
    """The guard's record of the latest human turn in an agent's state (`ScansGuardState`), if it holds one."""
    record = state.get(STATE_KEY)
    return record if isinstance(record, dict) and record else None


class ScansGuardMiddleware(AgentMiddleware[ScansGuardState, Any]):
    """Guard an agent with sigma(q) and SCANS, in the manner of LangChain's moderation and PII middleware.

    Strategies (what the input decision does): "guard+steer" (default; every model call answered by the
    `SafetyConsciousLLM` under policy guard+steer: what the guard rejects is answered with a refusal without
    generating, the rest steered; tools included), "steer" (the same under policy steer: nothing blocked),
    "block" (a harmful human turn is a violation before the model runs), "route" (each model call goes to
    `routes[band]`), "log" (report only).

    Checks: `check_input` (block / route / log: the conversation up to the latest human turn, once per turn);
    `check_tool_results` (the conversation including new tool results, before the model reads them);
    `check_output` (a text reply to a grey or harmful request that the refusal judge finds complying is a
    violation; with "steer", a reply to a benign request that still refuses is retried once, steered twice as
    far away from refusal). A violation follows `exit_behavior`: "end" (the run ends with the violation message),
    "error" (HarmfulPromptError, `.stage` says which check), "replace" (the offending tool result or reply is
    replaced by the violation message and the run goes on; for an input, the same as "end").

    Every verdict is reported (a log record with the fields as `extra`, and a `scans_guard_verdict` event).
    on_error (classification failed): "raise" (default), "block" (fail closed), "allow" (fail open).
    """

    state_schema = ScansGuardState

    def __init__(
        self,
        guard: SafetyConsciousLLM | SafetyClassifier | ScansEngine,
        *,
        strategy: Strategy = "guard+steer",
        routes: Mapping[Band, BaseChatModel | str | None] | None = None,
        policy: SafetyPolicy | None = None,
        check_input: bool = True,
        check_output: bool = False,
        check_tool_results: bool = False,
        exit_behavior: ExitBehavior = "end",
        violation_message: str = DEFAULT_REFUSAL,
        block_grey: bool = False,
        replace_model: bool = False,
        refusal_judge: Callable[[str, str], bool] | None = None,
        on_error: OnError = "raise",
        log_level: int | None = logging.INFO,
        log_prompts: bool = False,
        emit_events: bool = True,
    ) -> None:
        super().__init__()
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be guard+steer, steer, block, route or log, got {strategy!r}")
        if exit_behavior not in ("end", "error", "replace"):
            raise ValueError(f"exit_behavior must be end, error or replace, got {exit_behavior!r}")
        self.llm = guard if isinstance(guard, SafetyConsciousLLM) else None
        if isinstance(guard, SafetyConsciousLLM):
            self.classifier = guard.classifier
        elif isinstance(guard, SafetyClassifier):
            self.classifier = guard
        elif isinstance(guard, ScansEngine):
            self.classifier = SafetyClassifier(engine=guard)
        else:
            raise TypeError(
                f"guard must be a SafetyConsciousLLM, SafetyClassifier or ScansEngine, got {type(guard).__name__}"
            )
        if strategy in ("steer", "guard+steer") and self.llm is None:
            raise ValueError(
                f"strategy={strategy!r} needs the steered model: pass a SafetyConsciousLLM as guard "
                "(e.g. ScansGuardMiddleware(SafetyConsciousLLM(engine=engine)))"
            )
        if strategy == "route" and not routes:
            raise ValueError("strategy='route' needs routes={band: model | canned reply | None}")
        self.strategy = strategy
        self._strategy = STRATEGIES[strategy]
        self.routes = dict(routes or {})
        self.policy = policy or SafetyPolicy()
        self.check_input, self.check_output, self.check_tool_results = check_input, check_output, check_tool_results
        self.exit_behavior = exit_behavior
        self.violation_message = violation_message
        self.block_grey = block_grey
        self.replace_model = replace_model
        self.refusal_judge = refusal_judge or KeywordJudge()
        self.on_error = on_error
        self.log_level = log_level
        self.log_prompts = log_prompts
        self.emit_events = emit_events
        self.logger = logging.getLogger(f"{LOGGER_NAME}.middleware")

    @property
    def name(self) -> str:
        return f"ScansGuardMiddleware[{self.strategy}]"

    # -- shared pieces -----------------------------------------------------------------------------------------
    def _classify(self, messages: list[BaseMessage]) -> SafetyVerdict | BaseException:
        try:
            return self.classifier.classify([messages_to_conversation(messages)])[0]
        except Exception as exc:  # noqa: BLE001 - handled by on_error
            return exc

    def _decide(
        self, result: SafetyVerdict | BaseException, prompt: str | None, stage: Stage
    ) -> tuple[Decision, dict[str, Any]]:
        verdict, error = (None, result) if isinstance(result, BaseException) else (result, None)
        decision = None
        try:
            decision = decide(result, self.policy, self.on_error, self.block_grey)
        finally:
            fields = verdict_fields(
                verdict,
                band=decision.band if decision else None,
                source=self.name,
                prompt=prompt if self.log_prompts else None,
                error=error,
            )
            fields["scans_stage"] = stage
            log_verdict(self.logger, self.log_level if error is None else logging.WARNING, fields)
        return decision, fields

    def _violation(
        self, decision: Decision, stage: Stage, content: str, replace: list[BaseMessage] | None
    ) -> dict[str, Any]:
        """The state update of a violation; "error" raises. `replace`: the messages to overwrite (same ids)."""
        if self.exit_behavior == "error":
            raise HarmfulPromptError(decision.verdict, band=decision.band, cause=decision.error, stage=stage)
        text = violation_text(self.violation_message, decision, stage=stage, content=content)
        if self.exit_behavior == "replace" and replace:
            return {"messages": [m.model_copy(update={"content": text}) for m in replace]}
        message = refusal_message(
            text, verdict=decision.verdict, source=self.name, extra={"band": decision.band, "stage": stage}
        )
        return {"messages": [message], "jump_to": "end"}

    @staticmethod
    def _latest(messages: list[BaseMessage], kind: type) -> int | None:
        return next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], kind)), None)

    # -- before the model: the input turn and new tool results ---------------------------------------------------
    def _before(self, state: Mapping[str, Any]) -> Generator[Step, Any, dict[str, Any] | None]:
        messages = list(state.get("messages") or [])
        update: dict[str, Any] = {}
        idx = self._latest(messages, HumanMessage)
        record = state.get(STATE_KEY)
        if (
            self._strategy.classifies_input
            and self.check_input
            and idx is not None
            and not (record and messages[idx].id is not None and record.get("message_id") == messages[idx].id)
        ):
            human = messages[idx]
            decision, fields = self._decide((yield "classify", messages[: idx + 1]), _text(human), "input")
            yield "event", fields
            update[STATE_KEY] = {
                "message_id": human.id,
                "band": decision.band,
                "verdict": decision.verdict.record() if decision.verdict else None,
                "error": fields.get("scans_error"),
            }
            update.update(self._strategy.input_update(self, decision, human))
            if "jump_to" in update:
                return update
        n_tools = self._trailing_tools(messages)
        tools = messages[len(messages) - n_tools :] if n_tools else []
        if self.check_tool_results and tools:
            prompt = _text(messages[idx]) if idx is not None else None
            decision, fields = self._decide((yield "classify", messages), prompt, "tool_result")
            yield "event", fields
            if decision.action == "block":
                update.update(self._violation(decision, "tool_result", "\n".join(map(_text, tools)), tools))
        return update or None

    @staticmethod
    def _trailing_tools(messages: list[BaseMessage]) -> int:
        n = 0
        while n < len(messages) and isinstance(messages[-1 - n], ToolMessage):
            n += 1
        return n

    def _do(self, step: Step) -> Any:
        kind, item = step
        if kind == "classify":
            return self._classify(item)
        if kind == "event" and self.emit_events:
            emit_event(None, item)
        if kind == "call":
            raise AssertionError("model calls are driven by wrap_model_call")
        return None

    async def _ado(self, step: Step) -> Any:
        kind, item = step
        if kind == "classify":
            return await run_in_executor(None, self._classify, item)  # the engine blocks: keep the loop free
        if kind == "event" and self.emit_events:
            await aemit_event(None, item)
        return None

    @hook_config(can_jump_to=["end"])
    def before_model(self, state: ScansGuardState, runtime: Any) -> dict[str, Any] | None:
        return _drive(self._before(state), self._do)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: ScansGuardState, runtime: Any) -> dict[str, Any] | None:
        return await _adrive(self._before(state), self._ado)

    # -- model calls: the strategy's request, then the output check ---------------------------------------------
    def _wrap(self, request: ModelRequest) -> Generator[Step, Any, ModelResponse | AIMessage]:
        routed = self._strategy.model_request(self, request)
        if isinstance(routed, AIMessage):
            return routed
        response = yield "call", routed
        reply = self._reply(response)
        if reply is None or reply.tool_calls:
            return response
        decision = self._reply_decision(request, reply)
        self._report_reply(reply)
        if decision is None or not self.check_output:
            return response
        prompt = self._prompt(request)
        refused = bool(self.refusal_judge(prompt, message_text(reply)))
        if (
            decision.band == "benign"
            and refused
            and self.strategy in ("steer", "guard+steer")
            and decision.verdict is not None
            and decision.verdict.coefficient < 0
        ):
            # a benign request still refused: once more, steered further (a fixed coefficient, so policy steer)
            further = 2 * decision.verdict.coefficient
            retried = yield (
                "call",
                routed.override(model_settings={**routed.model_settings, "coefficient": further, "policy": "steer"}),
            )
            again = self._reply(retried)
            if again is not None:
                again.response_metadata.update(
                    {
                        **decision.verdict.record(),
                        "coefficient": further,
                        "alpha": further,
                        "retried": True,
                        "first_reply": message_text(reply),
                    }
                )
            return retried
        if decision.band != "benign" and not refused:  # a grey or harmful request answered
            update = self._violation(decision, "output", message_text(reply), [reply])
            return ModelResponse(result=update["messages"], structured_response=None)
        return response

    @staticmethod
    def _reply(response: Any) -> AIMessage | None:
        messages = response.result if isinstance(response, ModelResponse) else [response]
        return next((m for m in messages if isinstance(m, AIMessage)), None)

    @staticmethod
    def _prompt(request: ModelRequest) -> str:
        messages = list(request.messages)
        idx = next((i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], HumanMessage)), None)
        return message_text(messages[idx]) if idx is not None else ""

    def _reply_decision(self, request: ModelRequest, reply: AIMessage) -> Decision | None:
        """The input's decision: from the steered reply's own verdict (steer), else from the state record."""
        if self.strategy in ("steer", "guard+steer"):
            verdict = verdict_from_metadata(reply.response_metadata)
            return decide(verdict, self.policy, "raise", self.block_grey) if verdict is not None else None
        record = _record(request.state)
        if record is None:
            return None
        verdict = SafetyVerdict.model_validate(record["verdict"]) if record.get("verdict") else None
        action: Literal["allow", "block"] = (
            "block" if record["band"] == "harmful" or (record["band"] == "grey" and self.block_grey) else "allow"
        )
        return Decision(record["band"], action, verdict, None)

    def _report_reply(self, reply: AIMessage) -> None:
        """Log the steered model's verdict (strategy steer; the model itself sent the verdict event)."""
        steered = self.strategy in ("steer", "guard+steer")
        if not steered or (verdict := verdict_from_metadata(reply.response_metadata)) is None:
            return
        fields = verdict_fields(verdict, band=self.policy.band(verdict), source=self.name)
        fields["scans_refusal"] = reply.response_metadata.get("refusal")
        log_verdict(self.logger, self.log_level, fields)

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        return _drive(self._wrap(request), lambda step: handler(step[1]))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        async def call(step: Step) -> Any:
            return await handler(step[1])

        return await _adrive(self._wrap(request), call)


__all__ = ["STATE_KEY", "ScansGuardMiddleware", "ScansGuardState", "Strategy"]
