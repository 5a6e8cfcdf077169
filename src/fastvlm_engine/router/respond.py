"""Answering a client with what a worker answered: a whole body, or a stream relayed as it arrives.

The lease is released when the answer is complete: after a whole body is read, or when a stream
ends, fails or the client leaves (which closes the worker connection, so the worker stops too).
A stream whose worker fails or whose host is lost mid-way ends with one error event in the
stream's own protocol (the status line is long gone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from starlette.responses import Response, StreamingResponse

from ..cluster.endpoint import EndpointLost
from ..errors import EngineError, WorkerFailed
from ..headers import WORKER_HEADER
from ..web.sse import sse_event
from ..web.upstream import OpenUpstream, end_to_end_headers
from .admission import Lease
from .state import RouterState

__all__ = ["ErrorEvents", "StreamFailure", "respond"]

StreamFailure = Callable[[EngineError], bytes]
"""How a stream tells its client it failed: the last bytes it sends."""


def _event_error(error: EngineError) -> bytes:
    return sse_event(error.to_body(), "error")


async def respond(state: RouterState, lease: Lease, upstream: OpenUpstream, *,
                  stream_failure: StreamFailure = _event_error) -> Response:
    """The client's response for an opened worker answer; the slot stays taken until a stream ends."""
    headers = end_to_end_headers(upstream.headers)
    headers[WORKER_HEADER] = lease.worker.id
    if upstream.is_stream:
        return StreamingResponse(_relay(state, lease, upstream, stream_failure), status_code=upstream.status,
                                 headers=headers)
    succeeded = False
    try:
        body = await lease.worker.unless_lost(upstream.read())
        succeeded = upstream.status == 200
        return Response(body, status_code=upstream.status, headers=headers)
    except EndpointLost as exc:
        upstream.close()
        raise WorkerFailed(f"The worker's host was lost while answering ({exc}); retry the request.") from None
    finally:
        _finish(state, lease, succeeded)


class ErrorEvents:
    """Whether a relayed event stream carried an error event (native ``event: error`` or OpenAI's
    ``data: {"error": ...}``): such a stream ends normally but is not a success. Events begin at a
    line start; a marker split across chunks is found through the tail kept from the last one."""

    _MARKERS = (b"\nevent: error\n", b'\ndata: {"error"')
    _KEEP = max(map(len, _MARKERS)) - 1

    def __init__(self) -> None:
        self.seen = False
        self._tail = b"\n"  # the stream's start is a line start

    def feed(self, chunk: bytes) -> None:
        if self.seen:
            return
        window = self._tail + chunk
        self.seen = any(marker in window for marker in self._MARKERS)
        self._tail = window[-self._KEEP:]


async def _relay(state: RouterState, lease: Lease, upstream: OpenUpstream,
                 stream_failure: StreamFailure) -> AsyncIterator[bytes]:
    """Pass a worker's event stream through as it arrives; a client that leaves closes it."""
    completed = False
    errors = ErrorEvents()
    chunks = upstream.chunks()
    try:
        while True:
            try:
                chunk = await lease.worker.unless_lost(anext(chunks, None))
            except (EndpointLost, WorkerFailed) as exc:
                yield stream_failure(exc if isinstance(exc, WorkerFailed) else WorkerFailed(
                    "The worker's host was lost mid-stream; retry the request."))
                return
            if chunk is None:
                break
            errors.feed(chunk)
            yield chunk
        completed = True
    finally:  # nothing awaited here: a client that left may have cancelled this generator
        upstream.close()
        _finish(state, lease, completed and upstream.status == 200 and not errors.seen)


def _finish(state: RouterState, lease: Lease, succeeded: bool) -> None:
    elapsed = lease.release(succeeded=succeeded)
    if succeeded:
        state.retry_after.observe(lease.endpoint, elapsed)
