"""Fault injection FOR TESTS ONLY (``FASTVLM_FAULT_INJECTION``, empty = off).

Lets the self-healing tests crash, hang or exhaust a real worker process on cue instead of
relying on luck: ``exit_at_startup`` exits before the model loads, ``crash_after=N`` kills the
process (SIGKILL) when the Nth request arrives, ``hang_after=N`` blocks the inference thread
forever at the Nth model step while HTTP keeps answering, ``oom_after=N`` raises a CUDA
out-of-memory error at the Nth model step (warm-up steps do not count), ``long_log_line``
prints one 200 KiB line at start-up (the router's log pump must survive it), ``slow_steps=MS``
makes every model step take MS milliseconds longer (a slow device, so that generations last long
enough to be interrupted on cue; the tiny model finishes most answers in well under a second). ``@w1`` limits a
fault to the worker with that id, ``:once`` to its first process (not its replacements).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from ..config import parse_faults

__all__ = ["FaultInjector"]

log = logging.getLogger(__name__)


class FaultInjector:
    """The faults that apply to this worker, with their counters."""

    def __init__(self, spec: str, worker_id: str | None, incarnation: int = 0) -> None:
        self.faults = {kind: count for kind, count, target, once in parse_faults(spec)
                       if (target is None or target == worker_id) and not (once and incarnation > 0)}
        self._requests = 0
        self._steps = 0
        self._armed = False
        self._lock = threading.Lock()
        if self.faults:
            log.warning("FAULT INJECTION active (testing only): %s", self.faults)

    def arm(self) -> None:
        """Start counting model steps (called after the warm-up, which never counts)."""
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

    def before_step(self) -> None:
        """Called by the scheduler before each model step, on the inference thread: step faults fire here."""
        if not self._armed or not {"hang_after", "oom_after", "slow_steps"} & self.faults.keys():
            return
        if "slow_steps" in self.faults:
            time.sleep(self.faults["slow_steps"] / 1000)
        self._steps += 1
        if self._steps == self.faults.get("hang_after"):
            log.error("FAULT INJECTION: inference thread hangs at step %d", self._steps)
            threading.Event().wait()
        if self._steps == self.faults.get("oom_after"):
            import torch

            raise torch.OutOfMemoryError("FAULT INJECTION: simulated CUDA out of memory")
