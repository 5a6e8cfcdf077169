"""Soak the service: mixed image and video load while workers are killed, frozen, crashed and hung.

Everything runs on 127.0.0.1 and is bounded by ``--duration`` and ``--max-requests``:

* one real ``fastvlm serve`` (router + ``--workers`` workers, ``--max-concurrent`` slots each) on
  the built-in tiny model (built in a temporary folder unless ``--model``) with the sample media of
  ``fastvlm sample-media``, fast healing (heartbeat every 0.5 s, stall timeout 3 s, respawn backoff
  0.5-4 s) and in-worker faults from ``--faults`` (``FASTVLM_FAULT_INJECTION``, tests only);
* after one uncounted warm-up image and video (so the router's retry hints are measured, not its
  priors): ``--image-concurrency`` image clients (coffee.jpg and astronaut.jpg by path, every
  third one uploaded as base64) and ``--video-concurrency`` video clients (sample.mp4), each
  sending its next call as soon as the last one ends, all through one reference ``AsyncClient``
  with a generous ``RetryPolicy``: shed requests (503) are retried after ``retry_after_sec`` plus
  jitter until the deadline, worker failures up to ``--failure-retries`` times per call;
* external faults: SIGKILL a random ready worker every ``--kill-every`` s, and SIGSTOP one every
  ``--stop-every`` s and leave it frozen: the router must notice the missed heartbeats, stop it
  and replace it;
* a slot that fails ``quarantine_failures`` (3) times within ``--quarantine-window`` s is
  quarantined, which is expected; the script releases it through the admin API
  ``--release-after`` s later (a generated admin key, its sha256 in ``FASTVLM_ADMIN_KEYS``);
* ``GET /healthz`` every 0.5 s: state transitions, every worker process that died or was retired
  (with the router's ``last_failure``), respawns and quarantines.

The last report lists requests sent, succeeded and failed (by error ``code``), client retries by
reason (``on_retry``), injected faults, the faults the workers say they fired (their ``FAULT
INJECTION`` log lines), worker failures with their cause, respawns (the sum of ``restarts`` in
``/healthz``), quarantines and the polled state transitions. Then **unexplained**, the sum of:

* request failures not explained by an injected fault. Only one kind is explained: a *video*
  whose final error is 502 ``worker_failed`` while an explained worker failure (below) happened
  during the call — the router does not retry a video whose worker dies (README, "Self-healing
  workers") and the client gave up after ``--failure-retries`` retries. Every other failure is
  unexplained; in particular every image must succeed (the router retries it once on another
  worker, the client retries worker_failed and every shed code), and a request still running
  ``--drain-timeout`` s after the load stopped counts as failed (``unfinished``);
* worker failures not explained by an injected fault: a process the script SIGKILLed exited with
  status -9; a process it SIGSTOPped failed its heartbeats; otherwise the failure must match a
  configured fault that applies to that slot and process (``@w0``, ``:once``) *and* the router's
  log must hold that worker's own line for the fault (one line per failure): ``crash_after``
  exits with -9, ``oom_after`` with status 4, ``hang_after`` is retired for making no progress,
  ``exit_at_startup`` exits during start-up with status 1;
* healing problems: a killed or frozen process the router never reported failing, a frozen one
  still alive afterwards, a failed admin release, or slots not ready again ``--heal-timeout`` s
  after the load (with ``--release-after 0``, quarantined slots are left out of that check).

Exit status: 0 when nothing is unexplained, 1 otherwise, 2 when the service could not be
started, 130 when interrupted (Ctrl-C or SIGTERM). The router's combined log (it prints its
workers' lines too) is kept, with the temporary folder, whenever the status is not 0;
grep it for a failed call's ``request_id`` (``soak-img-...``, ``soak-vid-...``).

    .venv/bin/python bench/soak.py                      # ~2.5 minutes with the defaults
    .venv/bin/python bench/soak.py --duration 600 --kill-every 30 --model /tmp/tiny
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fastvlm_engine.auth import new_key  # noqa: E402
from fastvlm_engine.client import AsyncClient, FastVLMError, RetryEvent, RetryPolicy  # noqa: E402
from fastvlm_engine.config import parse_faults  # noqa: E402

FASTVLM = [sys.executable, "-m", "fastvlm_engine.cli"]
HOST = "127.0.0.1"
POLL_S = 0.5
"""How often /healthz is polled."""
EXPLAIN_AFTER_S = 3.0
"""A video's 502 may arrive before the poll that sees its worker fail: look this far past its end."""

IMAGES = ("coffee.jpg", "astronaut.jpg")
VIDEO = "sample.mp4"
PROMPTS = (None, "What is on the table?", "Describe the colours in one sentence.", "Is anyone in the picture?")

DEFAULT_FAULTS = "oom_after=30@w0:once,hang_after=60@w1:once,crash_after=250@w0"
"""On this 2-core box: w0's first process runs out of memory after a few seconds, w1's first one hangs a
little later, and every later w0 process crashes after ~20 s of traffic unless it is killed first."""
FAULT_MARKERS = {  # the line a worker logs when it fires the fault
    "crash_after": "FAULT INJECTION: crashing",
    "hang_after": "FAULT INJECTION: inference thread hangs",
    "oom_after": "FAULT INJECTION: simulated CUDA out of memory",
    "exit_at_startup": "FAULT INJECTION: exiting at start-up",
}
FAULT_SYMPTOMS = {  # what the router's last_failure says about a worker that fired the fault
    "crash_after": "with status -9",
    "hang_after": "inference made no progress",
    "oom_after": "with status 4",
    "exit_at_startup": "during start-up with status 1",
}
FAILING_STATES = frozenset({"unhealthy", "restarting", "quarantined"})


class StartupError(Exception):
    """The service could not be prepared or started."""


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def child_env(**settings: object) -> dict[str, str]:
    """Offline, single-threaded BLAS, no inherited FASTVLM_* settings, then ``settings`` as FASTVLM_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVLM_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.update({f"FASTVLM_{name.upper()}": str(value) for name, value in settings.items()})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """The model folder (built unless --model) and a media root holding the sample media."""
    if args.model:
        model = Path(args.model).resolve()
        if not (model / "config.json").is_file():
            raise StartupError(f"--model {model}: no config.json there")
    else:
        model = workdir / "model"
        print(f"building the tiny model in {model} ...", flush=True)
        _run_cli(["tiny-model", str(model)])
    media = workdir / "media"
    _run_cli(["sample-media", str(media)])
    return model, media


def _run_cli(argv: list[str]) -> None:
    done = subprocess.run([*FASTVLM, *argv], env=child_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise StartupError(f"fastvlm {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")


class Router:
    """The ``fastvlm serve`` process (its own session) and its combined log."""

    def __init__(self, popen: subprocess.Popen, port: int, log_path: Path) -> None:
        self.popen = popen
        self.base_url = f"http://{HOST}:{port}"
        self.log_path = log_path

    @classmethod
    def start(cls, args: argparse.Namespace, workdir: Path, model: Path, media: Path,
              admin_hash: str | None) -> Router:
        port = free_port()
        settings: dict[str, object] = dict(
            model=model, media_roots=media, host=HOST, worker_host=HOST, port=port, torch_threads=1,
            max_concurrent=args.max_concurrent,
            log_format="json", heartbeat_interval_s=POLL_S, stall_timeout_s=3, respawn_backoff_initial_s=0.5,
            respawn_backoff_max_s=4, quarantine_window_s=args.quarantine_window, shutdown_grace_s=5,
            fault_injection=args.faults)
        if admin_hash:
            settings["admin_keys"] = admin_hash
        for item in args.settings:
            name, _, value = item.partition("=")
            settings[name.strip().lower()] = value
        log_path = workdir / "router.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen([*FASTVLM, "serve", "--host", HOST, "--port", str(port),
                                      "--workers", str(args.workers)],
                                     env=child_env(**settings), stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return cls(popen, port, log_path)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, workers: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise StartupError(f"the router exited with status {self.popen.returncode}:\n{self.log_tail()}")
            try:
                health = httpx.get(self.base_url + "/healthz", timeout=5).json()
                if health["ready_workers"] >= workers:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise StartupError(f"fewer than {workers} ready workers after {timeout:.0f}s:\n{self.log_tail()}")

    def is_worker(self, pid: int) -> bool:
        """Whether ``pid`` is one of this router's worker processes (never signal anything else)."""
        try:
            process = psutil.Process(pid)
            return process.ppid() == self.popen.pid and "worker" in process.cmdline()
        except psutil.Error:
            return False

    def stop(self) -> None:
        """SIGTERM the router's group (it drains and stops its workers), SIGKILL what is left.

        Workers run in their own sessions; any that outlived the router are killed by group too.
        Ctrl-C is ignored meanwhile so that a second one cannot leave processes behind.
        """
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            try:
                workers = psutil.Process(self.popen.pid).children(recursive=True)
            except psutil.Error:
                workers = []
            for sig, wait in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            for worker in workers:
                if worker.is_running():  # psutil checks the start time: never a reused pid
                    try:
                        os.killpg(worker.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])


@dataclass
class Outcome:
    """One logical call (all its attempts)."""

    kind: str
    request_id: str
    started: float
    ended: float
    code: str | None  # None: succeeded
    detail: str = ""
    cause: str | None = None  # set for an explained failure


@dataclass
class WorkerFailure:
    """A worker process seen dying or retired, from /healthz."""

    at: float
    worker: str
    pid: int
    incarnation: int
    reason: str
    cause: str | None = None  # set when an injected fault explains it


@dataclass
class Injected:
    """A signal the soak sent to a worker process."""

    at: float
    signal: str
    worker: str
    pid: int


class Soak:
    """The load, the external faults and what /healthz shows, on one event loop."""

    def __init__(self, args: argparse.Namespace, router: Router, media: Path, admin_key: str | None) -> None:
        self.args = args
        self.router = router
        self.media = media
        self.admin_key = admin_key
        self.rng = random.Random(args.seed)
        self.t0 = time.monotonic()
        self.sent = 0
        self.in_flight = 0
        self.outcomes: list[Outcome] = []
        self.retries: Counter[tuple[str, str]] = Counter()
        self.retry_reasons: dict[str, list[str]] = defaultdict(list)
        self.workers: dict[str, dict[str, Any]] = {}  # latest /healthz entry per worker id
        self.transitions: list[str] = []
        self.failures: list[WorkerFailure] = []
        self.failed_pids: set[int] = set()
        self.quarantines: list[tuple[float, str]] = []
        self.releases: list[tuple[float, str, int]] = []
        self.injected: list[Injected] = []
        self.frozen: set[int] = set()  # SIGSTOPped and not yet seen failing
        self.anomalies: list[str] = []
        self.health_errors = 0
        self.load_s = self.drain_s = 0.0
        self.ended_by = ""
        self._tasks: set[asyncio.Task] = set()
        self._uploads: dict[str, str] = {}  # image name -> base64

    def now(self) -> float:
        return time.monotonic() - self.t0

    # --- the run ------------------------------------------------------------------------------

    async def run(self) -> None:
        args = self.args
        self._uploads = {name: base64.b64encode((self.media / name).read_bytes()).decode() for name in IMAGES}
        policy = RetryPolicy(max_attempts=args.max_attempts, max_failure_retries=args.failure_retries,
                             image_deadline_s=args.image_deadline, video_deadline_s=args.video_deadline,
                             video_max_delay_s=15.0)
        async with httpx.AsyncClient(base_url=self.router.base_url, timeout=5.0) as control, \
                AsyncClient(self.router.base_url, retry=policy, on_retry=self._on_retry) as client:
            await self._warm_up()
            self.t0 = time.monotonic()
            self._spawn(self._monitor(control))  # both run until the finally below
            self._spawn(self._progress())
            faults = []
            if args.kill_every > 0:
                faults.append(self._spawn(self._every(args.kill_every, self._kill)))
            if args.stop_every > 0:
                faults.append(self._spawn(self._every(args.stop_every, self._freeze)))
            load = [self._spawn(self._client(client, "image")) for _ in range(args.image_concurrency)]
            load += [self._spawn(self._client(client, "video")) for _ in range(args.video_concurrency)]
            try:
                _, running = await asyncio.wait(load, timeout=args.duration)
                self.load_s = self.now()
                self.ended_by = "max requests" if self.sent >= args.max_requests else "duration"
                await _cancel(faults)
                print(f"[{self.now():5.0f}s] load stopped ({self.ended_by}); draining {self.in_flight} "
                      "call(s) in flight", flush=True)
                if running:
                    _, unfinished = await asyncio.wait(running, timeout=args.drain_timeout)
                    await _cancel(unfinished)
                self.drain_s = self.now() - self.load_s
                await self._wait_healed()
            finally:
                await _cancel(self._tasks)

    async def _warm_up(self) -> None:
        """One image and one video before the clock starts, not counted: the router's retry_after
        estimates start from priors (30 s for a video) until it has measured each endpoint."""
        try:
            async with AsyncClient(self.router.base_url) as client:
                await client.predict_image(image_path=IMAGES[0], max_new_tokens=self.args.max_new_tokens)
                await client.summarize_video(video_path=VIDEO)
        except FastVLMError as exc:
            raise StartupError(f"the warm-up calls failed: {exc}\n{self.router.log_tail()}") from exc

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def resume_frozen(self) -> None:
        """SIGCONT every process still frozen by us, so nothing is left stopped."""
        for pid in self.frozen:
            if self.router.is_worker(pid):
                os.kill(pid, signal.SIGCONT)

    # --- load ---------------------------------------------------------------------------------

    def _next(self) -> int | None:
        if self.now() >= self.args.duration or self.sent >= self.args.max_requests:
            return None
        self.sent += 1
        return self.sent

    async def _client(self, client: AsyncClient, kind: str) -> None:
        while (n := self._next()) is not None:
            if kind == "video":
                rid = f"soak-vid-{n:06d}"
                await self._call(kind, rid, client.summarize_video(video_path=VIDEO, request_id=rid))
                continue
            rid, name = f"soak-img-{n:06d}", IMAGES[n % len(IMAGES)]
            options = dict(prompt=PROMPTS[n % len(PROMPTS)], max_new_tokens=self.args.max_new_tokens,
                           request_id=rid)
            call = (client.predict_image(image_base64=self._uploads[name], **options) if n % 3 == 0
                    else client.predict_image(image_path=name, **options))
            await self._call(kind, rid, call)

    async def _call(self, kind: str, rid: str, call: Awaitable[dict[str, Any]]) -> None:
        started = self.now()
        code, detail = "unfinished", "cancelled: still running at the drain timeout or the interruption"
        self.in_flight += 1
        try:
            document = await call
            valid = (isinstance(document.get("output"), str) if kind == "image"
                     else isinstance(document.get("scenes"), list) and isinstance(document.get("summary"), str))
            code, detail = (None, "") if valid else ("bad_response", f"200 without the expected fields: "
                                                                    f"{sorted(document)}")
        except FastVLMError as exc:
            code, detail = exc.code, f"{exc} (attempts {exc.attempts}, stopped: {exc.stop_reason})"
        finally:
            self.in_flight -= 1
            self.outcomes.append(Outcome(kind, rid, started, self.now(), code, detail))

    def _on_retry(self, event: RetryEvent) -> None:
        kind = "video" if event.request_id.startswith("soak-vid") else "image"
        self.retries[(kind, event.reason)] += 1
        self.retry_reasons[event.request_id].append(event.reason)

    # --- external faults ----------------------------------------------------------------------

    async def _every(self, seconds: float, action: Callable[[], bool]) -> None:
        """Run ``action`` every ``seconds``; when no worker is ready for it, as soon as one is."""
        while True:
            await asyncio.sleep(seconds)
            while not action():
                await asyncio.sleep(POLL_S)

    def _pick_ready(self) -> tuple[str, int] | None:
        ready = [(w["id"], w["pid"]) for w in self.workers.values()
                 if w["state"] == "ready" and w["pid"] and w["pid"] not in self.frozen | self.failed_pids
                 and self.router.is_worker(w["pid"])]
        return self.rng.choice(sorted(ready)) if ready else None

    def _kill(self) -> bool:
        target = self._pick_ready()
        if target is None:
            return False
        os.kill(target[1], signal.SIGKILL)
        self.injected.append(Injected(self.now(), "SIGKILL", *target))
        self._note(f"SIGKILL {target[0]} (pid {target[1]})")
        return True

    def _freeze(self) -> bool:
        target = self._pick_ready()
        if target is None:
            return False
        os.kill(target[1], signal.SIGSTOP)
        self.frozen.add(target[1])
        self.injected.append(Injected(self.now(), "SIGSTOP", *target))
        self._note(f"SIGSTOP {target[0]} (pid {target[1]}); left frozen for the router to detect")
        return True

    # --- observation --------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        line = f"{self.now():7.1f}s  {text}"
        self.transitions.append(line)
        if self.args.verbose:
            print(line, flush=True)

    async def _monitor(self, control: httpx.AsyncClient) -> None:
        while True:
            try:
                self._observe((await control.get("/healthz")).json()["workers"])
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                self.health_errors += 1
                self._note(f"GET /healthz failed: {type(exc).__name__}: {exc}")
            await asyncio.sleep(POLL_S)

    def _observe(self, workers: list[dict[str, Any]]) -> None:
        for w in workers:
            wid, prev = w["id"], self.workers.get(w["id"])
            self.workers[wid] = w
            if prev is None or (prev["state"], prev["pid"]) != (w["state"], w["pid"]):
                before = f"{prev['state']} -> " if prev else ""
                self._note(f"{wid} {before}{w['state']} (pid {w['pid']}, restarts {w['restarts']}): {w['reason']}")
            if prev is None:
                continue
            if w["state"] in FAILING_STATES and w["pid"] not in self.failed_pids:
                self._failed(w, w["pid"], w["restarts"])
            elif w["pid"] != prev["pid"] and prev["pid"] not in self.failed_pids:  # died and respawned between polls
                self._failed(w, prev["pid"], prev["restarts"])
            if w["state"] == "quarantined" and prev["state"] != "quarantined":
                self.quarantines.append((self.now(), wid))
                if self.args.release_after > 0 and self.admin_key:
                    self._spawn(self._release_later(wid))

    def _failed(self, w: dict[str, Any], pid: int, incarnation: int) -> None:
        # An unhealthy worker is being stopped: its last_failure is still the previous one's.
        reason = w["reason"] if w["state"] == "unhealthy" else w["last_failure"] or w["reason"]
        self.failed_pids.add(pid)
        self.frozen.discard(pid)
        self.failures.append(WorkerFailure(self.now(), w["id"], pid, incarnation, reason))

    async def _release_later(self, wid: str) -> None:
        await asyncio.sleep(self.args.release_after)
        async with httpx.AsyncClient(base_url=self.router.base_url, timeout=10.0) as admin:
            response = await admin.post(f"/admin/workers/{wid}/release",
                                        headers={"Authorization": f"Bearer {self.admin_key}"})
        self.releases.append((self.now(), wid, response.status_code))
        self._note(f"admin release of {wid}: HTTP {response.status_code}")
        if response.status_code != 200:
            self.anomalies.append(f"admin release of {wid} answered HTTP {response.status_code}: "
                                  f"{response.text[:200]}")

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(self.args.progress_every)
            failed = sum(o.code is not None for o in self.outcomes)
            states = Counter(w["state"] for w in self.workers.values())
            print(f"[{self.now():5.0f}s] sent {self.sent}  ok {len(self.outcomes) - failed}  failed {failed}  "
                  f"in flight {self.in_flight}  retries {sum(self.retries.values())}  |  "
                  f"{' '.join(f'{s} {n}' for s, n in sorted(states.items()))}  "
                  f"restarts {sum(w['restarts'] for w in self.workers.values())}  "
                  f"quarantines {len(self.quarantines)}  |  "
                  f"SIGKILL {sum(i.signal == 'SIGKILL' for i in self.injected)}  "
                  f"SIGSTOP {sum(i.signal == 'SIGSTOP' for i in self.injected)}", flush=True)

    async def _wait_healed(self) -> None:
        """After the load: every slot ready again (quarantined ones count when nobody releases them)."""
        settled = {"ready"} if self.args.release_after > 0 else {"ready", "quarantined"}
        injected = {i.pid for i in self.injected}
        deadline = self.now() + self.args.heal_timeout
        while self.now() < deadline:
            if all(w["state"] in settled for w in self.workers.values()) and injected <= self.failed_pids:
                break
            await asyncio.sleep(POLL_S)
        else:
            states = ", ".join(f"{w['id']} {w['state']}" for w in self.workers.values())
            self.anomalies.append(f"pool not healed {self.args.heal_timeout:.0f}s after the load: {states}")
        for fault in self.injected:
            if fault.pid not in self.failed_pids:
                self.anomalies.append(f"{fault.signal} of {fault.worker} (pid {fault.pid}) at {fault.at:.1f}s: "
                                      "the router never reported that process failing")
            elif fault.signal == "SIGSTOP" and _alive(fault.pid):
                self.anomalies.append(f"frozen {fault.worker} (pid {fault.pid}) was replaced but is still alive")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _cancel(tasks: set[asyncio.Task] | list[asyncio.Task]) -> None:
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


# --- explaining and reporting -------------------------------------------------------------------

def fired_faults(log_path: Path) -> Counter[tuple[str, str]]:
    """(worker id, fault kind) -> how many times a worker logged firing that fault."""
    fired: Counter[tuple[str, str]] = Counter()
    with open(log_path, errors="replace") as log:
        for line in log:
            for kind, marker in FAULT_MARKERS.items():
                if marker in line:
                    try:
                        process = json.loads(line).get("process")
                    except ValueError:
                        continue
                    if process != "router":  # the router quotes a dead worker's last lines
                        fired[(process, kind)] += 1
    return fired


def explain(soak: Soak, fired: Counter[tuple[str, str]]) -> None:
    """Set ``cause`` on every worker failure and request failure an injected fault explains."""
    specs = parse_faults(soak.args.faults)
    budget = Counter(fired)
    by_pid = {i.pid: i for i in soak.injected}
    for failure in soak.failures:
        injected = by_pid.get(failure.pid)
        if injected and injected.signal == "SIGKILL" and "status -9" in failure.reason:
            failure.cause, failure.at = "SIGKILL by the soak", injected.at
        elif injected and injected.signal == "SIGSTOP" and "heartbeats in a row failed" in failure.reason:
            failure.cause = f"SIGSTOP by the soak at {injected.at:.1f}s"
        else:
            for kind, symptom in FAULT_SYMPTOMS.items():
                applies = any(k == kind and target in (None, failure.worker) and not (once and failure.incarnation)
                              for k, _, target, once in specs)
                if symptom in failure.reason and applies and budget[(failure.worker, kind)] > 0:
                    budget[(failure.worker, kind)] -= 1
                    failure.cause = f"{kind} fault (--faults)"
                    break
    explained = [f for f in soak.failures if f.cause]
    for outcome in soak.outcomes:
        if outcome.code == "worker_failed" and outcome.kind == "video":
            hit = next((f for f in explained if outcome.started <= f.at <= outcome.ended + EXPLAIN_AFTER_S), None)
            if hit is not None:
                outcome.cause = f"video on a dying worker: {hit.worker} pid {hit.pid} at {hit.at:.1f}s ({hit.cause})"


def _percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return f"p50 {pick(0.5):.2f}s  p95 {pick(0.95):.2f}s  max {values[-1]:.2f}s"


def report(soak: Soak, fired: Counter[tuple[str, str]], wall_s: float, interrupted: bool) -> int:
    """Print the result; returns the number of unexplained failures."""
    explain(soak, fired)
    args, outcomes = soak.args, soak.outcomes
    failed = [o for o in outcomes if o.code is not None]
    print("\n=== soak result " + "=" * 60)
    print(f"router {soak.router.base_url}, {args.workers} workers; load {soak.load_s:.1f}s (ended by "
          f"{soak.ended_by or 'interruption'}), drain {soak.drain_s:.1f}s, wall {wall_s:.1f}s"
          + ("  [INTERRUPTED]" if interrupted else ""))
    print(f"requests: sent {soak.sent}  succeeded {len(outcomes) - len(failed)}  failed {len(failed)}  "
          f"(HTTP attempts {soak.sent + sum(soak.retries.values())})")
    for kind in ("image", "video"):
        mine = [o for o in outcomes if o.kind == kind]
        ok = [o.ended - o.started for o in mine if o.code is None]
        print(f"  {kind:5}  sent {len(mine):5}  ok {len(ok):5}  failed {len(mine) - len(ok):3}  "
              f"latency incl. retries: {_percentiles(ok)}")
    print("failures by code:" + ("  none" if not failed else ""))
    for (kind, code), count in sorted(Counter((o.kind, o.code) for o in failed).items()):
        explained = sum(o.cause is not None for o in failed if (o.kind, o.code) == (kind, code))
        print(f"  {code:24} {kind:5} {count:4}   explained {explained}")
    print("client retries by reason (on_retry):" + ("  none" if not soak.retries else ""))
    for (kind, reason), count in sorted(soak.retries.items()):
        print(f"  {reason:24} {kind:5} {count:4}")

    print("injected faults:")
    for name in ("SIGKILL", "SIGSTOP"):
        events = [i for i in soak.injected if i.signal == name]
        listed = ", ".join(f"{i.worker}@{i.at:.0f}s" for i in events)
        print(f"  external {name} x{len(events)}" + (f": {listed}" if listed else ""))
    print(f"  worker faults (--faults): {args.faults or '(none)'}")
    fired_text = ", ".join(f"{kind} x{n} ({wid})" for (wid, kind), n in sorted(fired.items()))
    print(f"  fired, per the workers' log lines: {fired_text or 'none'}")
    silent = [f"{kind}={count}@{target or 'any'}" for kind, count, target, _ in parse_faults(args.faults)
              if not any(n for (wid, k), n in fired.items() if k == kind and target in (None, wid))]
    if silent:
        print(f"  configured but never fired (the process was replaced before the count): {', '.join(silent)}")

    unexplained_workers = [f for f in soak.failures if f.cause is None]
    print(f"worker failures seen in /healthz: {len(soak.failures)}  (unexplained {len(unexplained_workers)})")
    for f in soak.failures:
        print(f"  {f.at:7.1f}s  {f.worker} pid {f.pid} (incarnation {f.incarnation}): {f.reason}\n"
              f"            -> {f.cause or 'UNEXPLAINED'}")
    restarts = sum(w["restarts"] for w in soak.workers.values())
    print(f"respawns: {restarts} (sum of restarts in /healthz, admin releases included)  "
          f"quarantines: {len(soak.quarantines)}  admin releases: {len(soak.releases)}")
    for at, wid in soak.quarantines:
        print(f"  {at:7.1f}s  {wid} quarantined")
    print("final pool: " + ", ".join(f"{w['id']} {w['state']} (restarts {w['restarts']}, "
                                      f"failures in window {w['failures_in_window']})"
                                      for w in soak.workers.values()))
    print(f"state transitions and injections (GET /healthz every {POLL_S}s; {soak.health_errors} failed polls):")
    for line in soak.transitions:
        print("  " + line)

    unexplained_requests = [o for o in failed if o.cause is None]
    print("explained request failures:" + ("  none" if len(failed) == len(unexplained_requests) else ""))
    for o in failed:
        if o.cause is not None:
            print(f"  {o.request_id} {o.code} {o.started:.1f}-{o.ended:.1f}s: {o.cause}")
    if unexplained_requests:
        print("UNEXPLAINED request failures:")
        for o in unexplained_requests:
            retried = ", ".join(soak.retry_reasons.get(o.request_id, [])) or "none"
            print(f"  {o.request_id} {o.started:.1f}-{o.ended:.1f}s {o.detail}; retries: {retried}")
    for anomaly in soak.anomalies:
        print(f"HEALING PROBLEM: {anomaly}")
    total = len(unexplained_requests) + len(unexplained_workers) + len(soak.anomalies)
    print(f"unexplained failures: {total}  (requests {len(unexplained_requests)}, worker failures "
          f"{len(unexplained_workers)}, healing {len(soak.anomalies)})")
    return total


# --- command line ---------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak a real router + workers with mixed image/video load while injecting faults; "
                    "exit 0 only when every failure is explained by an injected fault.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    load = parser.add_argument_group("load (bounded by both --duration and --max-requests)")
    load.add_argument("--duration", type=float, default=120.0, help="seconds during which new calls start")
    load.add_argument("--max-requests", type=int, default=5000, help="most calls started, images and videos")
    load.add_argument("--image-concurrency", type=int, default=6, help="concurrent image clients")
    load.add_argument("--video-concurrency", type=int, default=1, help="concurrent video clients")
    load.add_argument("--max-new-tokens", type=int, default=32, help="max_new_tokens of each image call")
    load.add_argument("--drain-timeout", type=float, default=60.0,
                      help="after the load, how long calls in flight may finish (then: failed, 'unfinished')")
    retry = parser.add_argument_group("client retry policy")
    retry.add_argument("--max-attempts", type=int, default=100, help="attempts per call, retries included")
    retry.add_argument("--failure-retries", type=int, default=3,
                       help="retries per call after worker_failed / a lost connection (the client's default is 1)")
    retry.add_argument("--image-deadline", type=float, default=150.0, help="seconds per image call, all attempts")
    retry.add_argument("--video-deadline", type=float, default=300.0, help="seconds per video call, all attempts")
    faults = parser.add_argument_group("faults and healing")
    faults.add_argument("--faults", default=DEFAULT_FAULTS,
                        help="FASTVLM_FAULT_INJECTION for the workers ('' for none): crash_after=N requests, "
                             "hang_after=N / oom_after=N batches, exit_at_startup; @wN one slot, :once its first "
                             "process only")
    faults.add_argument("--kill-every", type=float, default=20.0, help="SIGKILL a random ready worker this often "
                                                                        "(seconds; 0 = never)")
    faults.add_argument("--stop-every", type=float, default=45.0,
                        help="SIGSTOP a random ready worker this often and leave it frozen (seconds; 0 = never)")
    faults.add_argument("--quarantine-window", type=float, default=60.0,
                        help="FASTVLM_QUARANTINE_WINDOW_S: 3 failures of a slot within it quarantine the slot")
    faults.add_argument("--release-after", type=float, default=5.0,
                        help="release a quarantined slot through the admin API after this many seconds "
                             "(0 = never: it stays out, as without an operator)")
    faults.add_argument("--heal-timeout", type=float, default=45.0,
                        help="after the load, how long every slot may take to be ready again")
    service = parser.add_argument_group("service")
    service.add_argument("--workers", type=int, default=2, help="fastvlm serve --workers")
    service.add_argument("--max-concurrent", type=int, default=4,
                         help="FASTVLM_MAX_CONCURRENT, slots per worker. The default lets 6 image + 1 video "
                              "clients fit on 2 workers, so requests are shed only while a worker is down; with "
                              "the service's default of 2, closed-loop image clients hold every slot and the "
                              "video client is shed until the image load stops")
    service.add_argument("--model", default=None, help="an existing model folder (default: build the tiny model)")
    service.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                         help="extra router/worker setting, e.g. --set heartbeat_timeout_s=1 (becomes "
                              "FASTVLM_HEARTBEAT_TIMEOUT_S; repeatable; wins over the soak's own choices; "
                              "inherited FASTVLM_* variables are ignored)")
    service.add_argument("--startup-timeout", type=float, default=180.0,
                         help="seconds for all workers to be ready")
    service.add_argument("--workdir", default=None,
                         help="folder for the model, media and router.log, kept (default: a temporary folder, "
                              "removed after a clean run)")
    output = parser.add_argument_group("output")
    output.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    output.add_argument("--seed", type=int, default=None, help="seed for choosing kill/stop victims")
    output.add_argument("--verbose", action="store_true", help="print transitions and injections as they happen")
    args = parser.parse_args(argv)
    positive = ("duration", "max_requests", "max_attempts", "image_deadline", "video_deadline", "workers",
                "max_concurrent",
                "progress_every", "quarantine_window", "startup_timeout")
    for name in positive:
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")
    for name in ("image_concurrency", "video_concurrency", "failure_retries", "kill_every", "stop_every",
                 "release_after", "drain_timeout", "heal_timeout"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.image_concurrency + args.video_concurrency == 0:
        parser.error("no load: give --image-concurrency or --video-concurrency")
    try:
        parse_faults(args.faults)
    except ValueError as exc:
        parser.error(f"--faults: {exc}")
    if any("=" not in item for item in args.settings):
        parser.error("--set takes NAME=VALUE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    workdir = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="fastvlm-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    admin_key, admin_hash = new_key() if args.release_after > 0 else (None, None)
    router: Router | None = None
    soak: Soak | None = None
    status, interrupted = 0, False
    try:
        model, media = prepare(args, workdir)
        router = Router.start(args, workdir, model, media, admin_hash)
        print(f"router pid {router.popen.pid} on {router.base_url}, log {router.log_path}; waiting for "
              f"{args.workers} ready workers ...", flush=True)
        router.wait_ready(args.workers, args.startup_timeout)
        print(f"ready after {time.monotonic() - started:.1f}s; soaking for {args.duration:.0f}s "
              f"(faults: {args.faults or 'none'}; SIGKILL every {args.kill_every:g}s, "
              f"SIGSTOP every {args.stop_every:g}s)", flush=True)
        soak = Soak(args, router, media, admin_key)
        asyncio.run(soak.run())
    except StartupError as exc:
        print(f"soak: could not start the service: {exc}", file=sys.stderr)
        status = 2
    except KeyboardInterrupt:
        interrupted, status = True, 130
    finally:
        if soak is not None:
            soak.resume_frozen()
        if router is not None:
            router.stop()
    if soak is not None:
        unexplained = report(soak, fired_faults(router.log_path), time.monotonic() - started, interrupted)
        if status == 0 and unexplained:
            status = 1
    print(f"RESULT: {'PASS' if status == 0 else 'FAIL'} (exit status {status})")
    if status == 0 and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir} (router log: {workdir / 'router.log'})")
    return status


if __name__ == "__main__":
    sys.exit(main())
