"""The job store's behaviour, the same suite on SQLite and on a real Redis server.

Times move with ``sweep(now=...)`` instead of sleeps where the rule is about a deadline; where
real time must pass (video aging) the test sleeps past the threshold and asserts only the order.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastvlm_engine
from fastvlm_engine.errors import JobNotFound, MediaNotFound, QueueFull
from fastvlm_engine.jobs import Job, JobStatus

OPTIONS = {"prompt": "Describe the image.", "max_new_tokens": 8}
GARBAGE_IDS = ["", "x", "../../etc/passwd", "a" * 5000, "é" * 40, "job id with spaces and more than 32 chars",
               "%00" * 20, "Zm9vYmFy" * 4 + "\n"]


def run(coro):
    return asyncio.run(coro)


async def submit(store, kind="image", *, path="/media/a.jpg", **kwargs) -> Job:
    if "upload" in kwargs:
        return await store.submit(kind, OPTIONS, max_queued=kwargs.pop("max_queued", 100), **kwargs)
    return await store.submit(kind, OPTIONS, source_path=path, max_queued=kwargs.pop("max_queued", 100), **kwargs)


# --- submit and read back -------------------------------------------------------------------------

def test_submit_then_get_returns_the_same_job(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store, "video", owner="key-1", trace_parent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
            assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.kind == "video"
            assert job.source == {"path": "/media/a.jpg"} and job.options == OPTIONS
            assert job.started_at is None and job.finished_at is None and job.result is None
            assert await store.get(job.job_id) == job
            assert await store.depth() == {"image": 0, "video": 1}
            counts = await store.counts()
            assert counts["queued"] == 1 and sum(counts.values()) == 1

    run(scenario())


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "spilled"])
def test_an_upload_is_stored_where_the_worker_reads_it(store_backend, spool, tmp_path, on_disk):
    data = bytes(range(256)) * 300

    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store, upload=spool(data, on_disk=on_disk, directory=tmp_path),
                               upload_content_type="image/png", upload_filename="cat.png")
            assert job.source == {"upload": {"content_type": "image/png", "filename": "cat.png", "size": len(data)}}
            [leased] = await store.lease("w1", images=1, videos=0, lease_s=30)
            with await store.open_media(leased) as reader:
                assert reader.read() == data

    run(scenario())


def test_job_ids_are_unguessable_and_distinct(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            return [(await submit(store)).job_id for _ in range(20)]

    ids = run(scenario())
    assert len(set(ids)) == 20
    for job_id in ids:
        assert len(base64.urlsafe_b64decode(job_id + "=" * (-len(job_id) % 4))) >= 16  # >= 128 random bits


# --- durability -----------------------------------------------------------------------------------

def test_a_second_store_object_sees_the_job_and_its_upload(store_backend, spool):
    async def scenario():
        async with store_backend.open() as first:
            job = await submit(first, upload=spool(b"JPEG bytes"))
        async with store_backend.open() as second:
            assert await second.get(job.job_id) == job
            [leased] = await second.lease("w1", images=4, videos=4, lease_s=30)
            assert leased.job_id == job.job_id
            with await second.open_media(leased) as reader:
                assert reader.read() == b"JPEG bytes"

    run(scenario())


CHILD_SUBMITS = """
import asyncio
from fastvlm_engine.config import load_settings
from fastvlm_engine.errors import MediaTooLarge
from fastvlm_engine.intake.spool import Spool
from fastvlm_engine.jobs import open_store_from_settings

async def main():
    store = open_store_from_settings(load_settings())
    spool = Spool(max_bytes=100, too_large=lambda limit: MediaTooLarge())
    spool.write(b"bytes from the child")
    job = await store.submit("video", {"prompt": "p"}, upload=spool.finish(), max_queued=10)
    print(job.job_id)  # and exit without close(), as a router that is killed would

asyncio.run(main())
"""


def test_a_job_submitted_by_a_process_that_exited_is_still_there(store_backend):
    settings = store_backend.settings()
    env = {**os.environ, "PYTHONPATH": str(Path(fastvlm_engine.__file__).parents[1]),
           "FASTVLM_STATE_DIR": str(settings.state_dir), "FASTVLM_QUEUE_URL": settings.queue_url,
           "FASTVLM_QUEUE_KEY_PREFIX": settings.queue_key_prefix}
    done = subprocess.run([sys.executable, "-c", CHILD_SUBMITS], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()

    async def scenario():
        async with store_backend.open() as store:
            job = await store.get(job_id)
            assert job is not None and job.status is JobStatus.QUEUED and job.kind == "video"
            [leased] = await store.lease("w1", images=0, videos=1, lease_s=30)
            with await store.open_media(leased) as reader:
                assert reader.read() == b"bytes from the child"

    run(scenario())


# --- idempotency and bounds ----------------------------------------------------------------------

def test_the_same_owner_and_idempotency_key_return_the_existing_job(store_backend, spool):
    async def scenario():
        async with store_backend.open() as store:
            first = await submit(store, owner="key-a", idempotency_key="order-1", upload=spool(b"one"))
            again = await submit(store, owner="key-a", idempotency_key="order-1", upload=spool(b"two"))
            assert again == first
            other_owner = await submit(store, owner="key-b", idempotency_key="order-1")
            other_key = await submit(store, owner="key-a", idempotency_key="order-2")
            no_key = [await submit(store, owner="key-a") for _ in range(2)]
            ids = {first.job_id, other_owner.job_id, other_key.job_id, *(job.job_id for job in no_key)}
            assert len(ids) == 5
            assert (await store.depth())["image"] == 5
            [leased] = await store.lease("w1", images=1, videos=0, lease_s=30)
            assert leased.job_id == first.job_id
            with await store.open_media(leased) as reader:
                assert reader.read() == b"one"  # the repeat's upload was not stored over the first
            # Still the same job while it runs and after it finished, until its TTL.
            assert (await submit(store, owner="key-a", idempotency_key="order-1")).job_id == first.job_id
            assert await store.succeed(first.job_id, "w1", b"{}")
            repeat = await submit(store, owner="key-a", idempotency_key="order-1")
            assert repeat.job_id == first.job_id and repeat.status is JobStatus.SUCCEEDED
            await store.sweep(now=time.time() + store_backend.settings().job_ttl_s + 1)
            fresh = await submit(store, owner="key-a", idempotency_key="order-1")
            assert fresh.job_id != first.job_id and fresh.status is JobStatus.QUEUED

    run(scenario())


def test_a_full_queue_refuses_new_jobs_but_not_repeats(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            kept = await submit(store, max_queued=2, owner="k", idempotency_key="same")
            await submit(store, "video", max_queued=2)
            with pytest.raises(QueueFull):
                await submit(store, max_queued=2)
            assert (await submit(store, max_queued=2, owner="k", idempotency_key="same")).job_id == kept.job_id
            assert sum((await store.depth()).values()) == 2
            await store.lease("w1", images=1, videos=0, lease_s=30)
            await submit(store, max_queued=2)  # room again: running jobs do not count
            with pytest.raises(QueueFull):
                await submit(store, max_queued=2)

    run(scenario())


# --- leasing ----------------------------------------------------------------------------------------

def test_concurrent_leasers_on_two_store_objects_get_each_job_exactly_once(store_backend):
    async def scenario():
        async with store_backend.open() as first, store_backend.open() as second:
            submitted = [await submit(first, "image" if n % 3 else "video") for n in range(60)]

            async def leaser(store, worker):
                got = []
                for _ in range(200):  # bounded: ends as soon as the queue is empty
                    batch = await store.lease(worker, images=3, videos=2, lease_s=30)
                    if not batch and sum((await store.depth()).values()) == 0:
                        return got
                    got.extend(batch)
                    await asyncio.sleep(0)
                return got

            results = await asyncio.gather(*(leaser(first if n % 2 else second, f"w{n}") for n in range(8)))
            leased = [job for batch in results for job in batch]
            assert sorted(job.job_id for job in leased) == sorted(job.job_id for job in submitted)
            for worker_jobs, n in zip(results, range(8), strict=True):
                assert all(job.lease_owner == f"w{n}" and job.attempts == 1 for job in worker_jobs)
            assert (await first.counts())["running"] == 60

    run(scenario())


def test_leases_are_fifo_per_kind_with_images_first(store_backend):
    async def scenario():
        async with store_backend.open(job_video_aging_s=3600) as store:
            order = ["video", "image", "image", "video", "image"]
            jobs = [await submit(store, kind) for kind in order]
            images = [job.job_id for job in jobs if job.kind == "image"]
            videos = [job.job_id for job in jobs if job.kind == "video"]
            first = await store.lease("w1", images=5, videos=5, lease_s=30, limit=2)
            assert [job.job_id for job in first] == images[:2]
            second = await store.lease("w1", images=5, videos=5, lease_s=30, limit=2)
            assert [job.job_id for job in second] == images[2:] + videos[:1]
            third = await store.lease("w1", images=5, videos=0, lease_s=30)
            assert third == []
            fourth = await store.lease("w1", images=5, videos=5, lease_s=30)
            assert [job.job_id for job in fourth] == videos[1:]
            for job in first + second + fourth:
                assert job.status is JobStatus.RUNNING and job.lease_owner == "w1" and job.started_at is not None
                assert job.lease_expires_at == pytest.approx(job.started_at + 30, abs=1e-6)

    run(scenario())


def test_an_aged_video_is_taken_before_images(store_backend):
    async def scenario():
        async with store_backend.open(job_video_aging_s=0) as store:
            await submit(store, "image")
            video = await submit(store, "video")
            [taken] = await store.lease("w1", images=1, videos=1, lease_s=30, limit=1)
            assert taken.job_id == video.job_id
            # Without room for videos, the aged video waits and images still flow.
            await submit(store, "video")
            [image] = await store.lease("w1", images=1, videos=0, lease_s=30, limit=1)
            assert image.kind == "image"

    run(scenario())


def test_a_video_never_starves_under_sustained_image_load(store_backend):
    aging = 0.05

    async def scenario():
        async with store_backend.open(job_video_aging_s=aging) as store:
            video = await submit(store, "video")
            await submit(store, "image")
            for _ in range(200):  # bounded; each round one image arrives and one slot frees, so images never run out
                await submit(store, "image")
                [taken] = await store.lease("w1", images=1, videos=1, lease_s=30, limit=1)
                if taken.kind == "video":
                    assert taken.job_id == video.job_id
                    assert (await store.depth())["image"] >= 1  # it went ahead of queued images
                    return
                await asyncio.sleep(aging / 5)
            raise AssertionError("the video was never leased while images kept arriving")

    run(scenario())


# --- leases: extend, expiry, attempts ------------------------------------------------------------------

def test_extend_keeps_a_lease_and_reports_jobs_the_worker_must_stop(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            mine, cancelled, theirs = (await submit(store), await submit(store), await submit(store))
            held = await store.lease("w1", images=2, videos=0, lease_s=1)
            await store.lease("w2", images=1, videos=0, lease_s=30)
            assert {job.job_id for job in held} == {mine.job_id, cancelled.job_id}
            await store.cancel(cancelled.job_id)
            lost = await store.extend("w1", [mine.job_id, cancelled.job_id, theirs.job_id, "garbage"], 120)
            assert lost == {cancelled.job_id, theirs.job_id, "garbage"}
            extended = await store.get(mine.job_id)
            assert extended.lease_expires_at > held[0].lease_expires_at + 60
            assert (await store.sweep(now=held[0].lease_expires_at + 1)).redelivered == ()

    run(scenario())


def test_an_expired_lease_is_delivered_again_and_only_the_new_holder_may_finish(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store)
            [first] = await store.lease("w1", images=1, videos=0, lease_s=30)
            report = await store.sweep(now=first.lease_expires_at + 1)
            assert report.redelivered == (job.job_id,) and report.exhausted == ()
            requeued = await store.get(job.job_id)
            assert requeued.status is JobStatus.QUEUED and requeued.attempts == 1 and requeued.lease_owner is None
            assert requeued.started_at == first.started_at
            [second] = await store.lease("w2", images=1, videos=0, lease_s=30)
            assert second.job_id == job.job_id and second.attempts == 2
            assert await store.extend("w1", [job.job_id], 30) == {job.job_id}
            assert not await store.succeed(job.job_id, "w1", b'{"late": true}')
            assert await store.succeed(job.job_id, "w2", b'{"output": "x"}')
            done = await store.get(job.job_id)
            assert done.status is JobStatus.SUCCEEDED and done.result == b'{"output": "x"}' and done.attempts == 2

    run(scenario())


def test_after_the_last_attempt_the_job_fails_with_attempts_exhausted(store_backend, spool):
    async def scenario():
        async with store_backend.open(job_max_attempts=2) as store:
            job = await submit(store, upload=spool(b"bytes"))
            now = time.time()
            for attempt in (1, 2):
                [leased] = await store.lease(f"w{attempt}", images=1, videos=0, lease_s=30)
                assert leased.attempts == attempt
                now = max(now, leased.lease_expires_at) + 1
                report = await store.sweep(now=now)
            assert report.exhausted == (job.job_id,) and report.redelivered == ()
            failed = await store.get(job.job_id)
            assert failed.status is JobStatus.FAILED and failed.attempts == 2
            assert failed.error["code"] == "job_attempts_exhausted" and failed.error["attempts"] == 2
            assert failed.finished_at is not None
            with pytest.raises(MediaNotFound):
                await store.open_media(failed)
            assert await store.lease("w3", images=1, videos=1, lease_s=30) == []

    run(scenario())


def test_several_stores_sweeping_at_once_move_each_job_once(store_backend):
    async def scenario():
        async with store_backend.open() as first, store_backend.open() as second:
            jobs = [await submit(first) for _ in range(12)]
            leased = await first.lease("w1", images=12, videos=0, lease_s=30)
            later = max(job.lease_expires_at for job in leased) + 1
            reports = await asyncio.gather(*(store.sweep(now=later) for store in (first, second, first, second)))
            moved = [job_id for report in reports for job_id in report.redelivered]
            assert sorted(moved) == sorted(job.job_id for job in jobs)

    run(scenario())


# --- finishing --------------------------------------------------------------------------------------------

def test_a_result_is_written_once(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store)
            await store.lease("w1", images=1, videos=0, lease_s=30)
            body = json.dumps({"output": "a cat", "model": "tiny"}).encode()
            assert await store.succeed(job.job_id, "w1", body)
            assert not await store.succeed(job.job_id, "w1", b'{"output": "different"}')
            assert not await store.succeed(job.job_id, "w2", b'{"output": "other worker"}')
            assert await store.succeed(job.job_id, "w1", body)  # the same call again: still ours, nothing new
            done = await store.get(job.job_id)
            assert done.status is JobStatus.SUCCEEDED and done.result == body and done.finished_at is not None
            failed_after = await store.fail(job.job_id, "w1", {"code": "inference_failed", "message": "m"},
                                            retryable=False)
            assert failed_after == done

    run(scenario())


def test_a_retryable_failure_requeues_until_the_attempts_run_out(store_backend):
    async def scenario():
        async with store_backend.open(job_max_attempts=2) as store:
            job = await submit(store)
            error = {"code": "worker_failed", "message": "the worker hit an error"}
            await store.lease("w1", images=1, videos=0, lease_s=30)
            await store.progress(job.job_id, "w1", {"stage": "captions", "done": 1})
            again = await store.fail(job.job_id, "w1", error, retryable=True)
            assert again.status is JobStatus.QUEUED and again.attempts == 1 and again.error is None
            assert again.progress is None and again.lease_owner is None
            await store.lease("w2", images=1, videos=0, lease_s=30)
            final = await store.fail(job.job_id, "w2", error, retryable=True)
            assert final.status is JobStatus.FAILED and final.error == error and final.attempts == 2
            assert await store.get(job.job_id) == final

    run(scenario())


def test_a_permanent_failure_ends_the_job_at_once(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store)
            await store.lease("w1", images=1, videos=0, lease_s=30)
            error = {"code": "invalid_image", "message": "The image is corrupt.", "request_id": "r1"}
            assert (await store.fail(job.job_id, "w2", error, retryable=False)).status is JobStatus.RUNNING
            failed = await store.fail(job.job_id, "w1", error, retryable=False)
            assert failed.status is JobStatus.FAILED and failed.error == error and failed.attempts == 1

    run(scenario())


def test_progress_is_recorded_only_for_the_lease_holder(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store, "video")
            await store.lease("w1", images=0, videos=1, lease_s=30)
            await store.progress(job.job_id, "w1", {"stage": "scenes", "frames": 120})
            await store.progress(job.job_id, "w2", {"stage": "forged"})
            assert (await store.get(job.job_id)).progress == {"stage": "scenes", "frames": 120}

    run(scenario())


# --- cancel -------------------------------------------------------------------------------------------

def test_cancelling_a_queued_job_removes_it_from_the_queue(store_backend, spool):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store, upload=spool(b"bytes"))
            cancelled = await store.cancel(job.job_id)
            assert cancelled.status is JobStatus.CANCELLED and cancelled.finished_at is not None
            assert await store.get(job.job_id) == cancelled
            assert await store.depth() == {"image": 0, "video": 0}
            assert await store.lease("w1", images=5, videos=5, lease_s=30) == []
            with pytest.raises(MediaNotFound):
                await store.open_media(cancelled)
            assert await store.cancel(job.job_id) == cancelled  # finished: unchanged

    run(scenario())


def test_cancelling_a_running_job_tells_its_worker_and_blocks_its_result(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store)
            await store.lease("w1", images=1, videos=0, lease_s=30)
            cancelled = await store.cancel(job.job_id)
            assert cancelled.status is JobStatus.CANCELLED and cancelled.attempts == 1
            assert await store.extend("w1", [job.job_id], 30) == {job.job_id}
            assert not await store.succeed(job.job_id, "w1", b"{}")
            assert await store.get(job.job_id) == cancelled
            assert (await store.sweep(now=time.time() + 3 * 30)).redelivered == ()

    run(scenario())


# --- TTL and expiry -------------------------------------------------------------------------------------

def test_finished_jobs_are_purged_with_their_media_after_the_ttl(store_backend, spool):
    async def scenario():
        async with store_backend.open(job_ttl_s=60) as store:
            done = await submit(store, upload=spool(b"a"))
            cancelled = await submit(store, upload=spool(b"b"))
            waiting = await submit(store, upload=spool(b"c"))
            await store.lease("w1", images=1, videos=0, lease_s=30)
            await store.succeed(done.job_id, "w1", b"{}")
            await store.cancel(cancelled.job_id)
            assert (await store.sweep(now=time.time() + 30)).purged == ()
            assert (await store.get(done.job_id)).status is JobStatus.SUCCEEDED
            report = await store.sweep(now=time.time() + 61)
            assert sorted(report.purged) == sorted([done.job_id, cancelled.job_id])
            assert await store.get(done.job_id) is None and await store.get(cancelled.job_id) is None
            assert await store.cancel(done.job_id) is None
            with pytest.raises(JobNotFound):
                await store.fail(done.job_id, "w1", {"code": "x", "message": "y"}, retryable=False)
            with await store.open_media(await store.get(waiting.job_id)) as reader:
                assert reader.read() == b"c"
            await store.cancel(waiting.job_id)
            await store.sweep(now=time.time() + 61)
        assert store_backend.leftovers() == []  # no row, file or key of any of the three is left

    run(scenario())


def test_jobs_queued_too_long_expire(store_backend):
    async def scenario():
        async with store_backend.open(job_max_queued_s=10) as store:
            old = await submit(store, "video")
            assert (await store.sweep(now=time.time() + 5)).expired == ()
            report = await store.sweep(now=time.time() + 11)
            assert report.expired == (old.job_id,)
            expired = await store.get(old.job_id)
            assert expired.status is JobStatus.EXPIRED and expired.error["code"] == "job_expired"
            assert await store.lease("w1", images=1, videos=1, lease_s=30) == []
            assert (await store.counts())["expired"] == 1

    run(scenario())


# --- bad input ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("job_id", GARBAGE_IDS + ["A" * 32])
def test_garbage_and_unknown_ids_are_simply_not_found(store_backend, job_id):
    async def scenario():
        async with store_backend.open() as store:
            assert await store.get(job_id) is None
            assert await store.cancel(job_id) is None
            assert not await store.succeed(job_id, "w1", b"{}")
            assert await store.progress(job_id, "w1", {"stage": "x"}) is None
            assert await store.extend("w1", [job_id], 30) == {job_id}
            with pytest.raises(JobNotFound):
                await store.fail(job_id, "w1", {"code": "x", "message": "y"}, retryable=True)

    run(scenario())


def test_a_lease_needs_a_worker_and_a_positive_length(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            job = await submit(store)
            for worker, seconds in (("", 30), ("w1", 0), ("w1", -1), ("w1", float("nan"))):
                with pytest.raises(ValueError, match="lease"):
                    await store.lease(worker, images=1, videos=1, lease_s=seconds)
                with pytest.raises(ValueError, match="lease"):
                    await store.extend(worker, [job.job_id], seconds)
            assert (await store.get(job.job_id)).status is JobStatus.QUEUED

    run(scenario())


def test_options_that_are_not_json_are_refused_before_anything_is_stored(store_backend):
    async def scenario():
        async with store_backend.open() as store:
            with pytest.raises(ValueError, match="options"):
                await store.submit("image", {"prompt": object()}, source_path="/a.jpg", max_queued=10)
            with pytest.raises(ValueError, match="exactly one"):
                await store.submit("image", OPTIONS, max_queued=10)
            with pytest.raises(ValueError, match="kind"):
                await store.submit("audio", OPTIONS, source_path="/a.wav", max_queued=10)
            assert await store.depth() == {"image": 0, "video": 0}

    run(scenario())
