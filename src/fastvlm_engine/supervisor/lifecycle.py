"""The life of a worker slot as one table of allowed moves.

A slot lives across process restarts. Every state change is checked by :func:`check_transition`, which
refuses a move the table does not list (a bug, not a runtime condition), so "how did it get into
that state" always has one answer.
"""

from __future__ import annotations

from ..cluster.endpoint import WorkerState

__all__ = ["IllegalTransition", "TRANSITIONS", "check_transition"]

S = WorkerState
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.READY, S.UNHEALTHY, S.RESTARTING, S.QUARANTINED, S.STOPPED}),
    S.READY: frozenset({S.DRAINING, S.UNHEALTHY, S.RESTARTING, S.QUARANTINED, S.STOPPED}),
    S.DRAINING: frozenset({S.STOPPED, S.UNHEALTHY, S.RESTARTING, S.QUARANTINED}),
    S.UNHEALTHY: frozenset({S.RESTARTING, S.QUARANTINED, S.STOPPED}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPED}),
    S.QUARANTINED: frozenset({S.STARTING, S.STOPPED}),
    S.STOPPED: frozenset(),
}
"""From each state, where a slot may go. READY → RESTARTING/QUARANTINED covers a process that
exits on its own; DRAINING → RESTARTING one that dies while draining."""


class IllegalTransition(RuntimeError):
    """A state change the table does not allow."""


def check_transition(current: WorkerState, new: WorkerState) -> None:
    if new is not current and new not in TRANSITIONS[current]:
        raise IllegalTransition(f"a worker slot cannot go from {current.value} to {new.value}")
