"""Where the next worker goes, if anywhere: pure decisions over measured memory.

The first worker on each usable device starts at once (start-ups overlap across GPUs). Each
time a worker finishes loading, its measured footprint says whether one more fits: a GPU takes
another worker while its free memory minus that footprint stays above the reserve, and the host
while RAM in use plus one more worker stays under its threshold. Among GPUs that qualify, the one
with the fewest workers (then the most free memory) wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..cluster.endpoint import Device
from .inventory import GpuStatus

__all__ = ["Placement"]

_CPU_DEFAULT_WORKERS = 2


@dataclass(frozen=True)
class Placement:
    max_workers: int  # 0 = auto
    max_workers_per_gpu: int
    gpu_reserve_bytes: int
    ram_max_fraction: float

    def total_cap(self, gpus: Sequence[GpuStatus]) -> int:
        if self.max_workers:
            return self.max_workers
        return len(gpus) * self.max_workers_per_gpu if gpus else _CPU_DEFAULT_WORKERS

    def initial(self, gpus: Sequence[GpuStatus], simulated: bool) -> list[Device]:
        """One worker per GPU with room for at least the reserve, or one CPU worker."""
        if not gpus:
            return [Device()]
        usable = [g for g in gpus if g.free_bytes > self.gpu_reserve_bytes]
        usable.sort(key=lambda g: -g.free_bytes)
        return [Device(gpu=g.index, simulated=simulated) for g in usable[: self.total_cap(gpus)]]

    def next_device(self, gpus: Sequence[GpuStatus], simulated: bool, counts: Mapping[Device, int],
                    gpu_footprint: Mapping[int, int], ram_fraction: float,
                    ram_per_worker_fraction: float, loading: frozenset[int] = frozenset()) -> Device | None:
        """The device for one more worker, or None when a cap or a memory threshold says stop.

        ``counts`` includes workers still starting; ``gpu_footprint`` maps a GPU to the memory one
        worker took there (measured after a load; GPUs without a measurement are skipped);
        GPUs in ``loading`` have a worker loading, so their free memory is not yet final.
        """
        if sum(counts.values()) >= self.total_cap(gpus):
            return None
        if ram_fraction + ram_per_worker_fraction > self.ram_max_fraction:
            return None
        if not gpus:
            return Device()
        eligible = []
        for gpu in gpus:
            device = Device(gpu=gpu.index, simulated=simulated)
            footprint = gpu_footprint.get(gpu.index)
            if (footprint is None or gpu.index in loading
                    or counts.get(device, 0) >= self.max_workers_per_gpu):
                continue
            if gpu.free_bytes - footprint >= self.gpu_reserve_bytes:
                eligible.append((counts.get(device, 0), -gpu.free_bytes, gpu.index, device))
        return min(eligible)[3] if eligible else None
