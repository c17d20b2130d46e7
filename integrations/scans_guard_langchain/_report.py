"""Structured log records and LangChain custom callback events for sigma verdicts."""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.callbacks import AsyncCallbackManager, CallbackManager
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event

from scans_guard.config import SafetyVerdict

LOGGER_NAME = "scans_guard_langchain"
EVENT_NAME = "scans_guard_verdict"
"""Name of the custom callback event sent with every verdict (`on_custom_event`, `astream_events`)."""


def verdict_fields(
    verdict: SafetyVerdict | None,
    *,
    band: str | None = None,
    source: str = "",
    prompt: str | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """Flat record of one verdict: the `extra` of a log record (keys prefixed `scans_`) and a custom event's data."""
    fields: dict[str, Any] = {"scans_source": source, "scans_band": band}
    if verdict is not None:
        fields.update({f"scans_{k}": v for k, v in verdict.record().items()})
    if error is not None:
        fields["scans_error"] = f"{type(error).__name__}: {error}"
    if prompt is not None:
        fields["scans_prompt"] = prompt
    return fields


def log_verdict(logger: logging.Logger, level: int | None, fields: dict[str, Any]) -> None:
    """One log record per verdict, its fields as `extra` (so JSON formatters and filters can read them)."""
    if level is None or not logger.isEnabledFor(level):
        return
    if "scans_error" in fields:
        logger.log(
            level,
            "scans-guard %s: classification failed (%s)",
            fields["scans_source"],
            fields["scans_error"],
            extra=fields,
        )
        return
    logger.log(
        level,
        "scans-guard %s: label=%s score=%.4f threshold=%.4f band=%s",
        fields["scans_source"],
        fields.get("scans_label"),
        fields.get("scans_score", float("nan")),
        fields.get("scans_threshold", float("nan")),
        fields.get("scans_band"),
        extra=fields,
    )


def _child_manager(run_manager: Any, cls: type) -> Any:
    """A callback manager whose parent is `run_manager`'s run (works for LLM and chain run managers)."""
    return cls(
        handlers=run_manager.handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )


def emit_event(run_manager: Any | None, fields: dict[str, Any]) -> None:
    """Send the verdict as a custom event on `run_manager`'s run, or on the current run when None."""
    if run_manager is None:
        try:
            dispatch_custom_event(EVENT_NAME, fields)
        except RuntimeError:  # not inside a run: nobody to tell
            pass
        return
    if run_manager.handlers:
        _child_manager(run_manager, CallbackManager).on_custom_event(EVENT_NAME, fields, run_id=run_manager.run_id)


async def aemit_event(run_manager: Any | None, fields: dict[str, Any]) -> None:
    """Async `emit_event`."""
    if run_manager is None:
        try:
            await adispatch_custom_event(EVENT_NAME, fields)
        except RuntimeError:
            pass
        return
    if run_manager.handlers:
        await _child_manager(run_manager, AsyncCallbackManager).on_custom_event(
            EVENT_NAME, fields, run_id=run_manager.run_id
        )
