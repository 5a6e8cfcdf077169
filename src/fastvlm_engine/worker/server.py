"""Running the worker app under uvicorn, on a port or on a socket the router already bound."""

from __future__ import annotations

import logging
import socket

import uvicorn

from ..config import Settings
from .app import create_app

__all__ = ["EXIT_LOAD_FAILED", "run_worker"]

log = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
"""Exit status when the model cannot load, so a supervisor can tell it from a crash."""


def run_worker(settings: Settings, *, host: str, port: int, fd: int | None = None) -> int:
    """Serve until SIGTERM/SIGINT (graceful) or a failed model load; returns the exit status."""
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_failure(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=on_load_failure)
    options = dict(log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
                   server_header=False)
    if fd is not None:
        sock = socket.socket(fileno=fd)
        log.info("worker listening on inherited socket %s", sock.getsockname())
        sock.detach()
        config = uvicorn.Config(app, fd=fd, **options)
    else:
        config = uvicorn.Config(app, host=host, port=port, **options)
    server = uvicorn.Server(config)
    server.run()
    return EXIT_LOAD_FAILED if failed else 0
