"""What each backend promises beyond the shared suite: SQLite's file settings and orphan clean-up,
Redis' own expiry of finished jobs when no process sweeps."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time

from fastvlm_engine.config import load_settings
from fastvlm_engine.jobs import open_store, open_store_from_settings
from fastvlm_engine.jobs.policy import JobPolicy
from fastvlm_engine.jobs.sqlite_store import ORPHAN_GRACE_S
from tests.helpers.procs import wait_until
from tests.jobs.conftest import make_spool

OPTIONS = {"prompt": "p"}


def test_the_sqlite_file_is_in_wal_mode_with_the_schema(tmp_path):
    async def scenario():
        async with open_store_from_settings(load_settings(state_dir=tmp_path)) as store:
            await store.ping()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "jobs.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"jobs_idem", "jobs_queue", "jobs_leases", "jobs_finished"} <= indexes


def test_a_relative_sqlite_url_is_resolved_once_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///sub/jobs.db", state_dir=tmp_path / "state",
                       policy=JobPolicy.from_settings(load_settings()))
    monkeypatch.chdir("/")

    async def scenario():
        async with store:
            await store.submit("image", OPTIONS, source_path="/a.jpg", max_queued=10)

    asyncio.run(scenario())
    assert (tmp_path / "sub" / "jobs.db").is_file()


def test_the_sweep_removes_old_upload_files_that_no_live_job_needs(tmp_path):
    media = tmp_path / "media"

    async def scenario():
        async with open_store_from_settings(load_settings(state_dir=tmp_path)) as store:
            live = await store.submit("image", OPTIONS, upload=make_spool(b"live", directory=tmp_path), max_queued=10)
            old = time.time() - ORPHAN_GRACE_S - 60
            for name, age in (("A" * 32, old), ("B" * 32 + ".partial", old), ("C" * 32, time.time())):
                (media / name).write_bytes(b"left by a crash")
                os.utime(media / name, (age, age))
            os.utime(media / live.job_id, (old, old))  # old, but its job is still queued
            await store.sweep()
            assert sorted(p.name for p in media.iterdir()) == sorted([live.job_id, "C" * 32])

    asyncio.run(scenario())


def test_redis_expires_finished_jobs_by_itself_when_nobody_sweeps(redis_server, tmp_path):
    import redis

    prefix = "fastvlm-expiry-test:"
    settings = load_settings(state_dir=tmp_path, queue_url=redis_server.url, job_ttl_s=0.3, queue_key_prefix=prefix,
                             queue_timeout_s=2)
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with open_store_from_settings(settings) as store:
            job = await store.submit("image", OPTIONS, upload=make_spool(b"x", directory=tmp_path),
                                     owner="k", idempotency_key="i", max_queued=10)
            await store.lease("w1", images=1, videos=0, lease_s=30)
            assert await store.succeed(job.job_id, "w1", b"{}")
            assert client.get(f"{prefix}media:{job.job_id}") is None  # the upload goes when the job finishes
            wait_until(lambda: not client.exists(f"{prefix}job:{job.job_id}"), 30, "Redis to expire the job")
            assert await store.get(job.job_id) is None
            # Only the purge index still names it; a sweep clears that too.
            assert sorted(key.decode() for key in client.scan_iter(match=prefix + "*")) == [f"{prefix}done:succeeded"]
            assert (await store.sweep()).purged == (job.job_id,)
            assert list(client.scan_iter(match=prefix + "*")) == []

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_redis_index_entries_of_vanished_jobs_are_forgotten_by_the_sweep(redis_server, tmp_path):
    import redis

    prefix = "fastvlm-vanish-test:"
    settings = load_settings(state_dir=tmp_path, queue_url=redis_server.url, queue_key_prefix=prefix)
    client = redis.Redis.from_url(redis_server.url)

    async def scenario():
        async with open_store_from_settings(settings) as store:
            running = await store.submit("image", OPTIONS, source_path="/a.jpg", max_queued=10)
            queued = await store.submit("video", OPTIONS, source_path="/v.mp4", max_queued=10)
            await store.lease("w1", images=1, videos=0, lease_s=30)
            client.delete(f"{prefix}job:{running.job_id}", f"{prefix}job:{queued.job_id}")  # as an evicting Redis would
            report = await store.sweep(now=time.time() + settings.job_max_queued_s + 60)
            assert report.redelivered == report.exhausted == report.expired == ()
            assert list(client.scan_iter(match=prefix + "*")) == []

    try:
        asyncio.run(scenario())
    finally:
        client.close()
