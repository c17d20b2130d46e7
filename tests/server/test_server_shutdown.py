"""Graceful shutdown: on SIGTERM the server answers new model requests 503, lets the streams in flight finish with
[DONE] (within --shutdown-timeout; past it they end with a 503 error event), then exits 0."""

import json
import signal
import threading

import pytest
from server_helpers import free_port, ready_or_exited, running, scheduler_of, serve_tiny, slow_steps, wait_until

from scans_guard.cli import build_parser
from scans_guard.serving.serve_cli import settings_from_args

httpx = pytest.importorskip("httpx")

CHAT = "/v1/chat/completions"


def _stream_body(model, max_tokens):
    return {
        "model": model,
        "messages": [{"role": "user", "content": "Paris?"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }


class Stream(threading.Thread):
    """One streaming request read to its end in a thread: `started` once its first chunk arrived."""

    def __init__(self, base_url, body, headers=None):
        super().__init__(daemon=True)
        self.base_url, self.body, self.headers = base_url, body, headers or {}
        self.started = threading.Event()
        self.events: list[str] = []
        self.status = None

    def run(self):
        with (
            httpx.Client(base_url=self.base_url, timeout=60, headers=self.headers) as http,
            http.stream("POST", CHAT, json=self.body) as response,
        ):
            self.status = response.status_code
            for line in response.iter_lines():
                if line.startswith("data: "):
                    self.events.append(line[6:])
                    self.started.set()

    def finish_reason(self):
        chunks = [json.loads(e) for e in self.events if e != "[DONE]"]
        return next(
            (c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]),
            None,
        )


def _assert_refused_while_draining(http, model):
    reply = http.post(CHAT, json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "shutting_down" and reply.headers["retry-after"] == "1"
    assert http.post("/v1/classify", json={"input": "hi"}).status_code == 503
    assert http.get("/healthz").status_code == 200


def test_shutdown_timeout_flag():
    assert settings_from_args(build_parser().parse_args(["serve"])).shutdown_timeout_s == 30.0
    assert settings_from_args(build_parser().parse_args(["serve", "--shutdown-timeout", "5"])).shutdown_timeout_s == 5


def test_drain_lets_streams_in_flight_finish(tiny_engine, model_name):
    with (
        slow_steps(tiny_engine.handle, 0.01),
        running(tiny_engine, max_batch=4) as srv,
        httpx.Client(base_url=srv.base_url, timeout=30) as http,
    ):
        streams = [Stream(srv.base_url, _stream_body(model_name, 150)) for _ in range(3)]
        for s in streams:
            s.start()
        assert all(s.started.wait(30) for s in streams)
        drain = threading.Thread(target=srv.drain)
        drain.start()
        assert wait_until(lambda: http.get("/readyz").status_code == 503)
        assert http.get("/readyz").json()["status"] == "draining"
        _assert_refused_while_draining(http, model_name)
        for s in streams:
            s.join(60)
        drain.join(60)
        assert not drain.is_alive()
    for s in streams:
        assert s.status == 200 and s.events[-1] == "[DONE]" and s.finish_reason() == "length"


def test_past_the_shutdown_timeout_what_is_left_fails_with_503(tiny_engine, model_name):
    with slow_steps(tiny_engine.handle, 0.02), running(tiny_engine, shutdown_timeout_s=0.5) as srv:
        scheduler = scheduler_of(srv)
        stream = Stream(srv.base_url, _stream_body(model_name, 400))  # 8 s or more: cannot finish in time
        stream.start()
        assert stream.started.wait(30)
        srv.drain(timeout=30)
        stream.join(30)
        assert not stream.is_alive()
        assert scheduler.running == 0
    assert stream.events[-1] == "[DONE]" and stream.finish_reason() is None
    assert json.loads(stream.events[-2])["error"]["code"] == "shutting_down"


def test_sigterm_drains_the_cli_server_and_exits_0(tiny_on_disk, tmp_path):
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w+")
    proc = serve_tiny(tiny_on_disk, port, "--max-batch", "4", "--shutdown-timeout", "120", stdout=log)
    try:
        with httpx.Client(base_url=base_url, timeout=10) as http:
            assert wait_until(lambda: ready_or_exited(http, proc), timeout=90) and proc.poll() is None
            model = http.get("/v1/models").json()["data"][0]["id"]
            # four decoding and four waiting to join (max_batch 4): the drain must carry all eight to [DONE]
            streams = [Stream(base_url, _stream_body(model, 480)) for _ in range(8)]
            for s in streams:
                s.start()

            def decoding_four_and_four_waiting():
                text = http.get("/metrics").text
                return "scans_guard_running_requests 4.0" in text and "scans_guard_queue_depth 4.0" in text

            assert wait_until(decoding_four_and_four_waiting, timeout=30)
            assert wait_until(lambda: sum(s.started.is_set() for s in streams) >= 4, timeout=30)
            proc.send_signal(signal.SIGTERM)
            assert wait_until(lambda: http.get("/readyz").status_code == 503, timeout=10)
            _assert_refused_while_draining(http, model)
        for s in streams:
            s.join(120)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.seek(0)
        out = log.read()
        log.close()
    for s in streams:
        assert not s.is_alive() and s.status == 200, out
        assert s.events[-1] == "[DONE]" and s.finish_reason() == "length", (s.events[-3:], out)
