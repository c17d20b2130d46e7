"""Ray Serve deployment of the guarded model server: N replicas, each its own engine and continuous-batching
scheduler, behind Ray Serve's HTTP proxy (extra `[ray]`).

    serve run scans_guard.server.ray_serve:build_app num_replicas=2          # the default model, 2 replicas
    serve run scans_guard.server.ray_serve:build_app model=/m artifact=/a min_replicas=1 max_replicas=4

or from Python (examples/ray_serve_deployment.py):

    from ray import serve
    from scans_guard.server.ray_serve import build_app
    serve.run(build_app({"num_replicas": 2}), route_prefix="/")

Each replica is the same FastAPI app as `scans-guard serve` (`create_app`), built on the replica at start-up
(`__serve_build_asgi_app__`), so routes, the `scans_guard` extension, errors and metrics are identical; /metrics is
per replica. The proxy spreads requests over replicas; inside a replica they are batched continuously. A replica holds
a full copy of the model: memory grows linearly with replicas, and on one machine replicas share its CPU cores.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ray import serve

from ..engine import DEFAULT_MAX_INPUT_TOKENS, ScansEngine
from .app import create_app
from .state import ServerSettings

# Per replica: in-flight requests the proxy may send it. Above the scheduler's max_batch they queue in the
# replica's own scheduler (429 past its max_queue), so keep it near max_batch + max_queue.
DEFAULT_MAX_ONGOING_REQUESTS = 32


@serve.ingress()
class ScansGuardReplica:
    """One replica: the engine (loaded at start-up; the replica is healthy once loaded) and the server app on it."""

    def __init__(
        self,
        model: str | None = None,
        artifact: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        max_input_tokens: int | None = DEFAULT_MAX_INPUT_TOKENS,
        settings: dict[str, Any] | None = None,
        torch_threads: int | None = None,
    ):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.settings = ServerSettings(**(settings or {}))
        self.engine = ScansEngine.load(
            model, artifact, device=device, dtype=dtype, progress=False, max_input_tokens=max_input_tokens
        )

    def __serve_build_asgi_app__(self):
        return create_app(self.engine, self.settings)


def build_app(args: dict[str, Any] | None = None):
    """A Ray Serve application from flat options (what `serve run ... key=value` passes).

    Replicas: num_replicas=N (fixed), or min_replicas / max_replicas / target_ongoing_requests (autoscaling on the
    in-flight requests per replica). num_cpus: CPUs reserved per replica (default 1). Engine: model, artifact,
    device, dtype, max_input_tokens, torch_threads. Server: any ServerSettings field (api_key, max_batch, ...).
    """
    args = dict(args or {})
    engine_keys = ("model", "artifact", "device", "dtype", "max_input_tokens", "torch_threads")
    engine_args = {k: args.pop(k) for k in engine_keys if k in args}
    options = {
        "ray_actor_options": {"num_cpus": float(args.pop("num_cpus", 1))},
        "max_ongoing_requests": int(args.pop("max_ongoing_requests", DEFAULT_MAX_ONGOING_REQUESTS)),
        # A replica loads a model: give it time to come up and to drain its streams on the way down.
        "graceful_shutdown_timeout_s": float(args.pop("graceful_shutdown_timeout_s", 20)),
        "health_check_timeout_s": float(args.pop("health_check_timeout_s", 60)),
    }
    autoscale = {
        k: args.pop(k)
        for k in ("min_replicas", "max_replicas", "target_ongoing_requests", "upscale_delay_s", "downscale_delay_s")
        if k in args
    }
    if autoscale:
        options["autoscaling_config"] = {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 8,
            **{k: float(v) if "delay" in k or "target" in k else int(v) for k, v in autoscale.items()},
        }
    else:
        options["num_replicas"] = int(args.pop("num_replicas", 1))
    settings = _settings(args)  # what is left are server settings; a typo fails here, before Ray starts
    deployment = serve.deployment(ScansGuardReplica, name="scans-guard", **options)
    return deployment.bind(**engine_args, settings=vars(settings))


def _settings(args: dict[str, Any]) -> ServerSettings:
    """ServerSettings from options that may be strings (`serve run ... max_batch=16`), typed by each field's default."""
    fields = {f.name: f for f in dataclasses.fields(ServerSettings)}
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise TypeError(f"unknown scans-guard serve options {unknown}; known: {sorted(fields)}")
    typed = {}
    for name, value in args.items():
        default = fields[name].default
        if isinstance(value, str) and isinstance(default, bool):
            value = value.lower() in ("1", "true", "yes")
        elif isinstance(value, str) and isinstance(default, (int, float)):
            value = type(default)(value)
        typed[name] = value
    return ServerSettings(**typed)
