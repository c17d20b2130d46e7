"""Helpers of the server tests: a server on a loopback port, slowed-down model steps, bounded polling."""

from __future__ import annotations

import contextlib
import time

from scans_guard.server import LocalServer, ServerSettings, create_app


@contextlib.contextmanager
def running(engine_or_loader, **settings):
    """A server on 127.0.0.1 (a free port) for the block; stopped when it ends."""
    with LocalServer(create_app(engine_or_loader, ServerSettings(**settings))) as server:
        yield server


@contextlib.contextmanager
def slow_steps(engine, seconds: float):
    """Every forward pass of the model takes at least `seconds`."""
    hook = engine.handle.model.register_forward_hook(lambda *_: time.sleep(seconds))
    try:
        yield
    finally:
        hook.remove()


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def scheduler_of(server):
    return server.app.state.scans_guard.scheduler
