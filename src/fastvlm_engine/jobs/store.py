"""The job store interface, and opening a backend from FASTVLM_QUEUE_URL.

The router submits, reads and cancels jobs; workers lease, extend, report progress and finish
them; any process may sweep. Delivery is at least once: a job whose lease runs out (its worker
died or hung) is leased again, up to ``max_attempts`` times, and a result is written once.

Every method raises :class:`~fastvlm_engine.errors.QueueUnavailable` when the backend cannot be
reached or written, never a raw sqlite3 or redis exception, and works again once the backend is
back (no restart needed).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .model import Job, JobKind
from .notices import Notices
from .policy import JobPolicy, resolve_state_dir
from .url import parse_queue_url

if TYPE_CHECKING:
    from ..config import Settings
    from ..intake.spool import Spool

__all__ = ["JobStore", "SweepReport", "open_store", "open_store_from_settings"]


@dataclass(frozen=True)
class SweepReport:
    """Job ids one sweep moved; several sweeping processes never report the same move twice."""

    redelivered: tuple[str, ...] = ()
    """Leases that ran out, queued again."""
    exhausted: tuple[str, ...] = ()
    """Leases that ran out on the last attempt: failed with job_attempts_exhausted."""
    expired: tuple[str, ...] = ()
    """Queued past job_max_queued_s."""
    purged: tuple[str, ...] = ()
    """Finished past job_ttl_s: removed with their media."""


class JobStore(Protocol):
    """Jobs and their uploads, shared by the router and the workers of one deployment."""

    notices: Notices
    """Wake-ups when any process queues or finishes a job (see jobs.notices)."""

    def description(self) -> str:
        """The backend and where it is, for logs (never a password)."""
        ...

    async def submit(self, kind: JobKind, options: dict[str, Any], *, source_path: str | None = None,
                     upload: Spool | None = None, upload_content_type: str | None = None,
                     upload_filename: str | None = None, owner: str | None = None,
                     idempotency_key: str | None = None, trace_parent: str | None = None,
                     max_queued: int) -> Job:
        """Store a new queued job, durably before returning; the same owner + idempotency key returns
        the job it made before. Raises QueueFull, MediaTooLarge (Redis cap) or QueueUnavailable."""
        ...

    async def get(self, job_id: str) -> Job | None:
        """The job, or None for an unknown, malformed or purged id."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (its worker learns it from extend); a finished one is returned
        unchanged; None if there is no such job."""
        ...

    async def lease(self, worker_id: str, *, images: int, videos: int, lease_s: float,
                    limit: int | None = None) -> list[Job]:
        """Take up to ``images`` images and ``videos`` videos (at most ``limit`` in all) and mark them
        running for ``worker_id``; no job is ever handed to two leases at once."""
        ...

    async def extend(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        """Extend this worker's leases; returns the ids it must stop (cancelled, finished or re-leased)."""
        ...

    async def open_media(self, job: Job) -> BinaryIO:
        """A reader of the job's uploaded bytes (the caller closes it); MediaNotFound once they are gone."""
        ...

    async def progress(self, job_id: str, worker_id: str, progress: dict[str, Any]) -> None:
        """Record progress of a job this worker runs (ignored otherwise)."""
        ...

    async def succeed(self, job_id: str, worker_id: str, body: bytes) -> bool:
        """Store the result if this worker still runs the job (True); False, changing nothing, if it does
        not: the first finish wins. The same call repeated by the same worker is True again."""
        ...

    async def fail(self, job_id: str, worker_id: str, error: dict[str, Any], *, retryable: bool) -> Job:
        """Record a failure: queued again when retryable with attempts left, else failed. Returns the job
        as it now is (unchanged if this worker no longer runs it); JobNotFound if it is gone."""
        ...

    async def sweep(self, now: float | None = None) -> SweepReport:
        """Redeliver or fail jobs whose lease ran out, expire long-queued jobs, purge finished ones."""
        ...

    async def depth(self) -> dict[str, int]:
        """Queued jobs per kind."""
        ...

    async def counts(self) -> dict[str, int]:
        """Jobs per status (finished ones until their TTL)."""
        ...

    async def ping(self) -> None:
        """Raise QueueUnavailable unless the backend answers."""
        ...

    async def close(self) -> None:
        """Release connections and threads; the store is unusable afterwards."""
        ...


def open_store(url: str, *, state_dir: Path, policy: JobPolicy) -> JobStore:
    """The store a queue URL names (empty: SQLite at ``<state_dir>/jobs.db``). Connects lazily, on first use.

    SQLite keeps uploads under ``<state_dir>/media/``; Redis keeps them in Redis.
    """
    target = parse_queue_url(url)
    if target.backend == "redis":
        from .redis_store import RedisJobStore

        return RedisJobStore(target, policy=policy)
    from .sqlite_store import SqliteJobStore

    return SqliteJobStore(target.path or state_dir / "jobs.db", media_dir=state_dir / "media", policy=policy)


def open_store_from_settings(settings: Settings) -> JobStore:
    """The store the settings' job queue block describes."""
    return open_store(settings.queue_url, state_dir=resolve_state_dir(settings),
                      policy=JobPolicy.from_settings(settings))
