"""1 vs N model replicas on Ray Serve, against the single-process server: requests/s and latency under a fixed load.

    python benchmarks/ray_replicas.py                                  # the tiny model: 1 and 2 replicas, 64 requests
    python benchmarks/ray_replicas.py --replicas 1,2,4 --requests 128 --concurrency 32 --report benchmarks/results/ray
    python benchmarks/ray_replicas.py --model /models/m --artifact /artifacts/m --max-tokens 64

One local Ray instance (`local_ray`: every Ray process on 127.0.0.1, no dashboard), Ray Serve's HTTP proxy on a free
loopback port; each replica count is deployed in turn (`scans_guard.serving.server.ray_serve.start`), warmed up with two
requests per replica, then sent exactly `--requests` non-streamed greedy chat completions (`--max-tokens` tokens each,
`ignore_eos`, policy "steer" so every request decodes) from `--concurrency` client threads, every request with a
timeout. The single-process server (`scans-guard serve` in its own process, same settings) runs the same load first
as the baseline. Per row: requests answered 200, failed, wall time, requests/s, p50 / p95 latency, and how many
requests each replica answered (X-Scans-Guard-Replica). Timings only: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from http_load import chat_body, percentile, post_chat, run_clients, shared_queue  # the load_ramp.py loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_whole(response: http.client.HTTPResponse, t0: float) -> dict:
    """A whole reply: its status, latency and the replica that answered (X-Scans-Guard-Replica)."""
    response.read()
    return {
        "status": response.status,
        "latency_s": time.perf_counter() - t0,
        "replica": response.getheader("X-Scans-Guard-Replica"),
    }


def one_request(port: int, body: dict, timeout: float) -> dict:
    """One non-streamed chat completion: its status, latency and the replica that answered."""
    return post_chat(port, body, timeout, _read_whole)


def run_load(port: int, model: str, requests: int, concurrency: int, max_tokens: int, timeout: float) -> dict:
    """Exactly `requests` requests from `concurrency` threads taking the next one until none is left."""
    bodies = [chat_body(model, max_tokens, k, temperature=0, ignore_eos=True) for k in range(requests)]
    send = functools.partial(one_request, port, timeout=timeout)
    results, wall = run_clients(concurrency, shared_queue(bodies), send, timeout * requests + 30)
    ok = [r for r in results if r["status"] == 200]
    latency = [r["latency_s"] for r in ok]
    return {
        "requests": requests,
        "ok": len(ok),
        "failed": len(results) - len(ok) + (requests - len(results)),
        "wall_s": wall,
        "requests_per_s": len(ok) / wall if wall else None,
        "latency_s": {"p50": percentile(latency, 0.5), "p95": percentile(latency, 0.95)},
        "per_replica": sorted(Counter(r["replica"] for r in ok if r["replica"]).values(), reverse=True),
    }


def _tiny_on_disk(root: Path) -> tuple[str, str, str]:
    """The tiny test model with its artifact, saved where the replicas can load them; (model, artifact, name)."""
    from scans_guard import CalibrationConfig
    from scans_guard.calibration.fit import calibrate
    from scans_guard.testing import tiny_model

    handle = tiny_model("qwen2", seed=0)
    config = CalibrationConfig(
        n_anchors=8, n_threshold=8, steer_layers=[1, 2], classify_layers=[1, 2], alpha_benign=4.0, alpha_harmful=4.0
    )
    artifact = calibrate(handle, config, progress=False)
    handle.model.save_pretrained(root / "model")
    handle.tokenizer.save_pretrained(root / "model")
    artifact.save(root / "artifact")
    return str(root / "model"), str(root / "artifact"), "model"


def run(args: argparse.Namespace) -> dict:
    from ray import serve

    from scans_guard.serving.ray_options import RayServeOptions
    from scans_guard.serving.server import ServerSettings
    from scans_guard.serving.server.ray_serve import APP_NAME, local_ray, start

    load = (args.requests, args.concurrency, args.max_tokens, args.timeout)
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model, artifact, name = args.model, args.artifact, Path(args.model).name
        else:
            model, artifact, name = _tiny_on_disk(Path(tmp))
        settings = ServerSettings(policy="steer", served_model_name=name, max_batch=args.max_batch)
        rows = []

        with _single_process(model, artifact, name, args) as port:
            rows.append({"server": "single process", "replicas": 1, **run_load(port, name, *load)})

        port = free_port()
        with local_ray(runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.torch_threads)}}):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            for n in args.replicas:
                options = RayServeOptions(num_replicas=n, num_cpus=args.num_cpus_per_replica)
                engine_args = {"model": model, "artifact": artifact, "torch_threads": args.torch_threads}
                start(options, engine_args, settings, port=port)
                for _ in range(2 * n):  # every replica warm (the router spreads these)
                    one_request(port, _warm(name), args.timeout)
                rows.append({"server": "ray serve", "replicas": n, **run_load(port, name, *load)})
                serve.delete(APP_NAME)
    return {
        "config": {k: v for k, v in vars(args).items() if k != "report"},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rows": rows,
    }


@contextlib.contextmanager
def _single_process(model: str, artifact: str, name: str, args: argparse.Namespace) -> Iterator[int]:
    """`scans-guard serve` in its own process (as each replica is), ready and warm; its port."""
    port = free_port()
    flags = ["--policy", "steer", "--served-model-name", name, "--max-batch", str(args.max_batch)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "scans_guard.cli", "serve", "--model", model, "--artifact", artifact]
        + ["--port", str(port), "--log-level", "warning", *flags],
        env={**os.environ, "OMP_NUM_THREADS": str(args.torch_threads), "HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 300
        while one_request(port, _warm(name), 10)["status"] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the single-process server did not start")
            time.sleep(0.5)
        yield port
    finally:
        proc.terminate()
        proc.wait(60)


def _warm(name: str) -> dict:
    return {"model": name, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _table(report: dict) -> list[str]:
    lines = [
        f"{report['config']['requests']} requests, {report['config']['concurrency']} clients, "
        f"{report['config']['max_tokens']} tokens each, {report['cpus']} CPUs",
        "| server | replicas | ok / failed | wall s | requests/s | p50 s | p95 s | per replica |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lat = r["latency_s"]
        lines.append(
            f"| {r['server']} | {r['replicas']} | {r['ok']} / {r['failed']} | {r['wall_s']:.1f} | "
            f"{_fmt(r['requests_per_s'])} | {_fmt(lat['p50'])} | {_fmt(lat['p95'])} | "
            f"{'+'.join(map(str, r['per_replica'])) or '-'} |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,2", help="replica counts to run, comma-separated (default 1,2)")
    parser.add_argument("--requests", type=int, default=64, help="requests per row (default 64)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads (default 16)")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens per reply (default 32)")
    parser.add_argument("--max-batch", type=int, default=16, help="rows decoding at once per replica (default 16)")
    parser.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="CPUs Ray reserves per replica")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads per replica (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    parser.add_argument("--model", help="a model directory (default: the tiny test model, built in code)")
    parser.add_argument("--artifact", help="its artifact directory (with --model)")
    parser.add_argument("--report", help="write DIR/summary.json and DIR/summary.md")
    args = parser.parse_args(argv)
    args.replicas = [int(n) for n in args.replicas.split(",")]
    if args.model and not args.artifact:
        parser.error("--model needs --artifact")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from summary_io import write_summary

    report = run(args)
    write_summary(args.report, report, _table(report))
    return report


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1:])
