"""Spawning, watching, healing and stopping worker processes.

Each worker gets a loopback socket the router binds first (so its port is known and never
raced), runs in its own session (stopped by process group) and dies with the router: the kernel
sends it SIGKILL when the router's process dies (PR_SET_PDEATHSIG), and the worker also watches
its parent PID. A worker that exits while starting is noticed at once through its exit status,
and its last log lines are reported; the pool carries on with the others.

Self-healing: every ready worker answers a heartbeat (``/worker_health``) each
``heartbeat_interval_s``. Missing ``heartbeat_failures`` in a row, or inference making no
progress for ``stall_timeout_s`` while work is waiting, makes it unhealthy: it gets no traffic,
is stopped by process group and replaced on the same device. Every exit, failed start or
unhealthy verdict counts as a failure of that worker slot; replacements wait
``respawn_backoff_initial_s`` doubling per failure in the window (up to the maximum), and
``quarantine_failures`` within ``quarantine_window_s`` quarantine the slot until an admin
releases it or the router restarts.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil

from ..config import Settings
from ..errors import WorkerNotFound, WorkerNotQuarantined
from ..observability.logs import wrap_foreign_line
from .inventory import Inventory, host_ram_fraction
from .logpump import LogWriter, pump_lines
from .placement import Placement
from .upstream import Upstream
from .workers import Device, Worker, WorkerState

__all__ = ["WorkerPool", "stall_verdict"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_READY_POLL_S = 0.2


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the kernel kills the child when the router dies, even by SIGKILL."""
    def preexec() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass  # not Linux: the worker's own parent watchdog still applies
        if os.getppid() != parent_pid:  # the router died before prctl took effect
            os._exit(1)
    return preexec


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


class WorkerPool:
    """The router's workers: placement, processes, readiness, and shutdown."""

    def __init__(self, settings: Settings, inventory: Inventory, upstream: Upstream,
                 on_change: Callable[[Worker], None] | None = None) -> None:
        self.settings = settings
        self.inventory = inventory
        self.upstream = upstream
        self.placement = Placement(max_workers=settings.max_workers,
                                   max_workers_per_gpu=settings.max_workers_per_gpu,
                                   gpu_reserve_bytes=settings.gpu_memory_reserve_mib * 1024 * 1024,
                                   ram_max_fraction=settings.ram_max_fraction)
        self.workers: list[Worker] = []
        self.draining = False
        self.on_change = on_change
        """Called after every state change (the admission hands queued requests to new workers)."""
        self._tasks: set[asyncio.Task] = set()
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._next_id = 0
        self._gpu_footprint: dict[int, int] = {}
        self._ram_per_worker: float = 0.0
        self._stopping = False
        self._log_writer: LogWriter | None = None

    # --- queries ----------------------------------------------------------------------------

    def ready(self) -> list[Worker]:
        return [w for w in self.workers if w.state is WorkerState.READY]

    def by_id(self, worker_id: str) -> Worker | None:
        return next((w for w in self.workers if w.id == worker_id), None)

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

    def _new_worker(self, device: Device) -> Worker:
        worker = Worker(id=f"w{self._next_id}", device=device, host=self.settings.worker_host)
        self._next_id += 1
        self.workers.append(worker)
        return worker

    def _set(self, worker: Worker, state: WorkerState, reason: str) -> None:
        worker.set_state(state, reason)
        log.info("worker %s (%s) %s: %s", worker.id, worker.device.label, state.value, reason)
        if self.on_change is not None:
            self.on_change(worker)

    def _spawn_task(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def spawn(self, worker: Worker) -> None:
        """Start the worker's process on its device and watch it."""
        sock = socket.socket(socket.AF_INET6 if ":" in worker.host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((worker.host, 0))
            worker.port = sock.getsockname()[1]
            worker.token = secrets.token_urlsafe(32)
            gpu = worker.device.gpu
            cuda_id = self.inventory.cuda_id(gpu) if gpu is not None else ""
            env = {**os.environ, **worker.device.worker_env(cuda_id), "FASTVLM_WORKER_TOKEN": worker.token}
            args = [sys.executable, "-m", "fastvlm_engine.cli", "worker", "--fd", str(sock.fileno()),
                    "--host", worker.host, "--parent-pid", str(os.getpid()), "--worker-id", worker.id,
                    "--incarnation", str(worker.restarts)]
            before = next((g.used_bytes for g in self.inventory.gpus() if g.index == gpu), None)
            process = await asyncio.create_subprocess_exec(
                *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, pass_fds=(sock.fileno(),), start_new_session=True,
                preexec_fn=_die_with_parent(os.getpid()))
        except Exception as exc:
            sock.close()
            self._fail(worker, f"could not spawn: {exc}")
            return
        sock.close()  # the child holds its own copy
        worker.pid, worker.exit_code, worker.started_at = process.pid, None, time.monotonic()
        worker.ready_at, worker.heartbeat_misses, worker.retiring, worker.health = None, 0, False, {}
        self._processes[worker.id] = process
        self._set(worker, WorkerState.STARTING, f"process {process.pid} loading the model on port {worker.port}")
        self._spawn_task(self._pump_output(worker, process), f"{worker.id}-output")
        exited = self._spawn_task(self._watch_exit(worker, process), f"{worker.id}-exit")
        self._spawn_task(self._await_ready(worker, process, exited, before), f"{worker.id}-ready")

    async def _pump_output(self, worker: Worker, process: asyncio.subprocess.Process) -> None:
        """Keep the last lines for diagnostics and pass them on to the router's stderr."""
        if process.stdout is None:
            return
        if self._log_writer is None:
            self._log_writer = LogWriter()
        writer, as_json = self._log_writer, self.settings.log_format == "json"

        def on_line(text: str) -> None:
            worker.log_tail.append(text)
            writer.write(wrap_foreign_line(text, worker.id) if as_json else text)

        await pump_lines(process.stdout, on_line)

    async def _watch_exit(self, worker: Worker, process: asyncio.subprocess.Process) -> int:
        code = await process.wait()
        worker.exit_code = code
        if self._processes.get(worker.id) is process:
            del self._processes[worker.id]
        if worker.device.gpu is not None and worker.ready_at is not None:
            self.inventory.worker_stopped(worker.device.gpu)
        if self._stopping or worker.retiring or worker.state is WorkerState.STOPPED:
            return code
        if worker.state is WorkerState.READY:  # out of rotation now, before anything else awaits
            worker.set_state(WorkerState.UNHEALTHY, f"exited with status {code}")
        await asyncio.sleep(0.05)  # let the output pump drain the last lines
        tail = "\n    ".join(list(worker.log_tail)[-15:]) or "(no output)"
        during = "during start-up " if worker.ready_at is None else ""
        log.error("worker %s exited %swith status %s; last output:\n    %s", worker.id, during, code, tail)
        self._fail(worker, f"exited {during}with status {code}")
        return code

    # --- healing ----------------------------------------------------------------------------

    def _fail(self, worker: Worker, reason: str) -> None:
        """Count a failure of this slot, then respawn it after a backoff or quarantine it."""
        now = time.monotonic()
        worker.failures.append(now)
        while worker.failures and worker.failures[0] < now - self.settings.quarantine_window_s:
            worker.failures.popleft()
        worker.last_failure = reason
        if self._stopping:
            return
        count = len(worker.failures)
        if count >= self.settings.quarantine_failures:
            self._set(worker, WorkerState.QUARANTINED,
                      f"{count} failures within {self.settings.quarantine_window_s:.0f}s (last: {reason}); "
                      "release it with POST /admin/workers/{id}/release or restart the router")
            return
        delay = min(self.settings.respawn_backoff_max_s, self.settings.respawn_backoff_initial_s * 2 ** (count - 1))
        self._set(worker, WorkerState.RESTARTING, f"{reason}; replacing it in {delay:.1f}s")
        self._spawn_task(self._respawn_after(worker, delay), f"{worker.id}-respawn")

    async def _respawn_after(self, worker: Worker, delay: float) -> None:
        await asyncio.sleep(delay)
        if self._stopping or worker.state is not WorkerState.RESTARTING:
            return
        worker.restarts += 1
        await self.spawn(worker)

    async def _retire(self, worker: Worker, state: WorkerState, reason: str) -> None:
        """Take a worker out of rotation, stop its process, then count the failure."""
        self._set(worker, state, reason)
        worker.retiring = True
        process = self._processes.get(worker.id)
        if process is not None:
            await self._terminate(worker.id, process, grace=2.0)
        self._fail(worker, reason)

    async def _heartbeats(self) -> None:
        interval = self.settings.heartbeat_interval_s
        while not self._stopping:
            await asyncio.sleep(interval)
            ready = [w for w in self.workers if w.state is WorkerState.READY]
            await asyncio.gather(*(self._beat(w) for w in ready), return_exceptions=True)

    async def _beat(self, worker: Worker) -> None:
        try:
            response = await self.upstream.request("GET", worker.url + "/worker_health",
                                                   timeout_s=self.settings.heartbeat_timeout_s,
                                                   headers=worker.auth_headers())
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
        worker.heartbeat_misses, worker.health = 0, health
        worker.update_capacity(health.get("capacity"), self.settings.max_concurrent)
        verdict = stall_verdict(health, self.settings.stall_timeout_s)
        if verdict is not None:
            await self._retire(worker, WorkerState.UNHEALTHY, verdict)

    async def release(self, worker_id: str) -> Worker:
        """Admin: let a quarantined slot run again, starting a fresh process now."""
        worker = self.by_id(worker_id)
        if worker is None:
            raise WorkerNotFound()
        if worker.state is not WorkerState.QUARANTINED:
            raise WorkerNotQuarantined(f"Worker {worker_id} is {worker.state.value}, not quarantined.")
        worker.failures.clear()
        worker.restarts += 1
        self._set(worker, WorkerState.STARTING, "released from quarantine by an admin")
        await self.spawn(worker)
        return worker

    def start_draining(self) -> None:
        """Stop admitting: ready workers finish what they hold and take nothing new."""
        self.draining = True
        for worker in self.workers:
            if worker.state is WorkerState.READY:
                self._set(worker, WorkerState.DRAINING, "router shutting down; finishing in-flight requests")

    async def _await_ready(self, worker: Worker, process: asyncio.subprocess.Process,
                           exited: asyncio.Task, gpu_used_before: int | None) -> None:
        deadline = time.monotonic() + self.settings.worker_start_timeout_s
        while time.monotonic() < deadline:
            if exited.done() or self._stopping:
                return
            try:
                response = await self.upstream.request("GET", worker.url + "/readyz", timeout_s=2.0,
                                                       headers=worker.auth_headers())
                if response.status == 200:
                    worker.update_capacity(json.loads(response.body).get("capacity"), self.settings.max_concurrent)
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

    def _became_ready(self, worker: Worker, gpu_used_before: int | None) -> None:
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
            self._ram_per_worker = max(self._ram_per_worker,
                                       worker.rss_bytes / psutil.virtual_memory().total)
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

    # --- shutdown ---------------------------------------------------------------------------

    async def _terminate(self, worker_id: str, process: asyncio.subprocess.Process, grace: float) -> None:
        """SIGTERM the worker's process group, SIGKILL it after ``grace`` seconds."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if process.returncode is not None:
                break
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                await asyncio.wait_for(process.wait(), wait)
            except TimeoutError:
                continue
        try:
            os.killpg(process.pid, signal.SIGKILL)  # anything the worker left in its group
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, grace: float = 10.0) -> None:
        """Stop every worker (in parallel) and cancel the watchers."""
        self._stopping = True
        self.draining = True
        for worker in self.workers:
            worker.set_state(WorkerState.STOPPED, "router shutting down")
        await asyncio.gather(*(self._terminate(wid, proc, grace) for wid, proc in list(self._processes.items())),
                             return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._log_writer is not None:
            await asyncio.to_thread(self._log_writer.close)
