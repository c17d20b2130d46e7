"""A chat completion's answer: the JSON body, or the SSE stream of chunks; the verdict under `scans_guard`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator

from fastapi import Request

from ...config import SafetyVerdict, SteeredOutput
from ...engine import StreamEvent
from ..request_handle import RequestHandle
from .accounting import Outcome, record
from .errors import api_error
from .schemas import EXTENSION_KEY
from .state import ServerState
from .tools import StreamedReply, reply_message


def verdict_json(verdict: SafetyVerdict) -> dict:
    return verdict.model_dump(mode="json", exclude={"layer_similarities"})


@contextlib.contextmanager
def _watched(request: Request, handle: RequestHandle) -> Iterator[None]:
    """While the block runs, a client that goes away cancels the request (its row leaves the batch)."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        handle.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        yield
    finally:
        watcher.cancel()


async def until_done(request: Request, handle: RequestHandle) -> None:
    """Wait for a non-streamed request to end (its error raised here, before any byte is sent)."""
    try:
        with _watched(request, handle):
            await handle.aresult()
    finally:
        if not handle.done:
            handle.cancel()


def _started(handle: RequestHandle) -> bool:
    """What the guard does with the request is decided: refused, or its row joined and no retry judge holds it."""
    return handle.refused or (handle.steering is not None and not handle.judging)


async def until_started(request: Request, handle: RequestHandle) -> list[StreamEvent]:
    """Wait until a stream's verdict headers are final (its row joined the batch; a row a retry's judge holds: its
    first text) or the request is over; an error before then is answered with its own status. Returns the events
    read, to replay into the stream."""
    events: list[StreamEvent] = []
    with _watched(request, handle):
        while not (handle.done or _started(handle) or any(e.text or e.output for e in events)):
            await handle.wait(lambda: _started(handle))
            events += handle.queued()
    return events


def _usage(handle: RequestHandle) -> dict:
    out = handle.output
    completion = out.completion_tokens if out else 0
    return {
        "prompt_tokens": handle.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": handle.prompt_tokens + completion,
    }


def _finish_reason(handle: RequestHandle, out: SteeredOutput) -> str:
    return "content_filter" if handle.refused else out.finish_reason


def _extension(handle: RequestHandle, out: SteeredOutput, extension: dict) -> dict:
    steering = out.steering  # what was added to this request's row (none when refused; the retry's)
    return {
        "verdict": verdict_json(handle.verdict) if handle.verdict is not None else None,
        **extension,
        "steered": steering.coefficient != 0,
        "steering": steering.model_dump(),
        "refused": handle.refused,
        "retried": steering.source == "retry",
    }


def completion(
    state: ServerState,
    outcome: Outcome,
    handle: RequestHandle,
    out: SteeredOutput,
    meta: dict,
    extension: dict,
    tools: list[dict] | None = None,
) -> dict:
    """The response to a request that ended with `out` (`handle`: the request, `outcome.handle`)."""
    record(state, outcome)
    message, finish = reply_message(out.text, tools, handle.refused, _finish_reason(handle, out))
    return {
        **meta,
        "object": "chat.completion",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": _usage(handle),
        EXTENSION_KEY: _extension(handle, out, extension),
    }


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _replayed(events: list[StreamEvent], handle: RequestHandle) -> AsyncIterator[StreamEvent]:
    for event in events:
        yield event
    async for event in handle:
        yield event


async def stream(
    state: ServerState,
    outcome: Outcome,
    handle: RequestHandle,
    events: list[StreamEvent],
    meta: dict,
    extension: dict,
    include_usage: bool,
    tools: list[dict] | None = None,
) -> AsyncIterator[str]:
    """SSE chunks: the role, text deltas, the tool calls (if any), the finish chunk (with the verdict), the usage
    chunk if asked, [DONE]. `handle`: the request (`outcome.handle`); `events`: what `until_started` read, sent
    first. With tools, text that may be call markup is held back until the reply ends (`tools.StreamedReply`).

    An error after the stream began is sent as an `{"error": ...}` event before [DONE] (and counted with its status);
    a client that disconnects cancels the request (its row leaves the batch at the next step).
    """
    base = {**meta, "object": "chat.completion.chunk", "system_fingerprint": None}
    reply = StreamedReply(tools)

    def chunk(delta: dict, finish: str | None = None, **extra: object) -> str:
        return _sse(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
        )

    try:
        yield chunk({"role": "assistant", "content": ""})
        try:
            async for event in _replayed(events, handle):
                if event.text and (text := reply.feed(event.text)):
                    yield chunk({"content": text})
                if event.output is not None and handle.refused:
                    yield chunk({"content": event.output.text})
        except Exception as exc:  # the request failed after the stream started: tell the client in-band
            err = api_error(exc)
            outcome.status = err.status
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
            return
        out = handle.output
        if out is None:  # cancelled
            return
        record(state, outcome)
        ext = {EXTENSION_KEY: _extension(handle, out, extension)}
        rest, calls, finish = (
            reply.finish(_finish_reason(handle, out)) if not handle.refused else ("", [], "content_filter")
        )
        if rest:
            yield chunk({"content": rest})
        if calls:
            yield chunk({"tool_calls": calls})
        yield chunk({}, finish, **ext)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": _usage(handle), **ext})
        yield "data: [DONE]\n\n"
    finally:
        if not handle.done:
            handle.cancel()
