"""The server decodes on its engine's own scheduler: HTTP requests and direct engine calls in one process share
decoding batches; servers on one engine keep their own limits, and one stopping leaves the others (and the engine)
serving."""

import threading

import pytest
from server_helpers import running, scheduler_of, slow_steps, wait_until

from scans_guard import GenerationConfig

httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"


def _body(model, max_tokens=20):
    return {"model": model, "messages": [{"role": "user", "content": "Paris?"}], "max_tokens": max_tokens}


def test_http_requests_and_engine_calls_share_batches(tiny_engine, model_name):
    config = GenerationConfig(max_new_tokens=40)
    alone = tiny_engine.generate("Paris?", config, steer=False)[0].text
    sizes: list[int] = []
    with running(tiny_engine, steer=False) as srv, httpx.Client(base_url=srv.base_url, timeout=60) as http:
        assert scheduler_of(srv) is tiny_engine.scheduler
        tiny_engine.scheduler.add_step_listener(sizes.append)
        try:
            with slow_steps(tiny_engine.handle, 0.02):  # the engine call decodes for at least 0.8 s
                direct: list[str] = []
                thread = threading.Thread(
                    target=lambda: direct.append(tiny_engine.generate("Paris?", config, steer=False)[0].text)
                )
                thread.start()
                assert wait_until(lambda: tiny_engine.scheduler.running == 1, 20)
                reply = http.post(CHAT, json=_body(model_name, 40))
                thread.join(60)
        finally:
            tiny_engine.scheduler.remove_step_listener(sizes.append)
    assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == alone
    assert direct == [alone]
    assert max(sizes) == 2, "the HTTP request and the engine call decoded apart"


def test_a_server_stopping_leaves_the_others_and_the_engine_serving(tiny_engine, model_name):
    with running(tiny_engine) as first, httpx.Client(base_url=first.base_url, timeout=60) as http:
        with running(tiny_engine, max_batch=1) as second:
            assert scheduler_of(second) is scheduler_of(first)
        assert not tiny_engine.scheduler.closed
        assert http.post(CHAT, json=_body(model_name, 3)).status_code == 200
    assert tiny_engine.generate("Paris?", GenerationConfig(max_new_tokens=3))[0].completion_tokens == 3


def test_each_server_keeps_its_own_batch_limit(tiny_engine, model_name):
    sizes: list[int] = []
    body = {**_body(model_name, 30), "ignore_eos": True}
    with (
        running(tiny_engine, max_batch=1) as narrow,
        httpx.Client(base_url=narrow.base_url, timeout=60) as http,
        slow_steps(tiny_engine.handle, 0.005),
    ):
        tiny_engine.scheduler.add_step_listener(sizes.append)
        try:
            threads = [threading.Thread(target=http.post, args=(CHAT,), kwargs={"json": body}) for _ in range(3)]
            for t in threads:
                t.start()
            assert wait_until(lambda: tiny_engine.scheduler.waiting >= 1, 20)  # the others wait: max_batch 1
            for t in threads:
                t.join(60)
        finally:
            tiny_engine.scheduler.remove_step_listener(sizes.append)
    assert sizes and max(sizes) == 1
