"""Workers on other hosts: read from the registry, checked by this router itself.

Every ``registry_heartbeat_s`` the router reads the registry (verified entries only) and the set
of drained hosts; every ``heartbeat_interval_s`` it probes each remote worker's
``/worker_health`` with a signed request. A remote endpoint takes traffic only while all three
agree: its entry is live and says ``ready``, its host is not drained, and its last probe
answered. A new entry starts out ``starting`` until a probe answers, so a worker the router
cannot reach (a one-way partition) never gets traffic just because Redis can see it.

An endpoint is *lost* when its entry disappears (expired: the node died or was cut off) or
``heartbeat_failures`` probes in a row fail. Calls still waiting on a lost endpoint end at once
(:meth:`WorkerEndpoint.unless_lost`), so an image is retried elsewhere instead of hanging until its
timeout. A worker that comes back is a new endpoint, ``starting`` until probed. While the registry
itself is unreachable the router keeps what it last read, each entry until its own expiry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from ..cluster.endpoint import Credential, Device, WorkerEndpoint, WorkerState
from ..cluster.registration import Registration, still_valid
from ..cluster.registry import Registry
from ..config import Settings
from ..errors import RegistryUnavailable
from ..web.upstream import Upstream

__all__ = ["RemoteWorkers"]

log = logging.getLogger(__name__)


def _device(registration: Registration) -> Device:
    gpu = registration.gpu.get("index") if registration.gpu else None
    return Device(gpu=gpu if isinstance(gpu, int) else None, simulated=registration.device.startswith("sim-"))


class _Remote:
    """One registered worker: its entry, its endpoint, its probe record."""

    def __init__(self, registration: Registration, credential: Credential | None) -> None:
        self.registration = registration
        self.endpoint = WorkerEndpoint(id=registration.worker_id, device=_device(registration),
                                       host=registration.host, url=registration.url, remote=True,
                                       credential=credential, reason="registered; probing")
        self.probed_ok = False
        self.misses = 0


class RemoteWorkers:
    """The registry's workers as endpoints this router routes to."""

    def __init__(self, settings: Settings, registry: Registry, upstream: Upstream, *,
                 credential: Credential | None, on_change: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.registry = registry
        self.upstream = upstream
        self.credential = credential
        self.on_change = on_change
        self._clock = clock
        self._workers: dict[str, _Remote] = {}
        self._drained: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self.last_read_at: float | None = None
        self.unavailable_since: float | None = None
        self.lost_total = 0

    # --- what routing sees --------------------------------------------------------------------

    def endpoints(self) -> list[WorkerEndpoint]:
        return [remote.endpoint for remote in self._workers.values()]

    def drained_hosts(self) -> set[str]:
        return set(self._drained)

    async def set_drained(self, host: str, drained: bool) -> None:
        """Drain or undrain a host for every router of the cluster (effective here at once)."""
        await self.registry.set_host_drained(host, drained)
        self._drained = self._drained | {host} if drained else self._drained - {host}
        self._refresh_states()

    def status(self) -> dict:
        """For /healthz: where the registry is and how current this router's view is."""
        return {"registry": self.registry.description(), "workers": len(self._workers),
                "read_age_s": round(self._clock() - self.last_read_at, 3) if self.last_read_at else None,
                "unavailable_for_s": round(self._clock() - self.unavailable_since, 3)
                if self.unavailable_since else None,
                "rejected_entries": self.registry.rejected, "lost_total": self.lost_total,
                "drained_hosts": sorted(self._drained)}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.refresh()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(self.settings.registry_heartbeat_s, self.refresh), name="registry"),
                       loop.create_task(self._every(self.settings.heartbeat_interval_s, self.probe_all),
                                        name="remote-probes")]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.registry.close()

    async def _every(self, interval: float, call: Callable) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await call()
            except Exception:  # never let one bad round stop the loop
                log.exception("remote workers: %s failed", getattr(call, "__name__", call))

    # --- the registry -------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read the registry; add, update and lose endpoints accordingly."""
        try:
            registrations = await self.registry.snapshot()
            drained = await self.registry.drained_hosts()
        except RegistryUnavailable as exc:
            if self.unavailable_since is None:
                self.unavailable_since = self._clock()
                log.error("%s Routing to the %d remote worker(s) last read, each until its entry expires.",
                          exc, len(self._workers))
            now = self._clock()
            for worker_id, remote in list(self._workers.items()):
                if not still_valid(remote.registration, now, skew_s=self.settings.cluster_replay_window_s):
                    self._lose(worker_id, "its registry entry expired (registry unreachable)")
            self._refresh_states()
            return
        if self.unavailable_since is not None:
            log.warning("the worker registry is reachable again")
        self.unavailable_since, self.last_read_at = None, self._clock()
        self._drained = drained
        seen = {r.worker_id: r for r in registrations}
        for worker_id in [w for w in self._workers if w not in seen]:
            self._lose(worker_id, "its registry entry expired or was withdrawn")
        fresh = []
        for worker_id, registration in seen.items():
            remote = self._workers.get(worker_id)
            if remote is None or remote.registration.url != registration.url:
                if remote is not None:
                    self._lose(worker_id, "re-registered at another address")
                remote = self._workers[worker_id] = _Remote(registration, self.credential)
                fresh.append(remote)
            remote.registration = registration
            self._apply(remote)
        self._refresh_states()
        if fresh:
            await asyncio.gather(*(self._probe(remote) for remote in fresh))

    def _apply(self, remote: _Remote) -> None:
        """Copy what the node published onto the endpoint (state is decided in _refresh_states)."""
        registration, endpoint = remote.registration, remote.endpoint
        endpoint.tags = dict(registration.tags)
        endpoint.slots = max(1, min(registration.slots, self.settings.max_concurrent))
        endpoint.reported_in_flight = registration.in_flight
        endpoint.gpu_free_bytes = (registration.gpu or {}).get("memory_free_bytes")
        for path, ms in registration.latency_ms.items():  # what the worker measured, until this router has
            endpoint.latency(path).prior = ms / 1000       # its own measurements of it

    def _lose(self, worker_id: str, reason: str) -> None:
        remote = self._workers.pop(worker_id)
        if remote.endpoint.in_flight:
            log.warning("remote worker %s lost with %d request(s) in flight (%s): they go elsewhere",
                        worker_id, remote.endpoint.in_flight, reason)
        else:
            log.info("remote worker %s gone: %s", worker_id, reason)
        remote.endpoint.mark_lost(reason)
        self.lost_total += 1
        self.on_change()

    def _refresh_states(self) -> None:
        changed = False
        for remote in self._workers.values():
            state, reason = self._verdict(remote)
            endpoint = remote.endpoint
            if endpoint.state is not state or endpoint.reason != reason:
                if endpoint.state is not state:
                    log.info("remote worker %s (%s) %s: %s", endpoint.id, endpoint.host, state.value, reason)
                endpoint.set_state(state, reason)
                changed = True
        if changed:
            self.on_change()

    def _verdict(self, remote: _Remote) -> tuple[WorkerState, str]:
        registration = remote.registration
        if registration.host in self._drained:
            return WorkerState.DRAINING, "its host was drained by an admin"
        if registration.state != WorkerState.READY.value:
            return WorkerState.DRAINING if registration.state == "draining" else WorkerState.STARTING, \
                f"its node reports {registration.state}"
        if not remote.probed_ok:
            return WorkerState.STARTING, "registered; waiting for a health probe to answer"
        return WorkerState.READY, "registered and answering"

    # --- probes -------------------------------------------------------------------------------

    async def probe_all(self) -> None:
        await asyncio.gather(*(self._probe(remote) for remote in list(self._workers.values())))
        self._refresh_states()

    async def _probe(self, remote: _Remote) -> None:
        endpoint = remote.endpoint
        try:
            response = await self.upstream.request(
                "GET", endpoint.url + "/worker_health", timeout_s=self.settings.heartbeat_timeout_s,
                headers=endpoint.auth_headers("GET", "/worker_health"))
            if response.status == 401:
                raise PermissionError("it refused this router's signature (is FASTVLM_CLUSTER_SECRET the same?)")
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            health = json.loads(response.body)
        except Exception as exc:
            if self._workers.get(endpoint.id) is not remote:
                return  # lost meanwhile
            remote.misses += 1
            if remote.probed_ok or remote.misses == 1:
                log.warning("remote worker %s missed probe %d/%d: %s", endpoint.id, remote.misses,
                            self.settings.heartbeat_failures, exc if isinstance(exc, PermissionError)
                            else type(exc).__name__)
            if remote.probed_ok and remote.misses >= self.settings.heartbeat_failures:
                self._lose(endpoint.id, f"{remote.misses} health probes in a row failed")
            return
        remote.misses, remote.probed_ok = 0, True
        endpoint.health = health
        endpoint.reported_in_flight = int(health.get("in_flight") or 0)
