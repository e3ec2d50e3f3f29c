"""Running the app under uvicorn: in the foreground (the CLI) or in a background thread on a loopback port
(tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from .app import create_app
from .registry import Registry
from .settings import ServeSettings


def run_server(settings: ServeSettings, registry: Registry | None = None) -> None:
    """Blocking: serve until SIGINT/SIGTERM. SIGHUP reloads the bundles."""
    app = create_app(settings, registry)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                timeout_graceful_shutdown=10, server_header=False)


class BackgroundServer:
    """A real uvicorn server on 127.0.0.1:<free port> in a thread: `with BackgroundServer(s) as srv: srv.url`."""

    def __init__(self, settings: ServeSettings, registry: Registry | None = None, log_level: str = "warning"):
        self.app = create_app(settings, registry)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level=log_level, lifespan="on", server_header=False,
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name=f"uvicorn-{self.port}")

    @property
    def registry(self) -> Registry:
        return self.app.state.registry

    def start(self, timeout: float = 120.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server stopped during startup (see the log above)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on {self.url} did not start within {timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
