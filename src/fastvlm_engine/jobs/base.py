"""What both backends share: the operations that are one read-decide-write of a single job.

A backend supplies ``_insert`` (store a new job, atomically with its queue-full and idempotency
checks) and ``_update`` (read a job, ask a :mod:`.rules` function for its next version, write it
only if the job did not change meanwhile). The rest of the interface is written once, here,
including the notices of every change this process makes: to its own waiters, and (``_announce``,
for a backend whose writes do not publish by themselves) to the other processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ..errors import JobNotFound
from . import rules
from .codec import to_record
from .model import TERMINAL, Job, JobKind, JobStatus, is_job_id
from .notices import QUEUED, Notices, finished_message
from .policy import JobPolicy

if TYPE_CHECKING:
    from ..intake.spool import Spool
    from .store import SweepReport

__all__ = ["StoreBase"]


class StoreBase:
    """The backend-independent half of a JobStore; ``async with store:`` closes it."""

    policy: JobPolicy
    notices: Notices

    async def _insert(self, job: Job, upload: Spool | None, max_queued: int) -> Job:
        """Store ``job`` (and its upload); the job an idempotency key already made instead; QueueFull."""
        raise NotImplementedError

    async def _update(self, job_id: str, decide: Callable[[Job], Job | None]) -> tuple[Job | None, Job | None]:
        """(job as read or None if there is none, job as written or None if ``decide`` left it alone)."""
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def submit(self, kind: JobKind, options: dict[str, Any], *, source_path: str | None = None,
                     upload: Spool | None = None, upload_content_type: str | None = None,
                     upload_filename: str | None = None, owner: str | None = None,
                     idempotency_key: str | None = None, trace_parent: str | None = None,
                     max_queued: int) -> Job:
        job = rules.new_job(kind, options, source_path=source_path,
                            upload_size=upload.size if upload is not None else None,
                            upload_content_type=upload_content_type, upload_filename=upload_filename,
                            now=time.time(), owner=owner, idempotency_key=idempotency_key,
                            trace_parent=trace_parent)
        to_record(job)  # options must be JSON before any byte is stored
        stored = await self._insert(job, upload, max_queued)
        if stored.job_id == job.job_id:  # not an idempotent repeat
            self._queued()
        return stored

    def _announce(self, message: bytes) -> None:
        """Tell the other processes (a backend whose writes publish by themselves does nothing here)."""

    def _queued(self) -> None:
        self.notices.saw_queued()
        self._announce(QUEUED)

    def _finished(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            self.notices.saw_finished([job_id])
            self._announce(finished_message(job_id))

    def _noticed(self, new: Job | None) -> Job | None:
        """Notices for a change this process made: to its own waiters and to the other processes."""
        if new is not None and new.status in TERMINAL:
            self._finished([new.job_id])
        elif new is not None and new.status is JobStatus.QUEUED:
            self._queued()
        return new

    def _noticed_sweep(self, report: SweepReport) -> SweepReport:
        if report.redelivered:
            self._queued()
        self._finished([*report.exhausted, *report.expired])  # purged jobs had ended already
        return report

    async def cancel(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        old, new = await self._update(job_id, lambda job: rules.cancelled(job, now=time.time()))
        return self._noticed(new) or old

    async def progress(self, job_id: str, worker_id: str, progress: dict[str, Any]) -> None:
        if is_job_id(job_id):
            await self._update(job_id, lambda job: rules.with_progress(job, worker_id, progress))

    async def succeed(self, job_id: str, worker_id: str, body: bytes) -> bool:
        """True when this worker's body is the stored result. Repeating the same call is True again
        (so a reply lost after the write, and retried, still reads as stored); any other later
        finish is False and changes nothing."""
        if not is_job_id(job_id):
            return False
        old, new = await self._update(job_id, lambda job: rules.succeeded(job, worker_id, body, now=time.time()))
        if self._noticed(new) is not None:
            return True
        return (old is not None and old.status is JobStatus.SUCCEEDED and old.lease_owner == worker_id
                and old.result == bytes(body))

    async def fail(self, job_id: str, worker_id: str, error: dict[str, Any], *, retryable: bool) -> Job:
        if not is_job_id(job_id):
            raise JobNotFound()
        old, new = await self._update(job_id, lambda job: rules.failed(
            job, worker_id, error, retryable=retryable, now=time.time(), max_attempts=self.policy.max_attempts))
        if old is None:
            raise JobNotFound()
        return self._noticed(new) or old

    async def __aenter__(self) -> StoreBase:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
