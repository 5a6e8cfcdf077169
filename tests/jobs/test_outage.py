"""A backend that goes away: every call answers queue_unavailable, and the same store object recovers."""

from __future__ import annotations

import asyncio

import pytest

from fastvlm_engine.config import load_settings
from fastvlm_engine.errors import MediaTooLarge, QueueUnavailable
from fastvlm_engine.jobs import JobStatus, open_store_from_settings
from tests.helpers.redis_server import start_redis
from tests.jobs.conftest import make_spool

OPTIONS = {"prompt": "p"}
PASSWORD = "s3cret-pass-word"


async def every_call_is_unavailable(store, job, spool_dir) -> list[QueueUnavailable]:
    """Call each method once; all must raise QueueUnavailable (and nothing else)."""
    calls = [
        lambda: store.submit("image", OPTIONS, source_path="/a.jpg", max_queued=10),
        lambda: store.submit("image", OPTIONS, upload=make_spool(b"x", directory=spool_dir), max_queued=10),
        lambda: store.get(job.job_id),
        lambda: store.cancel(job.job_id),
        lambda: store.lease("w1", images=1, videos=1, lease_s=30),
        lambda: store.extend("w1", [job.job_id], 30),
        lambda: store.open_media(job),
        lambda: store.progress(job.job_id, "w1", {"stage": "x"}),
        lambda: store.succeed(job.job_id, "w1", b"{}"),
        lambda: store.fail(job.job_id, "w1", {"code": "c", "message": "m"}, retryable=True),
        lambda: store.sweep(),
        lambda: store.depth(),
        lambda: store.counts(),
        lambda: store.ping(),
    ]
    raised = []
    for call in calls:
        with pytest.raises(QueueUnavailable) as caught:
            await call()
        raised.append(caught.value)
    return raised


def test_redis_stopped_mid_run_is_queue_unavailable_and_recovers_on_restart(tmp_path):
    server = start_redis(tmp_path / "redis", password=PASSWORD)
    try:
        settings = load_settings(state_dir=tmp_path / "state", queue_url=server.url, queue_timeout_s=2)

        async def scenario():
            async with open_store_from_settings(settings) as store:
                job = await store.submit("image", OPTIONS, upload=make_spool(b"bytes", directory=tmp_path),
                                         max_queued=10)
                assert PASSWORD not in store.description() and f"127.0.0.1:{server.port}" in store.description()
                server.stop()
                for error in await every_call_is_unavailable(store, job, tmp_path):
                    assert error.code == "queue_unavailable" and error.http_status == 503
                    assert f"redis at 127.0.0.1:{server.port}" in error.message
                    assert PASSWORD not in error.message and PASSWORD not in str(error.to_body())
                server.start()  # same port, empty (no persistence): the same store object works again
                await store.ping()
                again = await store.submit("video", OPTIONS, source_path="/v.mp4", max_queued=10)
                assert (await store.get(again.job_id)).status is JobStatus.QUEUED
                [leased] = await store.lease("w1", images=1, videos=1, lease_s=30)
                assert leased.job_id == again.job_id and await store.succeed(again.job_id, "w1", b"{}")

        asyncio.run(scenario())
    finally:
        server.stop()


def test_an_unwritable_sqlite_store_is_queue_unavailable_and_recovers(tmp_path):
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state folder should be")
    settings = load_settings(state_dir=blocked, queue_timeout_s=1)

    async def scenario():
        async with open_store_from_settings(settings) as store:
            job_like = await _a_job_elsewhere(tmp_path)
            for error in await every_call_is_unavailable(store, job_like, tmp_path):
                assert error.message == "The job queue (sqlite) cannot be read or written right now."
                assert str(tmp_path) not in error.message  # no file paths in what a client sees
            blocked.unlink()
            blocked.mkdir()
            await store.ping()
            job = await store.submit("image", OPTIONS, upload=make_spool(b"ok", directory=tmp_path), max_queued=10)
            [leased] = await store.lease("w1", images=1, videos=0, lease_s=30)
            with await store.open_media(leased) as reader:
                assert leased.job_id == job.job_id and reader.read() == b"ok"

    asyncio.run(scenario())


async def _a_job_elsewhere(tmp_path):
    """A real job (from a healthy store) to pass to the broken one's methods."""
    async with open_store_from_settings(load_settings(state_dir=tmp_path / "healthy")) as healthy:
        return await healthy.submit("image", OPTIONS, upload=make_spool(b"x", directory=tmp_path), max_queued=10)


def test_a_database_locked_longer_than_the_timeout_is_queue_unavailable(tmp_path):
    import sqlite3

    settings = load_settings(state_dir=tmp_path, queue_timeout_s=0.2)

    async def scenario():
        async with open_store_from_settings(settings) as store:
            await store.ping()
            holder = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
            try:
                with pytest.raises(QueueUnavailable):
                    await store.submit("image", OPTIONS, source_path="/a.jpg", max_queued=10)
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert (await store.submit("image", OPTIONS, source_path="/a.jpg", max_queued=10)).attempts == 0

    asyncio.run(scenario())


def test_redis_uploads_above_the_cap_are_refused_with_the_cap_named(redis_server, tmp_path):
    settings = load_settings(state_dir=tmp_path, queue_url=redis_server.url, job_max_media_mib=1,
                             queue_key_prefix="fastvlm-cap-test:")
    limit = 1024 * 1024

    async def scenario():
        async with open_store_from_settings(settings) as store:
            with pytest.raises(MediaTooLarge) as caught:
                await store.submit("video", OPTIONS, upload=make_spool(b"v" * (limit + 1), directory=tmp_path),
                                   max_queued=10)
            assert str(limit) in caught.value.message and "FASTVLM_JOB_MAX_MEDIA_MIB" in caught.value.message
            assert await store.depth() == {"image": 0, "video": 0}
            at_cap = await store.submit("video", OPTIONS, upload=make_spool(b"v" * limit, directory=tmp_path),
                                        max_queued=10)
            [leased] = await store.lease("w1", images=0, videos=1, lease_s=30)
            with await store.open_media(leased) as reader:
                assert leased.job_id == at_cap.job_id and len(reader.read()) == limit

    asyncio.run(scenario())


def test_the_sqlite_store_keeps_large_uploads_on_disk_without_the_redis_cap(tmp_path):
    settings = load_settings(state_dir=tmp_path / "state", job_max_media_mib=1)
    data = b"v" * (3 * 1024 * 1024)

    async def scenario():
        async with open_store_from_settings(settings) as store:
            job = await store.submit("video", OPTIONS, upload=make_spool(data, on_disk=True, directory=tmp_path),
                                     max_queued=10)
            assert (tmp_path / "state" / "media" / job.job_id).stat().st_size == len(data)

    asyncio.run(scenario())
