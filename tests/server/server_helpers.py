"""Helpers of the server tests: a server on a loopback port, bounded polling, slowed-down model steps."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

from scans_guard.serving.server import LocalServer, ServerSettings, create_app
from scans_guard.testing import slow_steps, wait_until  # noqa: F401  (the tests import them from here)


@contextlib.contextmanager
def running(engine_or_loader, **settings):
    """A server on 127.0.0.1 (a free port) for the block; stopped when it ends. Policy "steer" unless given: the tiny
    model's random sigma blocks arbitrary prompts under the default guard+steer, which its own tests cover."""
    settings.setdefault("policy", "steer")
    with LocalServer(create_app(engine_or_loader, ServerSettings(**settings))) as server:
        yield server


def scheduler_of(server):
    return server.app.state.scans_guard.scheduler


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server started as a subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_tiny(tiny_on_disk, port: int, *flags: str, env: dict | None = None, stdout=subprocess.PIPE):
    """`scans-guard serve` on the tiny model as a subprocess on 127.0.0.1:`port` (one torch thread, offline)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "scans_guard.cli",
            "serve",
            "--model",
            str(tiny_on_disk / "model"),
            "--artifact",
            str(tiny_on_disk / "artifact"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *flags,
        ],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})},
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
    )


def ready_or_exited(http, proc) -> bool:
    """The served model is ready, or the process has exited (so polling stops either way)."""
    import httpx

    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return proc.poll() is not None
