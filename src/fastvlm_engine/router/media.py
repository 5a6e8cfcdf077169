"""``/predict_image`` and ``/summarize_video`` on the router: the body first, then a slot.

A request is read completely (within the body deadlines) and validated before it takes a worker
slot, so a slow upload never holds capacity; when nothing is free at arrival the request is shed
at once without reading its body at all. Shedding answers 503 ``workers_busy`` with a
``retry_after_sec`` measured from load, where "one client" is its API key or address — never
something it picks per request.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..cluster.endpoint import EndpointLost
from ..cluster.tags import format_tags, parse_tags
from ..config import Settings
from ..errors import (
    EngineError,
    InvalidTags,
    NoMatchingWorkers,
    NoReadyWorkers,
    ShuttingDown,
    WorkerFailed,
    WorkersBusy,
)
from ..headers import TAGS_HEADER, WORKER_HEADER
from ..intake.request import body_rules, intake_limits, read_media_request
from ..intake.submission import MediaKind
from ..observability import tracing
from ..web.sse import sse_event
from ..web.upstream import OpenUpstream, end_to_end_headers
from .admission import IMAGE, VIDEO, Lease
from .forward import NothingFree, forward
from .jobs import submit_job, wants_job
from .retry_after import parse_attempt
from .state import RouterState

__all__ = ["client_identity", "predict_image", "required_tags", "shed_error", "summarize_video"]

DRAIN_RETRY_AFTER_S = 1.0
"""What a request arriving during a drain is told: another router (or this one restarted) will take it."""
_ENDPOINTS: dict[MediaKind, str] = {"image": IMAGE, "video": VIDEO}


def client_identity(request: Request) -> str:
    """Who is waiting, for the retry-after estimate: the API key, else the client's address."""
    state = request.scope.get("state", {})
    if state.get("api_key_id"):
        return "key:" + state["api_key_id"]
    address = state.get("client_ip") or (request.client.host if request.client else "unknown")
    return "ip:" + address


def required_tags(request: Request, settings: Settings, endpoint: str) -> dict[str, str]:
    """The host tags this request needs: its ``X-FastVLM-Tags`` header, else the endpoint's default."""
    header = request.headers.get(TAGS_HEADER)
    if header is None:
        return settings.video_tags if endpoint == VIDEO else settings.image_tags
    try:
        return parse_tags(header)
    except ValueError as exc:
        raise InvalidTags(f"{TAGS_HEADER}: {exc}") from None


def shed_error(state: RouterState, request: Request, endpoint: str, tags: Mapping[str, str]) -> EngineError:
    """The 503 for a request no worker can take now, with a measured retry hint."""
    attempt = parse_attempt(request.headers.get("x-retry-attempt"))
    estimator, admission = state.retry_after, state.admission
    ready = state.endpoints.ready()
    matching = admission.matching(tags) if tags else ready
    estimator.rejected(endpoint, client_identity(request))
    state.metrics.busy_rejections.labels(endpoint).inc()
    queued = admission.queue_depth(endpoint)
    wait = estimator.estimate(endpoint, in_flight=sum(w.in_flight for w in matching) + queued,
                              capacity=admission.capacity(endpoint, tags), attempt=attempt)
    if not ready:
        starting = state.endpoints.starting()
        reason = f"{starting} worker(s) starting" if starting else "no worker is running"
        return NoReadyWorkers(f"No worker is ready ({reason}).", retry_after_sec=wait)
    if not matching:
        return NoMatchingWorkers(f"No ready worker runs on a host tagged {format_tags(tags)}.",
                                 required_tags=dict(tags), retry_after_sec=wait)
    return WorkersBusy(retry_after_sec=wait)


async def _media_endpoint(request: Request, kind: MediaKind) -> Response:
    state: RouterState = request.app.state.router
    endpoint = _ENDPOINTS[kind]
    if state.draining:
        raise ShuttingDown(retry_after_sec=DRAIN_RETRY_AFTER_S)
    settings = state.settings
    if wants_job(request, settings.mode):
        return await submit_job(state, request, kind)
    tags = required_tags(request, settings, endpoint)
    if not state.admission.available(endpoint, tags):  # shed before reading a byte of the body
        raise shed_error(state, request, endpoint, tags)
    with await read_media_request(request, kind, intake_limits(settings, kind), body_rules(settings)) as media:
        with tracing.span("admission") as span:
            asked = time.monotonic()
            lease = await state.admission.acquire(endpoint, tags)
            state.metrics.admission_wait.labels(endpoint).observe(time.monotonic() - asked)
            span.set_attribute("fastvlm.admitted", lease is not None)
        if lease is None:
            raise shed_error(state, request, endpoint, tags)
        try:
            upstream, lease = await forward(state, request, lease, media, tags)
        except NothingFree:
            raise shed_error(state, request, endpoint, tags) from None
    headers = end_to_end_headers(upstream.headers)
    headers[WORKER_HEADER] = lease.worker.id
    if upstream.is_stream:  # the slot stays taken until the stream ends
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
        chunks = upstream.chunks()
        while True:
            try:
                chunk = await lease.worker.unless_lost(anext(chunks, None))
            except (EndpointLost, WorkerFailed) as exc:
                # Headers are sent: the failure can only be told in the stream itself.
                failure = exc if isinstance(exc, WorkerFailed) else WorkerFailed(
                    "The worker's host was lost mid-stream; retry the request.")
                yield sse_event(failure.to_body(), "error")
                return
            if chunk is None:
                break
            yield chunk
        completed = True
    finally:
        upstream.close()
        _finish(state, lease, completed and upstream.status == 200)


def _finish(state: RouterState, lease: Lease, succeeded: bool) -> None:
    elapsed = lease.release(succeeded=succeeded)
    if succeeded:
        state.retry_after.observe(lease.endpoint, elapsed)


async def predict_image(request: Request) -> Response:
    """Caption an image or answer a prompt about it."""
    return await _media_endpoint(request, "image")


async def summarize_video(request: Request) -> Response:
    """Describe a short video: scenes, keyframe captions, summary, safety flags, tags."""
    return await _media_endpoint(request, "video")
