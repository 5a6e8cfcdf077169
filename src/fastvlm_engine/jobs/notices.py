"""Wake-ups when any process queues or finishes a job, so nobody has to poll the store on a timer.

A worker with a free slot waits for "a job may have been queued" and leases at once; a long-poll
(``GET /job/<id>?wait=``) waits for "this job may have finished" and answers at once. Polling
instead costs the poll interval in latency on every job, and store reads that grow with the
number of waiters.

Notices travel as short messages, ``queued`` or ``finished:<job id>``: with Redis the scripts that
queue or finish a job publish them and every process subscribes; with SQLite the process that
made the change sends them as datagrams to the other processes of the host (see jobs.local_bus).
A process tells its own waiters directly. A notice may be spurious, and one may be lost (a
reconnect, a full buffer), so every caller re-reads the store after each wake-up and waits a
bounded time only: a lost notice costs latency, never a result.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager

__all__ = ["FINISHED", "QUEUED", "FinishWatch", "Notices", "finished_message"]

QUEUED = b"queued"
"""The message that a job may have entered the queue."""
FINISHED = b"finished:"
"""The prefix of the message that a job ended: ``finished:<job id>``."""


def finished_message(job_id: str) -> bytes:
    return FINISHED + job_id.encode("ascii")


log = logging.getLogger(__name__)


class Notices:
    """This process's view of job changes in one store: a counter of queued notices, and waiters per job."""

    def __init__(self, driver: Callable[[Notices], Awaitable[None]]) -> None:
        """``driver`` passes other processes' notices to ``heard`` until cancelled; it starts with the
        first wait (a process that never waits never listens)."""
        self._driver = driver
        self._task: asyncio.Task | None = None
        self._queued = 0
        self._queued_waiters: list[asyncio.Future] = []
        self._finished: dict[str, list[asyncio.Future]] = {}
        self._closed = False

    # --- what callers use ---------------------------------------------------------------------

    def queued_mark(self) -> int:
        """Take this before looking at the queue; ``wait_queued(mark)`` then misses nothing queued after it."""
        return self._queued

    async def wait_queued(self, mark: int, timeout: float) -> bool:
        """Until a job may have been queued since ``mark`` (True), or ``timeout`` seconds (False)."""
        if self._queued > mark:
            return True
        future = asyncio.get_running_loop().create_future()
        self._queued_waiters.append(future)
        try:
            self._ensure_driver()
            await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            pass
        finally:
            if future in self._queued_waiters:
                self._queued_waiters.remove(future)
        return self._queued > mark

    @contextmanager
    def watch_finished(self, job_id: str) -> Iterator[FinishWatch]:
        """Watch one job from before the caller reads it: a finish between that read and ``wait`` is not missed.

            with store.notices.watch_finished(job_id) as watch:
                job = await store.get(job_id)
                while not job.status.terminal:
                    await watch.wait(1.0)
                    job = await store.get(job_id)
        """
        watch = FinishWatch(self, job_id)
        try:
            yield watch
        finally:
            watch.disarm()

    # --- what drivers use ---------------------------------------------------------------------

    def heard(self, message: bytes) -> None:
        """A notice from another process: ``QUEUED`` or ``finished_message(job_id)``; anything else is ignored."""
        if message == QUEUED:
            self.saw_queued()
        elif message.startswith(FINISHED):
            self.saw_finished([message[len(FINISHED):].decode("ascii", "replace")])

    def _arm(self, job_id: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._finished.setdefault(job_id, []).append(future)
        self._ensure_driver()
        return future

    def _disarm(self, job_id: str, future: asyncio.Future) -> None:
        waiters = self._finished.get(job_id, [])
        if future in waiters:
            waiters.remove(future)
        if not waiters:
            self._finished.pop(job_id, None)

    def saw_queued(self) -> None:
        """A job may have been queued (a submit, a redelivery)."""
        self._queued += 1
        waiters, self._queued_waiters = self._queued_waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    def saw_finished(self, job_ids: Iterable[str] | None) -> None:
        """These jobs may have finished; None: any of them may have (wake every waiter to re-read)."""
        for job_id in (list(self._finished) if job_ids is None else job_ids):
            for future in self._finished.pop(job_id, []):
                if not future.done():
                    future.set_result(None)

    # --- lifecycle ----------------------------------------------------------------------------

    def _ensure_driver(self) -> None:
        loop = asyncio.get_running_loop()
        if self._closed or (self._task is not None and not self._task.done() and self._task.get_loop() is loop):
            return
        self._task = loop.create_task(self._drive(), name="job-notices")

    async def _drive(self) -> None:
        try:
            await self._driver(self)
        except Exception:  # a bug: waiters are left with their timeouts, the store itself still works
            log.exception("job notices stopped; waiters fall back to re-checking the store on a timer")
        self.saw_queued()
        self.saw_finished(None)
        await asyncio.Event().wait()  # stay "running", so that waiters do not start it again and again

    async def close(self) -> None:
        """Stop the driver and wake everyone (they re-read the store and see it closed)."""
        self._closed = True
        if self._task is not None and self._task.get_loop() is asyncio.get_running_loop():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.saw_queued()
        self.saw_finished(None)


class FinishWatch:
    """One caller's watch on one job (see Notices.watch_finished)."""

    def __init__(self, notices: Notices, job_id: str) -> None:
        self._notices = notices
        self.job_id = job_id
        self._future = notices._arm(job_id)

    async def wait(self, timeout: float) -> bool:
        """Until the job may have finished since the last wait (or the watch began): True; False after
        ``timeout`` seconds without a notice."""
        try:
            await asyncio.wait_for(asyncio.shield(self._future), timeout)
        except TimeoutError:
            return False
        finally:  # armed again before the caller reads the job again
            self.disarm()
            self._future = self._notices._arm(self.job_id)
        return True

    def disarm(self) -> None:
        self._notices._disarm(self.job_id, self._future)
