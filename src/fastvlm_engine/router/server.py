"""Running the router under uvicorn with a graceful drain on SIGTERM/SIGINT.

On the signal the router stops admitting at once (new requests get 503 ``shutting_down``),
uvicorn lets in-flight requests finish for up to ``shutdown_grace_s``, and the lifespan then
stops every worker by process group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import FrameType

import uvicorn

from ..config import Settings
from .app import create_app

__all__ = ["run_router"]

log = logging.getLogger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_signal()
        super().handle_exit(sig, frame)


def run_router(settings: Settings) -> int:
    """Serve until a signal; returns the exit status."""
    app = create_app(settings)
    pool = app.state.router.pool

    def start_draining() -> None:
        if not pool.draining:
            in_flight = sum(w.in_flight for w in pool.workers)
            log.info("signal received: admission stopped, %d request(s) in flight get up to %.0fs",
                     in_flight, settings.shutdown_grace_s)
            pool.start_draining()

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=settings.shutdown_grace_s,
                            server_header=False)
    _DrainingServer(config, start_draining).run()
    return 0
