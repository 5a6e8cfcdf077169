"""The job store for several hosts: a real Redis server (redis-py's asyncio client).

Why sorted sets and not Streams. A stream with a consumer group gives at-least-once delivery and
XAUTOCLAIM for reclaiming, but what this queue needs most is awkward there: (1) priorities across
kinds with aging need the oldest queued video's wait, which a zset scored by ``queued_at`` gives
with one ZRANGE; (2) cancelling a queued job is a ZREM, whereas a stream entry can only be
XDEL'd while it stays counted in the group's bookkeeping; (3) queue depth is ZCARD, whereas a
stream's length counts delivered and acknowledged entries too. So: one zset per kind for queued
jobs (FIFO by ``queued_at``), one zset of leases scored by their expiry (the sweep reads the
expired ones with ZRANGEBYSCORE, like XAUTOCLAIM's idle time), and one zset per finished status
scored by ``finished_at`` for the TTL purge and the counts. The key layout is in :mod:`.redis_lua`.

Atomicity. Leasing pops ids with ZPOPMIN inside one Lua script, so two workers never get the
same job. Every other change reads the job, asks :mod:`.rules` for its next version, and writes
it with a compare-and-set script that checks the status and a revision number bumped on each
write; if another process changed the job in between, it reads again (a few times at most).

Durability. A job is written when submit returns, but Redis keeps it only as well as it is
configured to: for the same guarantee as the SQLite store, run Redis with ``appendonly yes`` and
``appendfsync always``; ``appendfsync everysec`` (Redis' default for AOF) may lose the last
second of jobs if the Redis host crashes, and with no persistence (``--save ''``, as the tests
run it) a Redis restart loses every job. Replicas are not waited for. Use ``maxmemory-policy
noeviction``: an evicting Redis may drop queued jobs (the sweep then forgets their index entries).

Notices (see :mod:`.notices`). The scripts that queue or finish a job publish it on the ``notices``
channel, so every process subscribed (workers waiting for work, routers holding long-polls)
hears of it at once, whichever host made the change. Pub/sub delivers at most once: after a
reconnect every waiter is woken to re-read the store.

Limits. One Redis server or primary (scripts build key names at run time, so Redis Cluster is not
supported). Uploads live in Redis memory until the job finishes, capped by ``max_media_bytes``.
Lease expiries, aging and TTLs compare the clocks of the hosts involved: keep them in sync (NTP).
"""

from __future__ import annotations

import asyncio
import io
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, BinaryIO

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..errors import MediaNotFound, MediaTooLarge, QueueFull, QueueUnavailable
from . import redis_lua, rules
from .base import StoreBase
from .codec import from_record, to_record
from .model import JOB_KINDS, TERMINAL, Job, JobEvent, JobStatus, apply_event, idempotency_scope, is_job_id
from .notices import Notices
from .ordering import plan_lease
from .policy import JobPolicy
from .store import SweepReport
from .url import QueueTarget

if TYPE_CHECKING:
    from ..intake.spool import Spool

__all__ = ["RedisJobStore"]

CAS_ATTEMPTS = 16
"""Reads and compare-and-sets of one job before giving up (only under heavy contention on that job)."""
SWEEP_BATCH = 500
"""Most jobs one sweep moves per category; the next sweep goes on."""
MEDIA_STAGING_TTL_S = 300
"""An upload is written before its job, with this expiry, which submit removes: a crash in between
leaves nothing behind for long."""
NOTICE_RECONNECT_S = (0.1, 2.0)
"""Wait before subscribing again after the notices connection failed: first, and most."""


class RedisJobStore(StoreBase):
    """Jobs in Redis hashes, indexed by sorted sets; uploads as Redis strings."""

    def __init__(self, target: QueueTarget, *, policy: JobPolicy) -> None:
        self.target = target
        self.policy = policy
        self._prefix = policy.key_prefix
        # A couple of quick retries reconnect a pooled connection that a Redis restart broke; a
        # server that stays down is reported within about timeout_s.
        self._redis = aioredis.Redis.from_url(
            target.url, socket_connect_timeout=policy.timeout_s, socket_timeout=policy.timeout_s,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2), decode_responses=False)
        self._submit_script = self._redis.register_script(redis_lua.SUBMIT)
        self._lease_script = self._redis.register_script(redis_lua.LEASE)
        self._cas_script = self._redis.register_script(redis_lua.CAS)
        self._purge_script = self._redis.register_script(redis_lua.PURGE)
        self.notices = Notices(self._listen)

    def description(self) -> str:
        return f"{self.target.description} (keys {self._prefix}*)"

    @asynccontextmanager
    async def _available(self) -> AsyncIterator[None]:
        try:
            yield
        except (RedisError, OSError) as exc:
            raise QueueUnavailable(f"The job queue ({self.target.label}) is unreachable or refused the "
                                   "request.") from exc

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}:{name}" if name else f"{self._prefix}{kind}"

    def _head(self) -> list[Any]:
        """The ARGV every script starts with."""
        return [self._prefix, max(1, math.ceil(self.policy.ttl_s * 1000))]

    # --- reading and compare-and-set ------------------------------------------------------------

    async def _read(self, job_id: str) -> tuple[Job, bytes] | None:
        fields = await self._redis.hgetall(self._key("job", job_id))
        if not fields or b"rev" not in fields:
            return None
        job = from_record(fields)
        if not rules.visible(job, now=time.time(), ttl_s=self.policy.ttl_s):
            return None
        return job, fields[b"rev"]

    async def _write(self, old: Job, rev: bytes, new: Job) -> bool:
        before, after = to_record(old), to_record(new)
        changed = [(name, _wire(value)) for name, value in after.items() if value is not None and value != before[name]]
        deleted = [name for name, value in after.items() if value is None and before[name] is not None]
        args = [*self._head(), old.job_id, rev, str(old.status), len(changed)]
        for name, value in changed:
            args += [name, value]
        return bool(await self._cas_script(keys=[], args=args + deleted))

    async def _update(self, job_id: str, decide: Callable[[Job], Job | None]) -> tuple[Job | None, Job | None]:
        async with self._available():
            return await self._cas_loop(job_id, decide)

    async def _cas_loop(self, job_id: str, decide: Callable[[Job], Job | None]) -> tuple[Job | None, Job | None]:
        """(job as read, job as written or None), reading again when another process wrote in between."""
        for _ in range(CAS_ATTEMPTS):
            found = await self._read(job_id)
            if found is None:
                return None, None
            old, rev = found
            new = decide(old)
            if new is None or await self._write(old, rev, new):
                return old, new
        raise QueueUnavailable(f"The job queue ({self.target.label}) is too busy with this job; try again.")

    # --- the interface ----------------------------------------------------------------------------

    async def _insert(self, job: Job, upload: Spool | None, max_queued: int) -> Job:
        record = to_record(job)
        if upload is not None and upload.size > self.policy.max_media_bytes:
            raise MediaTooLarge(f"The upload is {upload.size} bytes; jobs on the Redis queue carry at most "
                                f"{self.policy.max_media_bytes} bytes (FASTVLM_JOB_MAX_MEDIA_MIB).")
        scope = idempotency_scope(job.owner, job.idempotency_key) if job.idempotency_key is not None else ""
        async with self._available():
            if scope:  # a repeat needs no upload
                earlier = await self._redis.get(self._key("idem", scope))
                found = await self._read(earlier.decode()) if earlier else None
                if found is not None:
                    return found[0]
            media_key = self._key("media", job.job_id)
            if upload is not None:
                await self._check_room(max_queued)
                data = await asyncio.to_thread(upload.read_bytes)
                await self._redis.set(media_key, data, ex=MEDIA_STAGING_TTL_S)
            fields: list[Any] = []
            for name, value in record.items():
                if value is not None:
                    fields += [name, _wire(value)]
            try:
                outcome, job_id = await self._submit_script(
                    keys=[], args=[*self._head(), job.job_id, scope, max_queued, int(upload is not None), *fields])
            except BaseException:
                await _quietly(self._redis.delete(media_key))
                raise
            if outcome != 1 and upload is not None:
                await self._redis.delete(media_key)
            if outcome == -1:
                raise QueueFull(f"The job queue is full ({max_queued} jobs queued).")
            if outcome == 0:
                found = await self._read(job_id.decode())
                if found is not None:
                    return found[0]
                raise QueueUnavailable(f"The job queue ({self.target.label}) changed during the request; retry.")
        return job

    async def _check_room(self, max_queued: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for kind in JOB_KINDS:
                pipe.zcard(self._key("queued", kind))
            if sum(await pipe.execute()) >= max_queued:
                raise QueueFull(f"The job queue is full ({max_queued} jobs queued).")

    async def get(self, job_id: str) -> Job | None:
        if not is_job_id(job_id):
            return None
        async with self._available():
            found = await self._read(job_id)
        return found[0] if found is not None else None

    async def lease(self, worker_id: str, *, images: int, videos: int, lease_s: float,
                    limit: int | None = None) -> list[Job]:
        rules.check_lease(worker_id, lease_s)
        now = time.time()
        async with self._available():
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind in JOB_KINDS:
                    pipe.zcard(self._key("queued", kind))
                pipe.zcount(self._key("queued", "video"), "-inf", now - self.policy.video_aging_s)
                queued_images, queued_videos, aged = await pipe.execute()
            plan = plan_lease(images=images, videos=videos, limit=limit, queued_images=queued_images,
                              queued_videos=queued_videos, aged_videos=aged)
            if not plan.takes:
                return []
            args = [*self._head(), worker_id, _wire(now), _wire(now + lease_s), str(JobStatus.QUEUED),
                    str(apply_event(JobStatus.QUEUED, JobEvent.LEASE))]
            for kind, count in plan.takes:
                args += [kind, count]
            ids = await self._lease_script(keys=[], args=args)
            jobs = []
            for job_id in ids:
                found = await self._read(job_id.decode())
                if found is not None:
                    jobs.append(found[0])
        return jobs

    async def extend(self, worker_id: str, job_ids: Iterable[str], lease_s: float) -> set[str]:
        rules.check_lease(worker_id, lease_s)
        lost: set[str] = set()
        async with self._available():
            for job_id in job_ids:
                _, new = await self._cas_loop(job_id, lambda job: rules.extended(
                    job, worker_id, now=time.time(), lease_s=lease_s)) if is_job_id(job_id) else (None, None)
                if new is None:
                    lost.add(job_id)
        return lost

    async def open_media(self, job: Job) -> BinaryIO:
        if not job.has_upload:
            raise ValueError("this job names a media path; it has no stored upload")
        async with self._available():
            data = await self._redis.get(self._key("media", job.job_id))
        if data is None:
            raise MediaNotFound("The job's upload is no longer stored (the job finished or was removed).")
        return io.BytesIO(data)

    async def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        policy = self.policy
        moved: dict[str, list[str]] = {"redelivered": [], "exhausted": [], "expired": []}
        async with self._available():
            ended = await self._redis.zrangebyscore(self._key("leases"), "-inf", now, start=0, num=SWEEP_BATCH)
            for raw in ended:
                old, job = await self._cas_loop(raw.decode(), lambda job: rules.lease_ended(
                    job, now=now, max_attempts=policy.max_attempts))
                if old is None:  # its hash is gone (deleted by hand, or evicted): forget the entry
                    await self._redis.zrem(self._key("leases"), raw)
                elif job is not None:
                    moved["redelivered" if job.status is JobStatus.QUEUED else "exhausted"].append(job.job_id)
            for kind in JOB_KINDS:
                stale = await self._redis.zrangebyscore(self._key("queued", kind), "-inf", now - policy.max_queued_s,
                                                        start=0, num=SWEEP_BATCH)
                for raw in stale:
                    old, job = await self._cas_loop(raw.decode(), lambda job: rules.queue_expired(
                        job, now=now, max_queued_s=policy.max_queued_s))
                    if old is None:
                        await self._redis.zrem(self._key("queued", kind), raw)
                    elif job is not None:
                        moved["expired"].append(job.job_id)
            purged = await self._purge_script(keys=[], args=[*self._head(), _wire(now - policy.ttl_s), SWEEP_BATCH])
        return self._noticed_sweep(SweepReport(**{name: tuple(ids) for name, ids in moved.items()},
                                               purged=tuple(raw.decode() for raw in purged)))

    async def depth(self) -> dict[str, int]:
        async with self._available(), self._redis.pipeline(transaction=False) as pipe:
            for kind in JOB_KINDS:
                pipe.zcard(self._key("queued", kind))
            return dict(zip(JOB_KINDS, await pipe.execute(), strict=True))

    async def counts(self) -> dict[str, int]:
        finished = sorted(TERMINAL)
        cutoff = f"({_wire(time.time() - self.policy.ttl_s)}"
        async with self._available(), self._redis.pipeline(transaction=False) as pipe:
            for kind in JOB_KINDS:
                pipe.zcard(self._key("queued", kind))
            pipe.zcard(self._key("leases"))
            for status in finished:
                pipe.zcount(self._key("done", status), cutoff, "+inf")
            answers = await pipe.execute()
        queued, running, done = answers[:len(JOB_KINDS)], answers[len(JOB_KINDS)], answers[len(JOB_KINDS) + 1:]
        return ({status.value: 0 for status in JobStatus} | {"queued": sum(queued), "running": running}
                | {str(status): n for status, n in zip(finished, done, strict=True)})

    async def ping(self) -> None:
        async with self._available():
            await self._redis.ping()

    async def _listen(self, notices: Notices) -> None:
        """Subscribe to the notices channel and pass on what it says, subscribing again after a failure."""
        channel = self._key("notices")
        delay = NOTICE_RECONNECT_S[0]
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(channel)
                notices.saw_queued()  # whatever happened while not subscribed: everyone looks again
                notices.saw_finished(None)
                delay = NOTICE_RECONNECT_S[0]
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and isinstance(message.get("data"), bytes):
                        notices.heard(message["data"])
            except (RedisError, OSError):
                await asyncio.sleep(delay)
                delay = min(NOTICE_RECONNECT_S[1], 2 * delay)
            finally:
                await _quietly(pubsub.aclose())

    async def close(self) -> None:
        await self.notices.close()
        await self._redis.aclose()


def _wire(value: Any) -> Any:
    """Floats as their exact repr (a compare-and-set compares the text); everything else as is."""
    return repr(value) if isinstance(value, float) else value


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except (RedisError, OSError):
        pass
