"""The OpenAI-compatible guarded model server: a FastAPI app over one engine and its continuous-batching scheduler.

    app = create_app(engine)                                # or a loader: create_app(lambda: ScansEngine.load())
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, POST /v1/classify, GET /v1/models, /healthz, /readyz, /metrics (docs/server.md).
Every error is OpenAI's error JSON (`{"error": {"message", "type", "param", "code"}}`), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config import GenerationConfig, SafetyVerdict
from ..engine import ScansEngine
from ..errors import (
    InvalidArgumentError,
    InvalidPromptError,
    NonFiniteScoreError,
    PromptTooLongError,
    ScansGuardError,
)
from ..scheduler import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_QUEUE,
    ContinuousBatcher,
    QueueFullError,
    RequestHandle,
    RequestTimeoutError,
    SchedulerClosedError,
)
from .metrics import ServerMetrics, route_label
from .schemas import EXTENSION_KEY, MAX_STOP, ROLES, ChatCompletionRequest, ChatMessage, ClassifyRequest

log = logging.getLogger(__name__)

REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class ServerSettings:
    """How the server runs; `scans-guard serve` flags map one to one."""

    served_model_name: str | None = None  # None: the model's name (ModelHandle.name)
    api_key: str | None = None  # Bearer token required on /v1/* and /metrics; None: no authentication
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_batch: int = DEFAULT_MAX_BATCH  # rows decoding at once
    max_queue: int = DEFAULT_MAX_QUEUE  # requests waiting to join the batch; more get 429
    request_timeout_s: float = 600.0  # a request still running then fails with 504
    default_max_tokens: int = 256  # when a request gives neither max_tokens nor max_completion_tokens
    max_tokens_limit: int = 4096  # the most tokens one request may ask for
    policy: str = "steer"  # default per-request policy: "steer" or "guard" (refuse harmful without generating)
    steer: bool = True  # default per-request steering
    refusal_message: str = REFUSAL
    max_classify_inputs: int = 64  # prompts in one /v1/classify request
    classify_batch_size: int = 8

    def __post_init__(self) -> None:
        if self.policy not in ("steer", "guard"):
            raise InvalidArgumentError(f"policy must be 'steer' or 'guard', got {self.policy!r}")
        for name in ("max_body_bytes", "max_batch", "max_queue", "default_max_tokens", "max_tokens_limit",
                     "max_classify_inputs", "classify_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not self.request_timeout_s > 0:
            raise InvalidArgumentError(f"request_timeout_s must be positive, got {self.request_timeout_s!r}")


class ApiError(Exception):
    """An error answered as OpenAI's error JSON."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class _BodyTooLarge(Exception):
    pass


def api_error(exc: BaseException) -> ApiError:
    """The status, type and code a failure is answered with (a bad request is the client's, 4xx; the rest 5xx)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, f"the request body is not valid JSON: {first.get('msg')}", code="invalid_json")
        param = _param(first.get("loc", ())) or None
        text = "; ".join(f"{_param(e['loc']) or 'body'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in errors[:5])
        return ApiError(400, f"invalid request: {text}", param=param, code="invalid_value")
    if isinstance(exc, _BodyTooLarge):
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


def _messages(messages: list[ChatMessage], param: str = "messages") -> list[dict]:
    """OpenAI messages -> the engine's conversation (text only; developer is a system turn)."""
    out = []
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise ApiError(400, f"unsupported role {m.role!r}: one of {', '.join(ROLES)}", param=f"{param}.{i}.role",
                           code="invalid_value")
        content = m.content
        if isinstance(content, list):
            bad = [p.type for p in content if p.type != "text" or p.text is None]
            if bad:
                raise ApiError(400, f"only text content parts are supported, got {bad[0]!r}",
                               param=f"{param}.{i}.content", code="invalid_value")
            content = "".join(p.text for p in content)
        if content is None:
            raise ApiError(400, "message content must be text", param=f"{param}.{i}.content", code="invalid_value")
        out.append({"role": "system" if m.role == "developer" else m.role, "content": content})
    return out


def _verdict_json(verdict: SafetyVerdict | None) -> dict | None:
    return None if verdict is None else verdict.model_dump(mode="json", exclude={"layer_similarities"})


class _State:
    """What the routes share: the engine once loaded, its scheduler, the metrics."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.metrics = ServerMetrics()
        self.engine: ScansEngine | None = None
        self.scheduler: ContinuousBatcher | None = None
        self.load_error: str | None = None
        self.model_name: str | None = settings.served_model_name
        self.created = int(time.time())
        self.classifying = 0
        self.metrics.bind(lambda: self.scheduler.waiting if self.scheduler else 0,
                          lambda: self.scheduler.running if self.scheduler else 0)

    def set_engine(self, engine: ScansEngine) -> None:
        s = self.settings
        self.scheduler = ContinuousBatcher(engine, max_batch=s.max_batch, max_queue=s.max_queue,
                                           on_step=self.metrics.batch_size.observe)
        self.model_name = self.model_name or engine.handle.name
        self.engine = engine
        self.metrics.ready.set(1)

    def load(self, loader: Callable[[], ScansEngine]) -> None:
        try:
            self.set_engine(loader())
        except Exception as exc:  # reported by /readyz and every model route; the process stays up
            log.exception("loading the model failed")
            self.load_error = api_error(exc).message if isinstance(exc, ScansGuardError) else repr(exc)

    def ready(self) -> ScansEngine:
        if self.engine is None:
            if self.load_error is not None:
                raise ApiError(503, f"the model failed to load: {self.load_error}", type="service_unavailable_error",
                               code="model_load_failed")
            raise ApiError(503, "the model is loading", type="service_unavailable_error", code="model_loading")
        return self.engine


def create_app(engine_or_loader: ScansEngine | Callable[[], ScansEngine],
               settings: ServerSettings | None = None) -> FastAPI:
    """The server app over a loaded engine, or over a loader run in a background thread at startup (503 until then)."""
    settings = settings or ServerSettings()
    state = _State(settings)
    loader = None
    if isinstance(engine_or_loader, ScansEngine):
        state.set_engine(engine_or_loader)
    elif callable(engine_or_loader):
        loader = engine_or_loader
    else:
        raise InvalidArgumentError(f"create_app takes a ScansEngine or a loader, got {type(engine_or_loader).__name__}")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if loader is not None and state.engine is None and state.load_error is None:
            threading.Thread(target=state.load, args=(loader,), name="scans-guard-load", daemon=True).start()
        yield
        if state.scheduler is not None:
            state.scheduler.close()

    app = FastAPI(title="scans-guard", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.scans_guard = state
    app.add_middleware(_Guard, state=state)

    @app.exception_handler(Exception)
    async def _any_error(_request: Request, exc: Exception) -> JSONResponse:
        err = api_error(exc)
        if err.status >= 500 and not isinstance(exc, ScansGuardError):
            log.error("request failed", exc_info=exc)
        return err.response()

    for cls in (ApiError, ValidationError, ScansGuardError, ValueError, _BodyTooLarge):
        app.add_exception_handler(cls, _any_error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
        kind, code = kinds.get(exc.status_code, ("invalid_request_error", None))
        return ApiError(exc.status_code, str(exc.detail), type=kind, code=code).response()

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            state.ready()
        except ApiError as err:
            return JSONResponse({"status": "loading" if state.load_error is None else "failed", **err.body()},
                                status_code=503)
        return JSONResponse({"status": "ready", "model": state.model_name})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "scans-guard"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        state.ready()
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        state.ready()
        _check_model(model)
        return model_card()

    def _check_model(model: str | None) -> None:
        if model is not None and model != state.model_name:
            raise ApiError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                           type="not_found_error", param="model", code="model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        state.ready()
        body = ChatCompletionRequest.model_validate_json(await _read_body(request, settings.max_body_bytes),
                                                         strict=True)
        _check_model(body.model)
        conversation, config, options = _chat_inputs(body, settings)
        scheduler = state.scheduler
        handle = await anyio.to_thread.run_sync(lambda: scheduler.submit(
            conversation, config, timeout=settings.request_timeout_s, **options))
        started = time.perf_counter()
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name}
        extension = {"policy": "guard" if options["refusal"] is not None else "steer",
                     "steer": options["steer"] and options["coefficient"] is None}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(state, request, handle, meta, extension, include_usage, started),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await _until_done(request, handle)
        return JSONResponse(_completion(state, handle, meta, extension, started))

    @app.post("/v1/classify")
    async def classify(request: Request) -> JSONResponse:
        engine = state.ready()
        body = ClassifyRequest.model_validate_json(await _read_body(request, settings.max_body_bytes), strict=True)
        _check_model(body.model)
        items = [body.input] if isinstance(body.input, str) else body.input
        if not items:
            raise ApiError(400, "input is empty", param="input", code="invalid_value")
        if len(items) > settings.max_classify_inputs:
            raise ApiError(413, f"{len(items)} inputs in one request, more than {settings.max_classify_inputs}",
                           param="input", code="too_many_inputs")
        conversations = [x if isinstance(x, str) else _messages(x, f"input.{i}") for i, x in enumerate(items)]
        if state.classifying >= settings.max_queue:
            raise QueueFullError(f"{state.classifying} classify requests are running (max_queue={settings.max_queue})")
        state.classifying += 1
        try:
            verdicts = await anyio.to_thread.run_sync(lambda: engine.classify(
                conversations, settings.classify_batch_size, operating_point=body.operating_point))
        finally:
            state.classifying -= 1
        for v in verdicts:
            state.metrics.verdict(v)
        return JSONResponse({"object": "list", "model": state.model_name,
                             "data": [{"index": i, "object": "scans_guard.verdict", **_verdict_json(v)}
                                      for i, v in enumerate(verdicts)]})

    return app


def _version() -> str:
    from .. import __version__

    return __version__


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(f"the request body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _chat_inputs(body: ChatCompletionRequest, settings: ServerSettings) -> tuple[list[dict], GenerationConfig, dict]:
    """The conversation, decoding settings and steering options of a chat completion request."""
    unsupported = [("n", body.n not in (None, 1), "n must be 1"),
                   ("tools", bool(body.tools) or bool(body.functions), "tools and functions are not supported"),
                   ("logprobs", bool(body.logprobs) or bool(body.top_logprobs), "logprobs are not supported"),
                   ("presence_penalty", bool(body.presence_penalty), "presence_penalty is not supported"),
                   ("frequency_penalty", bool(body.frequency_penalty), "frequency_penalty is not supported"),
                   ("response_format", body.response_format not in (None, {"type": "text"}),
                    "only the text response format is supported")]
    for param, bad, message in unsupported:
        if bad:
            raise ApiError(400, message, param=param, code="unsupported_parameter")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > MAX_STOP:
        raise ApiError(400, f"at most {MAX_STOP} stop sequences, got {len(stop)}", param="stop", code="invalid_value")
    if any(not s for s in stop):
        raise ApiError(400, "a stop sequence must not be empty", param="stop", code="invalid_value")
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.default_max_tokens
    if max_tokens > settings.max_tokens_limit:
        param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        raise ApiError(400, f"{param} is {max_tokens}, more than this server's limit of {settings.max_tokens_limit}",
                       param=param, code="invalid_value")
    fields = {"max_new_tokens": max_tokens, "stop": stop, "seed": body.seed, "ignore_eos": bool(body.ignore_eos),
              "temperature": body.temperature or 0.0, "top_p": body.top_p if body.top_p is not None else 1.0,
              "top_k": body.top_k, "repetition_penalty": body.repetition_penalty}
    try:
        config = GenerationConfig(**fields)
    except ValidationError as exc:
        raise api_error(exc) from None
    opts = body.scans_guard
    policy = (opts.policy if opts and opts.policy else None) or settings.policy
    steer = opts.steer if opts and opts.steer is not None else settings.steer
    options = {"steer": steer, "coefficient": opts.coefficient if opts else None,
               "refusal": settings.refusal_message if policy == "guard" else None,
               "operating_point": (opts.operating_point if opts and opts.operating_point else None) or "guard"}
    return _messages(body.messages), config, options


async def _until_done(request: Request, handle: RequestHandle) -> None:
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
    verdict = handle.verdict
    steered = verdict is not None and extension["steer"] and verdict.coefficient != 0
    return {"verdict": _verdict_json(verdict), **extension, "steered": steered, "refused": handle.refused}


def _record(state: _State, handle: RequestHandle, started: float) -> None:
    m = state.metrics
    m.verdict(handle.verdict)
    if handle.first_token_at is not None:
        m.ttft.observe(handle.first_token_at - started)
    if handle.output is not None:
        m.prompt_tokens.inc(handle.prompt_tokens)
        m.completion_tokens.inc(handle.output.completion_tokens)
    if handle.refused:
        m.refusals.inc()


def _completion(state: _State, handle: RequestHandle, meta: dict, extension: dict, started: float) -> dict:
    _record(state, handle, started)
    out = handle.output
    return {**meta, "object": "chat.completion", "system_fingerprint": None,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out.text, "refusal": None},
                         "logprobs": None, "finish_reason": _finish_reason(handle)}],
            "usage": _usage(handle), EXTENSION_KEY: _extension(handle, extension)}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


async def _stream(state: _State, request: Request, handle: RequestHandle, meta: dict, extension: dict,
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


class _Guard:
    """ASGI middleware: API key, request counts and latency by route and status (streams timed to their last byte).

    Pure ASGI rather than BaseHTTPMiddleware, so streamed responses pass through untouched and a disconnect reaches
    the route.
    """

    def __init__(self, app, state: _State):
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
