"""A node's side of the registry: its workers, published every heartbeat until it leaves.

Each heartbeat rewrites every live worker's entry (state, slots, load, GPU memory), which also
renews its TTL; a node that dies or is cut off simply stops renewing, and routers drop its
workers when the entries expire. Leaving on purpose is two steps, so nothing in flight is cut:
first every entry says ``draining`` (routers stop choosing these workers but keep waiting on what
they sent), then — once the workers have finished — the entries are withdrawn.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import RegistryUnavailable
from .endpoint import WorkerEndpoint, WorkerState
from .registration import Registration
from .registry import Registry

__all__ = ["Publisher", "registration_of"]

log = logging.getLogger(__name__)

_MODEL_FIELDS = ("name", "format", "dtype")


def registration_of(endpoint: WorkerEndpoint, *, node_id: str, gpu: Mapping[str, Any] | None, video_slots: int,
                    draining: bool = False) -> Registration:
    """What routers learn about one of this node's workers."""
    model = endpoint.health.get("model")
    state = WorkerState.DRAINING.value if draining and endpoint.state is WorkerState.READY else endpoint.state.value
    return Registration(
        worker_id=f"{node_id}/{endpoint.id}", node_id=node_id, host=endpoint.host, url=endpoint.url,
        device=endpoint.device.label, gpu=dict(gpu) if gpu is not None else None, tags=dict(endpoint.tags),
        slots=endpoint.slots, video_slots=min(video_slots, endpoint.slots), state=state,
        in_flight=endpoint.reported_in_flight,
        video_in_flight=int(endpoint.health.get("video_in_flight") or 0),
        latency_ms=dict(endpoint.health.get("latency_ms") or {}),
        model={key: model.get(key) for key in _MODEL_FIELDS} if isinstance(model, dict) else None)


class Publisher:
    """Publishes this node's workers every ``interval_s`` until :meth:`leave`."""

    def __init__(self, registry: Registry, *, node_id: str, endpoints: Callable[[], Iterable[WorkerEndpoint]],
                 gpus: Callable[[], Mapping[int, Mapping[str, Any]]], interval_s: float, video_slots: int) -> None:
        self.registry = registry
        self.node_id = node_id
        self._endpoints = endpoints
        self._gpus = gpus
        self.interval_s = interval_s
        self.video_slots = video_slots
        self.draining = False
        self.published = 0
        self._ids: set[str] = set()  # what the registry holds for us now
        self._wake = asyncio.Event()
        self._failing = False

    def _current(self) -> list[Registration]:
        gpus = self._gpus()
        return [registration_of(e, node_id=self.node_id, video_slots=self.video_slots, draining=self.draining,
                                gpu=gpus.get(e.device.gpu) if e.device.gpu is not None else None)
                for e in self._endpoints() if e.url and e.state is not WorkerState.STOPPED]

    async def publish_once(self) -> None:
        """Write every live worker and withdraw the ones that are gone."""
        registrations = self._current()
        ids = {r.worker_id for r in registrations}
        await self.registry.publish(registrations)
        await self.registry.withdraw(self._ids - ids)
        self._ids = ids
        self.published += 1

    def poke(self) -> None:
        """Publish now rather than at the next heartbeat (a worker changed state)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                await self.publish_once()
                if self._failing:
                    log.warning("the registry is reachable again; %d worker(s) published", len(self._ids))
                self._failing = False
            except RegistryUnavailable as exc:
                if not self._failing:
                    log.error("%s Retrying every %.1fs; routers drop this node's workers when their entries "
                              "expire.", exc, self.interval_s)
                self._failing = True
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def start_draining(self) -> None:
        """Tell routers to send nothing new (entries say ``draining``); what they sent still finishes."""
        self.draining = True
        try:
            await self.publish_once()
        except RegistryUnavailable as exc:
            log.error("could not publish the drain: %s", exc)

    async def leave(self) -> None:
        """Withdraw every entry this node published."""
        try:
            await self.registry.withdraw(self._ids)
            self._ids = set()
        except RegistryUnavailable as exc:
            log.error("could not withdraw this node's workers (their entries expire by themselves): %s", exc)
