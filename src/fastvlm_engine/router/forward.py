"""Sending one admitted media request to a worker, with failover.

The router sends workers one canonical form whatever the client sent: JSON for a path, or
``multipart/form-data`` with a ``request`` JSON part (the validated options) and the media as a
file part streamed from the spool — so a worker never re-decodes base64 and a retry on another
worker re-reads the spool instead of keeping the upload in memory.

Each call carries ``X-FastVLM-Deadline-Ms``: the worker stops the work itself a little before
the router would give up on it, so the router never abandons work the worker keeps doing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from starlette.requests import Request

from ..cluster.endpoint import EndpointLost
from ..errors import NotReady, ShuttingDown, WorkerFailed, WorkersBusy
from ..headers import DEADLINE_HEADER, REQUEST_ID_HEADER
from ..intake.submission import MediaRequest
from ..observability import tracing
from ..web import request_id_of
from ..web.upstream import OpenUpstream, WorkerUnreachable
from .admission import IMAGE, VIDEO, Lease
from .state import RouterState

__all__ = ["NothingFree", "Payload", "forward", "worker_deadline_s", "worker_payload"]

log = logging.getLogger(__name__)

def worker_deadline_s(router_timeout_s: float) -> float:
    """The worker's own deadline: the router's wait minus a margin for the answer to travel."""
    return max(0.1, router_timeout_s - max(1.0, 0.05 * router_timeout_s))


def worker_payload(media: MediaRequest) -> tuple[Any, dict[str, str]]:
    """The body (bytes or an aiohttp multipart writer) and content type for one attempt."""
    options = media.options.model_dump(exclude_none=True)
    if media.upload is None:
        document = {**options, f"{media.kind}_path": media.path}
        return json.dumps(document).encode(), {"Content-Type": "application/json"}
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append_json(options)
    part.set_content_disposition("form-data", name="request")
    media_part = writer.append(media.upload.open(),
                               {"Content-Type": media.content_type or "application/octet-stream"})
    media_part.set_content_disposition("form-data", name=media.kind, filename=media.filename or media.kind)
    return writer, {}


Payload = Callable[[], tuple[Any, dict[str, str]]]
"""Builds one attempt's body (bytes or an aiohttp multipart writer) and content-type header; called
again for every attempt, since a streamed body can be sent only once."""


async def forward(state: RouterState, request: Request, lease: Lease, payload: Payload, *,
                  tags: Mapping[str, str], path: str | None = None) -> tuple[OpenUpstream, Lease]:
    """Send to the lease's worker (at ``path``, default the lease's endpoint); on a connection that
    never reached it (refused, or a connect timeout) try another worker (one matching ``tags``), and
    retry an image once elsewhere if its worker died mid-request or its host was lost.

    Returns the opened response (its body still to be read or streamed) and the lease that
    produced it; on failure every lease it took is released.
    """
    endpoint = lease.endpoint
    path = path or endpoint
    tried: list[str] = []
    failures_left = 1 if endpoint == IMAGE else 0
    reached = False  # did any worker get the request?
    settings = state.settings
    hint = settings.retry_after_video_min_s if endpoint == VIDEO else settings.retry_after_image_min_s
    timeout = state.timeout_for(endpoint)
    try:
        while True:
            try:
                body, content_type = payload()
                worker = lease.worker
                with tracing.span("proxy", tracing.SpanKind.CLIENT, **{"fastvlm.worker": worker.id}):
                    request_id = request_id_of(request) or ""
                    headers = {**content_type, REQUEST_ID_HEADER: request_id,
                               DEADLINE_HEADER: str(int(worker_deadline_s(timeout) * 1000)),
                               **worker.auth_headers("POST", path, request_id=request_id,
                                                     body_length=len(body) if isinstance(body, bytes) else None)}
                    tracing.inject(headers)
                    response = await worker.unless_lost(state.upstream.open(
                        "POST", worker.url + path, body=body, headers=headers, timeout_s=timeout))
                if not await _busy(response):
                    return response, lease
                log.info("worker %s cannot take it now (full, draining or loading); trying another", lease.worker.id)
            except WorkerUnreachable:
                log.warning("worker %s could not be reached; trying another", lease.worker.id)
            except (WorkerFailed, EndpointLost) as exc:
                reached = True
                if failures_left <= 0:
                    failure = exc if isinstance(exc, WorkerFailed) else WorkerFailed(
                        f"The worker's host was lost mid-request ({exc}).")
                    failure.retry_after_sec = hint
                    raise failure from None
                failures_left -= 1
                log.warning("worker %s failed mid-request; retrying the image once elsewhere", lease.worker.id)
            lease.release(succeeded=False)
            tried.append(lease.worker.id)
            replacement = state.admission.try_acquire(endpoint, exclude=tried, tags=tags)
            if replacement is None:
                if not reached:  # nothing ran anywhere: this is plain shedding, not a failure
                    raise NothingFree()
                raise WorkerFailed("The worker failed and no other worker is free; retry later.",
                                   retry_after_sec=hint)
            lease = replacement
    except BaseException:
        lease.release(succeeded=False)
        raise


_NOT_STARTED = frozenset({WorkersBusy.code, ShuttingDown.code, NotReady.code})
"""A worker answering with one of these never started the request (it is full, draining, or not
loaded yet, whatever the router last heard from it): another worker may take it."""


async def _busy(response: OpenUpstream) -> bool:
    if response.status == 401:  # the worker refused this router's credential: never the client's problem
        await response.read()
        log.error("a worker refused this router's credential (is FASTVLM_CLUSTER_SECRET the same everywhere?)")
        return True
    if response.status != 503 or response.is_stream:
        return False
    body = await response.read()
    try:
        return json.loads(body)["error"]["code"] in _NOT_STARTED
    except (ValueError, KeyError, TypeError):
        return False


class NothingFree(Exception):
    """Every worker tried was unreachable and no other is free: nothing ran, so the caller sheds."""
