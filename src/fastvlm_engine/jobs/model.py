"""What a job is, and the one table that says how its status may change.

Every status change in either backend goes through :func:`apply_event`; nothing assigns a
status directly. The backends only persist the outcome (SQLite under a write lock, Redis with a
compare-and-set on the status it read), so the rules cannot drift between them.

    queued ──lease──> running ──succeed──> succeeded
      │  ^               │ ├───fail──────> failed
      │  └──redeliver────┘ └───cancel────> cancelled
      ├──cancel──> cancelled
      └──expire──> expired
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "JOB_KINDS",
    "TERMINAL",
    "TRANSITIONS",
    "IllegalTransition",
    "Job",
    "JobEvent",
    "JobKind",
    "JobStatus",
    "apply_event",
    "idempotency_scope",
    "is_job_id",
    "new_job_id",
]

JobKind = Literal["image", "video"]
JOB_KINDS: tuple[JobKind, ...] = ("image", "video")

_ID_BYTES = 24
"""token_urlsafe(24): 192 random bits, 32 URL-safe characters."""
_ID_RE = re.compile(r"[A-Za-z0-9_-]{32,86}")


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        """A finished job never changes again (until its TTL removes it)."""
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED})


class JobEvent(enum.StrEnum):
    LEASE = "lease"
    REDELIVER = "redeliver"
    SUCCEED = "succeed"
    FAIL = "fail"
    CANCEL = "cancel"
    EXPIRE = "expire"


TRANSITIONS: dict[tuple[JobStatus, JobEvent], JobStatus] = {
    (JobStatus.QUEUED, JobEvent.LEASE): JobStatus.RUNNING,
    (JobStatus.QUEUED, JobEvent.CANCEL): JobStatus.CANCELLED,
    (JobStatus.QUEUED, JobEvent.EXPIRE): JobStatus.EXPIRED,
    (JobStatus.RUNNING, JobEvent.REDELIVER): JobStatus.QUEUED,
    (JobStatus.RUNNING, JobEvent.SUCCEED): JobStatus.SUCCEEDED,
    (JobStatus.RUNNING, JobEvent.FAIL): JobStatus.FAILED,
    (JobStatus.RUNNING, JobEvent.CANCEL): JobStatus.CANCELLED,
}
"""(status, event) -> next status. A pair that is missing is an illegal transition."""


class IllegalTransition(ValueError):
    """An event that the job's current status does not allow (a bug in the caller)."""


def apply_event(status: JobStatus, event: JobEvent) -> JobStatus:
    """The status after ``event``; raises IllegalTransition when the table has no such move."""
    try:
        return TRANSITIONS[(JobStatus(status), JobEvent(event))]
    except KeyError:
        raise IllegalTransition(f"a {status} job cannot take the event {event!r}") from None


def new_job_id() -> str:
    """An unguessable id: the id alone grants access to a job when API keys are off."""
    return secrets.token_urlsafe(_ID_BYTES)


def is_job_id(value: object) -> bool:
    """Could this be an id we issued? Anything else is answered as not found, without a lookup."""
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def idempotency_scope(owner: str | None, key: str) -> str:
    """One fixed-size token per (owner, Idempotency-Key): client text never becomes a key name."""
    return hashlib.sha256(json.dumps([owner, key]).encode()).hexdigest()


@dataclass(frozen=True)
class Job:
    """One submitted request and everything known about its execution.

    Times are unix seconds. ``queued_at`` is when the job last entered the queue (submit or
    redelivery): queue order, video aging and ``job_max_queued_s`` are measured from it.
    ``result`` holds the exact response body bytes the sync endpoint would have sent.
    """

    job_id: str
    kind: JobKind
    status: JobStatus
    created_at: float
    queued_at: float
    options: dict[str, Any]
    source: dict[str, Any]
    owner: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: bytes | None = None
    error: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    idempotency_key: str | None = None
    trace_parent: str | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None

    @property
    def has_upload(self) -> bool:
        """The media travelled with the request (stored by the job store), rather than as a path."""
        return "upload" in self.source
