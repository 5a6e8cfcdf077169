"""The router's probes: liveness with every worker's state, readiness, and the metrics scrape."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import EngineError, NoReadyWorkers, ShuttingDown
from ..observability.metrics import CONTENT_TYPE, render
from ..web import error_response, request_id_of
from .admission import IMAGE, VIDEO
from .media import DRAIN_RETRY_AFTER_S
from .state import RouterState

__all__ = ["health_document", "healthz", "metrics", "readyz"]


def _state(request: Request) -> RouterState:
    return request.app.state.router


def health_document(state: RouterState) -> dict:
    """What /healthz answers (the console's status view starts from the same document)."""
    pool = state.pool
    return {
        "status": "ok",
        "draining": state.draining,
        "ready_workers": len(pool.ready()),
        "workers": [w.snapshot() for w in pool.workers],
        "admission_queue": {"image": state.admission.queue_depth(IMAGE), "video": state.admission.queue_depth(VIDEO)},
        "gpus": [{"index": g.index, "name": g.name, "simulated": state.inventory.simulated,
                  "memory_total_bytes": g.total_bytes, "memory_used_bytes": g.used_bytes}
                 for g in state.inventory.gpus()],
    }


async def healthz(request: Request) -> dict:
    """Router liveness and every worker's state, device and load."""
    return health_document(_state(request))


async def readyz(request: Request) -> JSONResponse:
    """200 when at least one worker is ready and the router is not draining."""
    state = _state(request)
    ready = state.pool.ready()
    if ready and not state.draining:
        return JSONResponse({"status": "ready", "ready_workers": len(ready)})
    if state.draining:
        error: EngineError = ShuttingDown(retry_after_sec=DRAIN_RETRY_AFTER_S)
    else:
        states = ", ".join(f"{w.id} {w.state.value}" for w in state.pool.workers) or "no workers"
        error = NoReadyWorkers(f"No worker is ready ({states}).")
    return error_response(error, request_id_of(request))


async def metrics(request: Request) -> Response:
    """Prometheus metrics: the router's and every ready worker's (label worker)."""
    state = _state(request)

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
