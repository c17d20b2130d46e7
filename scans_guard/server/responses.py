"""A chat completion's answer: the JSON body, or the SSE stream of chunks; the verdict under `scans_guard`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import Request

from ..config import SafetyVerdict
from ..request_handle import RequestHandle
from .errors import api_error
from .schemas import EXTENSION_KEY
from .state import ServerState


def verdict_json(verdict: SafetyVerdict | None) -> dict | None:
    return None if verdict is None else verdict.model_dump(mode="json", exclude={"layer_similarities"})


async def until_done(request: Request, handle: RequestHandle) -> None:
    """Wait for a non-streamed request; a client that goes away cancels it (its row leaves the batch)."""
    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        handle.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await handle.aresult()
    finally:
        watcher.cancel()
        if not handle.done:
            handle.cancel()


def _usage(handle: RequestHandle) -> dict:
    out = handle.output
    completion = out.completion_tokens if out else 0
    return {"prompt_tokens": handle.prompt_tokens, "completion_tokens": completion,
            "total_tokens": handle.prompt_tokens + completion}


def _finish_reason(handle: RequestHandle) -> str:
    return "content_filter" if handle.refused else handle.output.finish_reason


def _extension(handle: RequestHandle, extension: dict) -> dict:
    steering = handle.output.steering  # what was added to this request's row (none when refused; the retry's)
    return {"verdict": verdict_json(handle.verdict), **extension, "steered": steering.coefficient != 0,
            "steering": steering.model_dump(), "refused": handle.refused, "retried": steering.source == "retry"}


def _record(state: ServerState, handle: RequestHandle, started: float) -> None:
    m = state.metrics
    m.verdict(handle.verdict)
    if handle.first_token_at is not None:
        m.ttft.observe(handle.first_token_at - started)
    if handle.output is not None:
        m.prompt_tokens.inc(handle.prompt_tokens)
        m.completion_tokens.inc(handle.output.completion_tokens)
    if handle.refused:
        m.refusals.inc()
    if handle.output is not None and handle.output.steering.source == "retry":
        m.retries.inc()


def completion(state: ServerState, handle: RequestHandle, meta: dict, extension: dict, started: float) -> dict:
    _record(state, handle, started)
    out = handle.output
    return {**meta, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(handle)}],
            "usage": _usage(handle), EXTENSION_KEY: _extension(handle, extension)}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def stream(state: ServerState, request: Request, handle: RequestHandle, meta: dict, extension: dict,
                  include_usage: bool, started: float) -> AsyncIterator[str]:
    """SSE chunks: the role, text deltas, the finish chunk (with the verdict), the usage chunk if asked, [DONE].

    An error after the stream began is sent as an `{"error": ...}` event before [DONE]; a client that disconnects
    cancels the request (its row leaves the batch at the next step).
    """
    base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}

    def chunk(delta: dict, finish: str | None = None, **extra: object) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                     **extra})

    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for event in handle:
                if event.text:
                    yield chunk({"content": event.text})
                if event.output is not None and handle.refused:
                    yield chunk({"content": event.output.text})
        except Exception as exc:  # the request failed after the stream started: tell the client in-band
            yield _sse(api_error(exc).body())
            yield "data: [DONE]\n\n"
            return
        if handle.output is None:  # cancelled
            return
        _record(state, handle, started)
        ext = {EXTENSION_KEY: _extension(handle, extension)}
        yield chunk({}, _finish_reason(handle), **ext)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(handle), **ext})
        yield "data: [DONE]\n\n"
    finally:
        if not handle.done:
            handle.cancel()
