"""The OpenAI-compatible guarded model server: a FastAPI app over one engine and its continuous-batching scheduler.

    app = create_app(engine)                                # or a loader: create_app(lambda: ScansEngine.load())
    uvicorn.run(app, host="127.0.0.1", port=8000)

Routes: POST /v1/chat/completions, POST /v1/classify, GET /v1/models, /healthz, /readyz, /metrics, /openapi.json
(docs/server.md).
Every error is OpenAI's error JSON (`{"error": {"message", "type", "param", "code"}}`), never a traceback.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...config import GenerationConfig
from ...engine import ScansEngine
from ...errors import InvalidArgumentError, ScansGuardError
from ...sigma.decision import GuardPolicy, policy_blocks, policy_steers
from ...steering.plan import MAX_COEFFICIENT
from ...steering.retry import RetryPolicy
from ..request_handle import QueueFullError
from .accounting import guard_headers, outcome_of
from .errors import ApiError, BodyTooLarge, api_error
from .middleware import CLIENT_CLOSED, Guard
from .openapi import CHAT_RESPONSES, MODEL_ERRORS, install, request_body
from .responses import completion, stream, until_done, until_started, verdict_json
from .schemas import EXTENSION_KEY, MAX_STOP, ChatCompletionRequest, ClassifyRequest, ScansGuardOptions
from .state import ServerSettings, ServerState
from .tools import chat_messages, chat_tools, conversation

log = logging.getLogger(__name__)


def create_app(
    engine_or_loader: ScansEngine | Callable[[], ScansEngine], settings: ServerSettings | None = None
) -> FastAPI:
    """The server app over a loaded engine, or over a loader run in a background thread at startup (503 until then)."""
    state = ServerState(settings or ServerSettings())
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
        state.close()  # this server's requests; the engine's scheduler is the engine's

    app = FastAPI(
        title="scans-guard",
        version=_version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    install(
        app,
        [ChatCompletionRequest, ClassifyRequest],
        state.settings.max_tokens_limit,
        state.settings.max_classify_inputs,
    )
    app.state.scans_guard = state
    app.add_middleware(Guard, state=state)
    _add_error_handlers(app)
    _add_ops_routes(app, state)
    _add_model_routes(app, state)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    async def any_error(_request: Request, exc: Exception) -> JSONResponse:
        err = api_error(exc)
        if err.status >= 500 and not isinstance(exc, ScansGuardError):
            log.error("request failed", exc_info=exc)
        return err.response()

    for cls in (Exception, ApiError, ValidationError, ScansGuardError, ValueError, BodyTooLarge):
        app.add_exception_handler(cls, any_error)

    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kinds = {404: ("not_found_error", "not_found"), 405: ("invalid_request_error", "method_not_allowed")}
        kind, code = kinds.get(exc.status_code, ("invalid_request_error", None))
        return ApiError(exc.status_code, str(exc.detail), type=kind, code=code).response()

    # Starlette types every handler as taking any Exception; it passes this one only its HTTPException
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]


def _add_ops_routes(app: FastAPI, state: ServerState) -> None:
    """/healthz (the process answers), /readyz (the model is loaded), /metrics (Prometheus), /v1/models."""

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if state.draining_since is not None:  # a load balancer stops sending here while the drain runs
            return JSONResponse(
                {
                    "status": "draining",
                    "error": {
                        "message": "the server is shutting down",
                        "type": "service_unavailable_error",
                        "param": None,
                        "code": "shutting_down",
                    },
                },
                status_code=503,
            )
        try:
            state.ready()
        except ApiError as err:
            return JSONResponse(
                {"status": "loading" if state.load_error is None else "failed", **err.body()}, status_code=503
            )
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
        _check_model(state, model)
        return model_card()


def _check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves {state.model_name!r}",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )


def _add_model_routes(app: FastAPI, state: ServerState) -> None:
    """POST /v1/chat/completions (through the continuous-batching scheduler) and POST /v1/classify (batched)."""
    settings = state.settings

    @app.post(
        "/v1/chat/completions",
        responses=CHAT_RESPONSES,
        openapi_extra=request_body(
            ChatCompletionRequest, "OpenAI's chat completion request, with the scans_guard extension"
        ),
    )
    async def chat_completions(request: Request) -> Response:
        engine = state.ready()
        body = ChatCompletionRequest.model_validate_json(await read_body(request, settings.max_body_bytes), strict=True)
        _check_model(state, body.model)
        conversation, config, options, tools = _chat_inputs(body, settings, engine)
        policy = options.pop("policy")
        scheduler = state.scheduler
        assert scheduler is not None  # set with the engine, which state.ready() returned
        if scheduler.waiting >= settings.max_queue:  # at once, without tokenizing (submit checks again under lock)
            raise QueueFullError(f"{scheduler.waiting} requests are already waiting (max_queue={settings.max_queue})")
        started = time.perf_counter()
        handle = await anyio.to_thread.run_sync(lambda: state.submit(conversation, config, **options))
        outcome = outcome_of(request.scope)
        outcome.handle, outcome.started = handle, started
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": state.model_name}
        extension = {
            "policy": policy,
            "steer": options["steer"] and options["coefficient"] is None,
            "retry": RetryPolicy.applies(options["retry"], options["steer"], options["coefficient"]) is not None,
        }
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = await until_started(request, handle)
            if handle.error is not None:  # failed before the stream began: answered with its own status
                raise handle.error
            if handle.cancelled:  # the client went away before the stream began: nobody to answer
                return Response(status_code=CLIENT_CLOSED)
            return StreamingResponse(
                stream(state, outcome, handle, events, meta, extension, include_usage, tools),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", **guard_headers(handle)},
            )
        await until_done(request, handle)
        output = handle.output
        if output is None:  # the client went away and the request was cancelled: nobody to answer
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse(
            completion(state, outcome, handle, output, meta, extension, tools), headers=guard_headers(handle)
        )

    @app.post(
        "/v1/classify",
        responses=MODEL_ERRORS,
        openapi_extra=request_body(ClassifyRequest, "prompts or conversations to classify"),
    )
    async def classify(request: Request) -> JSONResponse:
        engine = state.ready()
        body = ClassifyRequest.model_validate_json(await read_body(request, settings.max_body_bytes), strict=True)
        _check_model(state, body.model)
        conversations = _classify_inputs(body, settings.max_classify_inputs)
        if state.classifying >= settings.max_queue:
            raise QueueFullError(f"{state.classifying} classify requests are running (max_queue={settings.max_queue})")
        state.classifying += 1
        try:
            verdicts = await anyio.to_thread.run_sync(
                lambda: engine.classify(
                    conversations, settings.classify_batch_size, operating_point=body.operating_point
                )
            )
        finally:
            state.classifying -= 1
        for v in verdicts:
            state.metrics.verdict(v)
        return JSONResponse(
            {
                "object": "list",
                "model": state.model_name,
                "data": [
                    {"index": i, "object": "scans_guard.verdict", **verdict_json(v)} for i, v in enumerate(verdicts)
                ],
            }
        )


def _classify_inputs(body: ClassifyRequest, limit: int) -> list:
    items = [body.input] if isinstance(body.input, str) else body.input
    if not items:
        raise ApiError(400, "input is empty", param="input", code="invalid_value")
    if len(items) > limit:
        raise ApiError(
            413, f"{len(items)} inputs in one request, more than {limit}", param="input", code="too_many_inputs"
        )
    return [x if isinstance(x, str) else chat_messages(x, f"input.{i}") for i, x in enumerate(items)]


def _version() -> str:
    from ...version import __version__

    return __version__


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the request body has {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _chat_inputs(
    body: ChatCompletionRequest, settings: ServerSettings, engine: ScansEngine
) -> tuple[list[dict], GenerationConfig, dict, list[dict] | None]:
    """The conversation, decoding settings, steering options and tool schemas of a chat completion request."""
    unsupported = [
        ("n", body.n not in (None, 1), "n must be 1"),
        ("logprobs", bool(body.logprobs) or bool(body.top_logprobs), "logprobs are not supported"),
        ("presence_penalty", bool(body.presence_penalty), "presence_penalty is not supported"),
        ("frequency_penalty", bool(body.frequency_penalty), "frequency_penalty is not supported"),
    ]
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
        raise ApiError(
            400,
            f"{param} is {max_tokens}, more than this server's limit of {settings.max_tokens_limit}",
            param=param,
            code="invalid_value",
        )
    fields = {
        "max_new_tokens": max_tokens,
        "stop": stop,
        "seed": body.seed,
        "ignore_eos": bool(body.ignore_eos),
        "temperature": body.temperature or 0.0,
        "top_p": body.top_p if body.top_p is not None else 1.0,
        "top_k": body.top_k,
        "repetition_penalty": body.repetition_penalty,
    }
    tools, fields["constraint"] = chat_tools(body)
    try:
        config = GenerationConfig(**fields)
    except ValidationError as exc:
        raise api_error(exc) from None
    _check_coefficient(body.scans_guard)
    return conversation(body, tools), config, _steering_options(body.scans_guard, settings, engine), tools


def _check_coefficient(opts: ScansGuardOptions | None) -> None:
    """A fixed coefficient out of range is a 400 naming it here, rather than a nameless one from the scheduler."""
    value = opts.coefficient if opts else None
    if value is not None and not (math.isfinite(value) and abs(value) <= MAX_COEFFICIENT):
        raise ApiError(
            400,
            f"the coefficient must be a finite number within +-{MAX_COEFFICIENT:g}, got {value!r}",
            param=f"{EXTENSION_KEY}.coefficient",
            code="invalid_value",
        )


def _steering_options(opts: ScansGuardOptions | None, settings: ServerSettings, engine: ScansEngine) -> dict:
    """The scheduler's steering options of a request. Fail closed: a client may ask for the guard, never drop the
    server's, and loosens it (a fixed coefficient, or no steering where the artifact steers towards refusal) only on
    a server started with --allow-fixed-coefficient."""
    coefficient = opts.coefficient if opts else None
    policy = (opts.policy if opts and opts.policy else None) or settings.policy
    if policy_blocks(settings.policy) and not policy_blocks(policy):
        policy = "guard+steer"  # a request cannot drop the server's guard
    steer = (opts.steer if opts and opts.steer is not None else settings.steer) and policy_steers(policy)
    if coefficient is not None and (not settings.allow_fixed_coefficient or policy_blocks(policy)):
        why = (
            "this server does not accept fixed coefficients (scans-guard serve --allow-fixed-coefficient)"
            if not settings.allow_fixed_coefficient
            else "a fixed coefficient skips classification, so it cannot run under the guard policy"
        )
        raise ApiError(400, why, param=f"{EXTENSION_KEY}.coefficient", code="not_allowed")
    if opts and opts.steer is False and engine.recipe.alpha_harmful > 0 and not settings.allow_fixed_coefficient:
        raise ApiError(
            400,
            "steer: false would drop this server's steering of harmful prompts towards refusal; it "
            "does not allow that (scans-guard serve --allow-fixed-coefficient)",
            param=f"{EXTENSION_KEY}.steer",
            code="not_allowed",
        )
    retry = opts.retry if opts and opts.retry is not None else settings.retry
    return {
        "steer": steer,
        "coefficient": coefficient,
        "policy": policy,
        "refusal": settings.refusal_message if policy_blocks(policy) else None,
        "guard": GuardPolicy(out_of_domain=settings.out_of_domain),
        "operating_point": (opts.operating_point if opts and opts.operating_point else None) or "guard",
        "retry": settings.retry_policy if retry else None,
    }
