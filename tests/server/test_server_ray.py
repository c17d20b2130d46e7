"""The Ray Serve deployment on a local Ray instance bound to loopback: Ray Serve's HTTP proxy on 127.0.0.1 (a free
port), the tiny model's replicas behind it. One Ray instance for the module (its start-up is most of the time), shut
down at the end; skipped where the [ray] extra is not installed. Every client call has a timeout."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed: pip install -e '.[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -e '.[ray]'")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from server_helpers import free_port  # noqa: E402

from scans_guard.serving.ray_options import RayServeOptions  # noqa: E402
from scans_guard.serving.server import ServerSettings  # noqa: E402
from scans_guard.serving.server.ray_serve import APP_NAME, REPLICA_HEADER, REPLICAS_NAME, local_ray, start  # noqa: E402

TIMEOUT = 60  # seconds, every client call
PROMPTS = [f"Question {i}: how do I {task}?" for i, task in enumerate(["bake bread", "tie a knot"] * 8)]


@pytest.fixture(scope="module")
def proxy_port():
    with local_ray(num_cpus=2, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}}):
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port


def test_every_ray_process_listens_on_loopback_only(proxy_port):
    psutil = pytest.importorskip("psutil")

    ours = {p.pid: p.name() for p in psutil.Process().children(recursive=True)}  # this instance's processes
    assert any("raylet" in name for name in ours.values()), ours
    listening = [c for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.pid in ours]
    assert any(c.laddr.port == proxy_port for c in listening), listening  # the proxy is among them
    assert {c.laddr.ip.removeprefix("::ffff:") for c in listening} == {"127.0.0.1"}, listening


def _client(base_url: str):
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT)


def _deployment_config(name: str) -> dict:
    """What Ray holds for a deployment of the app (Serve's own view, as `serve status` shows it)."""
    details = serve.context._get_global_client().get_serve_details()
    return details["applications"][APP_NAME]["deployments"][name]["deployment_config"]


def test_build_app_validates_serve_run_options():
    from scans_guard.errors import InvalidArgumentError
    from scans_guard.serving.server.ray_serve import _settings, build_app

    assert _settings({"max_batch": "4", "api_key": "k", "steer": "false"}).max_batch == 4
    with pytest.raises(TypeError, match="unknown"):
        build_app({"max_bach": 4})
    with pytest.raises(InvalidArgumentError, match="min_replicas"):
        build_app({"min_replicas": "3", "max_replicas": "2"})
    assert build_app({"min_replicas": "1", "max_replicas": "3", "max_batch": "8"}) is not None


def test_replicas_that_cannot_fit_the_cluster_are_refused():
    from scans_guard.errors import InvalidArgumentError
    from scans_guard.serving.server.ray_serve import check_resources

    with pytest.raises(InvalidArgumentError, match="3 replicas at 1 CPUs each need 3 CPUs; the Ray cluster has 2"):
        check_resources(RayServeOptions(num_replicas=3), {"CPU": 2.0})
    with pytest.raises(InvalidArgumentError, match="need 2 GPUs; the Ray cluster has 0"):
        check_resources(RayServeOptions(min_replicas=2, num_cpus=0.5, num_gpus=1), {"CPU": 2.0})
    check_resources(RayServeOptions(num_replicas=3, num_cpus=0.5), {"CPU": 2.0})
    check_resources(RayServeOptions(min_replicas=1, max_replicas=8), {"CPU": 2.0})  # only the first replicas must fit


def test_cli_flags_reach_ray(proxy_port, tiny_on_disk):
    from scans_guard.cli import build_parser
    from scans_guard.serving.ray_cli import deploy
    from scans_guard.serving.serve_cli import settings_from_args

    argv = ["serve", "--ray", "--model", str(tiny_on_disk / "model"), "--artifact", str(tiny_on_disk / "artifact")]
    argv += ["--port", str(proxy_port), "--policy", "steer", "--torch-threads", "1", "--num-cpus-per-replica", "0.5"]
    argv += ["--min-replicas", "1", "--max-replicas", "2", "--target-ongoing-requests", "4"]
    argv += ["--max-ongoing-requests", "16"]
    args = build_parser().parse_args(argv)
    url, _ = deploy(args, settings_from_args(args), args.artifact)
    try:
        assert url == f"http://127.0.0.1:{proxy_port}/v1"
        status = serve.status().applications[APP_NAME]
        assert status.status == "RUNNING"
        assert status.deployments[REPLICAS_NAME].replica_states == {"RUNNING": 1}
        config = _deployment_config(REPLICAS_NAME)
        scaling = config["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"], scaling["target_ongoing_requests"]) == (1, 2, 4)
        assert config["max_ongoing_requests"] == 16 and config["ray_actor_options"]["num_cpus"] == 0.5

        with httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}", timeout=TIMEOUT) as http:
            ready = http.get("/readyz")
            assert ready.json()["status"] == "ready" and ready.headers[REPLICA_HEADER]
            body = {"model": "model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200 and reply.json()["choices"][0]["finish_reason"] in ("stop", "length")
            bad = http.post("/v1/chat/completions", json={**body, "max_tokens": "x"})  # the app's own error JSON
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                lines = [line for line in response.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    finally:
        serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def two_replicas(proxy_port, tiny_on_disk, model_name):
    """Two replicas of the tiny model behind the proxy, served under the single-process server's model name."""
    start(
        RayServeOptions(num_replicas=2, num_cpus=0.5, max_ongoing_requests=16),
        {"model": str(tiny_on_disk / "model"), "artifact": str(tiny_on_disk / "artifact"), "torch_threads": 1},
        ServerSettings(policy="steer", served_model_name=model_name),
        port=proxy_port,
    )
    yield f"http://127.0.0.1:{proxy_port}"
    serve.delete(APP_NAME)


def _ask(base_url: str, model: str, prompt: str) -> tuple[str | None, str, str]:
    """(the replica that answered, the reply's text, the guard's label) of one greedy request."""
    with _client(base_url) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0
        )
        reply = raw.parse()
        return raw.headers.get(REPLICA_HEADER), reply.choices[0].message.content, reply.scans_guard["verdict"]["label"]


def test_concurrent_requests_spread_over_both_replicas_and_match_one_process(two_replicas, server, model_name):
    expected = [_ask(server.base_url, model_name, prompt)[1:] for prompt in PROMPTS]  # the single-process server
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        got = list(pool.map(lambda prompt: _ask(two_replicas, model_name, prompt), PROMPTS, timeout=2 * TIMEOUT))
    assert [g[1:] for g in got] == expected
    assert all(text for text, _ in expected)
    replicas = [g[0] for g in got]
    assert len(set(replicas)) == 2 and None not in replicas, replicas


def _replica_actor(replica_id: str):
    [named] = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith("#" + replica_id)]
    return ray.get_actor(named["name"], namespace=named["namespace"])


def test_a_replica_killed_mid_stream_fails_its_streams_cleanly_and_loses_no_request(two_replicas, model_name):
    streams, whole = 8, 4
    outcomes: dict[int, tuple] = {}
    replica_of: dict[int, str] = {}
    began = [threading.Event() for _ in range(streams)]
    long = {"model": model_name, "max_tokens": 400, "extra_body": {"ignore_eos": True}, "temperature": 0}

    def stream(i: int) -> None:
        replica = None
        try:
            with (
                _client(two_replicas) as client,
                client.chat.completions.with_streaming_response.create(
                    messages=[{"role": "user", "content": PROMPTS[i]}], stream=True, **long
                ) as response,
            ):
                replica = replica_of[i] = response.headers.get(REPLICA_HEADER)
                finish = None
                for chunk in response.parse():
                    began[i].set()  # the row is in the batch and its stream is open
                    if chunk.choices:
                        finish = chunk.choices[0].finish_reason or finish
                outcomes[i] = ("complete" if finish else "cut", replica, None)
        except openai.APIError as exc:
            outcomes[i] = ("error", replica, exc)
        except Exception as exc:  # anything else (a transport error) is not the clean failure the front promises
            outcomes[i] = ("other", replica, exc)
        finally:
            began[i].set()

    def ask_whole(i: int) -> None:
        try:
            with _client(two_replicas) as client:
                reply = client.chat.completions.create(messages=[{"role": "user", "content": PROMPTS[i]}], **long)
            outcomes[i] = ("complete" if reply.choices[0].finish_reason else "cut", None, None)
        except openai.APIError as exc:
            outcomes[i] = ("error", None, exc)
        except Exception as exc:
            outcomes[i] = ("other", None, exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(streams)]
    threads += [threading.Thread(target=ask_whole, args=(i,)) for i in range(streams, streams + whole)]
    for thread in threads:
        thread.start()
    assert all(event.wait(TIMEOUT) for event in began)
    in_flight = [outcomes.get(i) for i in range(streams)]
    assert in_flight == [None] * streams, "a stream ended before the kill: make them longer"

    victim = replica_of[0]
    ray.kill(_replica_actor(victim), no_restart=True)

    for thread in threads:
        thread.join(2 * TIMEOUT)
    assert not any(thread.is_alive() for thread in threads), "a client hangs"
    assert len(outcomes) == streams + whole, "a request was lost"
    kinds = {i: kind for i, (kind, _, _) in outcomes.items()}
    assert set(kinds.values()) <= {"complete", "error"}, outcomes  # never cut short silently, never a bare failure
    for kind, _, exc in outcomes.values():
        if kind == "error":  # OpenAI's error shape: a 503 JSON body, or an error event in the stream
            assert isinstance(exc.body, dict) and exc.body["code"] == "replica_unavailable", exc.body
    on_victim = [kinds[i] for i in range(streams) if outcomes[i][1] == victim]
    on_survivor = [kinds[i] for i in range(streams) if outcomes[i][1] != victim]
    assert on_victim and set(on_victim) == {"error"}, outcomes  # killed mid-stream
    assert on_survivor and set(on_survivor) == {"complete"}, outcomes

    with _client(two_replicas) as client:  # the deployment still answers (the survivor, or the front's retry)
        for prompt in PROMPTS[:4]:
            reply = client.chat.completions.create(
                model=model_name, messages=[{"role": "user", "content": prompt}], max_tokens=4
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
