"""Dynamic batching: one inference thread owns the model, everyone else queues.

Requests wait in a bounded queue. The inference thread takes the first one, then keeps
collecting until ``max_batch_size`` items or ``max_batch_wait_s`` after the first (0 = take
what is already queued), skips items whose caller gave up, answers items past their deadline
with :class:`~fastvlm_engine.errors.InferenceTimeout`, and runs the rest as one batch.
A failing batch is re-run item by item so one bad input fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Generic, TypeVar

from ..errors import EngineError, InferenceFailed, InferenceTimeout, QueueFull

__all__ = ["BatchObserver", "BatchResult", "Batcher", "BatcherStats"]

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

BatchObserver = Callable[[int, float], None]
"""Called after each batch with (batch size, seconds); failures are logged, never raised."""

BatchContext = Callable[[Sequence[contextvars.Context], int], AbstractContextManager]
"""Wraps each batch given the submitters' contexts (e.g. a tracing span linking their traces)."""


@dataclass(frozen=True)
class BatchResult(Generic[Out]):
    """One item's output plus where its time went."""

    output: Out
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass(frozen=True, eq=False)
class _Job(Generic[In]):
    item: In
    future: Future
    enqueued_at: float
    deadline: float
    context: contextvars.Context  # the submitter's context vars (request id, trace)


@dataclass
class BatcherStats:
    """Counters read by health checks; written only by the inference thread."""

    batches: int = 0
    items: int = 0
    failures: int = 0
    last_success_at: float | None = None  # time.time() of the last successful batch
    busy_since: float | None = None  # time.monotonic() when the running batch started


class Batcher(Generic[In, Out]):
    """Feeds a single-threaded ``run_batch`` from a bounded queue."""

    def __init__(self, run_batch: Callable[[Sequence[In]], Sequence[Out]], *, max_batch_size: int = 8,
                 max_batch_wait_s: float = 0.005, max_queue_size: int = 256, timeout_s: float = 600.0,
                 observers: Sequence[BatchObserver] = (), batch_context: BatchContext | None = None,
                 name: str = "inference") -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if max_batch_wait_s < 0:
            raise ValueError("max_batch_wait_s must not be negative")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.timeout_s = timeout_s
        self._observers = tuple(observers)
        self._batch_context = batch_context or (lambda contexts, size: nullcontext())
        self._queue: queue.Queue[_Job[In] | None] = queue.Queue(maxsize=max_queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.stats = BatcherStats()

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> Batcher[In, Out]:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Finish the running batch, fail what is still queued, and join the thread."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)  # wake the thread if it waits for work
        except queue.Full:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueFull("The worker is shutting down."))

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- submitting -------------------------------------------------------------------------

    def submit(self, item: In) -> Future:
        """Queue one item; the future resolves to a :class:`BatchResult`."""
        if self._stopping.is_set():
            raise QueueFull("The worker is shutting down.")
        now = time.monotonic()
        job = _Job(item=item, future=Future(), enqueued_at=now, deadline=now + self.timeout_s,
                   context=contextvars.copy_context())
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"The inference queue is full ({self._queue.maxsize} requests).") from None
        return job.future

    async def run(self, item: In) -> BatchResult[Out]:
        """Submit and await from asyncio; cancelling the await withdraws a queued item."""
        return await asyncio.wrap_future(self.submit(item))

    async def run_many(self, items: Sequence[In]) -> list[BatchResult[Out]]:
        """Submit all items at once so they can share batches, then await them in order.

        If any submission fails (the queue filled up part-way) or the caller goes away, the items
        already queued are withdrawn too: nobody would read their results.
        """
        futures: list[asyncio.Future] = []
        try:
            for item in items:
                futures.append(asyncio.wrap_future(self.submit(item)))
            return list(await asyncio.gather(*futures))
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise

    # --- the inference thread ---------------------------------------------------------------

    def _collect(self) -> list[_Job[In]] | None:
        first = self._queue.get()
        if first is None:
            return None
        jobs = [first]
        deadline = time.monotonic() + self.max_batch_wait_s
        while len(jobs) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._stopping.set()
                break
            jobs.append(job)
        return jobs

    def _admit(self, jobs: list[_Job[In]]) -> list[_Job[In]]:
        now = time.monotonic()
        live = []
        for job in jobs:
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller went away while queued
            if now > job.deadline:
                job.future.set_exception(InferenceTimeout(
                    f"Waited {now - job.enqueued_at:.1f}s in the queue (limit {self.timeout_s:.0f}s)."))
                continue
            live.append(job)
        return live

    def _loop(self) -> None:
        while not self._stopping.is_set():
            jobs = self._collect()
            if jobs is None:
                break
            jobs = self._admit(jobs)
            if jobs:
                self._execute(jobs)

    def _execute(self, jobs: list[_Job[In]]) -> None:
        started = time.monotonic()
        self.stats.busy_since = started
        try:
            with self._batch_context([job.context for job in jobs], len(jobs)):
                outputs = self._run_batch([job.item for job in jobs])
            if len(outputs) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(outputs)} outputs for {len(jobs)} inputs")
        except Exception as exc:
            self.stats.busy_since = None
            if len(jobs) == 1:
                self.stats.failures += 1
                log.warning("inference failed: %s: %s", type(exc).__name__, exc)
                jobs[0].future.set_exception(_as_inference_error(exc))
                return
            log.warning("batch of %d failed (%s); retrying items one by one", len(jobs), exc)
            for job in jobs:
                self._execute([job])
            return
        elapsed = time.monotonic() - started
        self.stats.busy_since = None
        self.stats.batches += 1
        self.stats.items += len(jobs)
        self.stats.last_success_at = time.time()
        for job, output in zip(jobs, outputs, strict=True):
            job.future.set_result(BatchResult(output=output, queue_s=started - job.enqueued_at,
                                              inference_s=elapsed, batch_size=len(jobs)))
        for observer in self._observers:
            try:
                observer(len(jobs), elapsed)
            except Exception:  # telemetry must never break inference
                log.exception("batch observer failed")


def _as_inference_error(exc: Exception) -> EngineError:
    """A model failure as the client should see it: 500 ``inference_failed``, not ``internal_error``."""
    if isinstance(exc, EngineError):
        return exc
    error = InferenceFailed(f"The model failed on this input ({type(exc).__name__}).")
    error.__cause__ = exc
    return error
