"""uvicorn with a graceful drain: on SIGTERM (or Ctrl-C) the server stops admitting model requests (503), lets the ones
in flight finish within `ServerSettings.shutdown_timeout_s`, then exits with status 0.

uvicorn alone stops listening at once and, after its own grace period, cancels what is left and re-raises the
signal (exit status -15); here the port stays open during the drain so new clients get a 503 with Retry-After (and a
load balancer's readiness probe, /readyz, a 503 "draining") instead of a refused connection.
"""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import Literal

import anyio
import uvicorn

from .state import ServerState

log = logging.getLogger(__name__)

FINAL_GRACE_S = 5  # after the drain: uvicorn's own wait for connections to close (error events, [DONE]) is short


class DrainingServer(uvicorn.Server):
    """A uvicorn server over one scans-guard app that drains before it exits (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state

    def drain(self) -> None:
        """Begin the drain (idempotent): new model requests get 503 and the server exits once the rest are done."""
        if self.state.draining_since is None:
            self.state.draining_since = time.monotonic()
            log.warning(
                "draining: %d request(s) in flight, up to %gs to finish",
                self.state.in_flight,
                self.state.settings.shutdown_timeout_s,
            )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.state.draining_since is None and not self.should_exit:
            self.drain()  # the first signal drains; it is not re-raised, so the process exits 0
            return
        super().handle_exit(sig, frame)  # a second signal stops now (uvicorn re-raises it when it is done)

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        since = self.state.draining_since
        if since is None:
            return False
        if self.state.in_flight > 0 and time.monotonic() - since < self.state.settings.shutdown_timeout_s:
            return False
        if self.state.in_flight > 0:
            log.warning("shutdown timeout: failing %d request(s) still in flight", self.state.in_flight)
            # each gets the 503 shutting_down error (in-band if its stream began) before uvicorn closes connections
            await anyio.to_thread.run_sync(self.state.close)
        self.should_exit = True
        return True


def draining_server(
    app,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str | None = None,
    lifespan: Literal["auto", "on", "off"] = "auto",
) -> DrainingServer:
    """A DrainingServer for an app made by `create_app` (the options are uvicorn.Config's, with its defaults)."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan=lifespan, timeout_graceful_shutdown=FINAL_GRACE_S
    )
    return DrainingServer(config, app.state.scans_guard)


def serve(app, host: str, port: int, log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C, then drain and return (the process exits 0)."""
    draining_server(app, host=host, port=port, log_level=log_level).run()
