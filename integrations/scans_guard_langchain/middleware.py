"""A LangChain v1 agent middleware that puts sigma(q) and SCANS steering into `create_agent` agents.

One strategy object per strategy (steer, block, route, log: `_strategies`) says what the input decision does; the
hooks are shared. Each hook is written once, as a generator of steps (`_agent_state`) that a sync and an async
driver run; the check of the input turn and of new tool results is here, the check of the reply (and its retry
under a `RetryPolicy`) is `_output_check`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import Any, Literal

from langchain.agents.middleware.types import AgentMiddleware, ModelRequest, ModelResponse, hook_config
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables.config import run_in_executor

from scans_guard.config import SafetyVerdict
from scans_guard.engine import ScansEngine
from scans_guard.steering.judge import KeywordJudge
from scans_guard.steering.retry import RetryPolicy

from ._agent_state import STATE_KEY, ScansGuardState, Step, adrive, drive, latest, readable_text
from ._convert import messages_to_conversation
from ._decision import DEFAULT_REFUSAL, Decision, ExitBehavior, OnError, SafetyPolicy, Stage, decide, violation_text
from ._output_check import check_reply
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from ._strategies import STEERING, STRATEGIES
from .chat_model import SafetyConsciousLLM, refusal_message
from .classifier import SafetyClassifier
from .errors import HarmfulPromptError

Strategy = Literal["guard+steer", "steer", "block", "route", "log"]
Band = Literal["harmful", "grey", "benign"]
DEFAULT_RETRY = RetryPolicy()
"""check_output's retry of a steered reply that still refuses: once, at twice the coefficient, the keyword judge."""


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
    violation; with "steer", a reply to a benign request that `retry`'s judge finds still refusing is retried once,
    steered `retry.factor` times as far away from refusal; `retry=None`: never). A violation follows
    `exit_behavior`: "end" (the run ends with the violation message), "error" (HarmfulPromptError, `.stage` says
    which check), "replace" (the offending tool result or reply is replaced by the violation message and the run
    goes on; for an input, the same as "end").

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
        retry: RetryPolicy | None = DEFAULT_RETRY,
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
        if strategy in STEERING and self.llm is None:
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
        self.retry = retry
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

    # -- before the model: the input turn and new tool results ---------------------------------------------------
    def _before(self, state: Mapping[str, Any]) -> Generator[Step, Any, dict[str, Any] | None]:
        messages = list(state.get("messages") or [])
        update: dict[str, Any] = {}
        idx = latest(messages, HumanMessage)
        record = state.get(STATE_KEY)
        if (
            self._strategy.classifies_input
            and self.check_input
            and idx is not None
            and not (record and messages[idx].id is not None and record.get("message_id") == messages[idx].id)
        ):
            human = messages[idx]
            decision, fields = self._decide((yield "classify", messages[: idx + 1]), readable_text(human), "input")
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
            prompt = readable_text(messages[idx]) if idx is not None else None
            decision, fields = self._decide((yield "classify", messages), prompt, "tool_result")
            yield "event", fields
            if decision.action == "block":
                update.update(self._violation(decision, "tool_result", "\n".join(map(readable_text, tools)), tools))
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
        return drive(self._before(state), self._do)

    @hook_config(can_jump_to=["end"])
    async def abefore_model(self, state: ScansGuardState, runtime: Any) -> dict[str, Any] | None:
        return await adrive(self._before(state), self._ado)

    # -- model calls: the strategy's request, then the output check ---------------------------------------------
    def _wrap(self, request: ModelRequest) -> Generator[Step, Any, ModelResponse | AIMessage]:
        routed = self._strategy.model_request(self, request)
        if isinstance(routed, AIMessage):
            return routed
        response = yield "call", routed
        return (yield from check_reply(self, request, routed, response))

    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse | AIMessage:
        return drive(self._wrap(request), lambda step: handler(step[1]))

    async def awrap_model_call(
        self,
        request: ModelRequest,
        handler: Callable[[ModelRequest], Awaitable[ModelResponse]],
    ) -> ModelResponse | AIMessage:
        async def call(step: Step) -> Any:
            return await handler(step[1])

        return await adrive(self._wrap(request), call)


__all__ = ["STATE_KEY", "ScansGuardMiddleware", "ScansGuardState", "Strategy"]
