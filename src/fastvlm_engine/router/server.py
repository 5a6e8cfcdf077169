"""Running the router: connection hygiene and a graceful drain (see ``web.server``).

On SIGTERM/SIGINT the router stops admitting at once — readiness and new requests answer 503
``shutting_down`` while the port stays open — in-flight requests get up to ``shutdown_grace_s``,
the ones still running are then answered with a JSON 503, and the lifespan stops every worker by
process group.
"""

from __future__ import annotations

import logging

from ..config import Settings
from ..web.server import serve
from .app import create_app

__all__ = ["console_url", "run_router"]

log = logging.getLogger(__name__)


def console_url(host: str, port: int) -> str:
    """Where a browser on this host reaches the console (a wildcard bind is reached on loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def run_router(settings: Settings) -> int:
    """Serve until a signal; returns the exit status."""
    app = create_app(settings)
    state = app.state.router

    def start_draining() -> None:
        log.info("signal received: admission stopped, %d request(s) in flight get up to %.0fs",
                 len(state.in_flight), settings.shutdown_grace_s)
        state.start_draining()

    if settings.ui:
        log.info("web console on %s (FASTVLM_UI=false turns it off)", console_url(settings.host, settings.port))
    serve(app, host=settings.host, port=settings.port, in_flight=state.in_flight,
          grace_s=settings.shutdown_grace_s, on_drain=start_draining,
          max_connections=settings.http_max_connections, header_timeout_s=settings.http_header_timeout_s,
          keep_alive_s=settings.http_keep_alive_s)
    return 0
