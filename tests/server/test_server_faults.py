"""Faults: an exception inside a decoding step fails only the requests of that step (500 error JSON; a stream gets an
error event, then [DONE]) and the server serves the next request; a client that goes away mid-stream frees its row,
its tokens are still counted, and it is not counted as a 200."""

import json
import re
import threading

import pytest
from server_helpers import running, scheduler_of, slow_steps, wait_until

httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"
PLAIN = {"scans_guard": {"steer": False}}  # unsteered: the tiny model's replies have visible text


def _body(model, max_tokens=60, **kw):
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Paris?"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        **kw,
    }


def _metric(text, name, labels=""):
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _status_count(http, status):
    return _metric(http.get("/metrics").text, "scans_guard_requests_total", f'{{route="{CHAT}",status="{status}"}}')


@pytest.fixture
def faulty_step(monkeypatch):
    """arm(scheduler): the scheduler's next decoding step raises (once); the steps after it run as usual."""

    def arm(scheduler):
        real, fired = scheduler._step, threading.Event()

        def step():
            if not fired.is_set():
                fired.set()
                raise RuntimeError("injected fault in a decoding step")
            return real()

        monkeypatch.setattr(scheduler, "_step", step)
        return fired

    return arm


def _in_thread(fn, results, key):
    thread = threading.Thread(target=lambda: results.setdefault(key, fn()))
    thread.start()
    return thread


def test_a_failed_step_fails_its_requests_only(tiny_engine, model_name, faulty_step):
    with (
        slow_steps(tiny_engine.handle, 0.02),
        running(tiny_engine, max_batch=1, max_queue=4) as srv,
        httpx.Client(base_url=srv.base_url, timeout=60) as http,
    ):
        scheduler = scheduler_of(srv)
        results = {}
        first = _in_thread(lambda: http.post(CHAT, json=_body(model_name)), results, "running")
        assert wait_until(lambda: scheduler.running == 1)
        second = _in_thread(lambda: http.post(CHAT, json=_body(model_name, 5)), results, "waiting")
        assert wait_until(lambda: scheduler.waiting == 1)
        fired = faulty_step(scheduler)
        first.join(60)
        second.join(60)
        assert fired.is_set()
        failed, served = results["running"], results["waiting"]
        assert failed.status_code == 500, failed.text
        err = failed.json()["error"]
        assert err["type"] == "server_error" and "Traceback" not in err["message"]
        assert "injected" not in err["message"]  # an unexpected error's text stays in the server's log
        assert served.status_code == 200 and served.json()["usage"]["completion_tokens"] == 5  # it was not in the step
        assert http.post(CHAT, json=_body(model_name, 3)).status_code == 200  # and the next request is served
        assert _status_count(http, 500) == 1.0


def test_a_failed_step_ends_a_stream_with_an_error_event(tiny_engine, model_name, faulty_step):
    with (
        slow_steps(tiny_engine.handle, 0.02),
        running(tiny_engine, max_batch=4) as srv,
        httpx.Client(base_url=srv.base_url, timeout=60) as http,
    ):
        scheduler = scheduler_of(srv)
        with http.stream("POST", CHAT, json=_body(model_name, stream=True)) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert json.loads(next(line for line in lines if line.startswith("data: "))[6:])["choices"]
            fired = faulty_step(scheduler)
            events = [line[6:] for line in lines if line.startswith("data: ")]  # to the end of the stream
        assert fired.is_set()
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "server_error" and set(error) == {"message", "type", "param", "code"}
        assert not any(json.loads(e).get("choices", [{}])[0].get("finish_reason") for e in events[:-2])
        assert wait_until(lambda: scheduler.running == 0)
        reply = http.post(CHAT, json=_body(model_name, 3, stream=True))
        assert reply.status_code == 200 and reply.text.rstrip().endswith("data: [DONE]")
        assert _status_count(http, 500) == 1.0  # the failed stream is counted with its error, not as a 200
        assert _status_count(http, 200) == 1.0


def test_a_client_that_leaves_mid_stream_is_counted_with_its_tokens(server, model_name, tiny_engine, http):
    scheduler = scheduler_of(server)
    before = http.get("/metrics").text
    with slow_steps(tiny_engine.handle, 0.01):
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as client,
            client.stream("POST", CHAT, json=_body(model_name, 400, stream=True, **PLAIN)) as response,
        ):
            assert response.status_code == 200
            steps = scheduler.steps
            assert wait_until(lambda: scheduler.steps - steps >= 20)  # tokens decoded, then the client leaves
        assert wait_until(lambda: scheduler.running == 0, timeout=10)
    tokens = "scans_guard_completion_tokens_total"
    assert wait_until(lambda: _metric(http.get("/metrics").text, tokens) - _metric(before, tokens) >= 20)
    after = http.get("/metrics").text
    assert _metric(after, tokens) - _metric(before, tokens) < 400  # cut long before its 400 tokens
    status = 'scans_guard_requests_total{route="/v1/chat/completions",status="%s"}'
    assert _metric(after, status % 200) == _metric(before, status % 200)
    assert _metric(after, status % 499) == _metric(before, status % 499) + 1


def test_a_client_that_gives_up_on_a_completion_is_counted_with_its_tokens(server, model_name, tiny_engine, http):
    scheduler = scheduler_of(server)
    before = http.get("/metrics").text
    tokens = "scans_guard_completion_tokens_total"
    with slow_steps(tiny_engine.handle, 0.01), httpx.Client(base_url=server.base_url, timeout=0.5) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post(CHAT, json=_body(model_name, 400))
        assert wait_until(lambda: scheduler.running == 0, timeout=10)
    assert wait_until(lambda: _metric(http.get("/metrics").text, tokens) > _metric(before, tokens))
    after = http.get("/metrics").text
    assert _metric(after, tokens) - _metric(before, tokens) < 400
    status = 'scans_guard_requests_total{route="/v1/chat/completions",status="%s"}'
    assert _metric(after, status % 499) == _metric(before, status % 499) + 1
    assert _metric(after, status % 200) == _metric(before, status % 200)
