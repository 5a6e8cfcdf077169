"""Running the worker app under uvicorn, on a port or on a socket the router already bound."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import uvicorn

from ..config import Settings
from .app import create_app

__all__ = ["EXIT_LOAD_FAILED", "run_worker"]

log = logging.getLogger(__name__)

EXIT_LOAD_FAILED = 3
"""Exit status when the model cannot load, so a supervisor can tell it from a crash."""


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Shut down gracefully if the router that spawned us is gone (backs up PR_SET_PDEATHSIG)."""
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                log.warning("parent router %d is gone; shutting down", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            threading.Event().wait(interval_s)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def run_worker(settings: Settings, *, host: str, port: int, fd: int | None = None,
               parent_pid: int | None = None, worker_id: str | None = None, incarnation: int = 0) -> int:
    """Serve until SIGTERM/SIGINT (graceful) or a failed model load; returns the exit status."""
    if parent_pid is not None:
        _watch_parent(parent_pid)
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_failure(exc: BaseException) -> None:
        failed.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, worker_id=worker_id, incarnation=incarnation, on_load_failure=on_load_failure)
    options = dict(log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=30,
                   server_header=False)
    sockets = None
    if fd is not None:  # bound by the router, so the port is known before we start: no race
        sock = socket.socket(fileno=fd)
        log.info("worker listening on inherited socket %s:%s", *sock.getsockname()[:2])
        sockets = [sock]
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
    server.run(sockets=sockets)
    return EXIT_LOAD_FAILED if failed else 0
