"""What each store operation does to a job, as pure functions from the job read to the job to write.

Both backends read a job, ask one of these functions for its next version and write that
version only if the job is still the one they read (SQLite: inside BEGIN IMMEDIATE; Redis: a
compare-and-set on status, lease owner and lease expiry). A function returns None when the
operation must leave the job alone: it is finished, or it is not this worker's to touch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import JobAttemptsExhausted, JobExpired
from .model import JOB_KINDS, Job, JobEvent, JobKind, JobStatus, apply_event, new_job_id

__all__ = [
    "cancelled",
    "check_lease",
    "extended",
    "failed",
    "lease_ended",
    "leased",
    "new_job",
    "purgeable",
    "queue_expired",
    "runs_it",
    "succeeded",
    "visible",
    "with_progress",
]


def new_job(kind: JobKind, options: dict[str, Any], *, source_path: str | None, upload_size: int | None,
            upload_content_type: str | None, upload_filename: str | None, now: float, owner: str | None,
            idempotency_key: str | None, trace_parent: str | None) -> Job:
    """A queued job with a fresh id; exactly one of a media path and an upload (given by its size)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"a job's kind is 'image' or 'video', got {kind!r}")
    if (source_path is None) == (upload_size is None):
        raise ValueError("a job needs exactly one of source_path and upload")
    source: dict[str, Any]
    if source_path is not None:
        source = {"path": str(source_path)}
    else:
        source = {"upload": {"content_type": upload_content_type or "application/octet-stream",
                             "filename": upload_filename, "size": upload_size}}
    return Job(job_id=new_job_id(), kind=kind, status=JobStatus.QUEUED, created_at=now, queued_at=now,
               options=dict(options), source=source, owner=owner, idempotency_key=idempotency_key,
               trace_parent=trace_parent)


def check_lease(worker_id: str, lease_s: float) -> None:
    """A lease needs a worker to own it and a positive length; raises ValueError otherwise."""
    if not isinstance(worker_id, str) or not worker_id:
        raise ValueError("a lease needs a non-empty worker id")
    if not lease_s > 0:
        raise ValueError(f"a lease must last a positive number of seconds, got {lease_s}")


def runs_it(job: Job, worker_id: str) -> bool:
    """Is ``worker_id`` the worker currently entitled to run (and finish) this job?"""
    return job.status is JobStatus.RUNNING and job.lease_owner == worker_id


def leased(job: Job, worker_id: str, *, now: float, lease_s: float) -> Job:
    return replace(job, status=apply_event(job.status, JobEvent.LEASE), attempts=job.attempts + 1,
                   started_at=job.started_at if job.started_at is not None else now,
                   lease_owner=worker_id, lease_expires_at=now + lease_s)


def extended(job: Job, worker_id: str, *, now: float, lease_s: float) -> Job | None:
    """A longer lease for the worker running it; None tells that worker to stop."""
    if not runs_it(job, worker_id):
        return None
    return replace(job, lease_expires_at=now + lease_s)


def with_progress(job: Job, worker_id: str, progress: dict[str, Any]) -> Job | None:
    return replace(job, progress=dict(progress)) if runs_it(job, worker_id) else None


def succeeded(job: Job, worker_id: str, body: bytes, *, now: float) -> Job | None:
    """Write-once: only the current lease holder of a running job may store the result."""
    if not runs_it(job, worker_id):
        return None
    return replace(job, status=apply_event(job.status, JobEvent.SUCCEED), result=bytes(body), error=None,
                   finished_at=now, lease_expires_at=None)


def failed(job: Job, worker_id: str, error: dict[str, Any], *, retryable: bool, now: float,
           max_attempts: int) -> Job | None:
    """A retryable failure with attempts left goes back to the queue; any other ends the job."""
    if not runs_it(job, worker_id):
        return None
    if retryable and job.attempts < max_attempts:
        return _requeued(job, now=now)
    return replace(job, status=apply_event(job.status, JobEvent.FAIL), error=dict(error), finished_at=now,
                   lease_expires_at=None)


def lease_ended(job: Job, *, now: float, max_attempts: int) -> Job | None:
    """A lease that ran out (its worker died or hung): deliver again, or fail after the last attempt."""
    if job.status is not JobStatus.RUNNING or job.lease_expires_at is None or job.lease_expires_at > now:
        return None
    if job.attempts < max_attempts:
        return _requeued(job, now=now)
    error = JobAttemptsExhausted(f"The job was started {job.attempts} times and its worker stopped before "
                                 "finishing each time.", attempts=job.attempts).to_body()["error"]
    return replace(job, status=apply_event(job.status, JobEvent.FAIL), error=error, finished_at=now,
                   lease_expires_at=None)


def cancelled(job: Job, *, now: float) -> Job | None:
    if job.status.terminal:
        return None
    return replace(job, status=apply_event(job.status, JobEvent.CANCEL), finished_at=now, lease_expires_at=None)


def queue_expired(job: Job, *, now: float, max_queued_s: float) -> Job | None:
    if job.status is not JobStatus.QUEUED or now - job.queued_at < max_queued_s:
        return None
    error = JobExpired(f"The job waited in the queue for more than {max_queued_s:g} s and was not run.").to_body()
    return replace(job, status=apply_event(job.status, JobEvent.EXPIRE), error=error["error"], finished_at=now)


def purgeable(job: Job, *, now: float, ttl_s: float) -> bool:
    return job.finished_at is not None and now - job.finished_at >= ttl_s


def visible(job: Job, *, now: float, ttl_s: float) -> bool:
    """A finished job is readable for ttl_s, even where the sweep has not removed it yet."""
    return not purgeable(job, now=now, ttl_s=ttl_s)


def _requeued(job: Job, *, now: float) -> Job:
    return replace(job, status=apply_event(job.status, JobEvent.REDELIVER), queued_at=now, lease_owner=None,
                   lease_expires_at=None, progress=None, error=None)
