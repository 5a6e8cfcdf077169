"""The router's HTTP face: admission first, then the body, then one worker.

A request takes a worker slot before a byte of its body is read, so a burst of large uploads
is turned away (503 ``workers_busy`` with an adaptive ``retry_after_sec``) without being read,
decoded or forwarded. The router never imports torch: it starts in well under a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.process_collector import ProcessCollector

from ..auth import KeyRing, key_id, load_key_file, presented_key
from ..config import Settings
from ..errors import (
    EngineError,
    NoReadyWorkers,
    ShuttingDown,
    Unauthorized,
    WorkerFailed,
    WorkersBusy,
)
from ..guards import AccessGuard
from ..observability import tracing
from ..observability.http import TelemetryMiddleware
from ..observability.metrics import API_ENDPOINTS, CONTENT_TYPE, HttpMetrics, PoolCollector, render
from ..schemas import (
    PredictImageRequest,
    PredictImageResponse,
    SummarizeVideoRequest,
    SummarizeVideoResponse,
    error_responses,
)
from ..web import (
    REQUEST_ID_HEADER,
    BodyLimitMiddleware,
    RequestIdMiddleware,
    error_response,
    install_error_handlers,
    json_body_openapi,
    parse_json_bytes,
    request_id_of,
)
from .admission import IMAGE, VIDEO, Admission, Lease
from .inventory import Inventory, make_inventory
from .pool import WorkerPool
from .retry_after import RetryAfterEstimator, parse_attempt
from .upstream import Upstream, UpstreamResponse, WorkerUnreachable, end_to_end_headers
from .workers import WorkerState

__all__ = ["RouterState", "create_app"]

log = logging.getLogger(__name__)

WORKER_HEADER = "X-FastVLM-Worker"
_SCHEMAS = {IMAGE: PredictImageRequest, VIDEO: SummarizeVideoRequest}


class RouterMetrics(HttpMetrics):
    """The router's own series; workers' series are merged in at scrape time."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, "fastvlm_")
        self.busy_rejections = Counter("fastvlm_busy_rejections_total", "Requests shed with 503 because no "
                                       "worker slot was free.", ["endpoint"], registry=registry)
        for endpoint in API_ENDPOINTS:
            self.busy_rejections.labels(endpoint)


@dataclass
class RouterState:
    settings: Settings
    inventory: Inventory
    upstream: Upstream
    pool: WorkerPool
    admission: Admission
    retry_after: RetryAfterEstimator
    registry: CollectorRegistry
    metrics: RouterMetrics

    def timeout_for(self, endpoint: str) -> float:
        return self.settings.video_timeout_s if endpoint == VIDEO else self.settings.image_timeout_s


def build_state(settings: Settings, inventory: Inventory | None = None) -> RouterState:
    inventory = inventory or make_inventory(settings.simulate_gpus, settings.simulate_gpu_worker_mib)
    upstream = Upstream(connect_timeout_s=settings.worker_connect_timeout_s)
    pool = WorkerPool(settings, inventory, upstream)
    registry = CollectorRegistry()
    registry.register(ProcessCollector(registry=None))
    registry.register(PoolCollector(lambda: pool.workers, [s.value for s in WorkerState],
                                    lambda: [] if inventory.simulated else inventory.gpus()))
    return RouterState(
        settings=settings, inventory=inventory, upstream=upstream, pool=pool,
        registry=registry, metrics=RouterMetrics(registry),
        admission=Admission(settings.max_concurrent, settings.max_video_concurrent),
        retry_after=RetryAfterEstimator(
            bounds={IMAGE: (settings.retry_after_image_min_s, settings.retry_after_image_max_s),
                    VIDEO: (settings.retry_after_video_min_s, settings.retry_after_video_max_s)},
            priors={IMAGE: 2.0, VIDEO: 30.0}))


def _client_key(request: Request) -> str:
    """Who is waiting: the request id a client keeps across retries, else its connection."""
    if request.scope.get("state", {}).get("request_id_from_client"):
        return "id:" + (request_id_of(request) or "")
    client = request.client
    return f"conn:{client.host}:{client.port}" if client else "conn:unknown"


def _shed(state: RouterState, request: Request, endpoint: str, attempt: int) -> EngineError:
    """The 503 for a request no worker can take now, with a measured retry hint."""
    pool, admission, estimator = state.pool, state.admission, state.retry_after
    ready = pool.ready()
    estimator.rejected(endpoint, _client_key(request))
    state.metrics.busy_rejections.labels(endpoint).inc()
    in_flight = sum(w.in_flight for w in ready)
    capacity = admission.capacity(ready, endpoint)
    wait = estimator.estimate(endpoint, in_flight=in_flight, capacity=capacity, attempt=attempt)
    if not ready:
        starting = sum(w.state in (WorkerState.STARTING, WorkerState.RESTARTING) for w in pool.workers)
        reason = f"{starting} worker(s) starting" if starting else "no worker is running"
        return NoReadyWorkers(f"No worker is ready ({reason}).", retry_after_sec=wait)
    return WorkersBusy(retry_after_sec=wait)


async def _forward(state: RouterState, request: Request, lease: Lease, endpoint: str,
                   body: bytes) -> tuple[UpstreamResponse, Lease]:
    """Send to the lease's worker; on a refused connection (never reached it) try another worker,
    and retry an image once on another worker if its worker died mid-request.

    Returns the response and the lease that produced it; on failure every lease it took is released.
    """
    tried: list[str] = []
    failures_left = 1 if endpoint == IMAGE else 0
    reached = False  # did any worker get the request?
    hint = state.settings.retry_after_video_min_s if endpoint == VIDEO else state.settings.retry_after_image_min_s
    try:
        while True:
            try:
                with tracing.span("proxy", tracing.SpanKind.CLIENT, **{"fastvlm.worker": lease.worker.id}):
                    headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request_id_of(request) or "",
                               **lease.worker.auth_headers()}
                    tracing.inject(headers)
                    response = await state.upstream.request("POST", lease.worker.url + endpoint, body=body,
                                                            headers=headers, timeout_s=state.timeout_for(endpoint))
                return response, lease
            except WorkerUnreachable:
                log.warning("worker %s refused the connection; trying another", lease.worker.id)
            except WorkerFailed as exc:
                reached = True
                if failures_left <= 0:
                    exc.retry_after_sec = hint
                    raise
                failures_left -= 1
                log.warning("worker %s failed mid-request; retrying the image once elsewhere", lease.worker.id)
            lease.release(succeeded=False)
            tried.append(lease.worker.id)
            replacement = state.admission.acquire(state.pool.workers, endpoint, exclude=tried)
            if replacement is None:
                if not reached:  # nothing ran anywhere: this is plain shedding, not a failure
                    raise _shed(state, request, endpoint, 0)
                raise WorkerFailed("The worker failed and no other worker is free; retry later.",
                                   retry_after_sec=hint)
            lease = replacement
    except BaseException:
        lease.release(succeeded=False)
        raise


async def _proxy(state: RouterState, request: Request, endpoint: str) -> Response:
    if state.pool.draining:
        raise ShuttingDown()
    attempt = parse_attempt(request.headers.get("x-retry-attempt"))
    with tracing.span("admission") as span:
        lease = state.admission.acquire(state.pool.workers, endpoint)
        span.set_attribute("fastvlm.admitted", lease is not None)
        if lease is None:
            raise _shed(state, request, endpoint, attempt)
    succeeded = False
    try:
        body = await request.body()
        parse_json_bytes(body, _SCHEMAS[endpoint])  # reject malformed input without using a worker
        upstream, lease = await _forward(state, request, lease, endpoint, body)
        succeeded = upstream.status == 200
        headers = end_to_end_headers(upstream.headers)
        headers[WORKER_HEADER] = lease.worker.id
        return Response(upstream.body, status_code=upstream.status, headers=headers)
    finally:
        elapsed = lease.release(succeeded=succeeded)
        if succeeded:
            state.retry_after.observe(endpoint, elapsed)


def create_app(settings: Settings, state: RouterState | None = None) -> FastAPI:
    """The router app; its lifespan spawns the workers and stops them on shutdown."""
    state = state or build_state(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.setup_tracing("fastvlm-router", **{"fastvlm.role": "router"})
        await state.upstream.start()
        await state.pool.start()
        try:
            yield
        finally:
            await state.pool.stop(grace=max(5.0, settings.shutdown_grace_s))
            await state.upstream.close()
            state.inventory.close()
            tracing.shutdown_tracing()

    app = FastAPI(title="FastVLM Descriptor Engine", version="0.1.0", lifespan=lifespan,
                  description="Router: admission, load shedding and proxying to FastVLM workers.")
    app.state.router = state
    api_keys = KeyRing({**{d: None for d in settings.api_keys},
                        **(load_key_file(settings.api_keys_file) if settings.api_keys_file else {})})
    if not api_keys:
        log.warning("no API keys configured (FASTVLM_API_KEYS): the API answers anyone who can reach it")
    app.add_middleware(BodyLimitMiddleware, limit_for=settings.body_limit)
    app.add_middleware(AccessGuard, allowlist=settings.ip_allowlist, trusted_proxies=settings.trusted_proxies,
                       keys=api_keys, default_rate_per_minute=settings.api_rate_limit_per_minute,
                       protected=frozenset(API_ENDPOINTS),
                       open_paths=frozenset({"/healthz", "/readyz"}) if settings.health_endpoints_open
                       else frozenset())
    app.add_middleware(TelemetryMiddleware, metrics=state.metrics, endpoints=frozenset(API_ENDPOINTS))
    app.add_middleware(RequestIdMiddleware)
    install_error_handlers(app)

    @app.get("/healthz", summary="Router liveness and every worker's state, device and load.")
    async def healthz() -> dict:
        pool = state.pool
        return {
            "status": "ok",
            "draining": pool.draining,
            "ready_workers": len(pool.ready()),
            "workers": [w.snapshot(state.admission.max_concurrent) for w in pool.workers],
            "gpus": [{"index": g.index, "name": g.name, "simulated": state.inventory.simulated,
                      "memory_total_bytes": g.total_bytes, "memory_used_bytes": g.used_bytes}
                     for g in state.inventory.gpus()],
        }

    @app.get("/readyz", summary="200 when at least one worker is ready.", responses=error_responses(503))
    async def readyz(request: Request) -> JSONResponse:
        ready = state.pool.ready()
        if ready and not state.pool.draining:
            return JSONResponse({"status": "ready", "ready_workers": len(ready)})
        if state.pool.draining:
            error: EngineError = ShuttingDown()
        else:
            states = ", ".join(f"{w.id} {w.state.value}" for w in state.pool.workers) or "no workers"
            error = NoReadyWorkers(f"No worker is ready ({states}).")
        return error_response(error, request_id_of(request))

    @app.get("/metrics", response_class=PlainTextResponse,
             summary="Prometheus metrics: the router's and every ready worker's (label worker).")
    async def metrics() -> Response:
        async def scrape(worker) -> tuple[str, str | None]:
            try:
                answer = await state.upstream.request("GET", worker.url + "/metrics", timeout_s=2.0,
                                                      headers=worker.auth_headers())
                return worker.id, answer.body.decode() if answer.status == 200 else None
            except Exception:
                return worker.id, None

        results = await asyncio.gather(*(scrape(w) for w in state.pool.ready()))
        texts = {worker_id: text for worker_id, text in results if text is not None}
        return Response(render(state.registry, texts), media_type=CONTENT_TYPE)

    admins = KeyRing(settings.admin_keys)

    def require_admin(request: Request) -> str:
        if not admins:
            raise Unauthorized("The admin API is disabled: configure FASTVLM_ADMIN_KEYS.")
        who = admins.verify(presented_key(request.headers))
        if who is None:
            raise Unauthorized("A valid admin key is required.")
        return who

    @app.post("/admin/workers/{worker_id}/release", responses=error_responses(401, 404, 409),
              summary="Admin: release a quarantined worker slot (starts a fresh process).")
    async def release_worker(worker_id: str, request: Request) -> dict:
        who = require_admin(request)
        worker = await state.pool.release(worker_id)
        log.warning("worker %s released from quarantine by admin key %s", worker_id, key_id(who))
        return {"worker": worker.snapshot(state.admission.max_concurrent)}

    @app.post(IMAGE, response_model=PredictImageResponse, openapi_extra=json_body_openapi(PredictImageRequest),
              responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
              summary="Caption an image or answer a prompt about it.")
    async def predict_image(request: Request) -> Response:
        return await _proxy(state, request, IMAGE)

    @app.post(VIDEO, response_model=SummarizeVideoResponse,
              openapi_extra=json_body_openapi(SummarizeVideoRequest),
              responses=error_responses(400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504),
              summary="Describe a short video: scenes, keyframe captions, summary, safety flags, tags.")
    async def summarize_video(request: Request) -> Response:
        return await _proxy(state, request, VIDEO)

    return app
