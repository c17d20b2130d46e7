"""ASGI middleware of the server: the API key, the drain, request counts and latency by route and status."""

from __future__ import annotations

import hmac
import time

from starlette.types import Message

from .accounting import outcome_of, record
from .errors import ApiError
from .metrics import route_label
from .state import ServerState

MODEL_ROUTES = ("/v1/chat/completions", "/v1/classify")  # refused while the server drains
CLIENT_CLOSED = 499  # the status counted for a response its client did not wait for (nginx's convention)


class Guard:
    """ASGI middleware: API key, the drain's 503, request counts and latency by route and status (streams timed to
    their last byte; a response cut before it counts as 499), and the metrics of chat completions the route did not
    record (failed or cut).

    Pure ASGI rather than BaseHTTPMiddleware, so streamed responses pass through untouched and a disconnect reaches
    the route.
    """

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = route_label(path)
        t0 = time.perf_counter()
        status = {"code": 500, "complete": False}
        outcome = outcome_of(scope)

        async def counted_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                status["complete"] = True

        key = self.state.settings.api_key
        counted = path.startswith("/v1/")
        self.state.in_flight += counted
        try:
            if key is not None and (path.startswith("/v1/") or path == "/metrics") and not _authorized(scope, key):
                err = ApiError(
                    401,
                    "missing or invalid API key: send 'Authorization: Bearer <key>'",
                    type="authentication_error",
                    code="invalid_api_key",
                )
                await err.response()(scope, receive, counted_send)
                return
            if self.state.draining_since is not None and path in MODEL_ROUTES:
                response = ApiError(
                    503, "the server is shutting down", type="service_unavailable_error", code="shutting_down"
                ).response()
                response.headers["Connection"] = "close"  # come back on a new connection (to another replica)
                await response(scope, receive, counted_send)
                return
            await self.app(scope, receive, counted_send)
        finally:
            self.state.in_flight -= counted
            code = outcome.status or status["code"]
            if code < 400 and not status["complete"]:
                code = CLIENT_CLOSED  # cut: the client went away before the last byte (never counted as a 200)
            if outcome.handle is not None:  # a chat completion the route did not record: failed or cut
                outcome.handle.cancel()  # a no-op once it ended; else its row leaves the batch at the next step
                record(self.state, outcome)
            metrics = self.state.metrics
            metrics.requests.labels(route, str(code)).inc()
            metrics.latency.labels(route).observe(time.perf_counter() - t0)


def _authorized(scope: dict, key: str) -> bool:
    given = b""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            given = value
            break
    scheme, _, token = given.partition(b" ")
    expected = key.encode()
    # compare_digest: the time taken does not tell how much of the key matched
    return hmac.compare_digest(token.strip() if scheme.lower() == b"bearer" else b"", expected)
