"""When a worker counts as stuck, and what happens to a worker slot after a failure.

Both are decisions over numbers, kept apart from the processes so they are easy to test: the
stall verdict reads a heartbeat, the healing plan reads how often a slot failed recently.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["HealingPlan", "plan_after_failure", "stall_verdict"]


def stall_verdict(health: dict, stall_timeout_s: float) -> str | None:
    """Why a worker counts as stuck, from its heartbeat; None while it makes progress.

    Progress is the engine's step counter, not how long a request takes: a generation that runs for
    minutes is fine as long as steps keep coming. Stuck is one step running past the timeout, or
    work waiting while no step ran for that long, or an inference thread that died with work.
    """
    running = health.get("step_running_for_s") or 0.0
    if running > stall_timeout_s:
        return f"inference made no progress: one model step has run for {running:.0f}s"
    if not health.get("has_work"):
        return None
    if not health.get("inference_thread_alive", True):
        return "inference made no progress: its inference thread died with work queued"
    idle = health.get("since_last_step_s")
    if idle is not None and idle > stall_timeout_s:
        return f"inference made no progress: no model step for {idle:.0f}s while work is waiting"
    return None


@dataclass(frozen=True)
class HealingPlan:
    quarantine: bool
    delay_s: float = 0.0


def plan_after_failure(failures: deque[float], now: float, *, window_s: float, quarantine_after: int,
                       backoff_initial_s: float, backoff_max_s: float) -> HealingPlan:
    """Count a failure at ``now`` (pruning ``failures`` to the window) and decide: quarantine the
    slot, or replace it after a backoff that doubles with each failure in the window."""
    failures.append(now)
    while failures and failures[0] < now - window_s:
        failures.popleft()
    count = len(failures)
    if count >= quarantine_after:
        return HealingPlan(quarantine=True)
    return HealingPlan(quarantine=False, delay_s=min(backoff_max_s, backoff_initial_s * 2 ** (count - 1)))
