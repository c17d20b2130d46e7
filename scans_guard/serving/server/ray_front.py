"""The front of the Ray Serve deployment: it holds each client's connection, hands the request to a model replica
and answers a replica's failure in OpenAI's error shape, so a replica that dies never leaves a client hanging or
with a bare "Internal Server Error".

- The replica died before answering (a non-streamed completion is sent whole, once done): the request is sent to
  another replica (bounded attempts; the request had no effect yet), else 503 `replica_unavailable` JSON.
- It died mid-stream: the stream ends with an `{"error": ...}` event and [DONE], as the server's own in-band errors.
- The client went away: the replica's request is cancelled (its row leaves the batch).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ...errors import one_line
from .app import read_body
from .asgi_call import BufferedRequest, ResponseStart
from .errors import ApiError, BodyTooLarge, api_error

log = logging.getLogger(__name__)

# Replicas a request is offered to before a 503: a second is enough to ride out one replica's death, while a request
# that itself kills replicas cannot take down more than two.
ATTEMPTS = 2


def replica_unavailable(exc: Exception | None) -> ApiError:
    reason = f": {one_line(exc)}" if exc is not None else ""
    return ApiError(
        503,
        f"the model replica serving this request stopped{reason}",
        type="service_unavailable_error",
        code="replica_unavailable",
    )


class ScansGuardFront:
    """Ray Serve's HTTP proxy calls this with each request; the replicas run the server app (ScansGuardReplica)."""

    def __init__(self, replicas, max_body_bytes: int):
        self.replicas = replicas.options(stream=True, method_name="handle")
        self.max_body_bytes = max_body_bytes

    async def __call__(self, request: Request) -> Response:
        try:
            body = await read_body(request, self.max_body_bytes)
        except BodyTooLarge as exc:
            return api_error(exc).response()
        call = BufferedRequest(
            request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), body
        )
        failure: Exception | None = None
        for _ in range(ATTEMPTS):
            replies = self.replicas.remote(call)
            try:
                start = await replies.__anext__()
            except Exception as exc:  # the replica died, or none could take it: offer the request to another
                log.warning("a replica failed before answering %s %s: %s", call.method, call.path, one_line(exc))
                failure = exc
                continue
            return _response(start, replies)
        return replica_unavailable(failure).response()


def _response(start: ResponseStart, replies) -> Response:
    """The replica's response as the client gets it: whole if it came in one piece, else streamed on."""
    if not start.more:
        response = Response(start.body, status_code=start.status)
        response.raw_headers = start.headers  # the replica's, content-length included
        return response
    sse = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.headers)
    response = StreamingResponse(_rest(start.body, replies, sse), status_code=start.status)
    response.raw_headers = start.headers
    return response


async def _rest(first: bytes, replies, sse: bool) -> AsyncIterator[bytes]:
    ended = False
    try:
        yield first
        try:
            async for chunk in replies:
                yield chunk
        except Exception as exc:  # the replica died mid-stream: say so in-band, then end the stream cleanly
            log.warning("a replica failed mid-stream: %s", one_line(exc))
            if not sse:
                raise
            yield f"data: {json.dumps(replica_unavailable(exc).body())}\n\ndata: [DONE]\n\n".encode()
        ended = True
    finally:
        if not ended:  # the client left: the replica stops its request (its row leaves the batch)
            replies.cancel()
