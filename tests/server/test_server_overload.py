"""Overload: past --max-queue a chat completion is answered 429 at once, with Retry-After and OpenAI's error JSON,
while every request that was accepted still completes."""

import threading
import time

import pytest
from server_helpers import running, scheduler_of, slow_steps, wait_until

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"
MAX_TOKENS = 100
STEP_S = 0.02  # an accepted request decodes for at least MAX_TOKENS * STEP_S = 2 s


def _body(model):
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Paris?"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": True,
    }


def test_saturated_server_answers_429_at_once_and_completes_what_it_accepted(tiny_engine, model_name):
    results: list[tuple[int, float, httpx.Response]] = []
    lock = threading.Lock()

    def send(http, i):
        t0 = time.perf_counter()
        response = http.post(CHAT, json=_body(model_name))
        with lock:
            results.append((i, time.perf_counter() - t0, response))

    with (
        slow_steps(tiny_engine.handle, STEP_S),
        running(tiny_engine, max_batch=2, max_queue=2) as srv,
        httpx.Client(base_url=srv.base_url, timeout=60) as http,
    ):
        threads = [threading.Thread(target=send, args=(http, i)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads) and len(results) == 10
        statuses = sorted(r.status_code for _, _, r in results)
        assert set(statuses) <= {200, 429}, statuses
        accepted = [(s, r) for _, s, r in results if r.status_code == 200]
        busy = [(s, r) for _, s, r in results if r.status_code == 429]
        assert len(accepted) >= 2 and busy, statuses  # max_batch 2 + max_queue 2 leave at least 6 of 10 out
        for _, r in busy:
            assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert (err["type"], err["code"]) == ("rate_limit_error", "queue_full") and set(err) == {
                "message",
                "type",
                "param",
                "code",
            }
        for _, r in accepted:
            assert r.json()["usage"]["completion_tokens"] == MAX_TOKENS
        # "at once": no 429 waited for a decoding step; every accepted request decoded for 2 s or more
        assert max(s for s, _ in busy) < min(s for s, _ in accepted)
        scheduler = scheduler_of(srv)
        assert wait_until(lambda: scheduler.running == 0 and scheduler.waiting == 0)
        metrics = http.get("/metrics").text
        assert f'scans_guard_requests_total{{route="{CHAT}",status="429"}} {float(len(busy))}' in metrics
        assert f'scans_guard_requests_total{{route="{CHAT}",status="200"}} {float(len(accepted))}' in metrics


def test_openai_client_gets_rate_limit_error_with_retry_after(tiny_engine, model_name):
    with (
        slow_steps(tiny_engine.handle, STEP_S),
        running(tiny_engine, max_batch=1, max_queue=1) as srv,
        httpx.Client(base_url=srv.base_url, timeout=60) as http,
        openai.OpenAI(base_url=srv.base_url + "/v1", api_key="-", max_retries=0, timeout=30) as client,
    ):
        scheduler = scheduler_of(srv)
        done = []
        threads = [
            threading.Thread(target=lambda: done.append(http.post(CHAT, json=_body(model_name)))) for _ in range(2)
        ]
        threads[0].start()
        assert wait_until(lambda: scheduler.running == 1)
        threads[1].start()
        assert wait_until(lambda: scheduler.waiting == 1)
        with pytest.raises(openai.RateLimitError) as err:
            client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert err.value.status_code == 429 and err.value.response.headers["retry-after"] == "1"
        assert err.value.body["code"] == "queue_full"
        for t in threads:
            t.join(60)
        assert [r.status_code for r in done] == [200, 200]
