"""Serving an app under uvicorn with connection hygiene and a graceful drain.

Connections (``GuardedHttpProtocol``): a connection must finish each request's headers within
``header_timeout_s`` of opening or of starting the request (slowloris), an idle keep-alive
connection closes after ``keep_alive_s``, and at most ``max_connections`` stay open; at the cap the
longest-idle connection (idle or still sending headers) is closed to make room, and only when
every connection is busy does a new one get 503 ``too_many_connections``. The process's open-file
limit is raised to its hard limit so the cap, not EMFILE, decides.

Drain (``DrainingServer``): the first SIGTERM/SIGINT starts draining. Readiness and new requests
answer 503 ``shutting_down`` (with ``Retry-After`` and ``Connection: close``) while the listening
socket stays open, in-flight requests get up to ``grace_s`` to finish, then the ones still running
are stopped and answered with a JSON 503; only then does uvicorn close the connections. A second
signal stops at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from http import HTTPStatus
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..errors import EngineError, HttpError, RequestTimeout, TooManyConnections
from .middleware import InFlight
from .upstream import POOL_IDLE_S

__all__ = ["POOL_IDLE_S", "WORKER_KEEP_ALIVE_S", "ConnectionGuard", "DrainingServer", "raise_open_file_limit",
           "serve"]

log = logging.getLogger(__name__)

WORKER_KEEP_ALIVE_S = 4 * POOL_IDLE_S
"""Workers keep idle connections longer than the router's pool does, so the router always closes
first and never sends a request down a connection the worker has just closed."""
_FD_RESERVE = 256  # descriptors kept free for files, pipes and worker connections


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _raw_response(error: EngineError) -> bytes:
    """A complete HTTP/1.1 error response written straight to a transport (no app involved)."""
    body = json.dumps(error.to_body()).encode()
    lines = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}", "content-type: application/json",
             f"content-length: {len(body)}", "connection: close",
             *(f"{name.lower()}: {value}" for name, value in error.headers().items() if name.lower() != "connection")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """Open connections in least-recently-active order, with the limits that apply to them."""

    def __init__(self, *, max_connections: int, header_timeout_s: float) -> None:
        if max_connections < 1 or header_timeout_s <= 0:
            raise ValueError("max_connections must be >= 1 and header_timeout_s > 0")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._open: OrderedDict[Any, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, connection: Any) -> bool:
        """Register a new connection, evicting the longest-idle one at the cap; False to refuse."""
        if len(self._open) >= self.max_connections and not self._evict_one():
            self.refused += 1
            return False
        self._open[connection] = None
        return True

    def touch(self, connection: Any) -> None:
        if connection in self._open:
            self._open.move_to_end(connection)

    def discard(self, connection: Any) -> None:
        self._open.pop(connection, None)

    def _evict_one(self) -> bool:
        for connection in self._open:
            if connection.is_idle():
                self._open.pop(connection)
                connection.close_idle()
                self.evicted += 1
                return True
        return False


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline and a bound on open connections."""

    guard: ConnectionGuard  # set on the subclass made by ``protocol_for``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_headers = False

    # --- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.write(_raw_response(TooManyConnections(retry_after_sec=1.0)))
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.discard(self)
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.guard.touch(self)
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """A request httptools cannot parse (e.g. a Content-Length that is not a number): JSON, not text."""
        if not self.transport.is_closing():
            self.transport.write(_raw_response(HttpError(f"{msg.rstrip('.')}: the request is malformed.",
                                                         status=400)))
            self.transport.close()

    def is_idle(self) -> bool:
        """No request is being served: waiting for the next one, or still receiving its headers."""
        return self.cycle is None or self.cycle.response_complete

    def close_idle(self) -> None:
        self._cancel_header_timer()
        if not self.transport.is_closing():
            self.transport.close()

    # --- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._header_timer is None:
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle wait

    # --- the header deadline ----------------------------------------------------------------

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.guard.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.is_idle() or self.transport.is_closing():
            return  # a request is being served: its body and response have their own limits
        self.guard.timed_out += 1
        if self._in_headers:
            self.transport.write(_raw_response(RequestTimeout("The request headers did not arrive in time.")))
        self.transport.close()


def protocol_for(guard: ConnectionGuard) -> type[GuardedHttpProtocol]:
    """A protocol class bound to one server's guard (uvicorn builds protocols from a class)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {"guard": guard})


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose first exit signal drains instead of closing at once."""

    def __init__(self, config: uvicorn.Config, *, in_flight: InFlight, grace_s: float,
                 on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self.in_flight = in_flight
        self.grace_s = grace_s
        self.on_drain = on_drain
        self.draining = False
        self._drain_task: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining:  # a second signal: stop now
            super().handle_exit(sig, frame)
            self.should_exit = True
            return
        self.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self.on_drain()
        self._drain_task = asyncio.get_running_loop().create_task(self._drain(), name="drain")

    async def _drain(self) -> None:
        finished = await self.in_flight.wait_idle(self.grace_s)
        if not finished:
            stopped = self.in_flight.cut_off()
            log.warning("drain grace of %.0fs over: %d request(s) stopped with 503 shutting_down",
                        self.grace_s, stopped)
            await self.in_flight.wait_idle(5.0)
        self.should_exit = True


def serve(app: Any, *, host: str | None = None, port: int | None = None, sockets: list | None = None,
          in_flight: InFlight, grace_s: float, on_drain: Callable[[], None], max_connections: int,
          header_timeout_s: float, keep_alive_s: float, backlog: int = 4096) -> None:
    """Run ``app`` until a drain completes (see the module docstring)."""
    limit = raise_open_file_limit()
    cap = max(16, min(max_connections, limit - _FD_RESERVE))
    if cap < max_connections:
        log.warning("open-file limit %d allows only %d connections (FASTVLM_HTTP_MAX_CONNECTIONS=%d)",
                    limit, cap, max_connections)
    guard = ConnectionGuard(max_connections=cap, header_timeout_s=header_timeout_s)
    config = uvicorn.Config(app, host=host or "127.0.0.1", port=port or 0, log_config=None, access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5, server_header=False,
                            proxy_headers=False,  # only FASTVLM_TRUSTED_PROXIES decides whom to believe
                            http=protocol_for(guard), timeout_keep_alive=keep_alive_s, backlog=backlog)
    server = DrainingServer(config, in_flight=in_flight, grace_s=grace_s, on_drain=on_drain)
    server.run(sockets=sockets)
