"""``/predict_image`` and ``/summarize_video`` on the router: the body first, then a slot.

A request is read completely (within the body deadlines) and validated before it takes a worker
slot, so a slow upload never holds capacity; when nothing is free at arrival the request is shed
at once without reading its body at all. Shedding answers 503 ``workers_busy`` with a
``retry_after_sec`` measured from load, where "one client" is its API key or address — never
something it picks per request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from ..cluster.tags import format_tags, parse_tags
from ..config import Settings
from ..errors import (
    EngineError,
    InvalidTags,
    NoMatchingWorkers,
    NoReadyWorkers,
    ShuttingDown,
    WorkersBusy,
)
from ..headers import TAGS_HEADER
from ..intake.request import body_rules, intake_limits, read_media_request
from ..intake.submission import MediaKind
from ..observability import tracing
from ..web.upstream import OpenUpstream
from .admission import IMAGE, VIDEO, Lease
from .forward import NothingFree, Payload, forward, worker_payload
from .jobs import submit_job, wants_job
from .respond import respond
from .retry_after import parse_attempt
from .state import RouterState

__all__ = ["DRAIN_RETRY_AFTER_S", "admit_and_forward", "client_identity", "predict_image", "required_tags",
           "shed_error", "summarize_video"]

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


def shed_error(state: RouterState, request: Request, endpoint: str, tags: Mapping[str, str], *,
               label: str | None = None) -> EngineError:
    """The 503 for a request no worker can take now, with a measured retry hint; ``label`` names the
    client-facing endpoint in the metrics when it is not the admission class ``endpoint`` itself."""
    attempt = parse_attempt(request.headers.get("x-retry-attempt"))
    estimator, admission = state.retry_after, state.admission
    ready = state.endpoints.ready()
    matching = admission.matching(tags) if tags else ready
    estimator.rejected(endpoint, client_identity(request))
    state.metrics.busy_rejections.labels(label or endpoint).inc()
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
        upstream, lease = await admit_and_forward(state, request, endpoint, lambda: worker_payload(media), tags=tags)
    return await respond(state, lease, upstream)


async def admit_and_forward(state: RouterState, request: Request, endpoint: str, payload: Payload, *,
                            tags: Mapping[str, str], path: str | None = None) -> tuple[OpenUpstream, Lease]:
    """Take a slot for the admission class ``endpoint`` on a worker offering ``tags`` (waiting in the
    admission queue when that is allowed) and send the request to it at ``path`` (default
    ``endpoint``); 503 (shed) when no slot frees in time or no worker could be reached."""
    with tracing.span("admission") as span:
        asked = time.monotonic()
        lease = await state.admission.acquire(endpoint, tags)
        state.metrics.admission_wait.labels(endpoint).observe(time.monotonic() - asked)
        span.set_attribute("fastvlm.admitted", lease is not None)
    if lease is None:
        raise shed_error(state, request, endpoint, tags, label=path)
    try:
        return await forward(state, request, lease, payload, tags=tags, path=path)
    except NothingFree:
        raise shed_error(state, request, endpoint, tags, label=path) from None


async def predict_image(request: Request) -> Response:
    """Caption an image or answer a prompt about it."""
    return await _media_endpoint(request, "image")


async def summarize_video(request: Request) -> Response:
    """Describe a short video: scenes, keyframe captions, summary, safety flags, tags."""
    return await _media_endpoint(request, "video")
