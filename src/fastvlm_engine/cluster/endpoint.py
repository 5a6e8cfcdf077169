"""What the router routes to: a worker endpoint, whoever started it.

An endpoint is a worker's address plus what routing needs to know about it: its host, device
and tags, how many requests it may hold (its slots) and holds now, its measured latency, its
state, and the credential a call to it carries. The router's own supervisor publishes the
workers it spawns as endpoints; the registry publishes the workers of every node. A local process
record (pid, log tail, restarts) stays inside the supervisor.
"""

from __future__ import annotations

import asyncio
import enum
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..stats import Ewma

__all__ = ["Credential", "Device", "EndpointLost", "TokenCredential", "WorkerEndpoint", "WorkerState"]

T = TypeVar("T")


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
    """Where a worker runs on its host: the CPU, or one GPU (real or simulated)."""

    gpu: int | None = None
    simulated: bool = False

    @property
    def label(self) -> str:
        if self.gpu is None:
            return "cpu"
        return f"sim-gpu:{self.gpu}" if self.simulated else f"cuda:{self.gpu}"

    def worker_env(self, cuda_id: str) -> dict[str, str]:
        """The CUDA runtime's environment for a worker on this device: only its GPU, as cuda:0."""
        if self.gpu is None or self.simulated:
            return {"CUDA_VISIBLE_DEVICES": ""}
        return {"CUDA_VISIBLE_DEVICES": cuda_id, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}

    @property
    def torch_device(self) -> str:
        """What the worker's FASTVLM_DEVICE is: it sees only its own GPU, as cuda:0."""
        return "cpu" if self.gpu is None or self.simulated else "cuda:0"


class Credential(Protocol):
    """What a call to a worker carries so the worker answers it."""

    def headers(self, method: str, path: str, *, body_length: int | None, request_id: str) -> dict[str, str]:
        ...


@dataclass(frozen=True)
class TokenCredential:
    """The per-process token a supervisor gave the worker it spawned (same host, same supervisor)."""

    header: str
    token: str = field(repr=False)

    def headers(self, method: str, path: str, *, body_length: int | None, request_id: str) -> dict[str, str]:
        return {self.header: self.token}


class EndpointLost(Exception):
    """The endpoint was declared lost (its registry entry expired or its checks failed) while a call
    to it was waiting: the call is abandoned, as if its connection had dropped."""


@dataclass(eq=False)
class WorkerEndpoint:
    id: str
    device: Device
    host: str = "local"  # the host name routing groups by (tags and drains apply per host)
    url: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    state: WorkerState = WorkerState.STARTING
    reason: str = "spawning"
    changed_at: float = field(default_factory=time.time)
    slots: int = 1  # requests it may hold at once: its engine's capacity, capped by max_concurrent
    in_flight: int = 0  # leases this router holds on it
    video_in_flight: int = 0
    reported_in_flight: int = 0  # what the worker itself holds (all routers, pulled jobs)
    gpu_free_bytes: int | None = None
    credential: Credential | None = field(default=None, repr=False)
    remote: bool = False  # from the registry, not this router's supervisor
    health: dict[str, Any] = field(default_factory=dict, repr=False)  # the last /worker_health answer
    _latency: dict[str, Ewma] = field(default_factory=dict, repr=False)
    _lost: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def mark_lost(self, reason: str) -> None:
        """Out of rotation for good; calls waiting on it end with :class:`EndpointLost`.

        A worker that comes back later is a new endpoint object: leases on this one only release
        this one's counters.
        """
        self.set_state(WorkerState.UNHEALTHY, reason)
        self._lost.set()

    async def unless_lost(self, call: Awaitable[T]) -> T:
        """Await ``call``, abandoning it when this endpoint is declared lost meanwhile.

        A partitioned host drops no connection: without this a request to it would hang until its
        timeout, long after routing stopped choosing the host.
        """
        if not self.remote:  # a local worker is never declared lost: its supervisor kills it instead
            return await call
        task = asyncio.ensure_future(call)
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise EndpointLost(self.reason)

    def auth_headers(self, method: str = "GET", path: str = "/", *, body_length: int | None = 0,
                     request_id: str = "") -> dict[str, str]:
        """Headers a call to this worker carries (it refuses calls without them)."""
        if self.credential is None:
            return {}
        return self.credential.headers(method, path, body_length=body_length, request_id=request_id or uuid.uuid4().hex)

    def latency(self, endpoint: str) -> Ewma:
        """Measured request duration on this worker (0 until measured, so new workers get tried)."""
        if endpoint not in self._latency:
            self._latency[endpoint] = Ewma(prior=0.0)
        return self._latency[endpoint]

    def load(self) -> float:
        """How full it is, 0..1+: the larger of this router's leases and what the worker reports."""
        return max(self.in_flight, self.reported_in_flight) / max(1, self.slots)

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
        """What /healthz shows for this worker (the supervisor adds its process details)."""
        return {
            "id": self.id, "host": self.host, "tags": dict(self.tags), "state": self.state.value,
            "reason": self.reason, "since": round(self.changed_at, 3), "device": self.device.label,
            "url": self.url if self.remote else None, "remote": self.remote,
            "in_flight": self.in_flight, "video_in_flight": self.video_in_flight,
            "max_concurrent": self.slots, "capacity": self.health.get("capacity"),
            "queue_depth": self.health.get("queue_depth"), "last_success_at": self.health.get("last_success_at"),
            "worker_in_flight": self.health.get("in_flight", self.reported_in_flight),
            "steps": self.health.get("steps"), "memory": self.health.get("memory"), "model": self.health.get("model"),
            "latency_ms": {endpoint: round(ewma.get() * 1000, 1) for endpoint, ewma in self._latency.items()
                           if ewma.value is not None},
        }
