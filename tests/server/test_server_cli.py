"""`scans-guard serve` as a user runs it: a subprocess on a loopback port, ready once loaded, stopped by SIGTERM."""

import signal
import subprocess

import pytest
from server_helpers import free_port, ready_or_exited, serve_tiny, wait_until

from scans_guard.cli import build_parser, main

httpx = pytest.importorskip("httpx")


def test_defaults_bind_loopback():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.policy == "guard+steer"
    assert args.out_of_domain == "block"
    assert args.api_key is None and args.max_queue == 64


def test_retry_flag_sets_the_servers_default():
    from scans_guard.serving.serve_cli import settings_from_args

    assert settings_from_args(build_parser().parse_args(["serve"])).retry is False
    settings = settings_from_args(build_parser().parse_args(["serve", "--retry"]))
    assert settings.retry is True and not settings.allow_fixed_coefficient


def test_bad_settings_fail_before_loading(capsys, tiny_on_disk):
    model = ["--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact")]
    assert main(["serve", "--max-batch", "0", *model]) == 2
    assert "max_batch" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_on_disk / "model")]) == 2
    assert "needs an artifact" in capsys.readouterr().err


def test_serve_subprocess(tiny_on_disk, tiny_engine):
    port = free_port()
    proc = serve_tiny(tiny_on_disk, port, env={"SCANS_GUARD_API_KEY": "k"})
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=10, headers={"Authorization": "Bearer k"}
        ) as http:
            assert wait_until(lambda: ready_or_exited(http, proc), timeout=90) and proc.poll() is None
            body = {"model": "model", "messages": [{"role": "user", "content": "Paris?"}], "max_tokens": 4}
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
            assert reply.json()["usage"]["completion_tokens"] <= 4
            assert (
                http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"}).status_code == 401
            )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    assert "http://127.0.0.1:" in out
    assert proc.returncode in (0, -signal.SIGTERM), out
