"""`scans-guard serve --ray`: the server as N model replicas on Ray Serve, with fixed or autoscaled replicas.

Kept apart from `scans_guard.serving.server.ray_serve` so the flags parse and validate without Ray installed.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from pathlib import Path

from ..errors import InvalidArgumentError, ScansGuardError
from .ray_options import CLI_OPTIONS, RayServeOptions, flag_of

# RayServeOptions field -> argparse dest of its flag
OPTION_DESTS = {name: flag_of(name).removeprefix("--").replace("-", "_") for name in CLI_OPTIONS}
RAY_ONLY_DESTS = (*OPTION_DESTS.values(), "torch_threads", "ray_address")


def add_ray_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Ray Serve (extra [ray])", "model replicas behind Ray Serve's HTTP proxy on --host:--port (docs/server.md)"
    )
    g.add_argument("--ray", action="store_true", help="serve with Ray Serve: N model replicas, each its own batch")
    g.add_argument("--replicas", type=int, help="a fixed number of model replicas (default 1)")
    g.add_argument("--min-replicas", type=int, help="autoscale: the fewest replicas (default 1)")
    g.add_argument("--max-replicas", type=int, help="autoscale: the most replicas (default 2, or --min-replicas)")
    g.add_argument(
        "--target-ongoing-requests",
        type=float,
        help="autoscale: in-flight requests per replica Ray scales towards (default 8)",
    )
    g.add_argument("--upscale-delay-s", type=float, help="autoscale: seconds of load before a replica is added")
    g.add_argument("--downscale-delay-s", type=float, help="autoscale: seconds of idleness before one is removed")
    g.add_argument("--num-cpus-per-replica", type=float, help="CPUs Ray reserves for each replica (default 1)")
    g.add_argument(
        "--num-gpus-per-replica",
        type=float,
        help="GPUs Ray reserves for each replica (default 0; 1 with --device cuda)",
    )
    g.add_argument(
        "--max-ongoing-requests",
        type=int,
        help="requests one replica holds at once; more wait in Ray's queue (default 32)",
    )
    g.add_argument("--torch-threads", type=int, help="torch threads in each replica (default: torch's choice)")
    g.add_argument("--ray-address", help="deploy on this Ray cluster (default: a local instance on 127.0.0.1)")


def ray_options_from_args(args: argparse.Namespace) -> RayServeOptions:
    """The replica options the flags give; a bad or contradictory flag fails here, naming it."""
    if not args.ray:
        given = [dest for dest in RAY_ONLY_DESTS if getattr(args, dest, None) is not None]
        if given:
            flags = ", ".join("--" + dest.replace("_", "-") for dest in given)
            raise InvalidArgumentError(f"{flags} only apply with --ray")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise InvalidArgumentError(f"--torch-threads must be at least 1, got {args.torch_threads}")
    values = {name: getattr(args, dest) for name, dest in OPTION_DESTS.items() if getattr(args, dest) is not None}
    return RayServeOptions.parse(values, flags=True)


def deploy(args: argparse.Namespace, settings, artifact: str | Path | None) -> tuple[str, RayServeOptions]:
    """Validate the flags, then deploy on the Ray instance this process is connected to; the proxy's URL."""
    options = ray_options_from_args(args)
    from .server import ray_serve

    engine = {
        "model": args.model,
        "artifact": None if artifact is None else str(artifact),
        "device": args.device,
        "dtype": args.dtype,
        "max_input_tokens": args.max_input_tokens or None,
        "torch_threads": args.torch_threads,
    }
    ray_serve.start(options, engine, settings, host=args.host, port=args.port)
    return f"http://{args.host}:{args.port}/v1", options


def cmd_serve_ray(args: argparse.Namespace, settings, artifact: str | Path | None) -> None:
    """Connect to Ray (a local instance on 127.0.0.1 unless --ray-address), deploy, then serve until SIGINT or
    SIGTERM; Ray Serve, and the local instance, are shut down on the way out."""
    ray_options_from_args(args)  # a bad flag fails before Ray starts
    try:
        import ray
        from ray import serve

        from .server import ray_serve
    except ImportError as exc:
        raise ScansGuardError(
            f"scans-guard serve --ray needs the [ray] extra ({exc.name} is missing): pip install 'scans-guard[ray]'"
        ) from None
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        if args.ray_address:
            ray.init(address=args.ray_address)
            stack.callback(ray.shutdown)
            stack.callback(serve.delete, ray_serve.APP_NAME)  # the cluster's other Serve apps stay
        else:
            stack.enter_context(ray_serve.local_ray())
        signal.signal(signal.SIGTERM, lambda *_: stop.set())  # after Ray's start-up, which installs its own
        url, options = deploy(args, settings, artifact)
        fixed = options.deployment_options().get("num_replicas")
        low, high = options.bounds()
        replicas = f"{fixed} replica{'s' * (fixed != 1)}" if fixed else f"replicas autoscaled {low}-{high}"
        print(f"scans-guard serve --ray: {url} ({replicas}; Ctrl-C stops)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while not stop.wait(1.0):
                pass
