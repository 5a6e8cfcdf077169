"""The embedded job store: one SQLite file in WAL mode, shared by the router and workers of one host.

Durability: a job is committed with ``synchronous=FULL`` (the WAL is fsynced at commit) after its
upload was written to ``<media_dir>/<job_id>`` and fsynced, file and folder, so a 202 survives a
crash or power loss. Every read-modify-write runs inside ``BEGIN IMMEDIATE``, which takes the
database's write lock before reading: two processes never decide on the same job at once, and
waiting for the lock is bounded by the busy timeout (``timeout_s``) and retried at sub-millisecond
intervals (see ``_begin_immediate``).

Each store has one thread that owns its connection; the async methods hand work to it, so the
event loop never blocks on disk. A failed connection is dropped and opened again on the next
call, so the store recovers by itself once the file is writable again.

Notices (see :mod:`.notices`) go between the processes sharing the file as datagrams over Unix
sockets in the folder ``<database>.notices`` beside it (see :mod:`.local_bus`): nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from ..errors import MediaNotFound, QueueFull, QueueUnavailable
from . import rules
from .base import StoreBase
from .codec import FIELDS, from_record, to_record
from .local_bus import LocalBus
from .model import JOB_KINDS, TERMINAL, Job, JobStatus, idempotency_scope, is_job_id
from .notices import Notices
from .ordering import plan_lease
from .policy import JobPolicy
from .store import SweepReport

if TYPE_CHECKING:
    from ..intake.spool import Spool

__all__ = ["SqliteJobStore"]

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
SWEEP_BATCH = 500
"""Most jobs one sweep moves per category, so the write lock is held briefly; the next sweep goes on."""
ORPHAN_GRACE_S = 600.0
"""An upload file without a live job is deleted once it is this old (a submit between writing the file
and committing the row is never that slow)."""

_COLUMN_TYPES = {"attempts": "INTEGER NOT NULL", "result": "BLOB", "created_at": "REAL NOT NULL",
                 "queued_at": "REAL NOT NULL", "started_at": "REAL", "finished_at": "REAL",
                 "lease_expires_at": "REAL", "job_id": "TEXT PRIMARY KEY", "kind": "TEXT NOT NULL",
                 "status": "TEXT NOT NULL", "options": "TEXT NOT NULL", "source": "TEXT NOT NULL"}
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS jobs ("
    + ", ".join(f"{name} {_COLUMN_TYPES.get(name, 'TEXT')}" for name in FIELDS)
    + ", idem_scope TEXT)",
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs (idem_scope) WHERE idem_scope IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (kind, queued_at) WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS jobs_leases ON jobs (lease_expires_at) WHERE status = 'running'",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL",
]
_UPSERT = (f"INSERT INTO jobs ({', '.join(FIELDS)}, idem_scope) VALUES ({', '.join('?' * len(FIELDS))}, ?) "
           "ON CONFLICT (job_id) DO UPDATE SET "
           + ", ".join(f"{name} = excluded.{name}" for name in (*FIELDS, "idem_scope") if name != "job_id"))
_TERMINAL_SQL = ", ".join(f"'{status}'" for status in sorted(TERMINAL))


class SqliteJobStore(StoreBase):
    """Jobs in one SQLite file, uploads as files beside it."""

    def __init__(self, path: Path, *, media_dir: Path, policy: JobPolicy) -> None:
        self.path = Path(os.path.abspath(path))
        self.media_dir = Path(os.path.abspath(media_dir))
        self.policy = policy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobs-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._bus = LocalBus(self.path.with_name(self.path.name + ".notices"))
        self.notices = Notices(self._listen)

    def description(self) -> str:
        return f"sqlite at {self.path} (uploads in {self.media_dir})"

    # --- the thread that owns the connection ----------------------------------------------------

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise RuntimeError("the job store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._guarded, work, args)

    def _guarded(self, work: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return work(self._connection(), *args)
        except (sqlite3.Error, OSError) as exc:
            self._drop_connection()
            raise QueueUnavailable("The job queue (sqlite) cannot be read or written right now.") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, timeout=self.policy.timeout_s, isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                with _write(conn):
                    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                        for statement in _SCHEMA:
                            conn.execute(statement)
                        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    # --- reading and writing rows ---------------------------------------------------------------

    def _load(self, conn: sqlite3.Connection, job_id: str, now: float) -> Job | None:
        row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = from_record(dict(row))
        return job if rules.visible(job, now=now, ttl_s=self.policy.ttl_s) else None

    def _save(self, conn: sqlite3.Connection, job: Job) -> None:
        scope = idempotency_scope(job.owner, job.idempotency_key) if job.idempotency_key is not None else None
        conn.execute(_UPSERT, (*to_record(job).values(), scope))

    def _change(self, conn: sqlite3.Connection, job_id: str,
                decide: Callable[[Job], Job | None]) -> tuple[Job | None, Job | None]:
        """(job as read, job as written or None): one decision under the write lock."""
        now = time.time()
        with _write(conn):
            old = self._load(conn, job_id, now)
            new = decide(old) if old is not None else None
            if new is not None:
                self._save(conn, new)
        if new is not None and new.status in TERMINAL:
            self._drop_media(job_id)
        return old, new

    # --- media ------------------------------------------------------------------------------------

    def _media_path(self, job_id: str) -> Path:
        return self.media_dir / job_id

    def _store_media(self, job_id: str, upload: Spool) -> None:
        self.media_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        upload.persist(self._media_path(job_id))
        folder = os.open(self.media_dir, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself must survive a crash too
        finally:
            os.close(folder)

    def _drop_media(self, job_id: str) -> None:
        for path in (self._media_path(job_id), self._media_path(job_id + ".partial")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    # --- the interface ----------------------------------------------------------------------------

    async def _insert(self, job: Job, upload: Spool | None, max_queued: int) -> Job:
        return await self._run(self._insert_now, job, upload, max_queued)

    async def _update(self, job_id: str, decide: Callable[[Job], Job | None]) -> tuple[Job | None, Job | None]:
        return await self._run(self._change, job_id, decide)

    def _insert_now(self, conn: sqlite3.Connection, job: Job, upload: Spool | None, max_queued: int) -> Job:
        scope = idempotency_scope(job.owner, job.idempotency_key) if job.idempotency_key is not None else None
        existing = self._admit(conn, scope, max_queued, job.created_at)  # cheap checks before writing media
        if existing is not None:
            return existing
        if upload is not None:
            self._store_media(job.job_id, upload)
        try:
            with _write(conn):
                existing = self._admit(conn, scope, max_queued, job.created_at)
                if existing is None:
                    self._save(conn, job)
        except BaseException:
            self._drop_media(job.job_id)
            raise
        if existing is not None:
            self._drop_media(job.job_id)
            return existing
        return job

    def _admit(self, conn: sqlite3.Connection, scope: str | None, max_queued: int, now: float) -> Job | None:
        """The job an idempotency key already made, else None; QueueFull when there is no room."""
        if scope is not None:
            row = conn.execute("SELECT * FROM jobs WHERE idem_scope = ?", (scope,)).fetchone()
            if row is not None:
                earlier = from_record(dict(row))
                if rules.visible(earlier, now=now, ttl_s=self.policy.ttl_s):
                    return earlier
                if conn.in_transaction:  # past its TTL but not swept yet: purge it now, freeing the key
                    conn.execute("DELETE FROM jobs WHERE job_id = ?", (earlier.job_id,))
        queued = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)).fetchone()[0]
        if queued >= max_queued:
            raise QueueFull(f"The job queue is full ({max_queued} jobs queued).")
        return None

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        return await self._run(lambda conn: self._load(conn, job_id, time.time()))

    async def lease(self, worker_id: str, *, images: int, videos: int, lease_s: float,
                    limit: int | None = None) -> list[Job]:
        rules.check_lease(worker_id, lease_s)
        return await self._run(self._lease, worker_id, images, videos, lease_s, limit)

    def _lease(self, conn: sqlite3.Connection, worker_id: str, images: int, videos: int, lease_s: float,
               limit: int | None) -> list[Job]:
        now = time.time()
        caps = {"image": images, "video": videos}
        taken: list[Job] = []
        with _write(conn):
            heads: dict[str, list[Job]] = {}
            for kind in JOB_KINDS:
                cap = max(0, min(caps[kind], limit if limit is not None else caps[kind]))
                rows = conn.execute("SELECT * FROM jobs WHERE status = ? AND kind = ? ORDER BY queued_at, rowid "
                                    "LIMIT ?", (JobStatus.QUEUED.value, kind, cap)).fetchall()
                heads[kind] = [from_record(dict(row)) for row in rows]
            aged = sum(1 for job in heads["video"] if now - job.queued_at >= self.policy.video_aging_s)
            plan = plan_lease(images=images, videos=videos, limit=limit, queued_images=len(heads["image"]),
                              queued_videos=len(heads["video"]), aged_videos=aged)
            for kind, count in plan.takes:
                for job in heads[kind][:count]:
                    running = rules.leased(job, worker_id, now=now, lease_s=lease_s)
                    self._save(conn, running)
                    taken.append(running)
                heads[kind] = heads[kind][count:]
        return taken

    async def extend(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        rules.check_lease(worker_id, lease_s)
        return await self._run(self._extend, worker_id, list(job_ids), lease_s)

    def _extend(self, conn: sqlite3.Connection, worker_id: str, job_ids: list[str], lease_s: float) -> set[str]:
        now = time.time()
        lost: set[str] = set()
        with _write(conn):
            for job_id in job_ids:
                job = self._load(conn, job_id, now) if is_job_id(job_id) else None
                longer = rules.extended(job, worker_id, now=now, lease_s=lease_s) if job is not None else None
                if longer is None:
                    lost.add(job_id)
                else:
                    self._save(conn, longer)
        return lost

    async def open_media(self, job: Job) -> BinaryIO:
        if not job.has_upload:
            raise ValueError("this job names a media path; it has no stored upload")
        return await self._run(self._open_media, job.job_id)

    def _open_media(self, conn: sqlite3.Connection, job_id: str) -> BinaryIO:
        try:
            return open(self._media_path(job_id), "rb")  # noqa: SIM115 - the caller owns it
        except FileNotFoundError:
            raise MediaNotFound("The job's upload is no longer stored (the job finished or was removed).") from None

    async def sweep(self, now: float | None = None) -> SweepReport:
        return self._noticed_sweep(await self._run(self._sweep, time.time() if now is None else now))

    def _sweep(self, conn: sqlite3.Connection, now: float) -> SweepReport:
        moved: dict[str, list[str]] = {"redelivered": [], "exhausted": [], "expired": [], "purged": []}
        policy = self.policy
        with _write(conn):
            for row in conn.execute("SELECT * FROM jobs WHERE status = ? AND lease_expires_at <= ? LIMIT ?",
                                    (JobStatus.RUNNING.value, now, SWEEP_BATCH)).fetchall():
                job = rules.lease_ended(from_record(dict(row)), now=now, max_attempts=policy.max_attempts)
                if job is not None:
                    self._save(conn, job)
                    moved["redelivered" if job.status is JobStatus.QUEUED else "exhausted"].append(job.job_id)
            for row in conn.execute("SELECT * FROM jobs WHERE status = ? AND queued_at <= ? LIMIT ?",
                                    (JobStatus.QUEUED.value, now - policy.max_queued_s, SWEEP_BATCH)).fetchall():
                job = rules.queue_expired(from_record(dict(row)), now=now, max_queued_s=policy.max_queued_s)
                if job is not None:
                    self._save(conn, job)
                    moved["expired"].append(job.job_id)
            purged = [row[0] for row in conn.execute(
                "SELECT job_id FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= ? LIMIT ?",
                (now - policy.ttl_s, SWEEP_BATCH)).fetchall()]
            conn.executemany("DELETE FROM jobs WHERE job_id = ?", [(job_id,) for job_id in purged])
            moved["purged"] = purged
            live = {row[0] for row in conn.execute(f"SELECT job_id FROM jobs WHERE status NOT IN ({_TERMINAL_SQL})")}
        for job_id in moved["exhausted"] + moved["expired"] + purged:
            self._drop_media(job_id)
        self._drop_orphans(live, now)
        return SweepReport(**{name: tuple(ids) for name, ids in moved.items()})

    def _drop_orphans(self, live: set[str], now: float) -> None:
        """Uploads no queued or running job needs: left by a crash between a commit and a delete."""
        try:
            entries = list(os.scandir(self.media_dir))
        except FileNotFoundError:
            return
        for entry in entries:
            job_id = entry.name.removesuffix(".partial")
            if job_id in live or not entry.is_file(follow_symlinks=False):
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime >= ORPHAN_GRACE_S:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    async def depth(self) -> dict[str, int]:
        def count(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT kind, COUNT(*) FROM jobs WHERE status = ? GROUP BY kind",
                                (JobStatus.QUEUED.value,)).fetchall()
            return {kind: 0 for kind in JOB_KINDS} | {kind: n for kind, n in rows}

        return await self._run(count)

    async def counts(self) -> dict[str, int]:
        def count(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs WHERE finished_at IS NULL OR finished_at > ? "
                                "GROUP BY status", (time.time() - self.policy.ttl_s,)).fetchall()
            return {status.value: 0 for status in JobStatus} | {status: n for status, n in rows}

        return await self._run(count)

    async def ping(self) -> None:
        def probe(conn: sqlite3.Connection) -> None:
            with _write(conn):  # proves the write lock can be taken, not only that the file opens
                conn.execute("SELECT 1")

        await self._run(probe)

    async def _listen(self, notices: Notices) -> None:
        """Hear the other processes' notices until the store closes."""
        try:
            self._bus.listen(notices.heard)
        except OSError as exc:
            log.warning("job notices off (cannot listen in %s: %s): workers and long-polls re-check the queue "
                        "on a timer instead", self._bus.directory, exc)
        else:
            notices.saw_queued()  # whatever happened before this process listened: everyone looks again
            notices.saw_finished(None)
        await asyncio.Event().wait()

    def _announce(self, message: bytes) -> None:
        try:
            self._bus.publish(message)
        except OSError as exc:  # the others re-check on their timers
            log.debug("job notice not sent: %s", exc)

    async def close(self) -> None:
        if self._closed:
            return
        await self.notices.close()
        self._bus.close()
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._drop_connection)
        self._executor.shutdown(wait=False)


LOCK_RETRY_FIRST_S = 0.0001
LOCK_RETRY_MAX_S = 0.002
"""While another process holds the write lock, BEGIN is retried after these (doubling) pauses."""


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, retried every fraction of a millisecond until the connection's busy timeout.

    SQLite's own busy handler sleeps 1, 2, 5, 10 ... up to 100 ms between tries: with a router and
    its workers writing at once, that left jobs waiting tens of milliseconds (hundreds at worst) for
    a lock held well under one. Write transactions here are short, so retrying soon costs little.
    """
    patience_ms = conn.execute("PRAGMA busy_timeout").fetchone()[0]
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        deadline = time.monotonic() + patience_ms / 1000
        pause = LOCK_RETRY_FIRST_S
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                    raise
            time.sleep(random.uniform(pause / 2, pause))
            pause = min(2 * pause, LOCK_RETRY_MAX_S)
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(patience_ms)}")


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction that holds the database's write lock from its first read."""
    _begin_immediate(conn)
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise
    conn.execute("COMMIT")
