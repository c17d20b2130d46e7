"""Ray Serve deployment of the guarded model server: N model replicas, each its own engine and continuous-batching
scheduler, behind a front deployment that Ray Serve's HTTP proxy sends every request to (extra `[ray]`).

    scans-guard serve --ray --replicas 2                                     # the default model, 2 replicas
    scans-guard serve --ray --min-replicas 1 --max-replicas 4 --target-ongoing-requests 8
    serve run scans_guard.serving.server.ray_serve:build_app num_replicas=2          # the same with Ray's own CLI
    serve run scans_guard.serving.server.ray_serve:build_app model=/m artifact=/a min_replicas=1 max_replicas=4

or from Python (examples/ray_serve_deployment.py):

    from ray import serve
    from scans_guard.serving.server.ray_serve import build_app
    serve.run(build_app({"num_replicas": 2}), route_prefix="/")

Each replica runs the same FastAPI app as `scans-guard serve` (`create_app`), so routes, the `scans_guard` extension,
errors and metrics are identical; /metrics is per replica, and every response names its replica in the
X-Scans-Guard-Replica header. The front (ray_front.py: no model, no CPU reserved) hands each request to a replica
through Ray's router, which spreads them by in-flight requests, and turns a replica's death into OpenAI's error
shape or a retry on another replica. Inside a replica requests are batched continuously. A replica holds a full
copy of the model: memory grows linearly with replicas, and on one machine replicas share its CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ray import serve

from ...engine import DEFAULT_MAX_INPUT_TOKENS, ScansEngine
from ...errors import InvalidArgumentError
from ..ray_options import RayServeOptions
from .app import create_app
from .asgi_call import BufferedRequest, ResponseStart, call
from .ray_front import ScansGuardFront
from .state import ServerSettings

APP_NAME = "scans-guard"
REPLICAS_NAME = "scans-guard"  # the model replicas' deployment
FRONT_NAME = "scans-guard-front"
REPLICA_HEADER = "X-Scans-Guard-Replica"
ENGINE_KEYS = ("model", "artifact", "device", "dtype", "max_input_tokens", "torch_threads")


class ReplicaHeader:
    """ASGI middleware: every response names the replica that answered it, so clients (and tests) can see how the
    proxy spread their requests and which replica's /metrics to read."""

    def __init__(self, app, replica: str):
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def named_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named_send)


class ScansGuardReplica:
    """One replica: the engine (loaded at start-up; the replica is healthy once loaded) and the server app on it,
    which the front calls with each request (`handle`)."""

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

            torch.set_num_threads(int(torch_threads))
        self.settings = ServerSettings(**(settings or {}))
        self.engine = ScansEngine.load(
            model,
            artifact,
            device=device,
            dtype=dtype,
            progress=False,
            max_input_tokens=int(max_input_tokens) if max_input_tokens else None,
        )
        self.app = create_app(self.engine, self.settings)
        self.app.add_middleware(ReplicaHeader, replica=serve.get_replica_context().replica_id.unique_id)

    async def handle(self, request: BufferedRequest) -> AsyncIterator[ResponseStart | bytes]:
        """The app's response to one request, streamed back to the front (asgi_call.call)."""
        async for item in call(self.app, request):
            yield item

    def __del__(self) -> None:  # Ray Serve stops the replica: its engine's scheduler thread stops with it
        if hasattr(self, "app"):  # the engine loaded
            self.app.state.scans_guard.close()
            self.engine.close()


def application(options: RayServeOptions, engine: dict[str, Any] | None = None, settings: ServerSettings | None = None):
    """The Ray Serve application: `options`' replicas, each loading the engine from `engine` (ScansGuardReplica's
    arguments) and serving with `settings`."""
    unknown = sorted(set(engine or {}) - set(ENGINE_KEYS))
    if unknown:
        raise TypeError(f"unknown engine options {unknown}; known: {list(ENGINE_KEYS)}")
    settings = settings or ServerSettings()
    replica_options = options.deployment_options()
    replicas = serve.deployment(ScansGuardReplica, name=REPLICAS_NAME, **replica_options)
    most = replica_options.get("num_replicas") or replica_options["autoscaling_config"]["max_replicas"]
    front = serve.deployment(
        ScansGuardFront,
        name=FRONT_NAME,
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},  # it only relays: the CPUs are the model replicas'
        max_ongoing_requests=max(most, 1) * options.max_ongoing_requests,  # never the bottleneck
        graceful_shutdown_timeout_s=options.graceful_shutdown_timeout_s,
    )
    return front.bind(replicas.bind(**(engine or {}), settings=vars(settings)), settings.max_body_bytes)


def build_app(args: dict[str, Any] | None = None):
    """A Ray Serve application from flat options (what `serve run ... key=value` passes).

    Replicas (RayServeOptions): num_replicas=N (fixed), or min_replicas / max_replicas / target_ongoing_requests
    (autoscaling on the in-flight requests per replica), num_cpus / num_gpus per replica, max_ongoing_requests.
    Engine: model, artifact, device, dtype, max_input_tokens, torch_threads. Server: any ServerSettings field
    (api_key, max_batch, ...). A typo or a bad value fails here, before a replica starts.
    """
    args = dict(args or {})
    engine = {k: args.pop(k) for k in ENGINE_KEYS if k in args}
    options = RayServeOptions.parse({k: args.pop(k) for k in RayServeOptions.model_fields if k in args})
    return application(options, engine, _settings(args))


# Ray turns 127.0.0.1 into the machine's routable address (and listens on every interface) unless it is told there is
# no cluster to join; it reads this at import, in this process and in each of its own.
SINGLE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextlib.contextmanager
def local_ray(num_cpus: float | None = None, runtime_env: dict | None = None) -> Iterator[None]:
    """A Ray instance on this machine only, for the block: every Ray process listens on 127.0.0.1, no dashboard.
    Shut down, and Ray's single-node switch put back, when the block ends."""
    import ray
    from ray._private import ray_constants

    before = os.environ.get(SINGLE_NODE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_NODE_ENV] = "0"  # Ray's own processes (raylet, agents, workers) inherit it
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process imported Ray already
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            configure_logging=False,
            log_to_driver=False,
            runtime_env=runtime_env,
        )
        yield
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        if before[0] is None:
            os.environ.pop(SINGLE_NODE_ENV, None)
        else:
            os.environ[SINGLE_NODE_ENV] = before[0]
        ray_constants.ENABLE_RAY_CLUSTER = before[1]


def start(
    options: RayServeOptions,
    engine: dict[str, Any] | None = None,
    settings: ServerSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> None:
    """Deploy the application on the Ray instance this process is connected to (`local_ray()`, or `ray.init(address=
    ...)` for a cluster), Ray Serve's HTTP proxy on host:port; returns once every replica is up."""
    import ray

    if not ray.is_initialized():  # else Ray Serve would start a default instance, listening on every interface
        raise RuntimeError("connect to Ray first: inside local_ray(), or after ray.init(address=...)")
    check_resources(options, ray.cluster_resources())  # else serve.run would wait for replicas that never fit
    serve.start(http_options={"host": host, "port": port})
    serve.run(application(options, engine, settings), name=APP_NAME, route_prefix="/")


def check_resources(options: RayServeOptions, cluster: dict[str, float]) -> None:
    """The replicas Ray must start first fit the cluster's CPUs and GPUs (InvalidArgumentError if not)."""
    first = options.deployment_options().get("num_replicas") or options.bounds()[0]
    for resource, each, flag in (("CPU", options.num_cpus, "cpus"), ("GPU", options.num_gpus, "gpus")):
        need, have = first * each, cluster.get(resource, 0.0)
        if need > have:
            raise InvalidArgumentError(
                f"{first} replicas at {each:g} {resource}s each need {need:g} {resource}s; the Ray cluster has "
                f"{have:g}: start fewer replicas or lower --num-{flag}-per-replica (a fraction shares a device)"
            )


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
