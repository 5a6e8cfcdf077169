"""The worker endpoints one router routes to: its own supervisor's and every node's in the registry.

Routing (admission, failover, health) sees only :class:`WorkerEndpoint` objects and does not care
where one came from; the two sources keep their own bookkeeping — process details stay in the
supervisor, registry entries and reachability probes in :mod:`.remote`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..cluster.endpoint import WorkerEndpoint, WorkerState

if TYPE_CHECKING:
    from ..supervisor.pool import Supervisor
    from .remote import RemoteWorkers

__all__ = ["Endpoints"]


class Endpoints:
    """Every endpoint this router knows, local first."""

    def __init__(self, supervisor: Supervisor | None, remote: RemoteWorkers | None) -> None:
        self.supervisor = supervisor
        self.remote = remote
        self._listeners: list[Callable[[], None]] = []

    def all(self) -> list[WorkerEndpoint]:
        local = self.supervisor.endpoints() if self.supervisor is not None else []
        return local + (self.remote.endpoints() if self.remote is not None else [])

    def ready(self) -> list[WorkerEndpoint]:
        return [e for e in self.all() if e.state is WorkerState.READY]

    def by_id(self, worker_id: str) -> WorkerEndpoint | None:
        return next((e for e in self.all() if e.id == worker_id), None)

    def starting(self) -> int:
        """Endpoints on their way to ready (a shed request is told so)."""
        return sum(e.state in (WorkerState.STARTING, WorkerState.RESTARTING) for e in self.all())

    def hosts(self) -> dict[str, list[WorkerEndpoint]]:
        """Endpoints grouped by host, in order of first appearance."""
        grouped: dict[str, list[WorkerEndpoint]] = {}
        for endpoint in self.all():
            grouped.setdefault(endpoint.host, []).append(endpoint)
        return grouped

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever an endpoint appears, leaves or changes state."""
        self._listeners.append(listener)

    def changed(self, _: object = None) -> None:
        for listener in self._listeners:
            listener()

    def slots(self, endpoints: Iterable[WorkerEndpoint] | None = None) -> int:
        return sum(e.slots for e in (self.ready() if endpoints is None else endpoints))
