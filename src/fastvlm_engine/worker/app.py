"""The worker's HTTP face: FastAPI routes over a :class:`WorkerService`.

The model loads in a background thread after the port opens, so ``/healthz`` answers at once
and ``/readyz`` tells loading from ready. Handlers never touch the model directly: they await
the batcher, so health checks answer while a batch runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry

from ..config import Settings
from ..errors import NotReady
from ..guards import InternalTokenGuard
from ..observability import tracing
from ..observability.http import QUEUE_HEADER, TelemetryMiddleware
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
    RequestIdMiddleware,
    error_response,
    install_error_handlers,
    json_body_openapi,
    parse_json_body,
    request_id_of,
)
from .service import WorkerService, WorkerState

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, service: WorkerService | None = None, *, worker_id: str | None = None,
               incarnation: int = 0, on_load_failure: Callable[[BaseException], None] | None = None) -> FastAPI:
    """Build the worker app; ``on_load_failure`` lets the server exit when the model cannot load."""
    registry = CollectorRegistry()
    metrics = WorkerMetrics(registry)
    service = service or WorkerService(settings, worker_id=worker_id, incarnation=incarnation, metrics=metrics)

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
        try:
            yield
        finally:
            service.stop()
            tracing.shutdown_tracing()

    app = FastAPI(title="FastVLM worker", version="0.1.0", lifespan=lifespan)
    app.state.service = service
    app.add_middleware(BodyLimitMiddleware, limit_for=settings.body_limit)
    app.add_middleware(TelemetryMiddleware, metrics=metrics, endpoints=frozenset(API_ENDPOINTS))
    token = settings.worker_token.get_secret_value()
    if token:  # spawned by a router: answer nobody else
        app.add_middleware(InternalTokenGuard, token=token)
    app.add_middleware(RequestIdMiddleware)  # outermost: every response, 413s included, gets an id
    install_error_handlers(app)

    @app.get("/healthz", summary="Liveness: the process answers (also while loading or busy).")
    async def healthz() -> dict:
        vlm = service.vlm
        batcher = service.batcher
        return {
            "status": "ok",
            "state": service.state.value,
            "reason": service.state_reason,
            "pid": os.getpid(),
            "model": vlm.name if vlm else None,
            "model_info": vlm.info.public() if vlm else None,
            "device": str(vlm.device) if vlm else None,
            "queue_depth": batcher.queue_depth if batcher else 0,
            "batch_running": bool(batcher and batcher.stats.busy_since is not None),
            "batches_run": batcher.stats.batches if batcher else 0,
        }

    @app.get("/metrics", response_class=PlainTextResponse,
             summary="This worker's Prometheus metrics (the router's /metrics includes them).")
    async def metrics_endpoint() -> Response:
        return Response(render(registry), media_type=CONTENT_TYPE)

    @app.get("/worker_health", summary="Heartbeat for the router: state, load, progress, memory.")
    async def worker_health() -> dict:
        return service.health()

    @app.get("/readyz", summary="Readiness: 200 once the model loaded and a warm-up generation succeeded.",
             responses=error_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        if service.state is not WorkerState.READY:
            return error_response(NotReady(f"The worker is not ready: {service.state_reason}.",
                                           state=service.state.value), request_id_of(request))
        vlm, _ = service.require_ready()
        return JSONResponse({"status": "ready", "model": vlm.name, "device": str(vlm.device)})

    @app.post("/predict_image", response_model=PredictImageResponse,
              openapi_extra=json_body_openapi(PredictImageRequest),
              responses=error_responses(400, 403, 404, 413, 415, 422, 503, 504),
              summary="Caption an image or answer a prompt about it.")
    async def predict_image(request: Request) -> Response:
        service.require_ready()
        result = await service.predict_image(await parse_json_body(request, PredictImageRequest))
        return JSONResponse(result.model_dump(), headers={QUEUE_HEADER: str(result.timing.queue_ms)})

    @app.post("/summarize_video", response_model=SummarizeVideoResponse,
              openapi_extra=json_body_openapi(SummarizeVideoRequest),
              responses=error_responses(400, 403, 404, 413, 415, 422, 503, 504),
              summary="Describe a short video: scenes, keyframe captions, summary, safety flags, tags.")
    async def summarize_video(request: Request) -> SummarizeVideoResponse:
        service.require_ready()
        return await service.summarize_video(await parse_json_body(request, SummarizeVideoRequest))

    return app
