"""Notices: a store hears at once when another process queues or finishes a job, on SQLite and on Redis.

Two store objects on the same data stand for two processes (each has its own notices: its own
Unix datagram socket with SQLite, its own subscription with Redis); the last tests use a real
second process. Each wait below has a timeout far longer than a notice takes, and the tests
assert that the wait ended because of a notice (``True``), not when the time ran out.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

from fastvlm_engine.config import load_settings
from fastvlm_engine.jobs import JobStatus, open_store_from_settings

OPTIONS = {"prompt": "p"}
LONG_S = 20.0
"""A wait that only a notice ends early; failing tests take this long."""
QUIET_S = 0.3
"""Long enough for a notice that should not come to show up, if it did."""


def run(coro):
    return asyncio.run(coro)


async def settled(store) -> int:
    """Start the store's notices and let the first (start-up) notice pass; the mark to wait from."""
    await store.notices.wait_queued(store.notices.queued_mark(), 2.0)
    await asyncio.sleep(0.05)
    return store.notices.queued_mark()


async def submit(store):
    return await store.submit("image", OPTIONS, source_path="/media/a.jpg", max_queued=100)


def test_a_job_queued_by_another_process_wakes_a_waiting_worker(store_backend):
    async def scenario():
        async with store_backend.open() as worker, store_backend.open() as router:
            mark = await settled(worker)
            assert not await worker.notices.wait_queued(mark, QUIET_S)  # nothing queued: no notice
            waiting = asyncio.ensure_future(worker.notices.wait_queued(mark, LONG_S))
            await asyncio.sleep(0.05)
            job = await submit(router)
            assert await waiting
            leased = await worker.lease("w1", images=1, videos=0, lease_s=30)
            assert [each.job_id for each in leased] == [job.job_id]

    run(scenario())


def test_a_job_finished_by_another_process_wakes_its_long_poll_and_only_its_own(store_backend):
    async def scenario():
        async with store_backend.open() as worker, store_backend.open() as router:
            first, second = await submit(router), await submit(router)
            await worker.lease("w1", images=2, videos=0, lease_s=30)
            await settled(router)
            with router.notices.watch_finished(first.job_id) as one, \
                    router.notices.watch_finished(second.job_id) as other:
                assert not await one.wait(QUIET_S)  # both running: no notice yet
                waiting = asyncio.ensure_future(one.wait(LONG_S))
                await asyncio.sleep(0.05)
                assert await worker.succeed(first.job_id, "w1", b'{"output": "x"}')
                assert await waiting
                assert (await router.get(first.job_id)).status is JobStatus.SUCCEEDED
                assert not await other.wait(QUIET_S)  # its job is still running
                assert (await router.get(second.job_id)).status is JobStatus.RUNNING

    run(scenario())


def test_a_finish_between_reading_the_job_and_waiting_is_not_missed(store_backend):
    async def scenario():
        async with store_backend.open() as worker, store_backend.open() as router:
            job = await submit(router)
            await worker.lease("w1", images=1, videos=0, lease_s=30)
            await settled(router)
            with router.notices.watch_finished(job.job_id) as watch:
                assert (await router.get(job.job_id)).status is JobStatus.RUNNING
                assert await worker.succeed(job.job_id, "w1", b"{}")  # before the wait starts
                await asyncio.sleep(0.1)
                assert await watch.wait(LONG_S)

    run(scenario())


async def submit_then_cancel_wakes(waiter, changer) -> None:
    """A submit by ``changer`` wakes ``waiter``'s queued wait, and its cancel wakes the job's watch."""
    mark = await settled(waiter)
    waiting = asyncio.ensure_future(waiter.notices.wait_queued(mark, LONG_S))
    await asyncio.sleep(0.05)
    job = await submit(changer)
    assert await waiting
    with waiter.notices.watch_finished(job.job_id) as watch:
        waiting = asyncio.ensure_future(watch.wait(LONG_S))
        await asyncio.sleep(0.05)
        assert (await changer.cancel(job.job_id)).status is JobStatus.CANCELLED
        assert await waiting


def test_this_process_own_changes_wake_its_waiters(store_backend):
    """With SQLite a process sends its datagrams only to the others: the store tells its own waiters itself."""
    async def scenario():
        async with store_backend.open() as store:
            await submit_then_cancel_wakes(store, store)

    run(scenario())


def test_a_redelivered_job_wakes_waiting_workers(store_backend):
    async def scenario():
        async with store_backend.open() as worker, store_backend.open() as other:
            job = await submit(worker)
            [leased] = await worker.lease("w1", images=1, videos=0, lease_s=30)
            mark = await settled(other)
            waiting = asyncio.ensure_future(other.notices.wait_queued(mark, LONG_S))
            await asyncio.sleep(0.05)
            report = await worker.sweep(now=leased.lease_expires_at + 1)  # w1's lease ran out
            assert report.redelivered == (job.job_id,)
            assert await waiting

    run(scenario())


def test_closing_the_store_wakes_its_waiters(store_backend):
    async def scenario():
        store = store_backend.open()
        job = await submit(store)
        mark = await settled(store)
        with store.notices.watch_finished(job.job_id) as watch:
            waits = [asyncio.ensure_future(store.notices.wait_queued(mark, LONG_S)),
                     asyncio.ensure_future(watch.wait(LONG_S))]
            await asyncio.sleep(0.05)
            await store.close()
            assert await asyncio.gather(*waits) == [True, True]

    run(scenario())


# --- SQLite's datagrams -----------------------------------------------------------------------------

SUBMIT_FROM_ANOTHER_PROCESS = """
import asyncio, sys
from fastvlm_engine.config import load_settings
from fastvlm_engine.jobs import open_store_from_settings

async def main():
    async with open_store_from_settings(load_settings(state_dir=sys.argv[1])) as store:
        job = await store.submit("image", {"prompt": "p"}, source_path="/media/a.jpg", max_queued=10)
        print(job.job_id)

asyncio.run(main())
"""


def test_a_job_queued_by_another_process_reaches_a_waiting_sqlite_store(tmp_path):
    state = tmp_path / "state"

    async def scenario():
        async with open_store_from_settings(load_settings(state_dir=state)) as store:
            mark = await settled(store)
            waiting = asyncio.ensure_future(store.notices.wait_queued(mark, LONG_S))
            await asyncio.sleep(0.05)
            done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", SUBMIT_FROM_ANOTHER_PROCESS,
                                                            str(state)], capture_output=True, text=True, timeout=60,
                                           env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            assert done.returncode == 0, done.stderr
            assert await waiting
            assert (await store.depth())["image"] == 1

    run(scenario())


def test_a_socket_left_by_a_killed_process_is_removed_and_does_not_stop_the_others(tmp_path):
    state = tmp_path / "state"

    async def scenario():
        async with open_store_from_settings(load_settings(state_dir=state)) as waiter, \
                open_store_from_settings(load_settings(state_dir=state)) as submitter:
            mark = await settled(waiter)
            stale = state / "jobs.db.notices" / "dead.0000"
            orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            orphan.bind(str(stale))
            orphan.close()  # bound, then gone without unlinking: as a SIGKILLed process leaves it
            waiting = asyncio.ensure_future(waiter.notices.wait_queued(mark, LONG_S))
            await asyncio.sleep(0.05)
            await submit(submitter)
            assert await waiting
            assert not stale.exists()

    run(scenario())


def test_notices_work_in_a_state_folder_too_long_for_a_socket_path(tmp_path):
    state = tmp_path / ("deep-" + "x" * 60) / ("er-" + "y" * 60) / "state"
    assert len(str(state / "jobs.db.notices" / "1234.abcd")) > 108  # more than sun_path holds

    async def scenario():
        async with open_store_from_settings(load_settings(state_dir=state)) as waiter, \
                open_store_from_settings(load_settings(state_dir=state)) as submitter:
            await submit_then_cancel_wakes(waiter, submitter)

    run(scenario())
