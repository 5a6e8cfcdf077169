"""What devices and memory the host has: NVML when a driver is present, else none.

A missing library or driver is never an error: the router falls back to CPU workers. The
simulated inventory stands in for GPUs on machines that have none (tests, demos); it is named
as a simulation everywhere it appears, and its workers still compute on the CPU.

NVML numbers GPUs in PCI bus order and ignores ``CUDA_VISIBLE_DEVICES``; CUDA's own default order
is "fastest first". So a ``CUDA_VISIBLE_DEVICES`` the router inherited is honoured here (only
those GPUs are used; entries are PCI-order indices or ``GPU-…`` UUIDs), and each worker is pinned
by its GPU's UUID with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so it lands on the GPU placement chose.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Protocol

import psutil

__all__ = ["GpuStatus", "Inventory", "NvmlInventory", "SimulatedInventory", "host_ram_fraction", "make_inventory",
           "visible_indices"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuStatus:
    index: int
    name: str
    total_bytes: int
    used_bytes: int
    utilization: float | None  # 0..1, None when unknown
    uuid: str | None = None  # NVML's GPU-… identifier, when known

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)


class Inventory(Protocol):
    simulated: bool

    def gpus(self) -> list[GpuStatus]:
        """Current status of every GPU (empty on a CPU-only host)."""
        ...

    def worker_started(self, gpu: int) -> None:
        """A worker has loaded on this GPU (only the simulation needs to be told)."""
        ...

    def worker_stopped(self, gpu: int) -> None:
        ...

    def cuda_id(self, gpu: int) -> str:
        """What to put in a worker's CUDA_VISIBLE_DEVICES to give it exactly this GPU."""
        ...

    def close(self) -> None:
        ...


def visible_indices(setting: str | None, uuids: list[str]) -> list[int] | None:
    """GPU indices (PCI order) a ``CUDA_VISIBLE_DEVICES`` value allows; None when it is unset.

    As CUDA does, the list stops at the first entry that names no GPU; an empty value hides all.
    """
    if setting is None:
        return None
    allowed: list[int] = []
    for entry in (e.strip() for e in setting.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            index = int(entry)
        else:
            index = next((i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)), -1)
        if index < 0:
            break
        if index not in allowed:
            allowed.append(index)
    return allowed


class NvmlInventory:
    """Real GPUs through nvidia-ml-py; empty when NVML or the driver is missing."""

    simulated = False

    def __init__(self, visible: str | None = None) -> None:
        self._nvml = None
        self._lock = threading.Lock()
        self._allowed: list[int] | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            uuids = [_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))) for i in range(count)]
            self._allowed = visible_indices(visible, uuids)
            shown = "all" if self._allowed is None else f"{len(self._allowed)} allowed by CUDA_VISIBLE_DEVICES"
            log.info("NVML: %d GPU(s) found, %s", count, shown)
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver not loaded ...
            log.info("no usable NVML (%s); workers will run on the CPU", type(exc).__name__)

    def gpus(self) -> list[GpuStatus]:
        nvml = self._nvml
        if nvml is None:
            return []
        found = []
        with self._lock:
            try:
                indices = range(nvml.nvmlDeviceGetCount()) if self._allowed is None else self._allowed
                for index in indices:
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    try:
                        utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
                    except Exception:
                        utilization = None
                    found.append(GpuStatus(index=index, name=_text(nvml.nvmlDeviceGetName(handle)),
                                           total_bytes=int(memory.total), used_bytes=int(memory.used),
                                           utilization=utilization,
                                           uuid=_text(nvml.nvmlDeviceGetUUID(handle))))
            except Exception as exc:
                log.warning("NVML query failed: %s", exc)
        return found

    def worker_started(self, gpu: int) -> None:
        pass

    def worker_stopped(self, gpu: int) -> None:
        pass

    def cuda_id(self, gpu: int) -> str:
        uuid = next((g.uuid for g in self.gpus() if g.index == gpu), None)
        return uuid or str(gpu)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass
            self._nvml = None


class SimulatedInventory:
    """SIMULATION: GPUs of the given sizes, each worker occupying ``worker_bytes`` on its GPU."""

    simulated = True

    def __init__(self, sizes: list[int], worker_bytes: int) -> None:
        self._sizes = list(sizes)
        self._workers = [0] * len(sizes)
        self._worker_bytes = worker_bytes

    def gpus(self) -> list[GpuStatus]:
        return [GpuStatus(index=i, name="simulated-gpu", total_bytes=size,
                          used_bytes=min(size, self._workers[i] * self._worker_bytes), utilization=None)
                for i, size in enumerate(self._sizes)]

    def worker_started(self, gpu: int) -> None:
        self._workers[gpu] += 1

    def worker_stopped(self, gpu: int) -> None:
        self._workers[gpu] = max(0, self._workers[gpu] - 1)

    def cuda_id(self, gpu: int) -> str:
        return ""  # simulated workers compute on the CPU

    def close(self) -> None:
        pass


def make_inventory(simulate_gpus: str, simulate_worker_mib: int) -> Inventory:
    from ..config import parse_gpu_sizes

    if simulate_gpus:
        sizes = parse_gpu_sizes(simulate_gpus)
        log.warning("SIMULATED GPU inventory: %d GPU(s); workers compute on the CPU", len(sizes))
        return SimulatedInventory(sizes, simulate_worker_mib * 1024 * 1024)
    return NvmlInventory(os.environ.get("CUDA_VISIBLE_DEVICES"))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def host_ram_fraction() -> float:
    """Fraction of host RAM in use (0..1)."""
    memory = psutil.virtual_memory()
    return 1.0 - memory.available / memory.total
