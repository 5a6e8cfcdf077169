"""Router → worker HTTP over one pooled aiohttp session.

aiohttp exceptions are translated here and nowhere else (like httpx does with httpcore):
a refused connection or a connect timeout means the request never reached the worker (safe to
try another), a connection lost mid-request means the worker failed, and a timeout while waiting
for the answer is a timeout. Idle pooled connections are closed after ``POOL_IDLE_S``, before the
workers' own keep-alive ends, so a request never lands on a connection a worker just closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..errors import WorkerFailed, WorkerTimeout

__all__ = ["HOP_BY_HOP", "POOL_IDLE_S", "OpenUpstream", "Upstream", "UpstreamResponse", "WorkerUnreachable",
           "end_to_end_headers"]

POOL_IDLE_S = 15.0
"""How long an idle pooled connection to a worker is kept (workers keep theirs longer: web.server)."""

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "proxy-connection",
})
_RECOMPUTED = frozenset({"content-length", "date", "server"})


class WorkerUnreachable(Exception):
    """The connection was refused or could not be opened: the worker never saw the request."""


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class OpenUpstream:
    """A worker response whose body is still arriving (a stream); close it when done with it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers = dict(response.headers)

    @property
    def is_stream(self) -> bool:
        return self.headers.get("Content-Type", "").startswith("text/event-stream")

    async def read(self) -> bytes:
        with _translate():
            try:
                body = await self._response.read()
            except BaseException:  # cancelled (the client left) or failed: the worker must see it go
                self._response.close()
                raise
        self._response.release()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, unbuffered (for server-sent events)."""
        with _translate():
            async for chunk in self._response.content.iter_any():
                yield chunk

    def close(self) -> None:
        """Drop the connection (a stream cut short) — the worker sees the disconnect and stops."""
        self._response.close()


def end_to_end_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Drop hop-by-hop headers (RFC 9110 §7.6.1), including any the Connection header names."""
    named = {token.strip().lower() for value in (v for k, v in headers.items() if k.lower() == "connection")
             for token in value.split(",")}
    return {k: v for k, v in headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() not in named and k.lower() not in _RECOMPUTED}


@contextmanager
def _translate() -> Iterator[None]:
    try:
        yield
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # never reached the worker
        raise WorkerUnreachable(str(exc) or type(exc).__name__) from exc
    except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
        raise WorkerTimeout() from exc
    except aiohttp.ClientError as exc:  # disconnected, reset, bad payload ...
        raise WorkerFailed("The worker's connection closed before it answered.") from exc


class Upstream:
    """A pooled client session for all router → worker calls."""

    def __init__(self, *, connect_timeout_s: float, limit: int = 512) -> None:
        self._connect_timeout = connect_timeout_s
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._limit, limit_per_host=0, keepalive_timeout=POOL_IDLE_S,
                                         enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream used before start() or after close()")
        return self._session

    async def request(self, method: str, url: str, *, body: Any = None,
                      headers: Mapping[str, str] | None = None, timeout_s: float) -> UpstreamResponse:
        """One call, its answer read whole; raises WorkerUnreachable, WorkerFailed or WorkerTimeout."""
        opened = await self.open(method, url, body=body, headers=headers, timeout_s=timeout_s)
        payload = await opened.read()
        return UpstreamResponse(status=opened.status, headers=opened.headers, body=payload)

    async def open(self, method: str, url: str, *, body: Any = None, headers: Mapping[str, str] | None = None,
                   timeout_s: float) -> OpenUpstream:
        """Send a request and return once the answer's headers arrived; the caller reads or streams it."""
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=self._connect_timeout)
        with _translate():
            response = await self.session.request(method, url, data=body, headers=dict(headers or {}),
                                                  timeout=timeout, allow_redirects=False)
        return OpenUpstream(response)
