"""The worker's HTTP face: FastAPI routes over a :class:`WorkerService`.

The model loads in a background thread after the port opens, so ``/healthz`` answers at once
and ``/readyz`` tells loading from ready. Handlers never touch the model directly: they await
the scheduler, so health checks answer while the model runs. A media request is read and parsed
completely (off the event loop) before it reaches the service, runs under the deadline the
router sent (``X-FastVLM-Deadline-Ms``), and is cancelled if the router goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CollectorRegistry

from ..cluster.signing import ClusterGuard, ClusterVerifier
from ..config import CHAT_ENDPOINT, OPENAI_PREFIX, Settings
from ..errors import EngineError, InferenceTimeout, NotReady, ShuttingDown
from ..guards import InternalTokenGuard
from ..headers import DEADLINE_HEADER, QUEUE_HEADER
from ..intake.request import body_rules, intake_limits, read_media_request
from ..intake.submission import MediaKind
from ..observability import tracing
from ..observability.http import TelemetryMiddleware
from ..observability.metrics import API_ENDPOINTS, CONTENT_TYPE, WorkerMetrics, render
from ..schemas import (
    PredictImageRequest,
    PredictImageResponse,
    SummarizeVideoRequest,
    SummarizeVideoResponse,
    error_responses,
)
from ..web import (
    BodyLimitMiddleware,
    InFlight,
    RequestIdMiddleware,
    RequestLifecycle,
    error_response,
    install_error_handlers,
    media_body_openapi,
    request_id_of,
)
from ..web.openai_errors import OpenAIErrorShape
from ..web.sse import SSE_HEADERS, SSE_MEDIA_TYPE, sse_event
from . import chat
from .service import Reservation, WorkerService, WorkerState

__all__ = ["create_app", "request_deadline_s"]

log = logging.getLogger(__name__)

_MEDIA_ERRORS = error_responses(400, 403, 404, 408, 413, 415, 422, 503, 504)


def request_deadline_s(request: Request, default_s: float) -> float:
    """The router's deadline for this request (``X-FastVLM-Deadline-Ms``), never above ``default_s``."""
    value = request.headers.get(DEADLINE_HEADER, "")
    if value.isdigit() and len(value) < 10:
        return max(0.001, min(default_s, int(value) / 1000))
    return default_s


def _service(request: Request) -> WorkerService:
    return request.app.state.service


async def _read(request: Request, kind: MediaKind):
    settings = _service(request).settings
    return await read_media_request(request, kind, intake_limits(settings, kind), body_rules(settings))


def _check_serving(request: Request) -> WorkerService:
    service = _service(request)
    if service.state is WorkerState.STOPPING:
        raise ShuttingDown(retry_after_sec=1.0)
    service.require_ready()
    return service


async def predict_image(request: Request) -> Response:
    """Caption an image or answer a prompt about it; ``"stream": true`` answers server-sent events."""
    service = _check_serving(request)
    slot = service.reserve("image")
    try:
        deadline_s = request_deadline_s(request, service.settings.inference_timeout_s)
        deadline = time.monotonic() + deadline_s
        async with _deadline(deadline_s):
            with await _read(request, "image") as media:
                prepared = await service.prepare_image(media, deadline=deadline)
            if media.options.stream:
                stream = _image_events(service, prepared, slot)
                slot = None  # the stream holds it until it ends
                return StreamingResponse(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
            result = await service.run_prepared(prepared)
        slot.release(succeeded=True)
    finally:
        if slot is not None:
            slot.release()
    return JSONResponse(result.model_dump(), headers={QUEUE_HEADER: str(result.timing.queue_ms)})


async def _image_events(service: WorkerService, prepared, slot: Reservation) -> AsyncIterator[bytes]:
    """SSE for one streamed image request; an error after the stream started is its last event."""
    try:
        async for event, data in service.stream_prepared(prepared):
            yield sse_event(data.model_dump() if event == "done" else {"text": data}, event)
    except EngineError as exc:
        yield sse_event(exc.to_body(), "error")
    finally:
        slot.release()


async def chat_completions(request: Request) -> Response:
    """Chat completion in OpenAI's shape, from the router's canonical form (clients call the router)."""
    service = _check_serving(request)
    slot = service.reserve("image")  # a chat holds one sequence, whatever it was asked about
    try:
        deadline_s = request_deadline_s(request, service.settings.inference_timeout_s)
        deadline = time.monotonic() + deadline_s
        async with _deadline(deadline_s):
            with await chat.read_chat_request(request, service.settings) as upload:
                if upload.has_video:  # as the router admitted it: the video pipeline runs first
                    slot.release()
                    slot = service.reserve("video")  # no await between: nobody takes the freed slot
                prepared = await chat.prepare_chat(service, upload, deadline=deadline)
            if prepared.stream:
                events = await chat.started_stream(chat.stream_chat(service, prepared, request_id_of(request)))
                stream, slot = _released_after(events, slot), None  # the stream holds it until it ends
                return StreamingResponse(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
            document, result = await chat.complete_chat(service, prepared)
    finally:
        if slot is not None:
            slot.release()
    return JSONResponse(document, headers={QUEUE_HEADER: str(round(result.queue_s * 1000, 2))})


async def _released_after(events: AsyncIterator[bytes], slot: Reservation) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            yield event
    finally:
        slot.release()


async def summarize_video(request: Request) -> SummarizeVideoResponse:
    """Describe a short video: scenes, keyframe captions, summary, safety flags, tags."""
    service = _check_serving(request)
    slot = service.reserve("video")
    try:
        deadline_s = request_deadline_s(request, service.settings.inference_timeout_s)
        async with _deadline(deadline_s):
            with await _read(request, "video") as media:
                document = await service.summarize_video(media, deadline=time.monotonic() + deadline_s)
        slot.release(succeeded=True)
        return document
    finally:
        slot.release()


@asynccontextmanager
async def _deadline(seconds: float) -> AsyncIterator[None]:
    """The router's deadline for everything before the answer starts: past it, 504 inference_timeout."""
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise InferenceTimeout(f"The request did not finish within its deadline of {seconds:.1f}s.") from None


async def healthz(request: Request) -> dict:
    """Liveness: the process answers (also while loading or busy)."""
    service = _service(request)
    vlm = service.vlm
    health = service.health()
    return {
        "status": "ok",
        "state": service.state.value,
        "reason": service.state_reason,
        "pid": os.getpid(),
        "model": vlm.name if vlm else None,
        "model_info": vlm.info.public() if vlm else None,
        "device": str(vlm.device) if vlm else None,
        "queue_depth": health["queue_depth"],
        "active_sequences": health["active_sequences"],
        "steps": health["steps"],
    }


async def worker_health(request: Request) -> dict:
    """Heartbeat for the router: state, load, progress, memory."""
    return _service(request).health()


async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 once the model loaded and a warm-up generation succeeded."""
    service = _service(request)
    if service.state is not WorkerState.READY:
        return error_response(NotReady(f"The worker is not ready: {service.state_reason}.",
                                       state=service.state.value), request_id_of(request))
    vlm, _ = service.require_ready()
    return JSONResponse({"status": "ready", "model": vlm.name, "device": str(vlm.device),
                         "capacity": service.capacity()})


async def metrics(request: Request) -> Response:
    """This worker's Prometheus metrics (the router's /metrics includes them)."""
    return Response(render(request.app.state.registry), media_type=CONTENT_TYPE)


ROUTES: list[tuple[str, Callable[..., Any], list[str], dict[str, Any]]] = [
    ("/healthz", healthz, ["GET", "HEAD"], {}),
    ("/readyz", readyz, ["GET", "HEAD"], {"responses": error_responses(503)}),
    ("/worker_health", worker_health, ["GET"], {}),
    ("/metrics", metrics, ["GET"], {"response_class": PlainTextResponse}),
    ("/predict_image", predict_image, ["POST"],
     {"response_model": PredictImageResponse, "responses": _MEDIA_ERRORS,
      "openapi_extra": media_body_openapi(PredictImageRequest, "image")}),
    ("/summarize_video", summarize_video, ["POST"],
     {"response_model": SummarizeVideoResponse, "responses": _MEDIA_ERRORS,
      "openapi_extra": media_body_openapi(SummarizeVideoRequest, "video")}),
    (CHAT_ENDPOINT, chat_completions, ["POST"], {"responses": _MEDIA_ERRORS}),
]


async def _pull_jobs(service: WorkerService, worker_id: str | None) -> None:
    """Once the model is ready, lease queued jobs from the job store (any mode: in sync mode a
    request may still ask for a job with Prefer: respond-async)."""
    from ..jobs import open_store_from_settings
    from .puller import JobPuller

    while service.state is not WorkerState.READY:
        if service.state is WorkerState.FAILED:
            return
        await asyncio.sleep(0.1)
    store = open_store_from_settings(service.settings)
    puller = JobPuller(service, store, worker_id=f"{socket.gethostname()}:{os.getpid()}:{worker_id or 'worker'}",
                       lease_s=service.settings.job_lease_s)
    try:
        await puller.run()
    finally:
        await puller.stop()
        await store.close()


def create_app(settings: Settings, service: WorkerService | None = None, *, worker_id: str | None = None,
               incarnation: int = 0, on_load_failure: Callable[[BaseException], None] | None = None,
               in_flight: InFlight | None = None) -> FastAPI:
    """Build the worker app; ``on_load_failure`` lets the server exit when the model cannot load."""
    registry = CollectorRegistry()
    metrics_ = WorkerMetrics(registry)
    service = service or WorkerService(settings, worker_id=worker_id, incarnation=incarnation, metrics=metrics_)
    in_flight = in_flight or InFlight(lambda path: path in API_ENDPOINTS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup_tracing("fastvlm-worker", **{"fastvlm.role": "worker", "fastvlm.worker": worker_id or ""})
        loader = asyncio.create_task(asyncio.to_thread(service.load), name="model-load")

        def _done(task: asyncio.Task) -> None:
            if not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                log.error("model load failed: %s", exc, exc_info=exc)
                if on_load_failure is not None:
                    on_load_failure(exc)

        loader.add_done_callback(_done)
        puller = asyncio.create_task(_pull_jobs(service, worker_id), name="job-puller")
        try:
            yield
        finally:
            puller.cancel()
            await asyncio.gather(puller, return_exceptions=True)
            service.stop()
            tracing.shutdown_tracing()

    app = FastAPI(title="FastVLM worker", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.state.service = service
    app.state.registry = registry
    app.state.in_flight = in_flight
    app.add_middleware(BodyLimitMiddleware, limit_for=settings.body_limit)
    app.add_middleware(RequestLifecycle, in_flight=in_flight)
    app.add_middleware(OpenAIErrorShape, prefix=OPENAI_PREFIX)
    app.add_middleware(TelemetryMiddleware, metrics=metrics_, endpoints=frozenset(API_ENDPOINTS))
    token = settings.worker_token.get_secret_value()
    secret = settings.cluster_secret.get_secret_value()
    if secret:  # reachable from other hosts: signed calls from the cluster's routers, or its own supervisor
        app.add_middleware(ClusterGuard, verifier=ClusterVerifier(secret.encode(), settings.cluster_replay_window_s),
                           local_token=token or None)
    elif token:  # spawned by a supervisor on this host: answer nobody else
        app.add_middleware(InternalTokenGuard, token=token)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response, 413s included, gets an id
    install_error_handlers(app)
    for path, handler, methods, options in ROUTES:
        app.add_api_route(path, handler, methods=methods, summary=(handler.__doc__ or "").strip(), **options)
    return app
