"""Choosing a worker slot for a request, or holding it briefly until one frees, or turning it away.

Everything here runs on the router's event loop, so counters need no locks. A worker has
``slots`` (its engine's capacity, capped by ``max_concurrent``); videos may hold at most
``max_video_concurrent`` of them, which keeps image traffic from starving behind long videos.
A request may require host tags (all must match the worker's). The least-loaded matching ready
worker wins — load being the larger of this router's leases and what the worker itself reports,
since other routers and pulled jobs share it — ties going to the GPU (of that host) with less
work in flight, then the one with more free memory, then the lower measured latency.

When every slot is taken, a request may wait in a bounded FIFO per endpoint class (the admission
queue) for up to ``queue_wait_s``; the moment a slot frees, it is handed to the first waiter that
fits that worker. Images go first, except that a video which has waited ``video_aging_s`` goes
before them — so videos are never starved by a steady stream of images. A request is turned
away at once (503) only when the queue is full or its expected wait is already past the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from ..cluster.endpoint import WorkerEndpoint, WorkerState
from ..cluster.tags import matches

NO_TAGS: Mapping[str, str] = {}

__all__ = ["IMAGE", "VIDEO", "Admission", "Lease"]

IMAGE = "/predict_image"
VIDEO = "/summarize_video"


@dataclass(eq=False)
class Lease:
    """One slot on one worker; release it exactly once (through its admission, which may hand the
    slot straight to a waiting request)."""

    worker: WorkerEndpoint
    endpoint: str
    on_release: Callable[[Lease], None] | None = None
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
        if self.on_release is not None:
            self.on_release(self)
        return elapsed


@dataclass(eq=False)
class _Waiter:
    endpoint: str
    tags: Mapping[str, str]
    future: asyncio.Future
    enqueued_at: float


class Admission:
    """Slot accounting over the worker endpoints, with a bounded wait for a slot."""

    def __init__(self, workers: Callable[[], Iterable[WorkerEndpoint]], max_video_concurrent: int, *,
                 queue_size: Callable[[], int] | int = 0, queue_wait_s: float = 0.0, video_aging_s: float = 5.0,
                 expected_wait: Callable[[str, int], float] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_video_concurrent < 1:
            raise ValueError("max_video_concurrent must be at least 1")
        if queue_wait_s < 0 or video_aging_s < 0:
            raise ValueError("queue_wait_s and video_aging_s must not be negative")
        self._workers = workers
        self.max_video = max_video_concurrent
        self._queue_size = queue_size if callable(queue_size) else (lambda: queue_size)
        self.queue_wait_s = queue_wait_s
        self.video_aging_s = video_aging_s
        self._expected_wait = expected_wait or (lambda endpoint, position: 0.0)
        self._clock = clock
        self._waiting: dict[str, deque[_Waiter]] = {IMAGE: deque(), VIDEO: deque()}

    # --- slots ------------------------------------------------------------------------------

    def video_slots(self, worker: WorkerEndpoint) -> int:
        # With a single slot a video must be allowed to take it; otherwise keep one for images.
        return min(self.max_video, worker.slots)

    def has_room(self, worker: WorkerEndpoint, endpoint: str, tags: Mapping[str, str] = NO_TAGS) -> bool:
        if worker.state is not WorkerState.READY or worker.in_flight >= worker.slots:
            return False
        if tags and not matches(tags, worker.tags):
            return False
        return endpoint != VIDEO or worker.video_in_flight < self.video_slots(worker)

    def matching(self, tags: Mapping[str, str] = NO_TAGS) -> list[WorkerEndpoint]:
        """Ready workers that offer every required tag."""
        return [w for w in self._workers() if w.state is WorkerState.READY and matches(tags, w.tags)]

    def try_acquire(self, endpoint: str, exclude: Iterable[str] = (), tags: Mapping[str, str] = NO_TAGS
                    ) -> Lease | None:
        """Take a slot on the best worker for ``endpoint`` now, or None when every slot is taken."""
        skip = set(exclude)
        pool = list(self._workers())
        candidates = [w for w in pool if w.id not in skip and self.has_room(w, endpoint, tags)]
        if not candidates:
            return None
        gpu_load: dict[tuple[str, int | None], int] = {}
        for w in pool:
            key = (w.host, w.device.gpu)
            gpu_load[key] = gpu_load.get(key, 0) + w.in_flight
        best = min(candidates, key=lambda w: (w.load(), gpu_load[(w.host, w.device.gpu)], -(w.gpu_free_bytes or 0),
                                              w.latency(endpoint).get(), w.id))
        best.in_flight += 1
        if endpoint == VIDEO:
            best.video_in_flight += 1
        return Lease(worker=best, endpoint=endpoint, on_release=self._released)

    def capacity(self, endpoint: str, tags: Mapping[str, str] = NO_TAGS) -> int:
        """Slots this endpoint could use on ready (matching) workers."""
        return sum(self.video_slots(w) if endpoint == VIDEO else w.slots for w in self.matching(tags))

    # --- the admission queue ----------------------------------------------------------------

    def queue_depth(self, endpoint: str) -> int:
        return len(self._waiting[endpoint])

    def could_wait(self, endpoint: str, tags: Mapping[str, str] = NO_TAGS) -> bool:
        """Would a request that finds no free slot be allowed to queue (cheap: no body read yet)?"""
        if self.queue_wait_s <= 0 or len(self._waiting[endpoint]) >= self._queue_size():
            return False
        if tags and not self.matching(tags):
            return False  # nothing could ever take it: say so now rather than after the wait
        return self._expected_wait(endpoint, len(self._waiting[endpoint]) + 1) <= self.queue_wait_s

    def available(self, endpoint: str, tags: Mapping[str, str] = NO_TAGS) -> bool:
        """A slot is free now, or the request could wait for one."""
        return any(self.has_room(w, endpoint, tags) for w in self._workers()) or self.could_wait(endpoint, tags)

    async def acquire(self, endpoint: str, tags: Mapping[str, str] = NO_TAGS) -> Lease | None:
        """A slot now, or after waiting in the queue; None when the request must be turned away."""
        lease = self.try_acquire(endpoint, tags=tags)
        if lease is not None or not self.could_wait(endpoint, tags):
            return lease
        waiter = _Waiter(endpoint, tags, asyncio.get_running_loop().create_future(), self._clock())
        self._waiting[endpoint].append(waiter)
        try:  # asyncio.timeout, not wait_for: wait_for may swallow a cancel that races the hand-over
            async with asyncio.timeout(self.queue_wait_s):
                await asyncio.shield(waiter.future)
        except TimeoutError:
            pass  # a slot may still have been handed over at the last moment: _leave keeps it
        except asyncio.CancelledError:
            self._leave(waiter, keep=False)
            raise
        return self._leave(waiter, keep=True)

    def _leave(self, waiter: _Waiter, *, keep: bool) -> Lease | None:
        """Stop waiting: the lease handed over, if any (released again unless ``keep``)."""
        queue = self._waiting[waiter.endpoint]
        if waiter in queue:
            queue.remove(waiter)
        if not waiter.future.done():
            waiter.future.cancel()
            return None
        lease = waiter.future.result()
        if not keep:
            lease.release(succeeded=False)  # goes to the next waiter or back to the pool
            return None
        return lease

    def _released(self, lease: Lease) -> None:
        self.dispatch()

    def dispatch(self) -> None:
        """Hand free slots to waiting requests (call when a slot frees or a worker becomes ready)."""
        while True:
            waiter = self._next_waiter()
            if waiter is None:
                return
            lease = self.try_acquire(waiter.endpoint, tags=waiter.tags)
            if lease is None:
                return
            self._waiting[waiter.endpoint].remove(waiter)
            waiter.future.set_result(lease)

    def _next_waiter(self) -> _Waiter | None:
        """Images first, unless the oldest video has waited past the aging limit; in each queue the
        first waiter some worker has room for now (a waiter whose tags only busy hosts match does
        not hold up the ones behind it)."""
        images, videos = self._waiting[IMAGE], self._waiting[VIDEO]
        for queue in (images, videos):
            while queue and queue[0].future.done():  # timed out or cancelled, not yet cleaned up
                queue.popleft()
        aged = videos and self._clock() - videos[0].enqueued_at >= self.video_aging_s
        order = (videos, images) if aged else (images, videos)
        workers = list(self._workers())
        for queue in order:
            for waiter in queue:
                if not waiter.future.done() and any(self.has_room(w, waiter.endpoint, waiter.tags) for w in workers):
                    return waiter
        return None
