"""ASGI middleware of the server: the API key, and request counts and latency by route and status."""

from __future__ import annotations

import hmac
import time

from .errors import ApiError
from .metrics import route_label
from .state import ServerState


class Guard:
    """ASGI middleware: API key, request counts and latency by route and status (streams timed to their last byte).

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
        status = {"code": 500}

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        key = self.state.settings.api_key
        try:
            if key is not None and (path.startswith("/v1/") or path == "/metrics") and not _authorized(scope, key):
                err = ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                               type="authentication_error", code="invalid_api_key")
                await err.response()(scope, receive, counted_send)
                return
            await self.app(scope, receive, counted_send)
        finally:
            metrics = self.state.metrics
            metrics.requests.labels(route, str(status["code"])).inc()
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
