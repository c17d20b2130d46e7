"""Prometheus metrics of one server (its own registry, so several apps in one process never share counters)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ...config import SafetyVerdict

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
SCORE_BUCKETS = tuple(x / 2 for x in range(-16, 17))  # -8 .. 8: probe logits (and mean cosines, within -1 .. 1)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
ROUTES = ("/v1/chat/completions", "/v1/classify", "/v1/models", "/healthz", "/readyz", "/metrics", "/openapi.json")


def route_label(path: str) -> str:
    """A bounded label for a request path: the known routes, else 'other' (a fuzzer cannot grow the label set)."""
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "scans_guard_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "scans_guard_request_latency_seconds",
            "time from request to the last byte sent",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "scans_guard_time_to_first_token_seconds",
            "time from request to the first token chosen",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("scans_guard_prompt_tokens", "prompt tokens of chat completions", registry=r)
        self.completion_tokens = Counter("scans_guard_completion_tokens", "tokens generated", registry=r)
        self.sigma = Histogram(
            "scans_guard_sigma_score", "sigma(q) scores of classified prompts", buckets=SCORE_BUCKETS, registry=r
        )
        self.verdicts = Counter(
            "scans_guard_verdicts", "verdicts by label and steering direction", ["label", "direction"], registry=r
        )
        self.refusals = Counter(
            "scans_guard_guard_refusals", "requests answered with the refusal text (guard policy)", registry=r
        )
        self.blocked = Counter(
            "scans_guard_blocked_requests",
            "chat completions the guard refused without generating (the count of scans_guard_guard_refusals_total)",
            registry=r,
        )
        self.steered_away = Counter(
            "scans_guard_steered_away_requests",
            "chat completions whose reply was steered away from refusal (by sigma, a fixed coefficient or a retry)",
            registry=r,
        )
        self.out_of_domain = Counter(
            "scans_guard_out_of_domain_requests",
            "chat completions whose prompt is outside "
            "the calibration domain (sigma never steers them away from refusal)",
            registry=r,
        )
        self.retries = Counter(
            "scans_guard_retries",
            "replies steered away that still refused, generated once more steered further (scans_guard.steering.retry)",
            registry=r,
        )
        self.batch_size = Histogram(
            "scans_guard_batch_size", "rows in each continuous-batching decode step", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("scans_guard_queue_depth", "requests waiting to join the running batch", registry=r)
        self.running = Gauge("scans_guard_running_requests", "rows in the running batch", registry=r)
        self.ready = Gauge("scans_guard_model_loaded", "1 once the model is loaded and serving", registry=r)

    def bind(self, waiting: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_depth.set_function(waiting)
        self.running.set_function(running)

    def verdict(self, verdict: SafetyVerdict | None) -> None:
        if verdict is None:
            return
        self.sigma.observe(verdict.score)
        self.verdicts.labels(verdict.label, verdict.direction).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
