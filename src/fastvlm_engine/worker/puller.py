"""Queue mode on a worker: lease jobs while it has free slots, run them, write their results.

Each worker leases as many queued jobs as it has free slots (images first; a video that has
waited long enough goes before them, see jobs.ordering), so pulled jobs share the engine's steps
like concurrent requests do. It leases again the moment a slot frees or the store's notices say
a job was queued (see jobs.notices), so a job starts within milliseconds when a slot is free.

While a job runs its lease is extended every third of the lease time; if the worker dies, the
lease runs out and the job is delivered again (at least once, up to ``job_max_attempts``). Every
extension also tells the worker which of its jobs were cancelled: those are stopped. The result
written is the exact body the sync endpoint would have sent, and the first result written wins.

The execution span is linked to the submit span, so a job's trace joins the request that made it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, BinaryIO

from fastapi.responses import JSONResponse
from opentelemetry import trace
from opentelemetry.trace import Link
from pydantic import ValidationError

from ..errors import EngineError, InferenceFailed, InvalidRequest, QueueUnavailable
from ..intake.submission import OPTIONS, MediaRequest
from ..observability import tracing
from ..observability.logs import job_id_var

if TYPE_CHECKING:
    from ..jobs import Job, JobStore
    from .service import Reservation, WorkerService

__all__ = ["JobPuller", "StoredUpload"]

log = logging.getLogger(__name__)

RECHECK_S = 1.0
"""With free slots and no notice, a worker looks at the queue at least this often (a notice may be lost;
it also sweeps from here)."""


class StoredUpload:
    """A job's uploaded bytes as a MediaRequest upload: read from the job store on demand."""

    def __init__(self, store: JobStore, job: Job) -> None:
        self._store = store
        self._job = job
        self._loop = asyncio.get_running_loop()

    def open(self) -> BinaryIO:
        # Called from a worker thread (the service opens uploads off the event loop).
        return asyncio.run_coroutine_threadsafe(self._store.open_media(self._job), self._loop).result()

    def read_bytes(self) -> bytes:
        with self.open() as reader:
            return reader.read()

    def close(self) -> None:
        """The store keeps the bytes until the job ends; nothing to release here."""


class JobPuller:
    """The lease loop of one worker process."""

    def __init__(self, service: WorkerService, store: JobStore, *, worker_id: str, lease_s: float,
                 sweep_every_s: float = 5.0) -> None:
        self.service = service
        self.store = store
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.sweep_every_s = sweep_every_s
        self._running: dict[str, asyncio.Task] = {}
        self._stopping = False
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Lease and run jobs until stopped; extend leases alongside."""
        extender = asyncio.get_running_loop().create_task(self._extend_forever(), name="job-leases")
        notices = self.store.notices
        last_sweep = 0.0
        try:
            while not self._stopping:
                leased = 0
                self._wake.clear()
                mark = notices.queued_mark()
                if self.service.ready:
                    try:
                        leased = await self._lease_what_fits()
                        if time.monotonic() - last_sweep > self.sweep_every_s:
                            last_sweep = time.monotonic()
                            await self.store.sweep()  # redeliveries also happen when no router sweeps
                    except QueueUnavailable as exc:
                        log.warning("job store unavailable: %s", exc)
                        leased = 0
                if not leased:
                    await self._idle(mark)
        finally:
            extender.cancel()
            await asyncio.gather(extender, return_exceptions=True)

    async def _idle(self, mark: int) -> None:
        """Until a slot frees, or (with a slot free) a job may have been queued since ``mark``; RECHECK_S at most."""
        woken = asyncio.ensure_future(self._wake.wait())
        waits = {woken}
        if self._free() > 0:
            waits.add(asyncio.ensure_future(self.store.notices.wait_queued(mark, RECHECK_S)))
        try:
            await asyncio.wait(waits, timeout=RECHECK_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    def _free(self) -> int:
        return self.service.slots() - self.service.in_flight if self.service.ready else 0

    async def stop(self) -> None:
        """Take no more jobs; running ones are cancelled (their leases run out and they are redelivered)."""
        self._stopping = True
        self._wake.set()
        for task in list(self._running.values()):
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    async def _lease_what_fits(self) -> int:
        service = self.service
        free = self._free()
        if free <= 0:
            return 0
        video_free = min(service.settings.max_video_concurrent, service.slots()) - service.video_in_flight
        jobs = await self.store.lease(self.worker_id, images=free, videos=max(0, min(free, video_free)),
                                      lease_s=self.lease_s, limit=free)
        for job in jobs:
            slot = service.reserve(job.kind)  # cannot fail: we leased no more than was free
            self._running[job.job_id] = asyncio.get_running_loop().create_task(self._execute(job, slot),
                                                                               name=f"job-{job.job_id[:8]}")
        return len(jobs)

    async def _extend_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            if not self._running:
                continue
            try:
                lost = await self.store.extend(self.worker_id, list(self._running), self.lease_s)
            except QueueUnavailable as exc:
                log.warning("could not extend job leases: %s", exc)
                continue
            for job_id in lost:
                task = self._running.get(job_id)
                if task is not None:
                    log.info("job %s stopped: cancelled or re-leased", job_id, extra={"job_id": job_id})
                    task.cancel()

    async def _execute(self, job: Job, slot: Reservation) -> None:
        metrics = self.service.metrics
        if metrics is not None:
            metrics.job_queue_wait.labels(job.kind).observe(max(0.0, time.time() - job.queued_at))
            if job.attempts > 1:
                metrics.job_redeliveries.labels(job.kind).inc()
        outcome = "failed"
        job_id_var.set(job.job_id)  # this task's context: every line logged for the job carries it
        try:
            with _job_span(job):
                media = self._media_request(job)
                try:
                    body = await self._run(job, media)
                finally:
                    media.close()
            if await self.store.succeed(job.job_id, self.worker_id, body):
                outcome = "succeeded"
                log.info("job %s succeeded", job.job_id, extra={"job_id": job.job_id})
            else:
                outcome = "superseded"
        except asyncio.CancelledError:
            outcome = "stopped"
        except EngineError as exc:
            await self._fail(job, exc)
        except Exception as exc:  # a bug: the job fails with a clean error, the worker keeps pulling
            log.exception("job %s crashed", job.job_id, extra={"job_id": job.job_id})
            await self._fail(job, InferenceFailed(f"The job failed ({type(exc).__name__})."))
        finally:
            slot.release(succeeded=outcome == "succeeded")
            self._running.pop(job.job_id, None)
            self._wake.set()
            if metrics is not None:
                metrics.jobs_finished.labels(job.kind, outcome).inc()

    async def _fail(self, job: Job, exc: EngineError) -> None:
        log.info("job %s failed: %s", job.job_id, exc.code, extra={"job_id": job.job_id})
        try:
            await self.store.fail(job.job_id, self.worker_id, exc.to_body()["error"], retryable=exc.retryable)
        except EngineError as error:
            log.warning("could not record the failure of job %s: %s", job.job_id, error)

    def _media_request(self, job: Job) -> MediaRequest:
        try:
            options = OPTIONS[job.kind].model_validate(job.options)
        except ValidationError as exc:  # written by a router of another version: fail the job, clearly
            raise InvalidRequest(f"The job's options are not valid here: {exc.errors()[0]['msg']}") from None
        upload = job.source.get("upload")
        return MediaRequest(kind=job.kind, options=options, path=job.source.get("path"),
                            upload=StoredUpload(self.store, job) if upload is not None else None,
                            content_type=(upload or {}).get("content_type"), filename=(upload or {}).get("filename"))

    async def _run(self, job: Job, media: MediaRequest) -> bytes:
        service = self.service
        deadline = time.monotonic() + service.settings.inference_timeout_s
        if job.kind == "image":
            result: Any = await service.predict_image(media, deadline=deadline)
        else:
            loop = asyncio.get_running_loop()

            def on_stage(stage: str) -> None:
                loop.create_task(self._progress(job, {"stage": stage}))

            result = await service.summarize_video(media, deadline=deadline, on_stage=on_stage)
        return JSONResponse(result.model_dump()).body  # the very bytes the sync endpoint sends

    async def _progress(self, job: Job, progress: dict[str, Any]) -> None:
        try:
            await self.store.progress(job.job_id, self.worker_id, progress)
        except EngineError as exc:
            log.debug("progress of job %s not recorded: %s", job.job_id, exc)


def _job_span(job: Job):
    """The execution span, linked to the span that submitted the job (another process, maybe earlier)."""
    links = []
    if job.trace_parent:
        context = tracing.extract({"traceparent": job.trace_parent})
        span_context = trace.get_current_span(context).get_span_context()
        if span_context.is_valid:
            links.append(Link(span_context))
    return tracing.tracer.start_as_current_span("job.execute", links=links, kind=trace.SpanKind.CONSUMER,
                                                attributes={"fastvlm.job_id": job.job_id, "fastvlm.kind": job.kind,
                                                            "fastvlm.attempt": job.attempts})
