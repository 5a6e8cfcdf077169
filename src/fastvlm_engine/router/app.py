"""The router's app: middleware, lifespan and the route table.

Routes live in small modules (``media``, ``health``, ``admin``, ``status``, ``console``); this
module only assembles them. The router never imports torch: it starts in well under a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from ..auth import KeyRing, load_key_file
from ..config import CHAT_ENDPOINT, OPENAI_PREFIX, Settings
from ..guards import AccessGuard
from ..observability import tracing
from ..observability.http import TelemetryMiddleware
from ..observability.metrics import API_ENDPOINTS
from ..openai_compat import ChatCompletionRequest
from ..openai_compat.responses import ChatCompletion, ModelCard, ModelList
from ..schemas import (
    PredictImageRequest,
    PredictImageResponse,
    SummarizeVideoRequest,
    SummarizeVideoResponse,
    error_responses,
)
from ..web import BodyLimitMiddleware, RequestIdMiddleware, RequestLifecycle, install_error_handlers
from ..web.openai_errors import OpenAIErrorShape
from ..web.openapi import json_body_openapi, media_body_openapi
from . import admin, health, jobs, media, openai_routes, status
from .console import console_routes
from .shed import ShedMiddleware
from .state import RouterState, build_state

__all__ = ["ROUTES", "RouterState", "create_app"]

log = logging.getLogger(__name__)

_MEDIA_ERRORS = error_responses(400, 401, 403, 404, 408, 413, 415, 422, 429, 502, 503, 504)

ROUTES: list[tuple[str, Callable[..., Any], list[str], dict[str, Any]]] = [
    ("/healthz", health.healthz, ["GET", "HEAD"], {}),
    ("/readyz", health.readyz, ["GET", "HEAD"], {"responses": error_responses(503)}),
    ("/metrics", health.metrics, ["GET"], {"response_class": PlainTextResponse}),
    ("/status", status.status, ["GET"], {"responses": error_responses(401, 403)}),
    ("/admin/workers/{worker_id}/release", admin.release_worker, ["POST"],
     {"responses": error_responses(401, 404, 409)}),
    ("/admin/hosts/{host}/drain", admin.drain_host, ["POST"], {"responses": error_responses(401, 404, 503)}),
    ("/admin/hosts/{host}/drain", admin.undrain_host, ["DELETE"], {"responses": error_responses(401, 404, 503)}),
    ("/job/{job_id}", jobs.get_job, ["GET"], {"responses": error_responses(404, 422)}),
    ("/jobs/{job_id}", jobs.get_job, ["GET"], {"responses": error_responses(404, 422), "include_in_schema": False}),
    ("/job/{job_id}", jobs.cancel_job, ["DELETE"], {"responses": error_responses(404)}),
    ("/jobs/{job_id}", jobs.cancel_job, ["DELETE"], {"responses": error_responses(404), "include_in_schema": False}),
    ("/predict_image", media.predict_image, ["POST"],
     {"response_model": PredictImageResponse, "responses": _MEDIA_ERRORS,
      "openapi_extra": media_body_openapi(PredictImageRequest, "image")}),
    ("/summarize_video", media.summarize_video, ["POST"],
     {"response_model": SummarizeVideoResponse, "responses": _MEDIA_ERRORS,
      "openapi_extra": media_body_openapi(SummarizeVideoRequest, "video")}),
    (CHAT_ENDPOINT, openai_routes.chat_completions, ["POST"],
     {"response_model": ChatCompletion, "openapi_extra": json_body_openapi(ChatCompletionRequest),
      "responses": {**_MEDIA_ERRORS, 200: {"content": {"text/event-stream": {"schema": {
          "type": "string", "description": "With stream: chat.completion.chunk events, then data: [DONE]."}}}}}}),
    (openai_routes.MODELS, openai_routes.list_models, ["GET"],
     {"response_model": ModelList, "responses": error_responses(401, 403, 429)}),
    (openai_routes.MODELS + "/{model_id:path}", openai_routes.get_model, ["GET"],
     {"response_model": ModelCard, "responses": error_responses(401, 403, 404, 429)}),
]
"""(path, handler, methods, FastAPI route options); the summary is the handler's docstring."""


def create_app(settings: Settings, state: RouterState | None = None) -> FastAPI:
    """The router app; its lifespan spawns the workers and stops them on shutdown."""
    state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup_tracing("fastvlm-router", **{"fastvlm.role": "router"})
        await state.upstream.start()
        if state.supervisor is not None:
            await state.supervisor.start()
        if state.endpoints.remote is not None:
            await state.endpoints.remote.start()
        log.info("job store: %s", state.jobs.description())
        sweeper = asyncio.get_running_loop().create_task(jobs.sweep_forever(state), name="job-sweeper")
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            if state.endpoints.remote is not None:
                await state.endpoints.remote.stop()
            if state.supervisor is not None:
                await state.supervisor.stop(grace=max(5.0, settings.shutdown_grace_s))
            await state.upstream.close()
            await state.jobs.close()
            state.inventory.close()
            tracing.shutdown_tracing()

    app = FastAPI(title="FastVLM Descriptor Engine", version="0.1.0", lifespan=lifespan, redirect_slashes=False,
                  description="Router: admission, load shedding and proxying to FastVLM workers.")
    app.state.router = state
    app.state.openai = openai_routes.build_openai_state(settings)
    app.state.admin_keys = KeyRing(settings.admin_keys)
    api_keys = KeyRing({**{d: None for d in settings.api_keys},
                        **(load_key_file(settings.api_keys_file) if settings.api_keys_file else {})})
    app.state.api_keys = api_keys
    if not api_keys:
        log.warning("no API keys configured (FASTVLM_API_KEYS): the API answers anyone who can reach it")
    if settings.mode == "queue" and (settings.image_tags or settings.video_tags):
        log.warning("FASTVLM_IMAGE_TAGS/FASTVLM_VIDEO_TAGS apply to synchronous requests only: in queue mode any "
                    "worker that pulls may run a job")
    app.add_middleware(BodyLimitMiddleware, limit_for=settings.body_limit)
    app.add_middleware(RequestLifecycle, in_flight=state.in_flight)
    app.add_middleware(ShedMiddleware, state=state)  # inside the guard: keys and rate limits decide first
    app.add_middleware(AccessGuard, allowlist=settings.ip_allowlist, trusted_proxies=settings.trusted_proxies,
                       keys=api_keys, default_rate_per_minute=settings.api_rate_limit_per_minute,
                       protected=frozenset(API_ENDPOINTS), protected_prefixes=("/job/", "/jobs/", OPENAI_PREFIX),
                       open_paths=frozenset({"/healthz", "/readyz"}) if settings.health_endpoints_open
                       else frozenset())
    app.add_middleware(OpenAIErrorShape, prefix=OPENAI_PREFIX)  # outside the guard: its 401/403/429 too
    app.add_middleware(TelemetryMiddleware, metrics=state.metrics,
                       endpoints=frozenset({*API_ENDPOINTS, openai_routes.MODELS}),
                       prefixes={openai_routes.MODELS + "/": openai_routes.MODELS}, observers=[state.live.observe])
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)
    for path, handler, methods, options in ROUTES:
        app.add_api_route(path, handler, methods=methods, summary=(handler.__doc__ or "").strip(), **options)
    if settings.ui:
        for path, handler in console_routes():
            app.add_api_route(path, handler, methods=["GET", "HEAD"], include_in_schema=False)
    return app
