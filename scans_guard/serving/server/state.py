"""The server's settings and the state its routes share: the engine once loaded, its scheduler, the metrics.

The server decodes on the engine's own scheduler (`ScansEngine.scheduler`), so HTTP requests and direct engine calls in
one process share batches, and several servers may share one engine. Its batch, queue and timeout settings are
therefore limits of its own requests (`ContinuousBatcher.submit_all`'s max_batch, max_queue and timeout), and a server
that stops fails only its own requests still in flight: the engine's scheduler is the engine's to close."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Unpack

from ...config import GenerationConfig
from ...engine import ScansEngine
from ...errors import InvalidArgumentError, ScansGuardError
from ...sigma.decision import DEFAULT_POLICY, check_policy
from ...sigma.readings import Conversation
from ...steering.retry import RetryPolicy
from ..request_handle import RequestHandle, SchedulerClosedError
from ..scheduler import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, ContinuousBatcher, SubmitOptions
from .errors import ApiError, api_error
from .metrics import ServerMetrics

log = logging.getLogger(__name__)

REFUSAL = "I'm sorry, but I can't help with that request."


@dataclass
class ServerSettings:
    """How the server runs; `scans-guard serve` flags map one to one."""

    served_model_name: str | None = None  # None: the model's name (ModelHandle.name)
    api_key: str | None = None  # Bearer token required on /v1/* and /metrics; None: no authentication
    max_body_bytes: int = 1 << 20  # larger request bodies get 413
    max_batch: int = DEFAULT_MAX_BATCH  # a request joins only a decoding batch of fewer rows
    max_queue: int = DEFAULT_MAX_QUEUE  # a request finding this many waiting to join the batch gets 429
    request_timeout_s: float = 600.0  # a request still running then fails with 504
    shutdown_timeout_s: float = 30.0  # on SIGTERM: new requests get 503, those in flight get this long to finish
    default_max_tokens: int = 256  # when a request gives neither max_tokens nor max_completion_tokens
    max_tokens_limit: int = 4096  # the most tokens one request may ask for
    # "guard+steer" (block what the guard rejects without generating, steer the rest), "guard" (block, the rest
    # unsteered) or "steer" (never block); a request may ask for a guard, never drop the server's
    policy: str = DEFAULT_POLICY
    out_of_domain: str = "harmful"  # the least band of a prompt outside sigma's calibration domain: harmful blocks it
    steer: bool = True  # default per-request steering
    # Clients may loosen the guard: send `scans_guard.coefficient` (a fixed coefficient skips sigma, so any prompt
    # could be steered away from refusal), or `scans_guard.steer: false` when the artifact steers harmful prompts
    # towards refusal (alpha_harmful > 0). Off unless the operator trusts the clients (baselines, research).
    allow_fixed_coefficient: bool = False
    retry: bool = (
        False  # default per-request retry of a reply steered away that still refuses (scans_guard.steering.retry)
    )
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)  # how a retry judges and how far it steers
    refusal_message: str = REFUSAL
    max_classify_inputs: int = 64  # prompts in one /v1/classify request
    classify_batch_size: int = 8

    def __post_init__(self) -> None:
        check_policy(self.policy)
        if self.out_of_domain not in ("harmful", "grey", "benign"):
            raise InvalidArgumentError(f"out_of_domain must be harmful, grey or benign, got {self.out_of_domain!r}")
        for name in (
            "max_body_bytes",
            "max_batch",
            "max_queue",
            "default_max_tokens",
            "max_tokens_limit",
            "max_classify_inputs",
            "classify_batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.retry_policy, RetryPolicy):
            raise InvalidArgumentError(f"retry_policy must be a RetryPolicy, got {type(self.retry_policy).__name__}")
        if not self.request_timeout_s > 0:
            raise InvalidArgumentError(f"request_timeout_s must be positive, got {self.request_timeout_s!r}")
        if not self.shutdown_timeout_s >= 0:
            raise InvalidArgumentError(f"shutdown_timeout_s must be zero or more, got {self.shutdown_timeout_s!r}")


class ServerState:
    """What the routes share: the engine once loaded, its scheduler, the metrics."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.metrics = ServerMetrics()
        self.engine: ScansEngine | None = None
        self.scheduler: ContinuousBatcher | None = None  # the engine's
        self.closed = False
        self._requests: weakref.WeakSet[RequestHandle] = weakref.WeakSet()  # this server's, for `close`
        self._requests_lock = threading.Lock()
        self.load_error: str | None = None
        self.model_name: str | None = settings.served_model_name
        self.created = int(time.time())
        self.classifying = 0
        self.in_flight = 0  # /v1/ requests being answered (a drain waits for them)
        self.draining_since: float | None = None  # time.monotonic() when a graceful shutdown began
        self.metrics.bind(
            lambda: self.scheduler.waiting if self.scheduler else 0,
            lambda: self.scheduler.running if self.scheduler else 0,
        )

    def set_engine(self, engine: ScansEngine) -> None:
        self.scheduler = engine.scheduler
        self.scheduler.add_step_listener(self.metrics.batch_size.observe)
        self.model_name = self.model_name or engine.handle.name
        self.engine = engine
        self.metrics.ready.set(1)

    def submit(
        self, conversation: Conversation, config: GenerationConfig, **options: Unpack[SubmitOptions]
    ) -> RequestHandle:
        """Queue one request on the engine's scheduler under this server's limits (batch, queue, timeout)."""
        s, scheduler = self.settings, self.scheduler
        assert scheduler is not None  # set with the engine, which the routes check first (`ready`)
        with self._requests_lock:
            if self.closed:
                raise SchedulerClosedError("the server is shutting down")
            limited: SubmitOptions = {**options, "timeout": s.request_timeout_s}
            limited["max_batch"], limited["max_queue"] = s.max_batch, s.max_queue
            handle = scheduler.submit(conversation, config, **limited)
            self._requests.add(handle)
        return handle

    def close(self) -> None:
        """Stop serving: new requests are refused and this server's requests still in flight fail with the 503
        shutting_down error; the engine's scheduler, which other servers and callers may share, runs on."""
        with self._requests_lock:
            first, self.closed = not self.closed, True
            live = [handle for handle in self._requests if not handle.done]
        if self.scheduler is None:
            return
        self.scheduler.fail(live, SchedulerClosedError("the server is shutting down"))
        if first:
            self.scheduler.remove_step_listener(self.metrics.batch_size.observe)

    def load(self, loader: Callable[[], ScansEngine]) -> None:
        try:
            self.set_engine(loader())
        except Exception as exc:  # reported by /readyz and every model route; the process stays up
            log.exception("loading the model failed")
            self.load_error = api_error(exc).message if isinstance(exc, ScansGuardError) else repr(exc)

    def ready(self) -> ScansEngine:
        if self.engine is None:
            if self.load_error is not None:
                raise ApiError(
                    503,
                    f"the model failed to load: {self.load_error}",
                    type="service_unavailable_error",
                    code="model_load_failed",
                )
            raise ApiError(503, "the model is loading", type="service_unavailable_error", code="model_loading")
        return self.engine
