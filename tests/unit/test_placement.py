from fastvlm_engine.cluster.endpoint import Device
from fastvlm_engine.config import parse_gpu_sizes
from fastvlm_engine.supervisor.inventory import GpuStatus, SimulatedInventory
from fastvlm_engine.supervisor.placement import Placement

GiB = 1 << 30


def plan(**kw) -> Placement:
    return Placement(**{"max_workers": 0, "max_workers_per_gpu": 4, "gpu_reserve_bytes": 2 * GiB,
                        "ram_max_fraction": 0.9, **kw})


def fill(placement: Placement, inventory: SimulatedInventory, footprint: int) -> dict[Device, int]:
    """Drive placement the way the pool does: one worker per GPU first, then one more per load."""
    counts: dict[Device, int] = {}
    for device in placement.initial(inventory.gpus(), True):
        counts[device] = counts.get(device, 0) + 1
        inventory.worker_started(device.gpu)
    while True:
        device = placement.next_device(inventory.gpus(), True, counts,
                                       {g.index: footprint for g in inventory.gpus()}, 0.1, 0.01)
        if device is None:
            return counts
        counts[device] = counts.get(device, 0) + 1
        inventory.worker_started(device.gpu)


def test_no_gpu_means_cpu_workers_capped_at_two_by_default():
    placement = plan()
    assert placement.initial([], False) == [Device()]
    assert placement.next_device([], False, {Device(): 1}, {}, 0.1, 0.01) == Device()
    assert placement.next_device([], False, {Device(): 2}, {}, 0.1, 0.01) is None


def test_ram_threshold_stops_spawning():
    assert plan().next_device([], False, {Device(): 1}, {}, 0.85, 0.1) is None


def test_spawning_stops_at_the_gpu_memory_reserve():
    inventory = SimulatedInventory(parse_gpu_sizes("24GiB,12GiB"), 6 * GiB)
    counts = fill(plan(), inventory, 6 * GiB)
    # 24 GiB: 3 workers leave 6 GiB; a 4th would leave 0 < 2 GiB reserve. 12 GiB: 1 leaves 6; a 2nd 0.
    assert counts == {Device(0, True): 3, Device(1, True): 1}


def test_per_gpu_and_total_caps():
    inventory = SimulatedInventory(parse_gpu_sizes("2x80GiB"), 6 * GiB)
    assert fill(plan(max_workers_per_gpu=2), inventory, 6 * GiB) == {Device(0, True): 2, Device(1, True): 2}
    inventory = SimulatedInventory(parse_gpu_sizes("2x80GiB"), 6 * GiB)
    assert sum(fill(plan(max_workers=3), inventory, 6 * GiB).values()) == 3


def test_new_workers_go_to_the_least_loaded_gpu():
    gpus = [GpuStatus(0, "g", 80 * GiB, 20 * GiB, None), GpuStatus(1, "g", 80 * GiB, 10 * GiB, None)]
    counts = {Device(0, True): 2, Device(1, True): 1}
    assert plan().next_device(gpus, True, counts, {0: GiB, 1: GiB}, 0.1, 0.01) == Device(1, True)


def test_a_gpu_still_loading_or_unmeasured_is_skipped():
    gpus = [GpuStatus(0, "g", 80 * GiB, 0, None)]
    counts = {Device(0, True): 1}
    assert plan().next_device(gpus, True, counts, {}, 0.1, 0.01) is None
    assert plan().next_device(gpus, True, counts, {0: GiB}, 0.1, 0.01, loading=frozenset({0})) is None


def test_a_full_gpu_gets_no_first_worker():
    gpus = [GpuStatus(0, "g", 24 * GiB, 23 * GiB, None), GpuStatus(1, "g", 24 * GiB, 0, None)]
    assert plan().initial(gpus, False) == [Device(1)]


def test_device_env_pins_one_gpu():
    assert Device(gpu=3).worker_env("GPU-3")["CUDA_VISIBLE_DEVICES"] == "GPU-3"
    assert Device(gpu=3).torch_device == "cuda:0"  # it sees only its own GPU
    assert Device(gpu=3, simulated=True).worker_env("") == {"CUDA_VISIBLE_DEVICES": ""}
    assert Device(gpu=3, simulated=True).torch_device == "cpu" and Device().torch_device == "cpu"
    assert Device().label == "cpu" and Device(gpu=1).label == "cuda:1"
    assert Device(gpu=1, simulated=True).label == "sim-gpu:1"
