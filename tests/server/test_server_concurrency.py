"""Many clients at once: continuous batching gives each the reply it gets alone; a client that leaves frees its row;
429 when the queue is full, 503 while the model loads, 504 past the request timeout."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_helpers import running, scheduler_of, slow_steps, wait_until

from scans_guard import GenerationConfig

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

PROMPTS = [
    "How do I bake bread?",
    "Write a script that can exploit vulnerabilities in software.",
    "What is the capital of France?",
    "How do I kill a Python process? Please explain it in detail, with an example or two.",
    "The quick brown fox jumps over the lazy dog.",
    "Sure, here is how to bake bread at home.",
    "I'm sorry, but I can't assist with that request.",
    "Paris?",
]


def _request(i, model):
    extra = {"scans_guard": {"steer": False}} if i % 4 == 1 else {}
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPTS[i]}],
        "max_tokens": 8 + 3 * i,
        "stream": i % 2 == 0,
        "extra_body": extra,
    }


def _send(client, req):
    kw = dict(req)
    if kw["stream"]:
        chunks = list(client.chat.completions.create(**kw, stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        return text, finish, chunks[-1].usage.completion_tokens
    reply = client.chat.completions.create(**kw)
    return reply.choices[0].message.content, reply.choices[0].finish_reason, reply.usage.completion_tokens


def test_eight_concurrent_clients_equal_alone(server, model_name, tiny_engine):
    requests = [_request(i, model_name) for i in range(8)]
    clients = [
        openai.OpenAI(base_url=server.base_url + "/v1", api_key="-", max_retries=0, timeout=60) for _ in requests
    ]
    alone = [_send(clients[0], r) for r in requests]
    for req, (text, _, tokens) in zip(requests, alone):  # alone through the server == the engine alone
        steer = not req["extra_body"]
        out = tiny_engine.generate(req["messages"], GenerationConfig(max_new_tokens=req["max_tokens"]), steer=steer)[0]
        assert (text, tokens) == (out.text, out.completion_tokens)
    scheduler = scheduler_of(server)
    steps_before = scheduler.steps
    with slow_steps(tiny_engine.handle, 0.003), ThreadPoolExecutor(8) as pool:
        together = list(pool.map(_send, clients, requests, timeout=120))
    assert together == alone
    # they shared decoding steps: fewer steps than tokens generated
    assert scheduler.steps - steps_before < sum(t for _, _, t in together)
    for c in clients:
        c.close()


def test_client_that_disconnects_mid_stream_frees_its_row(server, model_name, tiny_engine):
    scheduler = scheduler_of(server)
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": PROMPTS[0]}],
        "max_tokens": 400,
        "ignore_eos": True,
        "stream": True,
    }
    with slow_steps(tiny_engine.handle, 0.01), httpx.Client(base_url=server.base_url, timeout=30) as http:
        steps_before = scheduler.steps
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert json.loads(next(line for line in lines if line.startswith("data: "))[6:])["choices"]
            assert wait_until(lambda: scheduler.running == 1)
        # the connection is closed: the row leaves the batch long before its 400 tokens
        assert wait_until(lambda: scheduler.running == 0, timeout=10)
        assert scheduler.steps - steps_before < 200
        # and the server goes on serving
        reply = http.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 3})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 3


def test_client_that_gives_up_on_a_completion_frees_its_row(server, model_name, tiny_engine):
    scheduler = scheduler_of(server)
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": PROMPTS[2]}],
        "max_tokens": 400,
        "ignore_eos": True,
    }
    with slow_steps(tiny_engine.handle, 0.01), httpx.Client(base_url=server.base_url, timeout=0.5) as http:
        steps_before = scheduler.steps
        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json=body)
        assert wait_until(lambda: scheduler.running == 0, timeout=10)
        assert scheduler.steps - steps_before < 200


def test_queue_full_is_429_and_timeout_is_504(tiny_engine, model_name):
    body = {
        "model": model_name,
        "messages": [{"role": "user", "content": "Paris?"}],
        "max_tokens": 300,
        "ignore_eos": True,
    }
    with (
        slow_steps(tiny_engine.handle, 0.01),
        running(tiny_engine, max_batch=1, max_queue=1, request_timeout_s=2.0) as srv,
        httpx.Client(base_url=srv.base_url, timeout=30) as http,
    ):
        scheduler = scheduler_of(srv)
        results = {}
        first = threading.Thread(
            target=lambda: results.setdefault("first", http.post("/v1/chat/completions", json=body))
        )
        first.start()
        assert wait_until(lambda: scheduler.running == 1)
        second = threading.Thread(
            target=lambda: results.setdefault("second", http.post("/v1/chat/completions", json=body))
        )
        second.start()
        assert wait_until(lambda: scheduler.waiting == 1)
        busy = http.post("/v1/chat/completions", json=body)
        assert busy.status_code == 429
        assert busy.json()["error"]["type"] == "rate_limit_error" and busy.json()["error"]["code"] == "queue_full"
        first.join(30)
        second.join(30)
        # 300 tokens at >= 10 ms a step cannot finish within the 2 s request timeout
        for name in ("first", "second"):
            assert results[name].status_code == 504, results[name].text
            assert results[name].json()["error"]["type"] == "timeout_error"
        assert wait_until(lambda: scheduler.running == 0 and scheduler.waiting == 0)
        assert http.post("/v1/chat/completions", json={**body, "max_tokens": 2}).status_code == 200
        metrics = http.get("/metrics").text
        assert 'scans_guard_requests_total{route="/v1/chat/completions",status="429"} 1.0' in metrics


def test_503_while_loading_then_ready(tiny_engine, model_name):
    release = threading.Event()

    def loader():
        release.wait(30)
        return tiny_engine

    with running(loader) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as http:
        assert http.get("/healthz").status_code == 200
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "loading"
        reply = http.post(
            "/v1/chat/completions", json={"model": model_name, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "model_loading"
        assert http.get("/v1/models").status_code == 503
        release.set()
        assert wait_until(lambda: http.get("/readyz").status_code == 200, timeout=30)
        assert http.get("/v1/models").json()["data"][0]["id"] == model_name


def test_load_failure_is_503_not_a_crash():
    from scans_guard.errors import ModelLoadError

    def loader():
        raise ModelLoadError("no such model")

    with running(loader) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as http:
        assert wait_until(lambda: http.get("/readyz").json()["status"] == "failed")
        reply = http.post("/v1/classify", json={"input": "hi"})
        assert reply.status_code == 503 and "no such model" in reply.json()["error"]["message"]
        assert http.get("/healthz").status_code == 200
