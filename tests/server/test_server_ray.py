"""The Ray Serve deployment on a local Ray instance: one replica of the tiny model behind Ray Serve's HTTP proxy on
127.0.0.1 (skipped where the [ray] extra is not installed)."""

import socket

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")
httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_build_app_options():
    from scans_guard.server.ray_serve import _settings, build_app

    assert _settings({"max_batch": "4", "api_key": "k", "steer": "false"}).max_batch == 4
    with pytest.raises(TypeError, match="unknown"):
        build_app({"max_bach": 4})
    app = build_app({"min_replicas": "1", "max_replicas": "3", "max_batch": "8"})
    assert app is not None


def test_one_replica_behind_the_proxy(tiny_on_disk, tiny_engine):
    from scans_guard import GenerationConfig
    from scans_guard.server.ray_serve import build_app

    port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",  # Ray's own traffic on loopback
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            {
                "model": str(tiny_on_disk / "model"),
                "artifact": str(tiny_on_disk / "artifact"),
                "num_replicas": 1,
                "torch_threads": 1,
                "num_cpus": 1,
            }
        )
        serve.run(app, name="scans-guard", route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            assert http.get("/readyz").json()["status"] == "ready"
            body = {
                "model": "model",
                "messages": [{"role": "user", "content": "How do I bake bread?"}],
                "max_tokens": 8,
            }
            reply = http.post("/v1/chat/completions", json=body).json()
            expected = tiny_engine.generate("How do I bake bread?", GenerationConfig(max_new_tokens=8))[0]
            assert reply["choices"][0]["message"]["content"] == expected.text
            assert reply["scans_guard"]["verdict"]["label"] == expected.verdict.label
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 3
            bad = http.post("/v1/chat/completions", json={**body, "max_tokens": "x"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    finally:
        serve.shutdown()
        ray.shutdown()
