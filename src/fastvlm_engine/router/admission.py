"""Choosing a worker slot before any media is read, or turning the request away.

Everything here runs on the router's event loop, so counters need no locks. A worker has
``max_concurrent`` slots; videos may hold at most ``max_video_concurrent`` of them, which keeps
image traffic from starving behind long videos. The least-loaded ready worker wins; ties go to
the GPU with less work in flight, then to the worker with the lower measured latency.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from .workers import Worker, WorkerState

__all__ = ["IMAGE", "VIDEO", "Admission", "Lease"]

IMAGE = "/predict_image"
VIDEO = "/summarize_video"


@dataclass(eq=False)
class Lease:
    """One slot on one worker; release it exactly once."""

    worker: Worker
    endpoint: str
    started: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self, *, succeeded: bool) -> float:
        """Free the slot; a success feeds the worker's latency estimate. Returns seconds held."""
        elapsed = time.monotonic() - self.started
        if self.released:
            return elapsed
        self.released = True
        self.worker.in_flight -= 1
        if self.endpoint == VIDEO:
            self.worker.video_in_flight -= 1
        if succeeded:
            self.worker.latency(self.endpoint).update(elapsed)
        return elapsed


class Admission:
    """Slot accounting over the pool's workers."""

    def __init__(self, max_concurrent: int, max_video_concurrent: int) -> None:
        if max_concurrent < 1 or max_video_concurrent < 1:
            raise ValueError("slot counts must be at least 1")
        self.max_concurrent = max_concurrent
        # With a single slot a video must be allowed to take it; otherwise keep one for images.
        self.max_video = min(max_video_concurrent, max_concurrent)

    def has_room(self, worker: Worker, endpoint: str) -> bool:
        if worker.state is not WorkerState.READY or worker.in_flight >= self.max_concurrent:
            return False
        return endpoint != VIDEO or worker.video_in_flight < self.max_video

    def acquire(self, workers: Iterable[Worker], endpoint: str, exclude: Iterable[str] = ()) -> Lease | None:
        """Take a slot on the best worker for ``endpoint``, or None when every slot is taken."""
        skip = set(exclude)
        pool = list(workers)
        candidates = [w for w in pool if w.id not in skip and self.has_room(w, endpoint)]
        if not candidates:
            return None
        gpu_load: dict[int | None, int] = {}
        for w in pool:
            gpu_load[w.device.gpu] = gpu_load.get(w.device.gpu, 0) + w.in_flight
        best = min(candidates, key=lambda w: (w.in_flight, gpu_load[w.device.gpu],
                                              w.latency(endpoint).get(), w.id))
        best.in_flight += 1
        if endpoint == VIDEO:
            best.video_in_flight += 1
        return Lease(worker=best, endpoint=endpoint)

    def capacity(self, workers: Iterable[Worker], endpoint: str) -> int:
        """Slots this endpoint could use on ready workers."""
        per_worker = self.max_video if endpoint == VIDEO else self.max_concurrent
        return sum(per_worker for w in workers if w.state is WorkerState.READY)
