"""The local worker supervisor: placement, processes, readiness, heartbeats, healing, shutdown.

It runs inside ``fastvlm serve`` (the router's own workers) and inside ``fastvlm node`` (a worker
host with no client-facing API); either way it only starts and watches processes on this host
and publishes each as a :class:`~fastvlm_engine.cluster.endpoint.WorkerEndpoint`. Spawning lives
in :mod:`.process`, placement in :mod:`.placement`, the stall verdict and the backoff in
:mod:`.healing`, the allowed state changes in :mod:`.lifecycle`, worker output in :mod:`.logpump`.

Self-healing: every ready worker answers a heartbeat (``/worker_health``) each
``heartbeat_interval_s``. Missing ``heartbeat_failures`` in a row, or inference making no
progress for ``stall_timeout_s`` while work is waiting, makes it unhealthy: it gets no traffic,
is stopped by process group and replaced on the same device. Every exit, failed start or
unhealthy verdict counts as a failure of that worker slot; replacements wait
``respawn_backoff_initial_s`` doubling per failure in the window (up to the maximum), and
``quarantine_failures`` within ``quarantine_window_s`` quarantine the slot until an admin
releases it or the process restarts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..auth import INTERNAL_TOKEN_HEADER
from ..cluster.addresses import endpoint_url
from ..cluster.endpoint import Device, TokenCredential, WorkerEndpoint, WorkerState
from ..config import Settings
from ..errors import WorkerNotFound, WorkerNotQuarantined
from ..observability.logs import wrap_foreign_line
from ..web.upstream import Upstream
from .healing import plan_after_failure, stall_verdict
from .inventory import Inventory, host_ram_fraction
from .lifecycle import check_transition
from .logpump import LogWriter, pump_lines
from .placement import Placement
from .process import settings_payload, spawn_worker, terminate

__all__ = ["ManagedWorker", "Supervisor"]

log = logging.getLogger(__name__)

_READY_POLL_S = 0.2


@dataclass(eq=False)
class ManagedWorker:
    """One worker slot of this host: its endpoint (what routing sees) and its current process."""

    endpoint: WorkerEndpoint
    port: int | None = None
    pid: int | None = None
    restarts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ready_at: float | None = None
    gpu_bytes: int | None = None  # GPU memory its load took, when measurable
    rss_bytes: int | None = None  # host memory after load
    failures: deque[float] = field(default_factory=deque, repr=False)  # monotonic times, pruned to the window
    last_failure: str | None = None
    heartbeat_misses: int = 0
    retiring: bool = False  # the supervisor is stopping this process on purpose
    log_tail: deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        return self.endpoint.id

    @property
    def state(self) -> WorkerState:
        return self.endpoint.state

    @property
    def device(self) -> Device:
        return self.endpoint.device

    def snapshot(self) -> dict[str, Any]:
        """The endpoint's view plus this host's process details."""
        return {**self.endpoint.snapshot(), "pid": self.pid, "port": self.port, "restarts": self.restarts,
                "failures_in_window": len(self.failures), "last_failure": self.last_failure}


class Supervisor:
    """This host's worker processes."""

    def __init__(self, settings: Settings, inventory: Inventory, upstream: Upstream, *, host_name: str = "local",
                 tags: dict[str, str] | None = None, advertise_host: str = "", local_tokens: bool = True,
                 credential: Callable[[str], Any] | None = None,
                 on_change: Callable[[ManagedWorker], None] | None = None) -> None:
        """``host_name`` groups these workers in routing and health; ``advertise_host`` is the address
        other hosts reach them at (empty: the bind address); ``credential`` turns a worker's token
        into what callers present. ``local_tokens`` False spawns workers that answer anyone who can
        reach them (a node without a cluster secret, which may advertise loopback only)."""
        self.settings = settings
        self.advertise_host = advertise_host
        self.local_tokens = local_tokens
        self.inventory = inventory
        self.upstream = upstream
        self.host_name = host_name
        self.tags = dict(tags or {})
        self._credential = credential or (lambda token: TokenCredential(INTERNAL_TOKEN_HEADER, token))
        self.placement = Placement(max_workers=settings.max_workers,
                                   max_workers_per_gpu=settings.max_workers_per_gpu,
                                   gpu_reserve_bytes=settings.gpu_memory_reserve_mib * 1024 * 1024,
                                   ram_max_fraction=settings.ram_max_fraction)
        self.workers: list[ManagedWorker] = []
        self.draining = False
        self.on_change = on_change
        """Called after every state change (the router's admission hands queued requests to new workers)."""
        self._tasks: set[asyncio.Task] = set()
        self._next_id = 0
        self._gpu_footprint: dict[int, int] = {}
        self._ram_per_worker: float = 0.0
        self._stopping = False
        self._log_writer: LogWriter | None = None

    # --- queries ----------------------------------------------------------------------------

    def endpoints(self) -> list[WorkerEndpoint]:
        return [w.endpoint for w in self.workers]

    def ready(self) -> list[ManagedWorker]:
        return [w for w in self.workers if w.state is WorkerState.READY]

    def by_id(self, worker_id: str) -> ManagedWorker | None:
        return next((w for w in self.workers if w.id == worker_id), None)

    def restarts(self) -> dict[str, int]:
        return {w.id: w.restarts for w in self.workers}

    def counts(self) -> dict[Device, int]:
        """Worker slots per device; quarantined slots still hold their place."""
        counts: dict[Device, int] = {}
        for w in self.workers:
            if w.state is not WorkerState.STOPPED:
                counts[w.device] = counts.get(w.device, 0) + 1
        return counts

    # --- start-up ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn the first worker on every usable device; more follow as loads are measured."""
        gpus = self.inventory.gpus()
        devices = self.placement.initial(gpus, self.inventory.simulated)
        if not devices:
            log.error("no device has room for a worker (GPU free memory below the reserve)")
        for device in devices:
            await self.spawn(self._new_worker(device))
        self._spawn_task(self._heartbeats(), "heartbeats")

    def _new_worker(self, device: Device) -> ManagedWorker:
        endpoint = WorkerEndpoint(id=f"w{self._next_id}", device=device, host=self.host_name, tags=self.tags)
        self._next_id += 1
        worker = ManagedWorker(endpoint=endpoint)
        self.workers.append(worker)
        return worker

    def _set(self, worker: ManagedWorker, state: WorkerState, reason: str) -> None:
        """The one place a slot's state changes (see lifecycle.TRANSITIONS)."""
        check_transition(worker.state, state)
        worker.endpoint.set_state(state, reason)
        log.info("worker %s (%s) %s: %s", worker.id, worker.device.label, state.value, reason)
        if self.on_change is not None:
            self.on_change(worker)

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def spawn(self, worker: ManagedWorker) -> None:
        """Start the worker's process on its device and watch it."""
        token = secrets.token_urlsafe(32) if self.local_tokens else ""
        gpu = worker.device.gpu
        host = self.settings.worker_host
        payload = settings_payload(self.settings, device=worker.device.torch_device, worker_token=token)
        before = next((g.used_bytes for g in self.inventory.gpus() if g.index == gpu), None)
        try:
            spawned = await spawn_worker(payload, host=host, worker_id=worker.id, incarnation=worker.restarts,
                                         cuda_env=worker.device.worker_env(self.inventory.cuda_id(gpu)
                                                                           if gpu is not None else ""))
        except Exception as exc:
            self._fail(worker, f"could not spawn: {exc}")
            return
        process = spawned.process
        worker.process, worker.port, worker.pid = process, spawned.port, process.pid
        worker.exit_code, worker.started_at, worker.ready_at = None, time.monotonic(), None
        worker.heartbeat_misses, worker.retiring = 0, False
        endpoint = worker.endpoint
        endpoint.url = endpoint_url(self.advertise_host or host, spawned.port)
        endpoint.credential, endpoint.health = (self._credential(token) if token else None), {}
        self._set(worker, WorkerState.STARTING, f"process {process.pid} loading the model on port {spawned.port}")
        self._spawn_task(self._pump_output(worker, process), f"{worker.id}-output")
        exited = self._spawn_task(self._watch_exit(worker, process), f"{worker.id}-exit")
        self._spawn_task(self._await_ready(worker, exited, before), f"{worker.id}-ready")

    async def _pump_output(self, worker: ManagedWorker, process: asyncio.subprocess.Process) -> None:
        """Keep the last lines for diagnostics and pass them on to this process's stderr."""
        if process.stdout is None:
            return
        if self._log_writer is None:
            self._log_writer = LogWriter()
        writer, as_json = self._log_writer, self.settings.log_format == "json"

        def on_line(text: str) -> None:
            worker.log_tail.append(text)
            writer.write(wrap_foreign_line(text, worker.id) if as_json else text)

        await pump_lines(process.stdout, on_line)

    async def _watch_exit(self, worker: ManagedWorker, process: asyncio.subprocess.Process) -> int:
        code = await process.wait()
        worker.exit_code = code
        if worker.process is process:
            worker.process = None
        if worker.device.gpu is not None and worker.ready_at is not None:
            self.inventory.worker_stopped(worker.device.gpu)
        if self._stopping or worker.retiring or worker.state is WorkerState.STOPPED:
            return code
        if worker.state is WorkerState.READY:  # out of rotation now, before anything else awaits
            self._set(worker, WorkerState.UNHEALTHY, f"exited with status {code}")
        await asyncio.sleep(0.05)  # let the output pump drain the last lines
        tail = "\n    ".join(list(worker.log_tail)[-15:]) or "(no output)"
        during = "during start-up " if worker.ready_at is None else ""
        log.error("worker %s exited %swith status %s; last output:\n    %s", worker.id, during, code, tail)
        self._fail(worker, f"exited {during}with status {code}")
        return code

    # --- healing ----------------------------------------------------------------------------

    def _fail(self, worker: ManagedWorker, reason: str) -> None:
        """Count a failure of this slot, then respawn it after a backoff or quarantine it."""
        settings = self.settings
        plan = plan_after_failure(worker.failures, time.monotonic(), window_s=settings.quarantine_window_s,
                                  quarantine_after=settings.quarantine_failures,
                                  backoff_initial_s=settings.respawn_backoff_initial_s,
                                  backoff_max_s=settings.respawn_backoff_max_s)
        worker.last_failure = reason
        if self._stopping:
            return
        if plan.quarantine:
            self._set(worker, WorkerState.QUARANTINED,
                      f"{len(worker.failures)} failures within {settings.quarantine_window_s:.0f}s (last: {reason}); "
                      "release it with POST /admin/workers/{id}/release or restart")
            return
        self._set(worker, WorkerState.RESTARTING, f"{reason}; replacing it in {plan.delay_s:.1f}s")
        self._spawn_task(self._respawn_after(worker, plan.delay_s), f"{worker.id}-respawn")

    async def _respawn_after(self, worker: ManagedWorker, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or worker.state is not WorkerState.RESTARTING:
            return
        worker.restarts += 1
        await self.spawn(worker)

    async def _retire(self, worker: ManagedWorker, state: WorkerState, reason: str) -> None:
        """Take a worker out of rotation, stop its process, then count the failure."""
        self._set(worker, state, reason)
        worker.retiring = True
        if worker.process is not None:
            await terminate(worker.process, grace=2.0)
        self._fail(worker, reason)

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while not self._stopping:
            await asyncio.sleep(interval)
            await asyncio.gather(*(self._beat(w) for w in self.ready()), return_exceptions=True)

    async def _beat(self, worker: ManagedWorker) -> None:
        endpoint = worker.endpoint
        try:
            response = await self.upstream.request(
                "GET", endpoint.url + "/worker_health", timeout_s=self.settings.heartbeat_timeout_s,
                headers=endpoint.auth_headers("GET", "/worker_health"))
            if response.status != 200:
                raise ValueError(f"status {response.status}")
            health = json.loads(response.body)
        except Exception as exc:
            if worker.state is not WorkerState.READY:
                return
            worker.heartbeat_misses += 1
            log.warning("worker %s missed heartbeat %d/%d (%s)", worker.id, worker.heartbeat_misses,
                        self.settings.heartbeat_failures, type(exc).__name__)
            if worker.heartbeat_misses >= self.settings.heartbeat_failures:
                await self._retire(worker, WorkerState.UNHEALTHY,
                                   f"{worker.heartbeat_misses} heartbeats in a row failed")
            return
        if worker.state is not WorkerState.READY:
            return
        worker.heartbeat_misses, endpoint.health = 0, health
        endpoint.reported_in_flight = int(health.get("in_flight") or 0)
        endpoint.update_capacity(health.get("capacity"), self.settings.max_concurrent)
        verdict = stall_verdict(health, self.settings.stall_timeout_s)
        if verdict is not None:
            await self._retire(worker, WorkerState.UNHEALTHY, verdict)

    async def release(self, worker_id: str) -> ManagedWorker:
        """Admin: let a quarantined slot run again, starting a fresh process now."""
        worker = self.by_id(worker_id)
        if worker is None:
            raise WorkerNotFound()
        if worker.state is not WorkerState.QUARANTINED:
            raise WorkerNotQuarantined(f"Worker {worker_id} is {worker.state.value}, not quarantined.")
        worker.failures.clear()
        worker.restarts += 1
        await self.spawn(worker)
        log.info("worker %s released from quarantine", worker_id)
        return worker

    def start_draining(self) -> None:
        """Stop taking work: ready workers finish what they hold and take nothing new."""
        self.draining = True
        for worker in self.workers:
            if worker.state is WorkerState.READY:
                self._set(worker, WorkerState.DRAINING, "shutting down; finishing in-flight requests")

    async def _await_ready(self, worker: ManagedWorker, exited: asyncio.Task, gpu_used_before: int | None) -> None:
        endpoint = worker.endpoint
        deadline = time.monotonic() + self.settings.worker_start_timeout_s
        while time.monotonic() < deadline:
            if exited.done() or self._stopping:
                return
            try:
                response = await self.upstream.request("GET", endpoint.url + "/readyz", timeout_s=2.0,
                                                       headers=endpoint.auth_headers("GET", "/readyz"))
                if response.status == 200:
                    endpoint.update_capacity(json.loads(response.body).get("capacity"), self.settings.max_concurrent)
                    self._became_ready(worker, gpu_used_before)
                    return
            except Exception:  # not listening yet, or busy loading
                pass
            if worker.retiring or worker.state is not WorkerState.STARTING:
                return
            await asyncio.wait({exited}, timeout=_READY_POLL_S)
        if not exited.done() and not self._stopping:
            await self._retire(worker, WorkerState.UNHEALTHY,
                               f"not ready after {self.settings.worker_start_timeout_s:.0f}s")

    def _became_ready(self, worker: ManagedWorker, gpu_used_before: int | None) -> None:
        worker.ready_at = time.monotonic()
        gpu = worker.device.gpu
        if gpu is not None:
            self.inventory.worker_started(gpu)
            after = next((g.used_bytes for g in self.inventory.gpus() if g.index == gpu), None)
            if gpu_used_before is not None and after is not None:
                footprint = max(0, after - gpu_used_before)
                worker.gpu_bytes = footprint
                self._gpu_footprint[gpu] = max(footprint, self._gpu_footprint.get(gpu, 0))
        try:
            worker.rss_bytes = psutil.Process(worker.pid).memory_info().rss if worker.pid else None
        except psutil.Error:
            worker.rss_bytes = None
        if worker.rss_bytes:
            self._ram_per_worker = max(self._ram_per_worker, worker.rss_bytes / psutil.virtual_memory().total)
        took = worker.ready_at - (worker.started_at or worker.ready_at)
        self._set(worker, WorkerState.READY, f"ready after {took:.1f}s")
        self._grow()

    def _grow(self) -> None:
        """After a load is measured, start one more worker where memory and caps allow."""
        if self.draining or self._stopping:
            return
        loading = frozenset(w.device.gpu for w in self.workers
                            if w.state is WorkerState.STARTING and w.device.gpu is not None)
        if any(w.state is WorkerState.STARTING and w.device.gpu is None for w in self.workers):
            return  # a CPU worker is still loading: its RAM is not measured yet
        device = self.placement.next_device(
            self.inventory.gpus(), self.inventory.simulated, self.counts(), self._gpu_footprint,
            host_ram_fraction(), self._ram_per_worker, loading)
        if device is not None:
            self._spawn_task(self.spawn(self._new_worker(device)), "grow")

    def update_gpu_memory(self) -> None:
        """Free memory of each worker's GPU onto its endpoint (routing prefers the emptier GPU)."""
        free = {g.index: g.free_bytes for g in self.inventory.gpus()}
        for worker in self.workers:
            if worker.device.gpu is not None:
                worker.endpoint.gpu_free_bytes = free.get(worker.device.gpu)

    # --- shutdown ---------------------------------------------------------------------------

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every worker (in parallel) and cancel the watchers."""
        self._stopping = True
        self.draining = True
        for worker in self.workers:
            if worker.state is not WorkerState.STOPPED:
                self._set(worker, WorkerState.STOPPED, "shutting down")
        await asyncio.gather(*(terminate(w.process, grace) for w in self.workers if w.process is not None),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._log_writer is not None:
            await asyncio.to_thread(self._log_writer.close)
