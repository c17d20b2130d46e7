"""Soak: 1,000 chat completions (a third streamed) from 8 client threads against one server on the tiny model, over
127.0.0.1. After a warm-up of 100 requests the process's resident memory grows at most 5 %; at the end nothing is
left behind: no row running or waiting in the scheduler, no request in flight, no RequestHandle alive, the process's
threads back to their count on the idle server after the warm-up (anyio's worker threads apart: a pool it keeps and
prunes only on later calls, at most twice the clients), its open file descriptors back to their count before the
first client connected; and every request was answered 200 with its reply. Bounded: 1,000 requests of 2 tokens each.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_helpers import running, scheduler_of, wait_until

from scans_guard.serving.request_handle import RequestHandle

httpx = pytest.importorskip("httpx")

REQUESTS, WARM_UP, CLIENTS = 1000, 100, 8
MAX_RSS_GROWTH = 0.05
PROMPTS = [
    "How do I bake bread?",
    "What is the capital of France?",
    "Paris?",
    "Write a haiku about the sea.",
    "How do I kill a Python process?",
    "The quick brown fox jumps over the lazy dog.",
]
ANYIO_WORKER = "AnyIO worker thread"  # anyio's to_thread pool: kept idle, pruned only by later calls


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def threads() -> tuple[int, int]:
    """(threads other than anyio's idle pool, anyio's workers)."""
    workers = sum(t.name == ANYIO_WORKER for t in threading.enumerate())
    return threading.active_count() - workers, workers


def live_handles() -> int:
    gc.collect()
    return sum(type(o) is RequestHandle for o in gc.get_objects())  # type(): no lazy module attributes touched


def _chat(http, model: str, i: int) -> tuple[int, str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        "max_tokens": 2,
        "stream": i % 3 == 0,
    }
    if not body["stream"]:
        r = http.post("/v1/chat/completions", json=body)
        return r.status_code, (r.json()["choices"][0]["finish_reason"] if r.status_code == 200 else r.text)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return r.status_code, r.read().decode()
        finish, done = None, False
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    return 500, line
                finish = finish or next((c["finish_reason"] for c in event["choices"] if c["finish_reason"]), None)
        return (200, finish) if done else (499, "no [DONE]")


def _run(http, model: str, indices) -> list[tuple[int, str]]:
    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(lambda i: _chat(http, model, i), indices, timeout=300))


@pytest.mark.soak
def test_soak_thousand_requests_no_growth_no_leaks(tiny_engine):
    model = tiny_engine.handle.name
    with running(tiny_engine) as server:
        scheduler, state = scheduler_of(server), server.app.state.scans_guard
        idle_fds = open_fds()
        limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
        with httpx.Client(base_url=server.base_url, timeout=60, limits=limits) as http:
            t0 = time.perf_counter()
            results = _run(http, model, range(WARM_UP))
            warm_s = time.perf_counter() - t0
            assert wait_until(lambda: scheduler.running == 0 and state.in_flight == 0, 10)
            idle_threads, _ = threads()  # the idle server: its scheduler's worker thread started
            gc.collect()
            rss_warm = rss_kib()
            t0 = time.perf_counter()
            results += _run(http, model, range(WARM_UP, REQUESTS))
            soak_s = time.perf_counter() - t0
        gc.collect()
        rss_end = rss_kib()
        growth = rss_end / rss_warm - 1
        assert wait_until(lambda: scheduler.running == 0 and scheduler.waiting == 0 and state.in_flight == 0, 10)
        wait_until(lambda: threads()[0] <= idle_threads and open_fds() <= idle_fds, 10)  # asserted below
        handles = live_handles()
        end_threads, workers = threads()
        names = sorted(t.name for t in threading.enumerate() if t.name != ANYIO_WORKER)
        end_fds = open_fds()
        print(
            f"\nsoak: {REQUESTS} requests in {warm_s + soak_s:.1f} s ({WARM_UP} warm-up in {warm_s:.1f} s, "
            f"{(REQUESTS - WARM_UP) / soak_s:.1f} req/s after); RSS {rss_warm / 1024:.1f} -> "
            f"{rss_end / 1024:.1f} MiB ({growth:+.2%}); threads {idle_threads} idle -> {end_threads} "
            f"(+{workers} anyio workers); "
            f"fds {idle_fds} -> {end_fds}; live handles {handles}; threads {names}"
        )
        bad = [(i, r) for i, r in enumerate(results) if r[0] != 200]
        assert not bad, f"{len(bad)} requests not answered 200, e.g. {bad[:3]}"
        assert all(finish in ("length", "stop") for _, finish in results)
        assert growth <= MAX_RSS_GROWTH, f"RSS grew {growth:.2%} after the warm-up"
        assert handles == 0
        assert end_threads == idle_threads and workers <= 2 * CLIENTS
        assert end_fds <= idle_fds
        ok = state.metrics.requests.labels("/v1/chat/completions", "200")._value.get()
        assert ok == REQUESTS
