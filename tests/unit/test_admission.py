from fastvlm_engine.router.admission import IMAGE, VIDEO, Admission
from fastvlm_engine.router.workers import Device, Worker, WorkerState


def ready(worker_id: str, gpu: int | None = None) -> Worker:
    worker = Worker(id=worker_id, device=Device(gpu=gpu, simulated=gpu is not None))
    worker.set_state(WorkerState.READY, "test")
    return worker


def test_slots_per_worker_then_none():
    admission = Admission(max_concurrent=2, max_video_concurrent=1)
    workers = [ready("a"), ready("b")]
    leases = [admission.acquire(workers, IMAGE) for _ in range(4)]
    assert all(leases) and admission.acquire(workers, IMAGE) is None
    assert sorted(w.in_flight for w in workers) == [2, 2]
    leases[0].release(succeeded=True)
    assert admission.acquire(workers, IMAGE) is not None


def test_least_loaded_wins_and_release_is_idempotent():
    admission = Admission(max_concurrent=4, max_video_concurrent=1)
    a, b = ready("a"), ready("b")
    first = admission.acquire([a, b], IMAGE)
    second = admission.acquire([a, b], IMAGE)
    assert {first.worker.id, second.worker.id} == {"a", "b"}
    first.release(succeeded=False)
    first.release(succeeded=False)
    assert first.worker.in_flight == 0


def test_latency_breaks_ties():
    admission = Admission(max_concurrent=4, max_video_concurrent=1)
    slow, fast = ready("a"), ready("b")
    slow.latency(IMAGE).update(5.0)
    fast.latency(IMAGE).update(0.5)
    assert admission.acquire([slow, fast], IMAGE).worker is fast


def test_least_loaded_gpu_breaks_ties():
    admission = Admission(max_concurrent=4, max_video_concurrent=1)
    busy_gpu_a, busy_gpu_b, idle_gpu = ready("a", gpu=0), ready("b", gpu=0), ready("c", gpu=1)
    busy_gpu_a.in_flight = 0
    busy_gpu_b.in_flight = 3
    idle_gpu.in_flight = 0
    assert admission.acquire([busy_gpu_a, busy_gpu_b, idle_gpu], IMAGE).worker is idle_gpu


def test_videos_cannot_take_every_slot_so_images_get_through():
    admission = Admission(max_concurrent=2, max_video_concurrent=1)
    workers = [ready("a"), ready("b")]
    videos = [admission.acquire(workers, VIDEO) for _ in range(3)]
    assert videos[0] and videos[1] and videos[2] is None
    assert admission.acquire(workers, IMAGE) is not None
    assert admission.capacity(workers, VIDEO) == 2 and admission.capacity(workers, IMAGE) == 4


def test_single_slot_workers_still_take_videos():
    admission = Admission(max_concurrent=1, max_video_concurrent=1)
    assert admission.acquire([ready("a")], VIDEO) is not None


def test_only_ready_workers_and_not_excluded():
    admission = Admission(max_concurrent=2, max_video_concurrent=1)
    starting = Worker(id="s", device=Device())
    a = ready("a")
    assert admission.acquire([starting], IMAGE) is None
    assert admission.acquire([starting, a], IMAGE, exclude=["a"]) is None
    assert admission.capacity([starting, a], IMAGE) == 2


def test_success_feeds_the_workers_latency():
    admission = Admission(max_concurrent=2, max_video_concurrent=1)
    worker = ready("a")
    admission.acquire([worker], IMAGE).release(succeeded=True)
    assert worker.latency(IMAGE).value is not None
    assert worker.latency(VIDEO).value is None
