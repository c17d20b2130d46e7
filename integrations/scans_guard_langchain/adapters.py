"""Guards built on sigma(q): route, block and log, as LangChain Runnables that compose with `|`.

Each guard classifies its input with a `SafetyClassifier` (one engine.classify call per `batch`), sorts the
verdict into a band (harmful / grey / benign, see `SafetyPolicy`), reports it (a python log record with the
verdict as `extra`, and a `scans_guard_verdict` custom callback event), then runs what the band calls for.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from langchain_core.messages import AIMessage
from langchain_core.runnables import (
    Runnable,
    RunnableConfig,
    RunnablePassthrough,
    RunnableSerializable,
)
from langchain_core.runnables.base import coerce_to_runnable
from langchain_core.runnables.config import (
    ensure_config,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    patch_config,
)
from pydantic import BaseModel, ConfigDict, Field, field_validator

from scans_guard.config import SafetyVerdict, is_harmful

from ._convert import last_user_text, select_input, to_conversation
from ._report import LOGGER_NAME, aemit_event, emit_event, log_verdict, verdict_fields
from .chat_model import refusal_message
from .classifier import SafetyClassifier
from .errors import HarmfulPromptError

Band = Literal["harmful", "grey", "benign"]
OnError = Literal["raise", "block", "allow"]
_SEVERITY = {"benign": 0, "grey": 1, "harmful": 2}

DEFAULT_REFUSAL = "I can't help with that request."


class SafetyPolicy(BaseModel):
    """How a verdict's score maps to a band.

    threshold: T (None: the verdict's `threshold`, i.e. the artifact's `guard` operating point).
    grey_zone: a float g makes [T - g, T) grey (the same convention as the recipe's grey_zone); a pair
    (below, above) makes [T - below, T + above) grey, a zone around T. Scores above it are harmful, below benign.
    """

    model_config = ConfigDict(frozen=True)

    threshold: float | None = None
    grey_zone: float | tuple[float, float] = 0.0
    out_of_domain: Band = Field("grey", description="the band at least given to a prompt outside the calibration "
                                "domain (another language, mostly code, very long): sigma is not trusted to say benign")

    @field_validator("grey_zone")
    @classmethod
    def _non_negative(cls, value: float | tuple[float, float]) -> float | tuple[float, float]:
        widths = value if isinstance(value, tuple) else (value,)
        if any(w < 0 for w in widths):
            raise ValueError("grey_zone widths must be >= 0")
        return value

    def band(self, verdict: SafetyVerdict) -> Band:
        t = verdict.threshold if self.threshold is None else self.threshold
        below, above = self.grey_zone if isinstance(self.grey_zone, tuple) else (self.grey_zone, 0.0)
        if is_harmful(verdict.score, t + above):
            band: Band = "harmful"
        elif verdict.score >= t - below:
            band = "grey"
        else:
            band = "benign"
        if not verdict.in_domain and _SEVERITY[self.out_of_domain] > _SEVERITY[band]:
            return self.out_of_domain
        return band


Route = Runnable | Callable[..., Any] | str


def _coerce_route(route: Any) -> Runnable | str:
    if isinstance(route, (str, Runnable)):
        return route
    if callable(route):
        return coerce_to_runnable(route)
    raise TypeError(f"a route must be a Runnable, a callable or a canned reply (str), got {type(route).__name__}")


class _Outcome:
    """What a guard does with one input: run a Runnable, return a message, or raise."""

    __slots__ = ("runnable", "message", "error")

    def __init__(self, runnable: Runnable | None = None, message: Any = None, error: BaseException | None = None):
        self.runnable, self.message, self.error = runnable, message, error


class SafetyGuard(RunnableSerializable[Any, Any]):
    """Base of the guards: classify, report, then act on the band (subclasses decide how)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    classifier: SafetyClassifier
    policy: SafetyPolicy = Field(default_factory=SafetyPolicy)
    on_error: OnError = "raise"
    """When classification fails (e.g. a prompt too long for the context window, a non-text block):
    "raise" propagates the error (default); "block" treats the input as harmful (fail closed);
    "allow" treats it as benign (fail open). Each failure is logged either way."""
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

    # -- subclass hook ---------------------------------------------------------------------------------------
    def _outcome(self, input: Any, verdict: SafetyVerdict | None, band: Band,
                 error: BaseException | None) -> _Outcome:
        raise NotImplementedError

    # -- classification and reporting ------------------------------------------------------------------------
    def _band_for(self, verdict: SafetyVerdict | None, error: BaseException | None) -> Band:
        if verdict is not None:
            return self.policy.band(verdict)
        if self.on_error == "raise":
            raise error  # type: ignore[misc]
        return "harmful" if self.on_error == "block" else "benign"

    def _classify_all(self, inputs: list[Any], configs: list[RunnableConfig]) -> list[Any]:
        """Verdicts, or the exception for inputs that could not be classified (one engine call when all succeed)."""
        try:
            return list(self.classifier.batch([self._select(x) for x in inputs], configs))
        except Exception:  # noqa: BLE001 - find which inputs failed
            return [self._capture(lambda x=x, c=c: self.classifier.invoke(self._select(x), c))
                    for x, c in zip(inputs, configs)]

    async def _aclassify_all(self, inputs: list[Any], configs: list[RunnableConfig]) -> list[Any]:
        try:
            return list(await self.classifier.abatch([self._select(x) for x in inputs], configs))
        except Exception:  # noqa: BLE001
            out = []
            for x, c in zip(inputs, configs):
                try:
                    out.append(await self.classifier.ainvoke(self._select(x), c))
                except Exception as exc:  # noqa: BLE001
                    out.append(exc)
            return out

    def _select(self, input: Any) -> Any:
        return select_input(input, self.input_key)

    @staticmethod
    def _capture(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            return exc

    def _fields(self, input: Any, verdict: SafetyVerdict | None, band: Band | None,
                error: BaseException | None) -> dict[str, Any]:
        prompt = None
        if self.log_prompts:
            try:
                prompt = last_user_text(to_conversation(self._select(input)))
            except Exception:  # noqa: BLE001
                prompt = repr(input)
        return verdict_fields(verdict, band=band, source=self.get_name(), prompt=prompt, error=error)

    def _decide(self, input: Any, result: Any, run_manager: Any) -> tuple[_Outcome, dict[str, Any]]:
        verdict, error = (None, result) if isinstance(result, BaseException) else (result, None)
        band: Band | None = None
        try:
            band = self._band_for(verdict, error)
        finally:
            fields = self._fields(input, verdict, band, error)
            log_verdict(logging.getLogger(self.logger_name), self.log_level if error is None else logging.WARNING,
                        fields)
        return self._outcome(input, verdict, band, error), fields

    # -- Runnable API ----------------------------------------------------------------------------------------
    def _start(self, input: Any, config: RunnableConfig | None) -> tuple[RunnableConfig, Any]:
        config = ensure_config(config)
        run_manager = get_callback_manager_for_config(config).on_chain_start(
            None, input, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None))
        return config, run_manager

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config, run_manager = self._start(input, config)
        try:
            result = self._classify_all([input], [patch_config(config, callbacks=run_manager.get_child("classify"))])[0]
            outcome, fields = self._decide(input, result, run_manager)
            if self.emit_events:
                emit_event(run_manager, fields)
            output = self._run(outcome, input, patch_config(config, callbacks=run_manager.get_child("route")), kwargs)
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(output)
        return output

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config = ensure_config(config)
        run_manager = await get_async_callback_manager_for_config(config).on_chain_start(
            None, input, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None))
        try:
            results = await self._aclassify_all(
                [input], [patch_config(config, callbacks=run_manager.get_child("classify"))])
            outcome, fields = self._decide(input, results[0], run_manager)
            if self.emit_events:
                await aemit_event(run_manager, fields)
            output = await self._arun(outcome, input, patch_config(config, callbacks=run_manager.get_child("route")),
                                      kwargs)
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(output)
        return output

    @staticmethod
    def _run(outcome: _Outcome, input: Any, config: RunnableConfig, kwargs: dict[str, Any]) -> Any:
        if outcome.error is not None:
            raise outcome.error
        if outcome.runnable is None:
            return outcome.message
        return outcome.runnable.invoke(input, config, **kwargs)

    @staticmethod
    async def _arun(outcome: _Outcome, input: Any, config: RunnableConfig, kwargs: dict[str, Any]) -> Any:
        if outcome.error is not None:
            raise outcome.error
        if outcome.runnable is None:
            return outcome.message
        return await outcome.runnable.ainvoke(input, config, **kwargs)

    def _route_batch(self, inputs: list[Any], results: list[Any], run_manager: list[Any]
                     ) -> tuple[list[Any], dict[int, tuple[Runnable, list[int]]], list[tuple[Any, dict]]]:
        """Decide every input: finished outputs (messages, errors), inputs grouped by the runnable they go to, and
        the verdict events to emit."""
        outputs: list[Any] = [None] * len(inputs)
        groups: dict[int, tuple[Runnable, list[int]]] = {}
        events: list[tuple[Any, dict]] = []
        for i, (x, result, rm) in enumerate(zip(inputs, results, run_manager)):
            try:
                outcome, fields = self._decide(x, result, rm)
            except Exception as exc:  # noqa: BLE001 - reported per input by _batch_with_config
                outputs[i] = exc
                continue
            if self.emit_events:
                events.append((rm, fields))
            if outcome.error is not None:
                outputs[i] = outcome.error
            elif outcome.runnable is None:
                outputs[i] = outcome.message
            else:
                groups.setdefault(id(outcome.runnable), (outcome.runnable, []))[1].append(i)
        return outputs, groups, events

    def _batch_impl(self, inputs: list[Any], run_manager: list[Any], config: list[RunnableConfig]) -> list[Any]:
        outputs, groups, events = self._route_batch(inputs, self._classify_all(inputs, config), run_manager)
        for rm, fields in events:
            emit_event(rm, fields)
        for runnable, idx in groups.values():
            for i, out in zip(idx, runnable.batch([inputs[i] for i in idx], [config[i] for i in idx],
                                                  return_exceptions=True)):
                outputs[i] = out
        return outputs

    async def _abatch_impl(self, inputs: list[Any], run_manager: list[Any],
                           config: list[RunnableConfig]) -> list[Any]:
        results = await self._aclassify_all(inputs, config)
        outputs, groups, events = self._route_batch(inputs, results, run_manager)
        for rm, fields in events:
            await aemit_event(rm, fields)
        for runnable, idx in groups.values():
            outs = await runnable.abatch([inputs[i] for i in idx], [config[i] for i in idx], return_exceptions=True)
            for i, out in zip(idx, outs):
                outputs[i] = out
        return outputs

    def batch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        if not inputs:
            return []
        return self._batch_with_config(self._batch_impl, inputs, config, return_exceptions=return_exceptions)

    async def abatch(self, inputs: list[Any], config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        if not inputs:
            return []
        return await self._abatch_with_config(self._abatch_impl, inputs, config, return_exceptions=return_exceptions)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        config, run_manager = self._start(input, config)
        final: Any = None
        try:
            result = self._classify_all([input], [patch_config(config, callbacks=run_manager.get_child("classify"))])[0]
            outcome, fields = self._decide(input, result, run_manager)
            if self.emit_events:
                emit_event(run_manager, fields)
            if outcome.error is not None:
                raise outcome.error
            if outcome.runnable is None:
                final = outcome.message
                yield outcome.message
            else:
                for chunk in outcome.runnable.stream(
                        input, patch_config(config, callbacks=run_manager.get_child("route")), **kwargs):
                    yield chunk
                    try:
                        final = chunk if final is None else final + chunk
                    except TypeError:
                        final = chunk
        except BaseException as exc:
            run_manager.on_chain_error(exc)
            raise
        run_manager.on_chain_end(final)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        config = ensure_config(config)
        run_manager = await get_async_callback_manager_for_config(config).on_chain_start(
            None, input, name=config.get("run_name") or self.get_name(), run_id=config.pop("run_id", None))
        final: Any = None
        try:
            results = await self._aclassify_all(
                [input], [patch_config(config, callbacks=run_manager.get_child("classify"))])
            outcome, fields = self._decide(input, results[0], run_manager)
            if self.emit_events:
                await aemit_event(run_manager, fields)
            if outcome.error is not None:
                raise outcome.error
            if outcome.runnable is None:
                final = outcome.message
                yield outcome.message
            else:
                async for chunk in outcome.runnable.astream(
                        input, patch_config(config, callbacks=run_manager.get_child("route")), **kwargs):
                    yield chunk
                    try:
                        final = chunk if final is None else final + chunk
                    except TypeError:
                        final = chunk
        except BaseException as exc:
            await run_manager.on_chain_error(exc)
            raise
        await run_manager.on_chain_end(final)


def _canned(text: str, verdict: SafetyVerdict | None, band: Band, source: str) -> AIMessage:
    return refusal_message(text, verdict=verdict, source=source, extra={"band": band})


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

    def _outcome(self, input: Any, verdict: SafetyVerdict | None, band: Band,
                 error: BaseException | None) -> _Outcome:
        route = {"benign": self.benign, "harmful": self.harmful,
                 "grey": self.grey if self.grey is not None else self.harmful}[band]
        if isinstance(route, str):
            return _Outcome(message=_canned(route, verdict, band, self.get_name()))
        return _Outcome(runnable=route)


class SafetyBlocker(SafetyGuard):
    """Stop harmful inputs: raise `HarmfulPromptError` (carrying the verdict) or answer with a refusal message.

    Other inputs go to `runnable`, or pass through unchanged when it is None (`blocker | model`).
    Grey-zone inputs are blocked only with `block_grey=True`.
    """

    runnable: Runnable | None = None
    on_block: Literal["raise", "refuse"] = "raise"
    refusal: str = DEFAULT_REFUSAL
    block_grey: bool = False

    @field_validator("runnable", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Runnable) else coerce_to_runnable(value)

    def _outcome(self, input: Any, verdict: SafetyVerdict | None, band: Band,
                 error: BaseException | None) -> _Outcome:
        if band == "harmful" or (band == "grey" and self.block_grey):
            if self.on_block == "raise":
                return _Outcome(error=HarmfulPromptError(verdict, band=band, cause=error))
            return _Outcome(message=_canned(self.refusal, verdict, band, self.get_name()))
        return _Outcome(runnable=self.runnable or RunnablePassthrough())


class SafetyLogger(SafetyGuard):
    """Log every input's verdict (a log record, and a `scans_guard_verdict` callback event), then pass the input
    on unchanged, or to `runnable`. Prompt text only with `log_prompts=True`."""

    log_level: int | None = logging.INFO
    runnable: Runnable | None = None

    @field_validator("runnable", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, Runnable) else coerce_to_runnable(value)

    def _outcome(self, input: Any, verdict: SafetyVerdict | None, band: Band,
                 error: BaseException | None) -> _Outcome:
        return _Outcome(runnable=self.runnable or RunnablePassthrough())


__all__ = ["DEFAULT_REFUSAL", "Band", "SafetyBlocker", "SafetyGuard", "SafetyLogger", "SafetyPolicy", "SafetyRouter"]
