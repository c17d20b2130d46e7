"""Guards built on sigma(q): route, block and log, as LangChain Runnables that compose with `|`.

Each guard classifies its input with a `SafetyClassifier` (one engine.classify call per `batch`), sorts the
verdict into a band (harmful / grey / benign, see `SafetyPolicy`), reports it (a python log record with the
verdict as `extra`, and a `scans_guard_verdict` custom callback event), then runs what the band calls for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig, RunnableLambda, RunnablePassthrough, RunnableSerializable
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import run_in_executor
from pydantic import ConfigDict, Field, field_validator

from scans_guard.config import SafetyVerdict
from scans_guard.steering.judge import KeywordJudge

from ._convert import last_user_text, select_input, to_conversation
from ._decision import DEFAULT_REFUSAL, Decision, ExitBehavior, OnError, SafetyPolicy, decide, violation_text
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from .chat_model import refusal_message
from .classifier import SafetyClassifier
from .errors import HarmfulPromptError

Band = Literal["harmful", "grey", "benign"]
Route = Runnable | Callable[..., Any] | str


def _coerce_route(route: Any) -> Runnable | str:
    if isinstance(route, (str, Runnable)):
        return route
    if callable(route):
        return coerce_to_runnable(route)
    raise TypeError(f"a route must be a Runnable, a callable or a canned reply (str), got {type(route).__name__}")


def _reply_text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, BaseMessage):
        return output.text if isinstance(output.text, str) else output.text()
    return None


class SafetyGuard(RunnableSerializable[Any, Any]):
    """Base of the guards: classify, decide (`_decision.decide`), report, then act on the decision.

    invoke / ainvoke / stream / astream come from LangChain's `RunnableLambda`, whose function returns what the
    decision calls for (a route Runnable, which it then runs or streams, or a finished message); only `batch`
    is written here, so that a batch is classified in one engine call.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    classifier: SafetyClassifier
    policy: SafetyPolicy = Field(default_factory=SafetyPolicy)
    on_error: OnError = "raise"
    """When classification fails (e.g. a prompt too long for the context window, a non-text block):
    "raise" propagates the error (default); "block" treats the input as harmful (fail closed);
    "allow" treats it as benign (fail open). Each failure is logged either way."""
    check_output: bool = False
    """Judge the route's reply to a grey or harmful input with `refusal_judge`: a reply that complies is a
    violation (`exit_behavior`). A checked reply is released whole (no token streaming)."""
    refusal_judge: Callable[[str, str], bool] = Field(default_factory=KeywordJudge, exclude=True)
    exit_behavior: ExitBehavior = "replace"
    """On an output violation: "replace" (or "end") returns the violation message instead, "error" raises
    HarmfulPromptError."""
    violation_message: str = DEFAULT_REFUSAL
    """Text of a replaced reply; may use {band}, {score}, {threshold}, {label}, {stage}, {original_content}."""
    log_level: int | None = logging.DEBUG
    """Level of the per-input log record (None: none); `SafetyLogger` defaults to INFO."""
    log_prompts: bool = False
    """Include the prompt text (the latest user turn) in log records and events; off by default."""
    logger_name: str = LOGGER_NAME
    emit_events: bool = True
    """Send each verdict as a `scans_guard_verdict` custom callback event."""
    input_key: str | None = None
    """For dict inputs (a chain's `{"question": ...}`): classify `input[input_key]`; routes and the pass-through
    still get the whole dict. None: a dict input is an error (or the classifier's own `input_key` applies)."""

    # -- subclass hook: what a decision calls for (a Runnable to run, or a finished message) ---------------------
    def _act(self, decision: Decision) -> Runnable | AIMessage:
        raise NotImplementedError

    # -- classification and reporting ------------------------------------------------------------------------
    def _select(self, input: Any) -> Any:
        return select_input(input, self.input_key)

    def _fields(
        self, input: Any, verdict: SafetyVerdict | None, band: Band | None, error: BaseException | None
    ) -> dict[str, Any]:
        prompt = None
        if self.log_prompts:
            try:
                prompt = last_user_text(to_conversation(self._select(input)))
            except Exception:  # noqa: BLE001
                prompt = repr(input)
        return verdict_fields(verdict, band=band, source=self.get_name(), prompt=prompt, error=error)

    def _decide(self, input: Any, result: Any) -> tuple[Decision, dict[str, Any]]:
        """The decision on one classification result, logged; raises the error under on_error="raise"."""
        verdict, error = (None, result) if isinstance(result, BaseException) else (result, None)
        decision = None
        try:
            decision = decide(result, self.policy, self.on_error, bool(getattr(self, "block_grey", False)))
        finally:
            fields = self._fields(input, verdict, decision.band if decision else None, error)
            log_verdict(
                logging.getLogger(self.logger_name), self.log_level if error is None else logging.WARNING, fields
            )
        return decision, fields

    def _outcome(self, input: Any, decision: Decision) -> Runnable | AIMessage:
        action = self._act(decision)
        if self.check_output and isinstance(action, Runnable) and decision.band != "benign":

            def check_output(out: Any) -> Any:
                return self._checked(out, decision, input)

            return action | RunnableLambda(check_output, name="check_output")
        return action

    def _checked(self, output: Any, decision: Decision, input: Any) -> Any:
        """A grey/harmful input's reply: kept when the judge finds a refusal, else a violation."""
        text = _reply_text(output)
        if text is None:
            return output
        try:
            prompt = last_user_text(to_conversation(self._select(input)))
        except Exception:  # noqa: BLE001
            prompt = ""
        if self.refusal_judge(prompt, text):
            return output
        if self.exit_behavior == "error":
            raise HarmfulPromptError(decision.verdict, band=decision.band, cause=decision.error, stage="output")
        return refusal_message(
            violation_text(self.violation_message, decision, stage="output", content=text),
            verdict=decision.verdict,
            source=self.get_name(),
            extra={"band": decision.band, "stage": "output"},
        )

    # -- one input: LangChain's RunnableLambda runs (or streams) what `_route` returns ----------------------------
    def _route(self, input: Any, config: RunnableConfig, **kwargs: Any) -> Runnable | AIMessage:
        result: SafetyVerdict | Exception
        try:
            result = self.classifier.invoke(self._select(input), config)
        except Exception as exc:  # noqa: BLE001 - decided by on_error
            result = exc
        decision, fields = self._decide(input, result)
        if self.emit_events:
            emit_event(None, fields)  # the current run: this guard's
        return self._outcome(input, decision)

    async def _aroute(self, input: Any, config: RunnableConfig, **kwargs: Any) -> Runnable | AIMessage:
        result: SafetyVerdict | Exception
        try:
            result = await self.classifier.ainvoke(self._select(input), config)
        except Exception as exc:  # noqa: BLE001
            result = exc
        decision, fields = self._decide(input, result)
        if self.emit_events:
            await aemit_event(None, fields)
        return self._outcome(input, decision)

    def _lambda(self) -> RunnableLambda:
        return RunnableLambda(self._route, afunc=self._aroute, name=self.get_name())

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._lambda().invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._lambda().ainvoke(input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        yield from self._lambda().stream(input, config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any):
        async for chunk in self._lambda().astream(input, config, **kwargs):
            yield chunk

    # -- batch: one classification for all inputs, then each route once on its share --------------------------
    def _classify_all(self, inputs: list[Any], configs: list[RunnableConfig]) -> list[Any]:
        """Verdicts, or the exception for inputs that could not be classified (one engine call when all succeed)."""
        results: list[Any] = [None] * len(inputs)
        ok: list[int] = []
        for i, x in enumerate(inputs):
            try:
                results[i] = self._select(x)
                ok.append(i)
            except Exception as exc:  # noqa: BLE001 - a dict without its input_key: that input's error
                results[i] = exc
        verdicts = self.classifier.batch([results[i] for i in ok], [configs[i] for i in ok], return_exceptions=True)
        for i, v in zip(ok, verdicts):
            results[i] = v
        return results

    def _plan(
        self, inputs: list[Any], results: list[Any], run_managers: list[Any]
    ) -> tuple[list[Any], dict[int, tuple[Runnable, list[int]]], list[tuple[Any, dict]]]:
        """Decide every input: finished outputs (messages, errors), inputs grouped by the Runnable they go to,
        and the verdict events to send."""
        outputs: list[Any] = [None] * len(inputs)
        groups: dict[int, tuple[Runnable, list[int]]] = {}
        events: list[tuple[Any, dict]] = []
        for i, (x, result, rm) in enumerate(zip(inputs, results, run_managers)):
            try:
                decision, fields = self._decide(x, result)
                events.append((rm, fields))
                outcome = self._outcome(x, decision)
            except Exception as exc:  # noqa: BLE001 - reported per input by _batch_with_config
                outputs[i] = exc
                continue
            if isinstance(outcome, Runnable):
                groups.setdefault(id(outcome), (outcome, []))[1].append(i)
            else:
                outputs[i] = outcome
        return outputs, groups, events if self.emit_events else []

    def _batch_impl(self, inputs: list[Any], run_manager: list[Any], config: list[RunnableConfig]) -> list[Any]:
        outputs, groups, events = self._plan(inputs, self._classify_all(inputs, config), run_manager)
        for rm, fields in events:
            emit_event(rm, fields)
        for runnable, idx in groups.values():
            outs = runnable.batch([inputs[i] for i in idx], [config[i] for i in idx], return_exceptions=True)
            for i, out in zip(idx, outs):
                outputs[i] = out
        return outputs

    async def _abatch_impl(self, inputs: list[Any], run_manager: list[Any], config: list[RunnableConfig]) -> list[Any]:
        results = await run_in_executor(None, self._classify_all, inputs, config)
        outputs, groups, events = self._plan(inputs, results, run_manager)
        for rm, fields in events:
            await aemit_event(rm, fields)
        for runnable, idx in groups.values():
            outs = await runnable.abatch([inputs[i] for i in idx], [config[i] for i in idx], return_exceptions=True)
            for i, out in zip(idx, outs):
                outputs[i] = out
        return outputs

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        return self._batch_with_config(self._batch_impl, inputs, config, return_exceptions=return_exceptions)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        if not inputs:
            return []
        return await self._abatch_with_config(self._abatch_impl, inputs, config, return_exceptions=return_exceptions)


def _canned(text: str, decision: Decision, source: str) -> AIMessage:
    return refusal_message(text, verdict=decision.verdict, source=source, extra={"band": decision.band})


class SafetyRouter(SafetyGuard):
    """Send harmful, grey and benign inputs to different places.

    `benign`, `harmful` and `grey` each take a Runnable (the steered model, another model, a chain), a callable
    (wrapped as a RunnableLambda), or a str: a canned reply, returned as an AIMessage with the standard refusal
    block and the verdict in its response_metadata. `grey` (the zone `policy.grey_zone` defines around T) defaults
    to the harmful route. The route gets the guard's original input.
    """

    benign: Route
    harmful: Route = DEFAULT_REFUSAL
    grey: Route | None = None

    @field_validator("benign", "harmful", "grey", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        return value if value is None else _coerce_route(value)

    def _act(self, decision: Decision) -> Runnable | AIMessage:
        route = {
            "benign": self.benign,
            "harmful": self.harmful,
            "grey": self.grey if self.grey is not None else self.harmful,
        }[decision.band]
        if isinstance(route, str):
            return _canned(route, decision, self.get_name())
        return route if isinstance(route, Runnable) else coerce_to_runnable(route)  # (validated into a Runnable)


class SafetyBlocker(SafetyGuard):
    """Stop harmful inputs: raise `HarmfulPromptError` (carrying the verdict) or answer with a refusal message.

    Other inputs go to `runnable`, or pass through unchanged when it is None (`blocker | model`).
    Grey-zone inputs are blocked only with `block_grey=True`.
    """

    runnable: Runnable | None = None
    on_block: Literal["raise", "refuse"] = "raise"
    refusal: str = DEFAULT_REFUSAL
    """The refusal message; may use the fields of `violation_message`."""
    block_grey: bool = False

    @field_validator("runnable", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Runnable) else coerce_to_runnable(value)

    def _act(self, decision: Decision) -> Runnable | AIMessage:
        if decision.action == "block":
            if self.on_block == "raise":
                raise HarmfulPromptError(decision.verdict, band=decision.band, cause=decision.error)
            return _canned(violation_text(self.refusal, decision), decision, self.get_name())
        return self.runnable or RunnablePassthrough()


class SafetyLogger(SafetyGuard):
    """Log every input's verdict (a log record, and a `scans_guard_verdict` callback event), then pass the input
    on unchanged, or to `runnable`. Prompt text only with `log_prompts=True`."""

    log_level: int | None = logging.INFO
    runnable: Runnable | None = None

    @field_validator("runnable", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Runnable) else coerce_to_runnable(value)

    def _act(self, decision: Decision) -> Runnable | AIMessage:
        return self.runnable or RunnablePassthrough()


__all__ = ["DEFAULT_REFUSAL", "Band", "SafetyBlocker", "SafetyGuard", "SafetyLogger", "SafetyPolicy", "SafetyRouter"]
