"""The router's view of one worker: a slot in the pool that lives across process restarts."""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..auth import INTERNAL_TOKEN_HEADER
from .retry_after import Ewma

__all__ = ["Device", "Worker", "WorkerState"]


class WorkerState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    UNHEALTHY = "unhealthy"
    RESTARTING = "restarting"
    QUARANTINED = "quarantined"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Device:
    """Where a worker runs: the CPU, or one GPU (real or simulated)."""

    gpu: int | None = None
    simulated: bool = False

    @property
    def label(self) -> str:
        if self.gpu is None:
            return "cpu"
        return f"sim-gpu:{self.gpu}" if self.simulated else f"cuda:{self.gpu}"

    def worker_env(self, cuda_id: str) -> dict[str, str]:
        """Pin a worker to this device: it sees only its GPU (``cuda_id``: its UUID), as cuda:0."""
        if self.gpu is None or self.simulated:
            return {"CUDA_VISIBLE_DEVICES": "", "FASTVLM_DEVICE": "cpu"}
        return {"CUDA_VISIBLE_DEVICES": cuda_id, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "FASTVLM_DEVICE": "cuda:0"}


@dataclass(eq=False)
class Worker:
    id: str
    device: Device
    state: WorkerState = WorkerState.STARTING
    reason: str = "spawning"
    changed_at: float = field(default_factory=time.time)
    port: int | None = None
    pid: int | None = None
    host: str = "127.0.0.1"
    token: str = field(default="", repr=False)  # this process's internal token (new for every spawn)
    in_flight: int = 0
    video_in_flight: int = 0
    slots: int = 1  # requests it may hold at once: its engine's capacity, capped by max_concurrent
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    gpu_bytes: int | None = None  # GPU memory its load took, when measurable
    rss_bytes: int | None = None  # host memory after load
    failures: deque[float] = field(default_factory=deque, repr=False)  # monotonic times, pruned to the window
    last_failure: str | None = None
    heartbeat_misses: int = 0
    retiring: bool = False  # the router is stopping this process on purpose
    health: dict[str, Any] = field(default_factory=dict, repr=False)  # last /worker_health answer
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)
    _latency: dict[str, Ewma] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def auth_headers(self) -> dict[str, str]:
        """Headers every router → worker call carries (the worker refuses calls without them)."""
        return {INTERNAL_TOKEN_HEADER: self.token}

    def latency(self, endpoint: str) -> Ewma:
        """Measured request duration on this worker (0 until measured, so new workers get tried)."""
        if endpoint not in self._latency:
            self._latency[endpoint] = Ewma(prior=0.0)
        return self._latency[endpoint]

    def update_capacity(self, capacity: dict | None, max_concurrent: int) -> None:
        """Size this worker's slots from what its engine reported (sequences it can hold)."""
        sequences = (capacity or {}).get("sequences")
        if isinstance(sequences, int) and sequences >= 1:
            self.slots = min(max_concurrent, sequences)
        else:
            self.slots = max_concurrent

    def set_state(self, state: WorkerState, reason: str) -> None:
        self.state, self.reason, self.changed_at = state, reason, time.time()

    def snapshot(self) -> dict[str, Any]:
        """What /healthz shows for this worker."""
        return {
            "id": self.id, "state": self.state.value, "reason": self.reason,
            "since": round(self.changed_at, 3), "device": self.device.label, "pid": self.pid,
            "port": self.port, "in_flight": self.in_flight, "video_in_flight": self.video_in_flight,
            "max_concurrent": self.slots, "capacity": self.health.get("capacity"), "restarts": self.restarts,
            "failures_in_window": len(self.failures), "last_failure": self.last_failure,
            "queue_depth": self.health.get("queue_depth"), "last_success_at": self.health.get("last_success_at"),
            "worker_in_flight": self.health.get("in_flight"), "steps": self.health.get("steps"),
            "memory": self.health.get("memory"),
            "latency_ms": {endpoint: round(ewma.get() * 1000, 1) for endpoint, ewma in self._latency.items()
                           if ewma.value is not None},
        }
