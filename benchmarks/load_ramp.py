"""A bounded load ramp against one server in this process, on 127.0.0.1: how it answers past its capacity.

    python benchmarks/load_ramp.py --out benchmarks/results/load-ramp.json                 # the default model
    python benchmarks/load_ramp.py --model /models/m --artifact /artifacts/m --max-batch 4 --max-queue 4

The server's capacity is max_batch + max_queue (rows decoding plus requests waiting to join; past it a request is
answered 429 at once). The ramp runs levels of 1, 2, 4, ... concurrent clients up to 4x that capacity; each client
sends `--requests-per-client` streamed chat completions one after the other, without retrying a 429. Per level:
accepted (200), rejected (429) and failed (anything else) counts; p50 / p95 / p99 latency and time to first token of
the accepted; and `lost`: accepted requests whose stream ended without a finish reason and `[DONE]`, which must be 0,
as must the rows still running or waiting once the level is done. Timings only: nothing here asserts a speed
(tests/server/test_server_load_ramp.py runs it at tiny sizes on the tiny model).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from http_load import chat_body, percentile, post_chat, run_clients

from scans_guard import ScansEngine
from scans_guard.serving.server import LocalServer, ServerSettings, create_app
from scans_guard.testing import wait_until


def levels(capacity: int, factor: int = 4) -> list[int]:
    """1, 2, 4, ... up to factor x capacity, which is always the last level."""
    out, n = [], 1
    while n < factor * capacity:
        out.append(n)
        n *= 2
    return out + [factor * capacity]


def _read_stream(response: http.client.HTTPResponse, t0: float) -> dict:
    """A streamed reply: whether an accepted stream ended whole, TTFT and latency (a refusal: its status alone)."""
    if response.status != 200:
        response.read()
        return {"status": response.status}
    ttft, finish, done = None, None, False
    for raw in response:
        line = raw.decode().strip()
        if line == "data: [DONE]":
            done = True
        elif line.startswith("data: "):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"status": 200, "error": chunk["error"]["message"], "whole": False}
            for choice in chunk["choices"]:
                if choice["delta"].get("content") and ttft is None:
                    ttft = time.perf_counter() - t0
                finish = finish or choice.get("finish_reason")
    latency = time.perf_counter() - t0
    return {
        "status": 200,
        "whole": done and finish is not None,
        "ttft_s": ttft if ttft is not None else latency,
        "latency_s": latency,
    }


def one_request(port: int, body: dict, timeout: float) -> dict:
    """One streamed chat completion: its status, whether an accepted stream ended whole, TTFT and latency."""
    return post_chat(port, {**body, "stream": True}, timeout, _read_stream)


def run_level(port: int, model: str, clients: int, per_client: int, max_tokens: int, timeout: float) -> dict:
    def bodies(c: int) -> Iterator[dict]:
        return (chat_body(model, max_tokens, c + k) for k in range(per_client))

    send = functools.partial(one_request, port, timeout=timeout)
    results, wall = run_clients(clients, bodies, send, timeout * per_client + 30)
    accepted = [r for r in results if r["status"] == 200]
    whole = [r for r in accepted if r.get("whole")]
    latency = [r["latency_s"] for r in whole]
    ttft = [r["ttft_s"] for r in whole]
    return {
        "clients": clients,
        "requests": clients * per_client,
        "answered": len(results),
        "accepted": len(accepted),
        "rejected": sum(r["status"] == 429 for r in results),
        "failed": sum(r["status"] not in (200, 429) for r in results),
        "lost": len(accepted) - len(whole),
        "wall_s": wall,
        "accepted_per_s": len(accepted) / wall if wall else None,
        "latency_s": {f"p{q}": percentile(latency, q / 100) for q in (50, 95, 99)},
        "ttft_s": {f"p{q}": percentile(ttft, q / 100) for q in (50, 95, 99)},
    }


def ramp(
    engine: ScansEngine,
    *,
    max_batch: int = 4,
    max_queue: int = 4,
    max_tokens: int = 16,
    per_client: int = 2,
    factor: int = 4,
    policy: str = "guard+steer",
    timeout: float = 600,
) -> dict:
    """Run the ramp against a fresh server over `engine`; the report (see the module docstring)."""
    settings = ServerSettings(max_batch=max_batch, max_queue=max_queue, policy=policy, request_timeout_s=timeout)
    capacity = max_batch + max_queue
    report: dict = {
        "max_batch": max_batch,
        "max_queue": max_queue,
        "capacity": capacity,
        "max_tokens": max_tokens,
        "requests_per_client": per_client,
        "policy": policy,
        "levels": [],
    }
    with LocalServer(create_app(engine, settings)) as server:
        scheduler = server.app.state.scans_guard.scheduler
        for clients in levels(capacity, factor):
            level = run_level(server.port, engine.handle.name, clients, per_client, max_tokens, timeout)
            level["left_running"] = (
                0
                if wait_until(lambda: scheduler.running == 0 and scheduler.waiting == 0, 30)
                else scheduler.running + scheduler.waiting
            )
            report["levels"].append(level)
    report["lost"] = sum(lv["lost"] + lv["left_running"] + lv["requests"] - lv["answered"] for lv in report["levels"])
    return report


def _table(report: dict) -> str:
    head = (
        f"{'clients':>7} {'accepted':>8} {'429':>5} {'failed':>6} {'lost':>4} {'lat p50':>8} {'p95':>7} "
        f"{'p99':>7} {'ttft p50':>8} {'p95':>7} {'p99':>7}"
    )
    rows = [head]
    for lv in report["levels"]:
        cells = [lv["latency_s"][p] for p in ("p50", "p95", "p99")] + [lv["ttft_s"][p] for p in ("p50", "p95", "p99")]
        fmt = " ".join(f"{c:7.3f}" if c is not None else f"{'-':>7}" for c in cells)
        rows.append(
            f"{lv['clients']:>7} {lv['accepted']:>8} {lv['rejected']:>5} {lv['failed']:>6} {lv['lost']:>4} {fmt}"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path or name (default: the default model)")
    parser.add_argument("--artifact", default=None)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--factor", type=int, default=4, help="the last level: factor x capacity clients")
    parser.add_argument("--policy", default="guard+steer")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    engine = ScansEngine.load(args.model, args.artifact, progress=False)
    report = ramp(
        engine,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_tokens=args.max_tokens,
        per_client=args.requests_per_client,
        factor=args.factor,
        policy=args.policy,
    )
    print(_table(report))
    print(
        f"capacity {report['capacity']} (max_batch {report['max_batch']} + max_queue {report['max_queue']}); "
        f"lost {report['lost']}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
