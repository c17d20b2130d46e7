"""Each chat completion's metrics, recorded exactly once whether it completed, failed or was cut by its client, and
the verdict headers of its response.

The route records a completed request before its last bytes go out; the middleware records, when the route has
returned, any request the route did not (an error, a client that went away), so tokens already generated are counted.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import Scope

from ..request_handle import RequestHandle
from .state import ServerState

OUTCOME_KEY = "scans_guard.outcome"  # the ASGI scope key under which the middleware leaves each request's Outcome
HEADER_PREFIX = "x-scans-guard-"


@dataclass
class Outcome:
    """What a route tells the middleware beyond the status line it sent."""

    handle: RequestHandle | None = None  # the chat completion's request, once submitted
    started: float = 0.0  # perf_counter when the request was submitted (time to first token)
    recorded: bool = False
    status: int | None = None  # the status to count when a stream failed after its 200 went out


def outcome_of(scope: Scope) -> Outcome:
    return scope.setdefault(OUTCOME_KEY, Outcome())


def action(handle: RequestHandle) -> str:
    """What the server did with a request: refused (the guard answered without generating), retried (the reply
    steered away still refused and was generated again), or generated."""
    if handle.refused:
        return "refused"
    steering = handle.output.steering if handle.output is not None else handle.steering
    return "retried" if steering is not None and steering.source == "retry" else "generated"


def guard_headers(handle: RequestHandle) -> dict[str, str]:
    """The verdict as response headers, for clients that read headers rather than the body's `scans_guard`
    (ChatOpenAI(include_response_headers=True)); label, score and direction only when the request was classified."""
    headers = {HEADER_PREFIX + "action": action(handle)}
    verdict = handle.verdict
    if verdict is not None:
        headers.update(
            {
                HEADER_PREFIX + "label": verdict.label,
                HEADER_PREFIX + "score": repr(verdict.score),
                HEADER_PREFIX + "direction": verdict.direction,
            }
        )
    return headers


def record(state: ServerState, outcome: Outcome) -> None:
    """Count a chat completion once: its verdict, tokens (a request without output counts the tokens decoded for it
    until it ended) and what the guard did."""
    handle = outcome.handle
    if outcome.recorded or handle is None:
        return
    outcome.recorded = True
    m = state.metrics
    m.verdict(handle.verdict)
    if handle.first_token_at is not None:
        m.ttft.observe(handle.first_token_at - outcome.started)
    out = handle.output
    if out is not None or handle.verdict is not None or handle.started_at is not None:  # its prompt was read
        m.prompt_tokens.inc(handle.prompt_tokens)
    m.completion_tokens.inc(out.completion_tokens if out is not None else handle.generated_tokens)
    steering = out.steering if out is not None else handle.steering
    if handle.refused:
        m.refusals.inc()
        m.blocked.inc()
    if steering is not None and steering.source == "retry":
        m.retries.inc()
    if steering is not None and steering.direction == "away_from_refusal":
        m.steered_away.inc()
    if handle.verdict is not None and not handle.verdict.in_domain:
        m.out_of_domain.inc()
