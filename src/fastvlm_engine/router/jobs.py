"""Queue mode on the router: accept a request as a job, and the job API.

``FASTVLM_MODE=queue`` (or ``Prefer: respond-async`` on one request in sync mode) turns a media
request into a job: it is read and validated exactly as in sync mode (a bad request still gets its
4xx at once), stored durably with its upload, and answered ``202 Accepted`` with its id and
``Location`` — workers pull it when they have room. ``GET /job/{id}`` reports it (``?wait=S``
long-polls until it ends), ``DELETE /job/{id}`` cancels it. A job is visible only to the API key
(or, without keys, the address) that created it: anyone else gets 404, as for an unknown id.

``result`` is the exact response body the sync endpoint would have sent, spliced into the job
document byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from ..errors import InvalidRequest, InvalidTags, JobNotFound, QueueFull
from ..headers import TAGS_HEADER
from ..intake.checks import check_options
from ..intake.request import body_rules, intake_limits, read_media_request
from ..intake.submission import MediaKind, MediaRequest
from ..media import open_media
from ..observability import tracing
from .admission import IMAGE, VIDEO

if TYPE_CHECKING:
    from ..jobs import Job
    from .state import RouterState

__all__ = ["DrainRate", "cancel_job", "get_job", "job_document", "submit_job", "sweep_forever", "wants_job"]

log = logging.getLogger(__name__)

ENDPOINTS: dict[str, str] = {"image": IMAGE, "video": VIDEO}
RECHECK_S = 1.0
"""A long-poll re-reads its job at least this often, should a notice that it finished be lost."""
IDEMPOTENCY_HEADER = "idempotency-key"


def wants_job(request: Request, mode: str) -> bool:
    """Queue mode, or a client asking for it with ``Prefer: respond-async`` (RFC 7240)."""
    if mode == "queue":
        return True
    prefer = ",".join(request.headers.getlist("prefer")).lower()
    return any(token.strip().split("=")[0] == "respond-async" for token in prefer.replace(";", ",").split(","))


def owner_of(request: Request) -> str:
    """Whose job it is: the API key's id, or (without keys) the client's address."""
    state = request.scope.get("state", {})
    if state.get("api_key_id"):
        return "key:" + state["api_key_id"]
    return "ip:" + (state.get("client_ip") or (request.client.host if request.client else "unknown"))


class DrainRate:
    """Jobs finished per second, measured from the store's counts (an EWMA over sweeps)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.rate: float | None = None
        self._last: tuple[float, int] | None = None

    def observe(self, finished_total: int, now: float) -> None:
        if self._last is not None and now > self._last[0]:
            sample = max(0, finished_total - self._last[1]) / (now - self._last[0])
            self.rate = sample if self.rate is None else self.rate + self.alpha * (sample - self.rate)
        self._last = (now, finished_total)

    def retry_after(self, depth: int, low: float, high: float) -> float:
        """How long until the queue has room again: its depth over the measured drain rate."""
        if not self.rate:
            return high
        return round(min(high, max(low, depth / self.rate)), 3)


async def submit_job(state: RouterState, request: Request, kind: MediaKind) -> Response:
    """Validate like sync mode, store the job durably, answer 202."""
    settings = state.settings
    if request.headers.get(TAGS_HEADER) is not None:  # refused, not ignored: the job could run anywhere
        raise InvalidTags(f"A queued job cannot require host tags ({TAGS_HEADER}): any worker that pulls from the "
                          "job store may run it. Send the request synchronously to route it by tags.")
    with await read_media_request(request, kind, intake_limits(settings, kind), body_rules(settings)) as media:
        check_options(kind, media.options, settings)
        if media.path is not None and settings.media_roots:  # the same host's roots: check it now
            await asyncio.to_thread(_check_path, media, settings)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is not None and not 1 <= len(key) <= 255:
            raise InvalidRequest("Idempotency-Key must be 1 to 255 characters.", field="Idempotency-Key")
        trace: dict[str, str] = {}
        tracing.inject(trace)
        with tracing.span("job.submit", **{"fastvlm.kind": kind}):
            try:
                job = await state.jobs.submit(
                    kind, media.options.model_dump(exclude_defaults=True), source_path=media.path,
                    upload=media.upload, upload_content_type=media.content_type, upload_filename=media.filename,
                    owner=owner_of(request), idempotency_key=key, trace_parent=trace.get("traceparent"),
                    max_queued=settings.queue_max_jobs)
            except QueueFull as exc:
                depth = sum((await state.jobs.depth()).values())
                low, high = _bounds(settings, kind)
                exc.retry_after_sec = state.drain_rate.retry_after(depth, low, high)
                raise
    log.info("job %s queued (%s)", job.job_id, kind, extra={"job_id": job.job_id})
    state.metrics.jobs_submitted.labels(ENDPOINTS[kind]).inc()
    location = f"/job/{job.job_id}"
    body = {"job_id": job.job_id, "status": job.status.value, "status_url": location}
    return Response(json.dumps(body), status_code=202, media_type="application/json",
                    headers={"Location": location, "Preference-Applied": "respond-async"})


def _check_path(media: MediaRequest, settings: Any) -> None:
    limit = settings.media_limit(media.kind)
    with open_media(media.path or "", settings.media_roots, limit):
        pass


def _bounds(settings: Any, kind: str) -> tuple[float, float]:
    if kind == "video":
        return settings.retry_after_video_min_s, settings.retry_after_video_max_s
    return settings.retry_after_image_min_s, settings.retry_after_image_max_s


def job_document(job: Job) -> bytes:
    """The job as JSON, its ``result`` spliced in byte for byte (the sync response body)."""
    document = {
        "job_id": job.job_id, "status": job.status.value, "endpoint": ENDPOINTS[job.kind],
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "attempts": job.attempts, "result": None, "error": job.error, "progress": job.progress,
    }
    text = json.dumps(document, separators=(",", ":"))
    if job.result is None:
        return text.encode()
    head, _, tail = text.partition('"result":null')
    return head.encode() + b'"result":' + job.result + tail.encode()


async def _visible(state: RouterState, request: Request, job_id: str) -> Job:
    job = await state.jobs.get(job_id)
    if job is None or job.owner != owner_of(request):
        raise JobNotFound(f"No job {job_id[:64]!r} (it never existed, expired, or belongs to someone else).")
    return job


async def get_job(job_id: str, request: Request) -> Response:
    """A job's status, progress and (once it ends) result; ``?wait=S`` long-polls until it ends."""
    state: RouterState = request.app.state.router
    wait = _wait_seconds(request.query_params.get("wait"), state.settings.job_wait_max_s)
    deadline = time.monotonic() + wait
    with state.jobs.notices.watch_finished(job_id) as watch:
        job = await _visible(state, request, job_id)
        while not job.status.terminal and time.monotonic() < deadline and not state.draining:
            await watch.wait(min(RECHECK_S, max(0.0, deadline - time.monotonic())))
            job = await _visible(state, request, job_id)
    headers = {} if job.status.terminal else {"Retry-After": "1"}
    return Response(job_document(job), media_type="application/json", headers=headers)


async def cancel_job(job_id: str, request: Request) -> Response:
    """Cancel a queued job, or a running one (its worker stops it at its next check)."""
    state: RouterState = request.app.state.router
    await _visible(state, request, job_id)
    job = await state.jobs.cancel(job_id)
    if job is None:
        raise JobNotFound()
    return Response(job_document(job), media_type="application/json")


def _wait_seconds(value: str | None, cap: float) -> float:
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequest("wait must be a number of seconds.", field="wait") from None
    if not seconds >= 0:  # also NaN
        raise InvalidRequest("wait must be a number of seconds >= 0.", field="wait")
    return min(seconds, cap)


async def sweep_forever(state: RouterState, interval_s: float = 1.0) -> None:
    """Redeliver jobs whose worker died, expire and purge old ones, and refresh the queue's gauges."""
    while True:
        try:
            report = await state.jobs.sweep()
            for job_id in report.redelivered:
                log.warning("job %s redelivered: its worker's lease ran out", job_id, extra={"job_id": job_id})
            for job_id in report.exhausted:
                log.error("job %s failed: attempts exhausted", job_id, extra={"job_id": job_id})
            counts = await state.jobs.counts()
            depth = await state.jobs.depth()
            state.job_counts, state.job_depth = counts, depth
            state.purged_total += len(report.purged)  # finished once, then removed: still drained
            finished = sum(counts.get(status, 0) for status in ("succeeded", "failed", "cancelled", "expired"))
            state.drain_rate.observe(finished + state.purged_total, time.monotonic())
        except Exception as exc:  # the store is down: keep trying, every request says so meanwhile
            log.warning("job store sweep failed: %s", exc)
        await asyncio.sleep(interval_s)
