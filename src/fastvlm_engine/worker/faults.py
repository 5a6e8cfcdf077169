"""Fault injection FOR TESTS ONLY (``FASTVLM_FAULT_INJECTION``, empty = off).

Lets the self-healing tests crash, hang or exhaust a real worker process on cue instead of
relying on luck: ``exit_at_startup`` exits before the model loads, ``crash_after=N`` kills the
process (SIGKILL) when the Nth request arrives, ``hang_after=N`` blocks the inference thread
forever at the Nth batch while HTTP keeps answering, ``oom_after=N`` raises a CUDA
out-of-memory error at the Nth batch (the warm-up batch does not count), ``long_log_line``
prints one 200 KiB line at start-up (the router's log pump must survive it). ``@w1`` limits a
fault to the worker with that id, ``:once`` to its first process (not its replacements).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from ..config import parse_faults

__all__ = ["FaultInjector"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class FaultInjector:
    """The faults that apply to this worker, with their counters."""

    def __init__(self, spec: str, worker_id: str | None, incarnation: int = 0) -> None:
        self.faults = {kind: count for kind, count, target, once in parse_faults(spec)
                       if (target is None or target == worker_id) and not (once and incarnation > 0)}
        self._requests = 0
        self._batches = 0
        self._armed = False
        self._lock = threading.Lock()
        if self.faults:
            log.warning("FAULT INJECTION active (testing only): %s", self.faults)

    def arm(self) -> None:
        """Start counting batches (called after the warm-up, which never counts)."""
        self._armed = True

    def at_startup(self) -> None:
        if "long_log_line" in self.faults:
            print("FAULT INJECTION: long line " + "x" * (200 * 1024), file=sys.stderr, flush=True)
        if "exit_at_startup" in self.faults:
            log.error("FAULT INJECTION: exiting at start-up")
            logging.shutdown()
            sys.stderr.flush()
            os._exit(1)

    def on_request(self) -> None:
        limit = self.faults.get("crash_after")
        if limit is None:
            return
        with self._lock:
            self._requests += 1
            crash = self._requests == limit
        if crash:
            log.error("FAULT INJECTION: crashing (SIGKILL) on request %d", limit)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap_batch(self, run_batch: Callable[[Sequence[T]], R]) -> Callable[[Sequence[T]], R]:
        """Wrap the inference call so batch-level faults fire on the inference thread."""
        if not {"hang_after", "oom_after"} & self.faults.keys():
            return run_batch

        def faulty(batch: Sequence[T]) -> R:
            if not self._armed:
                return run_batch(batch)
            self._batches += 1
            if self._batches == self.faults.get("hang_after"):
                log.error("FAULT INJECTION: inference thread hangs at batch %d", self._batches)
                threading.Event().wait()
            if self._batches == self.faults.get("oom_after"):
                import torch

                raise torch.OutOfMemoryError("FAULT INJECTION: simulated CUDA out of memory")
            return run_batch(batch)

        return faulty
