"""`scans-guard serve` command: flags -> ServerSettings, the model loaded in the background, uvicorn in front.

Kept apart from `scans_guard.serving.server` so the CLI parser builds without the [serve] extra installed.
"""

from __future__ import annotations

import argparse
import os

from ..errors import ScansGuardError
from ..sigma.decision import DEFAULT_POLICY, POLICIES
from .ray_cli import add_ray_arguments, cmd_serve_ray, ray_options_from_args

API_KEY_ENV = "SCANS_GUARD_API_KEY"


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default %(default)s, this machine only; 0.0.0.0 exposes the server)",
    )
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on /v1/* and /metrics (or ${API_KEY_ENV})")
    p.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    p.add_argument(
        "--policy",
        choices=list(POLICIES),
        default=DEFAULT_POLICY,
        help="guard+steer: answer prompts the guard blocks (harmful, out of sigma's domain, unclassifiable) "
        "with a refusal, without generating, and steer the rest; guard: block alike, the rest "
        "unsteered; steer: never block. A request may ask for a guard, never drop the server's "
        "(default %(default)s)",
    )
    p.add_argument(
        "--out-of-domain",
        choices=["block", "allow"],
        default="block",
        help="prompts outside sigma's calibration domain (another language, encodings, forged turns, "
        "mostly code, very long): block them under a guard policy, or allow them through unsteered "
        "(default %(default)s)",
    )
    p.add_argument("--no-steer", action="store_true", help="default to plain generation (requests may still ask)")
    p.add_argument(
        "--allow-fixed-coefficient",
        action="store_true",
        help="let clients loosen the guard: accept scans_guard.coefficient (it skips sigma, so any prompt "
        "could be steered away from refusal; never under the guard policy) and scans_guard.steer: "
        "false when the artifact steers harmful prompts towards refusal (trusted clients only)",
    )
    p.add_argument(
        "--retry",
        action="store_true",
        help="by default retry a reply steered away that still refuses, steered twice as far (requests "
        "may say scans_guard.steering.retry; fewer false refusals, slightly less safe: docs/steering.md)",
    )
    p.add_argument("--refusal-message", help="the text a blocked request is answered with")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoding at once (default %(default)s)")
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests waiting to join the batch; more get HTTP 429 (default %(default)s)",
    )
    p.add_argument(
        "--request-timeout",
        type=float,
        default=600.0,
        help="seconds before a request fails with HTTP 504 (default %(default)s)",
    )
    p.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds the requests in flight get to finish while new ones get HTTP 503; "
        "then those left fail and the server exits 0 (default %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="larger request bodies get HTTP 413 (default %(default)s)"
    )
    p.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="tokens per reply when a request does not say (default %(default)s)",
    )
    p.add_argument(
        "--max-tokens-limit", type=int, default=4096, help="the most tokens a request may ask for (default %(default)s)"
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_ray_arguments(p)


def settings_from_args(args: argparse.Namespace):
    from .server import REFUSAL, ServerSettings

    return ServerSettings(
        served_model_name=args.served_model_name,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=args.max_body_bytes,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        shutdown_timeout_s=args.shutdown_timeout,
        default_max_tokens=args.default_max_tokens,
        max_tokens_limit=args.max_tokens_limit,
        policy=args.policy,
        steer=not args.no_steer,
        allow_fixed_coefficient=args.allow_fixed_coefficient,
        refusal_message=args.refusal_message or REFUSAL,
        out_of_domain="harmful" if args.out_of_domain == "block" else "grey",
        retry=args.retry,
    )


def cmd_serve(args: argparse.Namespace) -> None:
    ray_options_from_args(args)  # Ray's flags are checked (and refused without --ray) before anything loads
    try:
        from .server import create_app
        from .server.serving import serve
    except ImportError as exc:
        raise ScansGuardError(
            f"scans-guard serve needs the [serve] extra ({exc.name} is missing): pip install 'scans-guard[serve]'"
        ) from None
    from ..calibration.artifacts import default_artifact_dir
    from ..engine import ScansEngine

    # An embedded model (by name) has its shipped artifact; any other needs --artifact: fail before serving.
    artifact = args.artifact if args.artifact is not None else default_artifact_dir(args.model)
    settings = settings_from_args(args)  # a bad setting fails before anything loads
    if args.ray:
        return cmd_serve_ray(args, settings, artifact)

    def load() -> ScansEngine:
        return ScansEngine.load(
            args.model,
            artifact,
            device=args.device,
            dtype=args.dtype,
            progress=False,
            max_input_tokens=args.max_input_tokens or None,
            verbose=args.verbose,
        )

    app = create_app(load, settings)
    print(
        f"scans-guard serve: http://{args.host}:{args.port}/v1 (the model loads in the background; "
        "/readyz answers 200 once it has)",
        flush=True,
    )
    serve(app, host=args.host, port=args.port, log_level=args.log_level)
