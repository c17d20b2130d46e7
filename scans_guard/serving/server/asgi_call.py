"""One HTTP request run through an ASGI app in-process, its response yielded as it is sent: how a Ray Serve replica
serves the app for the front deployment (which holds the client's connection) without an HTTP hop.

The first item is the response's start and its first body bytes together, so a reply sent in one piece (every
non-streamed completion, every error) reaches the front whole or not at all; each later item is body bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class BufferedRequest:
    """What the front read of the client's request (the body whole: it is capped at the server's max_body_bytes)."""

    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def scope(self) -> dict:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": None,
            "server": None,
        }


@dataclass
class ResponseStart:
    """The status, the headers and the first body bytes of a response; `more` if body bytes follow."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    more: bool


async def call(app, request: BufferedRequest) -> AsyncIterator[ResponseStart | bytes]:
    """Run `request` through `app`: a ResponseStart, then body bytes until the response ends. Closing the iterator
    early (the client went away) is a disconnect for the app, and stops it."""
    sent: asyncio.Queue[dict | None] = asyncio.Queue()
    gone = asyncio.Event()
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await app(request.scope(), receive, sent.put)
        finally:
            sent.put_nowait(None)

    task = asyncio.ensure_future(run())
    start: dict | None = None
    head_sent = False
    try:
        while True:
            message = await sent.get()
            if message is None:  # the app returned; one that never answered failed
                if not head_sent:
                    task.result()  # its exception, if it raised one
                    raise RuntimeError("the app returned without a response")
                return
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body" and start is not None:
                body, more = message.get("body", b""), bool(message.get("more_body", False))
                if not head_sent:
                    head_sent = True
                    yield ResponseStart(start["status"], list(start.get("headers", [])), body, more)
                elif body:
                    yield body
                if not more:
                    return
    finally:
        gone.set()
        if not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            task.cancel()
