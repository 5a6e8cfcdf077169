"""Running the worker app on a port or on a socket the router already bound.

Served like the router (``web.server``): idle connections are kept longer than the router's pool
keeps them, so the router always closes first; SIGTERM drains (new requests get 503
``shutting_down``, in-flight ones finish) before the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

from ..config import Settings
from ..observability.metrics import API_ENDPOINTS
from ..web import InFlight
from ..web.server import WORKER_KEEP_ALIVE_S, serve
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

    def on_load_failure(exc: BaseException) -> None:
        failed.append(exc)
        os.kill(os.getpid(), signal.SIGTERM)  # nothing to serve: drain (nothing is in flight) and exit

    in_flight = InFlight(lambda path: path in API_ENDPOINTS)
    app = create_app(settings, worker_id=worker_id, incarnation=incarnation, on_load_failure=on_load_failure,
                     in_flight=in_flight)
    sockets = None
    if fd is not None:  # bound by the router, so the port is known before we start: no race
        sock = socket.socket(fileno=fd)
        log.info("worker listening on inherited socket %s:%s", *sock.getsockname()[:2])
        sockets = [sock]

    def on_drain() -> None:
        log.info("signal received: finishing %d request(s) in flight", len(in_flight))
        app.state.service.begin_stopping()

    serve(app, host=host, port=port, sockets=sockets, in_flight=in_flight, grace_s=settings.shutdown_grace_s,
          on_drain=on_drain, max_connections=settings.http_max_connections,
          header_timeout_s=settings.http_header_timeout_s, keep_alive_s=WORKER_KEEP_ALIVE_S)
    return EXIT_LOAD_FAILED if failed else 0
