"""Run the server in this process on a loopback port, in a thread: for tests, the benchmark and the examples.

    with LocalServer(create_app(engine)) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="-")

The socket is bound before the thread starts (port 0: the OS picks a free one), so `base_url` is usable at once;
leaving the block stops the server and waits for its thread.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .serving import DrainingServer

LOOPBACK = "127.0.0.1"


class LocalServer:
    def __init__(
        self, app, host: str = LOOPBACK, port: int = 0, *, ready_timeout: float = 60.0, log_level: str = "warning"
    ):
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"LocalServer binds loopback addresses only, got {host!r}")
        self.app = app
        self.host, self.port = host, port
        self.ready_timeout = ready_timeout
        self.log_level = log_level
        self._server: DrainingServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LocalServer:
        from .serving import draining_server

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._socket = sock
        self._server = server = draining_server(self.app, log_level=self.log_level, lifespan="on")
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"scans-guard-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.ready_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the local server did not start")
            time.sleep(0.01)
        return self

    def drain(self, timeout: float = 60.0) -> None:
        """Shut down as on SIGTERM: 503 for new model requests, those in flight finish (within the app's
        shutdown_timeout_s), then the server stops; waits up to `timeout` for that."""
        if self._server is not None:
            self._server.drain()
        if self._thread is not None:
            self._thread.join(timeout)
        self.stop()

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._thread = None

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
