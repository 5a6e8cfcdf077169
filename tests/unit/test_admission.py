import asyncio

import pytest

from fastvlm_engine.cluster.endpoint import Device, WorkerEndpoint, WorkerState
from fastvlm_engine.router.admission import IMAGE, VIDEO, Admission


def ready(worker_id: str, gpu: int | None = None, slots: int = 2) -> WorkerEndpoint:
    worker = WorkerEndpoint(id=worker_id, device=Device(gpu=gpu, simulated=gpu is not None))
    worker.set_state(WorkerState.READY, "test")
    worker.slots = slots
    return worker


def admission_over(workers, *, max_video=1, **queue) -> Admission:
    return Admission(lambda: workers, max_video, **queue)


def test_slots_per_worker_then_none():
    workers = [ready("a"), ready("b")]
    admission = admission_over(workers)
    leases = [admission.try_acquire(IMAGE) for _ in range(4)]
    assert all(leases) and admission.try_acquire(IMAGE) is None
    assert sorted(w.in_flight for w in workers) == [2, 2]
    leases[0].release(succeeded=True)
    assert admission.try_acquire(IMAGE) is not None


def test_slots_come_from_each_worker():
    small, big = ready("small", slots=1), ready("big", slots=5)
    admission = admission_over([small, big])
    leases = [admission.try_acquire(IMAGE) for _ in range(6)]
    assert all(leases) and admission.try_acquire(IMAGE) is None
    assert (small.in_flight, big.in_flight) == (1, 5)
    assert admission.capacity(IMAGE) == 6


def test_worker_slots_follow_the_reported_engine_capacity_up_to_the_cap():
    worker = ready("a")
    worker.update_capacity({"sequences": 12, "context_tokens": 4096}, max_concurrent=64)
    assert worker.slots == 12
    worker.update_capacity({"sequences": 500}, max_concurrent=64)
    assert worker.slots == 64
    worker.update_capacity(None, max_concurrent=8)
    assert worker.slots == 8


def test_least_loaded_wins_and_release_is_idempotent():
    a, b = ready("a", slots=4), ready("b", slots=4)
    admission = admission_over([a, b])
    first = admission.try_acquire(IMAGE)
    second = admission.try_acquire(IMAGE)
    assert {first.worker.id, second.worker.id} == {"a", "b"}
    first.release(succeeded=False)
    first.release(succeeded=False)
    assert first.worker.in_flight == 0


def test_latency_breaks_ties():
    slow, fast = ready("a", slots=4), ready("b", slots=4)
    slow.latency(IMAGE).update(5.0)
    fast.latency(IMAGE).update(0.5)
    assert admission_over([slow, fast]).try_acquire(IMAGE).worker is fast


def test_least_loaded_gpu_breaks_ties():
    busy_gpu_a, busy_gpu_b = ready("a", gpu=0, slots=4), ready("b", gpu=0, slots=4)
    idle_gpu = ready("c", gpu=1, slots=4)
    busy_gpu_b.in_flight = 3
    admission = admission_over([busy_gpu_a, busy_gpu_b, idle_gpu])
    assert admission.try_acquire(IMAGE).worker is idle_gpu


def test_videos_cannot_take_every_slot_so_images_get_through():
    workers = [ready("a"), ready("b")]
    admission = admission_over(workers)
    videos = [admission.try_acquire(VIDEO) for _ in range(3)]
    assert videos[0] and videos[1] and videos[2] is None
    assert admission.try_acquire(IMAGE) is not None
    assert admission.capacity(VIDEO) == 2 and admission.capacity(IMAGE) == 4


def test_single_slot_workers_still_take_videos():
    assert admission_over([ready("a", slots=1)]).try_acquire(VIDEO) is not None


def test_only_ready_workers_and_not_excluded():
    starting = WorkerEndpoint(id="s", device=Device())
    a = ready("a")
    admission = admission_over([starting, a])
    assert admission_over([starting]).try_acquire(IMAGE) is None
    assert admission.try_acquire(IMAGE, exclude=["a"]) is None
    assert admission.capacity(IMAGE) == 2


def test_success_feeds_the_workers_latency():
    worker = ready("a")
    admission_over([worker]).try_acquire(IMAGE).release(succeeded=True)
    assert worker.latency(IMAGE).value is not None
    assert worker.latency(VIDEO).value is None


# --- the admission queue ----------------------------------------------------------------------

def test_a_waiting_request_gets_the_slot_the_moment_it_frees():
    async def run() -> None:
        worker = ready("a", slots=1)
        admission = admission_over([worker], queue_size=4, queue_wait_s=5.0)
        held = admission.try_acquire(IMAGE)
        waiting = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0.01)
        assert admission.queue_depth(IMAGE) == 1 and not waiting.done()
        held.release(succeeded=True)
        lease = await asyncio.wait_for(waiting, 1.0)
        assert lease is not None and lease.worker is worker and worker.in_flight == 1
        assert admission.queue_depth(IMAGE) == 0

    asyncio.run(run())


def test_the_queue_is_first_in_first_out_and_bounded():
    async def run() -> None:
        worker = ready("a", slots=1)
        admission = admission_over([worker], queue_size=2, queue_wait_s=5.0)
        held = admission.try_acquire(IMAGE)
        first = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        second = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        assert not admission.could_wait(IMAGE)
        assert await admission.acquire(IMAGE) is None  # the queue is full: shed at once
        held.release(succeeded=True)
        lease = await asyncio.wait_for(first, 1.0)
        assert not second.done()
        lease.release(succeeded=True)
        (await asyncio.wait_for(second, 1.0)).release(succeeded=True)
        assert worker.in_flight == 0

    asyncio.run(run())


def test_a_wait_past_the_limit_is_shed_and_frees_its_place():
    async def run() -> None:
        worker = ready("a", slots=1)
        admission = admission_over([worker], queue_size=4, queue_wait_s=0.05)
        admission.try_acquire(IMAGE)
        assert await admission.acquire(IMAGE) is None
        assert admission.queue_depth(IMAGE) == 0

    asyncio.run(run())


def test_a_request_whose_expected_wait_is_too_long_is_not_queued():
    worker = ready("a", slots=1)
    admission = admission_over([worker], queue_size=10, queue_wait_s=1.0,
                               expected_wait=lambda endpoint, position: 0.4 * position)
    admission.try_acquire(IMAGE)
    assert admission.could_wait(IMAGE)  # 0.4 s ahead

    async def run() -> None:
        tasks = [asyncio.create_task(admission.acquire(IMAGE)) for _ in range(2)]
        await asyncio.sleep(0)
        assert admission.queue_depth(IMAGE) == 2 and not admission.could_wait(IMAGE)  # third: 1.2 s > 1 s
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def test_a_cancelled_waiter_gives_its_slot_to_the_next():
    async def run() -> None:
        worker = ready("a", slots=1)
        admission = admission_over([worker], queue_size=4, queue_wait_s=5.0)
        held = admission.try_acquire(IMAGE)
        leaving = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        staying = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        held.release(succeeded=True)  # hands the slot to `leaving`...
        leaving.cancel()  # ...which is cancelled before it runs: the slot must move on
        with pytest.raises(asyncio.CancelledError):
            await leaving
        lease = await asyncio.wait_for(staying, 1.0)
        assert lease.worker.in_flight == 1

    asyncio.run(run())


def test_images_go_first_but_an_aged_video_goes_before_them():
    now = [0.0]

    async def run() -> None:
        worker = ready("a", slots=2)
        admission = admission_over([worker], max_video=1, queue_size=8, queue_wait_s=60.0, video_aging_s=5.0,
                                   clock=lambda: now[0])
        first, second = admission.try_acquire(IMAGE), admission.try_acquire(IMAGE)
        video = asyncio.create_task(admission.acquire(VIDEO))
        await asyncio.sleep(0)
        image = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        first.release(succeeded=True)  # young video: the image goes first
        assert (await asyncio.wait_for(image, 1.0)).endpoint == IMAGE and not video.done()
        later_image = asyncio.create_task(admission.acquire(IMAGE))
        await asyncio.sleep(0)
        now[0] = 6.0  # the video has waited past the aging limit
        second.release(succeeded=True)
        assert (await asyncio.wait_for(video, 1.0)).endpoint == VIDEO and not later_image.done()
        later_image.cancel()
        await asyncio.gather(later_image, return_exceptions=True)

    asyncio.run(run())


def tagged(worker_id: str, host: str, slots: int = 1, **tags: str) -> WorkerEndpoint:
    worker = ready(worker_id, slots=slots)
    worker.host, worker.tags = host, dict(tags)
    return worker


def test_required_tags_pick_only_matching_workers_and_capacity_counts_only_them():
    big, small = tagged("a/w0", "a", slots=2, gpu="big"), tagged("b/w0", "b", slots=3, gpu="small")
    admission = admission_over([big, small])
    leases = [admission.try_acquire(IMAGE, tags={"gpu": "big"}) for _ in range(2)]
    assert {lease.worker.id for lease in leases} == {"a/w0"}
    assert admission.try_acquire(IMAGE, tags={"gpu": "big"}) is None  # never a silent fallback to b
    assert admission.capacity(IMAGE, {"gpu": "big"}) == 2 and admission.capacity(IMAGE) == 5
    assert admission.matching({"gpu": "huge"}) == [] and not admission.available(IMAGE, {"gpu": "huge"})
    assert admission.try_acquire(IMAGE).worker is small  # no tags: anyone


def test_the_same_gpu_index_on_two_hosts_is_two_gpus_in_the_tie_break():
    a0, a1 = tagged("a/w0", "a", slots=4), tagged("a/w1", "a", slots=4)
    b0 = tagged("b/w0", "b", slots=4)
    for worker in (a0, a1, b0):
        worker.device = Device(gpu=0)  # every host numbers its GPUs from 0
    a0.in_flight = 1  # a's GPU 0 is busier than b's GPU 0, so a1 (idle, same GPU as a0) loses to b0
    admission = admission_over([a0, a1, b0])
    assert admission.try_acquire(IMAGE).worker is b0


def test_routing_counts_what_a_worker_reports_for_other_routers():
    shared, idle = tagged("a/w0", "a", slots=4), tagged("b/w0", "b", slots=4)
    shared.reported_in_flight = 3  # another router's requests
    assert admission_over([shared, idle]).try_acquire(IMAGE).worker is idle


def test_a_waiter_only_busy_hosts_match_does_not_hold_up_the_ones_behind_it():
    async def scenario() -> tuple[str, str]:
        big, small = tagged("a/w0", "a", gpu="big"), tagged("b/w0", "b", gpu="small")
        admission = admission_over([big, small], queue_size=4, queue_wait_s=5.0)
        held_big = admission.try_acquire(IMAGE, tags={"gpu": "big"})
        held_small = admission.try_acquire(IMAGE, tags={"gpu": "small"})
        first = asyncio.ensure_future(admission.acquire(IMAGE, {"gpu": "big"}))
        second = asyncio.ensure_future(admission.acquire(IMAGE, {"gpu": "small"}))
        await asyncio.sleep(0)
        held_small.release(succeeded=True)  # only the second waiter fits the freed slot
        lease = await asyncio.wait_for(second, 2)
        assert not first.done()
        held_big.release(succeeded=True)
        other = await asyncio.wait_for(first, 2)
        return lease.worker.id, other.worker.id

    assert asyncio.run(scenario()) == ("b/w0", "a/w0")


def test_the_auto_queue_holds_a_burst_far_above_the_slots_while_its_wait_is_within_the_limit():
    """A burst of 30x the slots, all servable within the wait limit, waits whole instead of being shed."""
    from fastvlm_engine.config import load_settings
    from fastvlm_engine.router.state import admission_queue_size

    settings = load_settings(admission_queue_size=0)
    workers = [ready("a", slots=4), ready("b", slots=4)]
    admission = admission_over(workers, queue_size=lambda: admission_queue_size(settings, 8), queue_wait_s=5.0,
                               expected_wait=lambda endpoint, position: 0.1 * position / 8)  # 0.1 s per request

    async def run() -> None:
        held = [admission.try_acquire(IMAGE) for _ in range(8)]
        waiting = [asyncio.create_task(admission.acquire(IMAGE)) for _ in range(240)]
        await asyncio.sleep(0)
        assert admission.queue_depth(IMAGE) == 240 and all(not task.done() for task in waiting)
        for lease in held:
            lease.release(succeeded=True)
        served = 0
        for _ in range(10_000):  # each freed slot goes to the next waiter; bounded in case one never does
            if not waiting:
                break
            done = [task for task in waiting if task.done()]
            for task in done:
                (await task).release(succeeded=True)
                waiting.remove(task)
                served += 1
            await asyncio.sleep(0)
        assert served == 240 and sum(w.in_flight for w in workers) == 0

    asyncio.run(run())
    assert admission_queue_size(load_settings(admission_queue_size=7), 8) == 7  # an explicit size is kept
