"""The router's probes: liveness with every worker's state, readiness, and the metrics scrape."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..cluster.endpoint import WorkerEndpoint, WorkerState
from ..errors import EngineError, NoReadyWorkers, ShuttingDown
from ..observability.metrics import CONTENT_TYPE, render
from ..web import error_response, request_id_of
from .admission import IMAGE, VIDEO
from .media import DRAIN_RETRY_AFTER_S
from .state import RouterState

__all__ = ["health_document", "healthz", "hosts_snapshot", "metrics", "readyz", "worker_snapshot"]


def _state(request: Request) -> RouterState:
    return request.app.state.router


def worker_snapshot(state: RouterState, endpoint: WorkerEndpoint) -> dict:
    """One worker as /healthz shows it; this host's own workers add their process details."""
    supervisor = state.supervisor
    local = supervisor.by_id(endpoint.id) if supervisor is not None and not endpoint.remote else None
    return local.snapshot() if local is not None else endpoint.snapshot()


def hosts_snapshot(state: RouterState) -> list[dict]:
    """Workers grouped by host, each host with its tags and whether an admin drained it."""
    drained = state.endpoints.remote.drained_hosts() if state.endpoints.remote is not None else set()
    hosts = []
    for host, endpoints in state.endpoints.hosts().items():
        hosts.append({"host": host, "tags": dict(endpoints[0].tags), "remote": endpoints[0].remote,
                      "drained": host in drained,
                      "ready_workers": sum(e.state is WorkerState.READY for e in endpoints),
                      "workers": [worker_snapshot(state, e) for e in endpoints]})
    return hosts


def health_document(state: RouterState) -> dict:
    """What /healthz answers (the console's status view starts from the same document)."""
    endpoints = state.endpoints
    hosts = hosts_snapshot(state)
    return {
        "status": "ok",
        "mode": state.settings.mode,
        "draining": state.draining,
        "ready_workers": len(endpoints.ready()),
        "workers": [worker for host in hosts for worker in host["workers"]],
        "hosts": hosts,
        "registry": state.endpoints.remote.status() if state.endpoints.remote is not None else None,
        "admission_queue": {"image": state.admission.queue_depth(IMAGE), "video": state.admission.queue_depth(VIDEO)},
        "jobs": {"by_status": dict(state.job_counts), "queued_by_endpoint": dict(state.job_depth)},
        "gpus": [{"index": g.index, "name": g.name, "simulated": state.inventory.simulated,
                  "memory_total_bytes": g.total_bytes, "memory_used_bytes": g.used_bytes}
                 for g in state.inventory.gpus()],
    }


async def healthz(request: Request) -> dict:
    """Router liveness and every worker's state, device and load, grouped by host."""
    return health_document(_state(request))


async def readyz(request: Request) -> JSONResponse:
    """200 when at least one worker is ready and the router is not draining."""
    state = _state(request)
    ready = state.endpoints.ready()
    if (ready or state.settings.mode == "queue") and not state.draining:
        return JSONResponse({"status": "ready", "ready_workers": len(ready)})
    if state.draining:
        error: EngineError = ShuttingDown(retry_after_sec=DRAIN_RETRY_AFTER_S)
    else:
        states = ", ".join(f"{w.id} {w.state.value}" for w in state.endpoints.all()) or "no workers"
        error = NoReadyWorkers(f"No worker is ready ({states}).")
    return error_response(error, request_id_of(request))


async def metrics(request: Request) -> Response:
    """Prometheus metrics: the router's and every ready worker's (label worker)."""
    state = _state(request)

    async def scrape(worker) -> tuple[str, str | None]:
        try:
            answer = await state.upstream.request("GET", worker.url + "/metrics", timeout_s=2.0,
                                                  headers=worker.auth_headers("GET", "/metrics"))
            return worker.id, answer.body.decode() if answer.status == 200 else None
        except Exception:
            return worker.id, None

    results = await asyncio.gather(*(scrape(w) for w in state.endpoints.ready()))
    texts = {worker_id: text for worker_id, text in results if text is not None}
    return Response(render(state.registry, texts), media_type=CONTENT_TYPE)
