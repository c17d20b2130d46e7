"""`scans-guard bench`, serve section: the server on a loopback port, driven by real HTTP clients in threads.

Measured in one run, on one engine: each prompt's streamed request alone (one client), then all at once (one client
per prompt, started together); aggregate tokens/s of both, p50/p95 time to first token and latency, and whether
every greedy reply equals its reply alone. `/v1/classify` of all prompts in one request against one request per
prompt. Resident memory of the engine alone against the idle server on it.

Clients use the standard library's http.client, so the section needs only the [serve] extra. Every request goes to
127.0.0.1 and the loops are bounded by the prompt count and `repeats`.
"""

from __future__ import annotations

import functools
import gc
import http.client
import json
import statistics
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel

SERVE_CONCURRENCY_GOAL = 3.0  # 8 concurrent streaming clients: aggregate tokens/s >= 3x one client alone
CLASSIFY_BATCH_GOAL = 1.3  # one request of 8 prompts >= 1.3x the throughput of 8 single requests
IDLE_RSS_GOAL = 1.05  # idle server RSS within 5% of the engine alone


class Spread(BaseModel):
    p50: float
    p95: float
    max: float
    n: int


class ClientLoad(BaseModel):
    """Streamed requests of one load shape (one client in turn, or all at once)."""

    requests: int
    completion_tokens: int
    wall_s: float
    tokens_per_s: float | None
    ttft_s: Spread
    latency_s: Spread


class ChatLoad(BaseModel):
    clients: int
    one_client: ClientLoad
    concurrent: ClientLoad
    throughput_ratio: float | None
    goal: float
    meets_goal: bool
    same_text_as_alone: bool


class ClassifyLoad(BaseModel):
    prompts: int
    one_request_s: float
    single_requests_s: float
    one_request_prompts_per_s: float
    single_requests_prompts_per_s: float
    throughput_ratio: float | None
    goal: float
    meets_goal: bool


class ServeMemory(BaseModel):
    """Resident memory (MiB); the ratio and goal only when both readings exist."""

    engine_alone_mb: float | None
    idle_server_mb: float | None
    after_load_mb: float | None
    idle_ratio: float | None = None
    goal: float | None = None
    meets_goal: bool | None = None


class ServeResult(BaseModel):
    """The serve section, or why it was skipped (then every other field is None)."""

    max_new_tokens: int | None = None
    equal_work: str | None = None
    chat: ChatLoad | None = None
    classify: ClassifyLoad | None = None
    memory: ServeMemory | None = None
    skipped: str | None = None


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _spread(values: Sequence[float]) -> Spread:
    return Spread(p50=statistics.median(values), p95=_percentile(values, 0.95), max=max(values), n=len(values))


def _post(port: int, path: str, body: dict, timeout: float = 600) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stream_chat(port: int, body: dict, timeout: float = 600) -> dict:
    """One streamed chat completion: text, completion tokens, time to first content and total latency (seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    ttft, text, usage = None, [], None
    try:
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**body, "stream": True, "stream_options": {"include_usage": True}}),
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if content:
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                text.append(content)
            usage = chunk.get("usage") or usage
    finally:
        conn.close()
    latency = time.perf_counter() - t0
    if usage is None:
        raise RuntimeError("the stream ended without a usage chunk (stream_options.include_usage)")
    return {
        "text": "".join(text),
        "tokens": usage["completion_tokens"],
        "ttft_s": ttft if ttft is not None else latency,
        "latency_s": latency,
    }


def _concurrently(port: int, bodies: Sequence[dict]) -> tuple[float, list[dict]]:
    """All requests at once, one thread each, released together; (wall seconds, results in order)."""
    from .threads import released_together

    return released_together([functools.partial(stream_chat, port, body) for body in bodies])


def _summary(runs: list[dict], wall: float) -> ClientLoad:
    tokens = sum(r["tokens"] for r in runs)
    return ClientLoad(
        requests=len(runs),
        completion_tokens=tokens,
        wall_s=wall,
        tokens_per_s=tokens / wall if wall > 0 else None,
        ttft_s=_spread([r["ttft_s"] for r in runs]),
        latency_s=_spread([r["latency_s"] for r in runs]),
    )


def _chat_load(port: int, bodies: list[dict], repeats: int) -> ChatLoad:
    alone_runs, together_runs, alone_wall, together_wall = [], [], 0.0, 0.0
    same = True
    for _ in range(repeats):
        alone = []
        for body in bodies:  # one client: each request starts after the previous one ended
            alone.append(stream_chat(port, body))
            alone_wall += alone[-1]["latency_s"]
        wall, together = _concurrently(port, bodies)
        together_wall += wall
        same = same and [r["text"] for r in together] == [r["text"] for r in alone]
        alone_runs += alone
        together_runs += together
    one, many = _summary(alone_runs, alone_wall), _summary(together_runs, together_wall)
    ratio = many.tokens_per_s / one.tokens_per_s if one.tokens_per_s and many.tokens_per_s else None
    return ChatLoad(
        clients=len(bodies),
        one_client=one,
        concurrent=many,
        throughput_ratio=ratio,
        goal=SERVE_CONCURRENCY_GOAL,
        meets_goal=ratio is not None and ratio >= SERVE_CONCURRENCY_GOAL,
        same_text_as_alone=same,
    )


def _classify_load(port: int, prompts: list[str], repeats: int) -> ClassifyLoad:
    batched, single = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        status, _ = _post(port, "/v1/classify", {"input": prompts})
        batched.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        statuses = [_post(port, "/v1/classify", {"input": p})[0] for p in prompts]
        single.append(time.perf_counter() - t0)
        if status != 200 or set(statuses) != {200}:
            raise RuntimeError(f"/v1/classify answered {status} / {sorted(set(statuses))}")
    one, each = statistics.median(batched), statistics.median(single)
    ratio = each / one if one > 0 else None
    return ClassifyLoad(
        prompts=len(prompts),
        one_request_s=one,
        single_requests_s=each,
        one_request_prompts_per_s=len(prompts) / one,
        single_requests_prompts_per_s=len(prompts) / each,
        throughput_ratio=ratio,
        goal=CLASSIFY_BATCH_GOAL,
        meets_goal=ratio is not None and ratio >= CLASSIFY_BATCH_GOAL,
    )


def bench_serve(engine, prompts: Sequence[str], cfg, current_rss_mb: Callable[[], float | None]) -> ServeResult:
    """The serve section (see the module docstring). `current_rss_mb()`: this process's resident memory, or None."""
    try:
        from ..serving.server import LocalServer, ServerSettings, create_app
    except ImportError as exc:
        return ServeResult(skipped=f"the [serve] extra is not installed ({exc.name} missing)")
    from ..config import GenerationConfig

    prompts = list(prompts)
    engine.generate(prompts[0], GenerationConfig(max_new_tokens=2))  # warm, as the engine alone is measured warm
    gc.collect()
    rss_engine = current_rss_mb()
    bodies = [
        {
            "model": "-",
            "messages": [{"role": "user", "content": p}],
            "max_tokens": cfg.max_new_tokens,
            "ignore_eos": cfg.force_length,
        }
        for p in prompts
    ]
    # policy steer: every request decodes (a blocked one would skip decoding and flatter the throughput)
    settings = ServerSettings(max_batch=max(16, len(prompts)), max_queue=max(64, 4 * len(prompts)), policy="steer")
    with LocalServer(create_app(engine, settings)) as server:
        model = server.app.state.scans_guard.model_name
        bodies = [{**b, "model": model} for b in bodies]
        for _ in range(cfg.warmup):
            stream_chat(server.port, {**bodies[0], "max_tokens": 2})
        time.sleep(0.5)
        gc.collect()
        rss_idle = current_rss_mb()
        chat = _chat_load(server.port, bodies, cfg.repeats)
        classify = _classify_load(server.port, prompts, cfg.repeats)
        gc.collect()
        rss_after = current_rss_mb()
    memory = ServeMemory(engine_alone_mb=rss_engine, idle_server_mb=rss_idle, after_load_mb=rss_after)
    if rss_engine and rss_idle:
        memory = memory.model_copy(
            update=dict(
                idle_ratio=rss_idle / rss_engine, goal=IDLE_RSS_GOAL, meets_goal=rss_idle / rss_engine <= IDLE_RSS_GOAL
            )
        )
    return ServeResult(
        max_new_tokens=cfg.max_new_tokens,
        equal_work="eos_suppressed" if cfg.force_length else "natural_length",
        chat=chat,
        classify=classify,
        memory=memory,
    )
