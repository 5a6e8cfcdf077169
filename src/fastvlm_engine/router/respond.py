"""Answering a client with what a worker answered: a whole body, or a stream relayed as it arrives.

The lease is released when the answer is complete: after a whole body is read, or when a stream
ends, fails or the client leaves (which closes the worker connection, so the worker stops too).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.responses import Response, StreamingResponse

from ..headers import WORKER_HEADER
from .admission import Lease
from .state import RouterState
from .upstream import OpenUpstream, end_to_end_headers

__all__ = ["respond"]


async def respond(state: RouterState, lease: Lease, upstream: OpenUpstream) -> Response:
    """The client's response for an opened worker answer; the slot stays taken until a stream ends."""
    headers = end_to_end_headers(upstream.headers)
    headers[WORKER_HEADER] = lease.worker.id
    if upstream.is_stream:
        return StreamingResponse(_relay(state, lease, upstream), status_code=upstream.status, headers=headers)
    succeeded = False
    try:
        body = await upstream.read()
        succeeded = upstream.status == 200
        return Response(body, status_code=upstream.status, headers=headers)
    finally:
        _finish(state, lease, succeeded)


async def _relay(state: RouterState, lease: Lease, upstream: OpenUpstream) -> AsyncIterator[bytes]:
    """Pass a worker's event stream through as it arrives; a client that leaves closes it."""
    completed = False
    try:
        async for chunk in upstream.chunks():
            yield chunk
        completed = True
    finally:
        upstream.close()
        _finish(state, lease, completed and upstream.status == 200)


def _finish(state: RouterState, lease: Lease, succeeded: bool) -> None:
    elapsed = lease.release(succeeded=succeeded)
    if succeeded:
        state.retry_after.observe(lease.endpoint, elapsed)
