"""OpenAI's error JSON for every failure: which status, type and code each error is answered with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ...errors import (
    InvalidArgumentError,
    InvalidPromptError,
    NonFiniteScoreError,
    PromptTooLongError,
    ScansGuardError,
)
from ..request_handle import QueueFullError, RequestTimeoutError, SchedulerClosedError

# Seconds a client should wait before sending again after a 429 (queue full) or a 503 (loading, shutting down): the
# queue moves every decoding step, so a second is enough to find room, and clients (openai's) honour it.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error answered as OpenAI's error JSON."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str] | None:
        if self.status == 401:
            return {"WWW-Authenticate": "Bearer"}
        if self.status in (429, 503):  # a busy or unavailable server: try again shortly (or elsewhere)
            return {"Retry-After": str(RETRY_AFTER_S)}
        return None

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


class BodyTooLarge(Exception):
    """The request body is over the server's limit (413)."""


def api_error(exc: BaseException) -> ApiError:
    """The status, type and code a failure is answered with (a bad request is the client's, 4xx; the rest 5xx)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first: Mapping[str, Any] = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        param = _param(first.get("loc", ())) or None
        text = "; ".join(f"{_param(e['loc']) or 'body'}: {e['msg'].removeprefix('Value error, ')}" for e in errors[:5])
        return ApiError(400, f"invalid request: {text}", param=param, code="invalid_value")
    if isinstance(exc, BodyTooLarge):
        return ApiError(413, str(exc), code="request_too_large")
    if isinstance(exc, QueueFullError):
        return ApiError(429, f"the server is busy: {exc}", type="rate_limit_error", code="queue_full")
    if isinstance(exc, SchedulerClosedError):
        return ApiError(503, "the server is shutting down", type="service_unavailable_error", code="shutting_down")
    if isinstance(exc, RequestTimeoutError):
        return ApiError(504, str(exc), type="timeout_error", code="timeout")
    if isinstance(exc, PromptTooLongError):
        return ApiError(413, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, InvalidPromptError):
        code = "context_length_exceeded" if "context window" in str(exc) else "invalid_prompt"
        return ApiError(400, str(exc), param="messages", code=code)
    if isinstance(exc, (InvalidArgumentError, ValueError)):
        return ApiError(400, str(exc), code="invalid_value")
    if isinstance(exc, NonFiniteScoreError):
        return ApiError(500, str(exc), type="server_error", code="non_finite_score")
    if isinstance(exc, ScansGuardError):
        return ApiError(500, str(exc), type="server_error")
    return ApiError(500, "internal server error", type="server_error")


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _param(loc: tuple) -> str:
    """A validation error's location as OpenAI's `param` ('messages.0.content'), without pydantic's union-member
    tags ('str', 'list[TextPart]')."""
    parts = [str(x) for x in loc if not (isinstance(x, str) and (x in _UNION_TAGS or "[" in x or "-" in x))]
    return ".".join(parts)
