"""The request loop of the load benchmarks (load_ramp.py, ray_replicas.py): chat completions sent to a server on
127.0.0.1 from client threads started together, one result per request, each request with a timeout.

A result is a dict with the HTTP `status` (0: the connection was refused, reset or timed out, with `error`) and what
the caller's reader took from the response; the callers summarise them.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

PROMPTS = [
    "How do I bake bread?",
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How do I kill a Python process?",
    "Explain photosynthesis in one sentence.",
    "Paris?",
]

T = TypeVar("T")
Reader = Callable[[http.client.HTTPResponse, float], dict]
"""Turns a chat completion's response, and the perf_counter() its request was sent at, into the request's result."""


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def chat_body(model: str, max_tokens: int, k: int, **options: object) -> dict:
    """The k-th request of a load: one user turn, the prompts taken in turn."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        **options,
        "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
    }


def post_chat(port: int, body: dict, timeout: float, read: Reader) -> dict:
    """One POST /v1/chat/completions; `read` makes its result. A refused, reset or timed-out connection: failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        return read(conn.getresponse(), t0)
    except OSError as exc:
        return {"status": 0, "error": repr(exc)}
    finally:
        conn.close()


def run_clients(
    clients: int, bodies: Callable[[int], Iterable[dict]], send: Callable[[dict], dict], join_s: float
) -> tuple[list[dict], float]:
    """`clients` threads, started together, each sending its `bodies(client)` one after the other with `send`;
    (the results in the order they came, wall seconds). A thread still sending after `join_s` is left behind."""
    results: list[dict] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for body in bodies(c):
            result = send(body)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(join_s)
    return results, time.perf_counter() - t0


def shared_queue(items: Sequence[T]) -> Callable[[int], Iterator[T]]:
    """`bodies` for `run_clients` where every client takes the next item until none is left: exactly len(items)
    requests, however many clients."""
    pending = list(items)
    lock = threading.Lock()

    def take(client: int) -> Iterator[T]:
        while True:
            with lock:
                if not pending:
                    return
                item = pending.pop()
            yield item

    return take
