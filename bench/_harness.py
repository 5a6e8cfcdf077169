"""Shared plumbing for the HTTP benchmarks: real service processes, statistics and tables.

The benchmarks start real ``fastvlm serve`` / ``fastvlm worker`` processes on free loopback ports,
each in its own session, and stop them by process group (SIGTERM, then SIGKILL) when the
``Services`` context exits, also on Ctrl-C, SIGTERM or an exception. Workers spawned by a router
are recorded from its ``/healthz`` and stopped too should they outlive it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

FASTVLM = [sys.executable, "-m", "fastvlm_engine.cli"]
HOST = "127.0.0.1"
JSON_HEADERS = {"Content-Type": "application/json"}


# --- command line -------------------------------------------------------------------------------

def add_service_args(parser: argparse.ArgumentParser) -> None:
    """Options every benchmark shares: the model, extra service settings, start-up limit."""
    parser.add_argument("--model", metavar="DIR",
                        help="model folder (default: build the built-in tiny model in a temp dir)")
    parser.add_argument("--set", dest="settings", metavar="NAME=VALUE", action="append", default=[],
                        help="extra service setting, e.g. --set log_level=WARNING (becomes FASTVLM_LOG_LEVEL); "
                             "repeatable; wins over the benchmark's own choices")
    parser.add_argument("--startup-timeout", type=float, default=240.0, metavar="S",
                        help="longest wait for the service to become ready (default %(default)s)")


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """``--set`` pairs as {name: value}; argparse-style error on a malformed one."""
    settings = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--set expects NAME=VALUE, got {pair!r}")
        settings[name.strip().lower().removeprefix("fastvlm_")] = value
    return settings


def positive_int(text: str) -> int:
    """argparse type for a count of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def int_list(text: str) -> list[int]:
    """argparse type for '1,4,16'."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers")
    return values


def exit_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every ``finally`` (process clean-up) runs."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


# --- processes ----------------------------------------------------------------------------------

class StartupError(RuntimeError):
    """The model, the media or a service process could not be made ready."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    """GET a JSON document with urllib (for polling outside the event loop)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {}


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def _is_own_worker(pid: int) -> bool:
    """A live fastvlm worker that leads its own process group (so the pid was not reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return (_pid_alive(pid) and os.getpgid(pid) == pid and b"fastvlm_engine.cli" in cmdline
                and b"worker" in cmdline)
    except OSError:
        return False


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_while(alive: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)


class Proc:
    """One spawned process in its own session, output captured to a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, base_url: str) -> None:
        self.name = name
        self.base_url = base_url
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def exited(self) -> bool:
        return self.popen.poll() is not None


class Services:
    """Temp dir, model, sample media and the processes of one benchmark run; stops them all on exit."""

    def __init__(self, model: str | None, extra_settings: dict[str, str], startup_timeout: float) -> None:
        self.model = model
        self.extra_settings = extra_settings
        self.startup_timeout = startup_timeout
        self.procs: list[Proc] = []
        self.routers: list[Proc] = []
        self.worker_pids: set[int] = set()
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.tmp = Path()
        self.model_dir = ""
        self.media_dir = Path()

    def __enter__(self) -> Services:
        self._tmp = tempfile.TemporaryDirectory(prefix="fastvlm-bench-")
        self.tmp = Path(self._tmp.name)
        try:
            self.media_dir = self.tmp / "media"
            self._cli("sample-media", str(self.media_dir))
            if self.model:
                self.model_dir = self.model
            else:
                self.model_dir = str(self.tmp / "tiny-model")
                self._cli("tiny-model", self.model_dir)
        except BaseException:
            self._tmp.cleanup()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short; it is bounded by the waits below.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._tmp is not None:
                self._tmp.cleanup()

    def _stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every process group (a router stops its workers), wait, SIGKILL what is left."""
        for router in self.routers:  # one last look for workers respawned since the last poll
            if not router.exited():
                self._record_workers(router)
        for proc in self.procs:
            _signal_group(proc.popen.pid, signal.SIGTERM)
        _wait_while(lambda: any(not p.exited() for p in self.procs), grace)
        for proc in self.procs:
            _signal_group(proc.popen.pid, signal.SIGKILL)  # stragglers, even when the leader has exited
            try:
                proc.popen.wait(5.0)
            except subprocess.TimeoutExpired:
                print(f"warning: {proc.name} (pid {proc.popen.pid}) survived SIGKILL", file=sys.stderr)
        # Router-spawned workers lead their own groups; normally their router (or PDEATHSIG) ended them.
        for pid in (pid for pid in self.worker_pids if _is_own_worker(pid)):
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                _signal_group(pid, sig)
                _wait_while(lambda pid=pid: _pid_alive(pid), wait)

    def stop(self, proc: Proc, grace: float = 15.0) -> None:
        """Stop one process (a router takes its workers with it) before the run ends."""
        if proc in self.routers and not proc.exited():
            self._record_workers(proc)
        _signal_group(proc.popen.pid, signal.SIGTERM)
        _wait_while(lambda: not proc.exited(), grace)
        _signal_group(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(5.0)

    def _cli(self, *args: str) -> None:
        result = subprocess.run([*FASTVLM, *args], env=self.env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise StartupError(f"fastvlm {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-3000:]}")

    def env(self, **settings: object) -> dict[str, str]:
        """Offline, one torch thread, loopback only; FASTVLM_* from ``settings`` then ``--set``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVLM_")}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        base = {"model": self.model_dir, "media_roots": str(self.media_dir), "torch_threads": 1,
                "host": HOST, "worker_host": HOST, "log_format": "text", "shutdown_grace_s": 5,
                "state_dir": str(self.tmp / "state")}
        for name, value in {**base, **settings, **self.extra_settings}.items():
            env[f"FASTVLM_{name.upper()}"] = str(value)
        return env

    def start_router(self, **settings: object) -> Proc:
        """``fastvlm serve`` (router plus the workers it spawns) on a free port; not waited for.

        Each router has its own state folder: workers lease jobs from their router's job store in any
        mode, so two services sharing one would serve each other's jobs."""
        port = free_port()
        settings.setdefault("state_dir", self.tmp / f"state-{port}")
        proc = Proc("router", [*FASTVLM, "serve"], self.env(port=port, **settings), self.tmp / f"router-{port}.log",
                    f"http://{HOST}:{port}")
        self.procs.append(proc)
        self.routers.append(proc)
        return proc

    def start_worker(self, **settings: object) -> Proc:
        """A standalone ``fastvlm worker`` (no router, so no internal token) on a free port."""
        port = free_port()
        proc = Proc("worker", [*FASTVLM, "worker", "--host", HOST, "--port", str(port)], self.env(**settings),
                    self.tmp / f"worker-{port}.log", f"http://{HOST}:{port}")
        self.procs.append(proc)
        return proc

    def _record_workers(self, router: Proc) -> dict:
        try:
            status, health = get_json(router.base_url + "/healthz", timeout=2.0)
        except (OSError, ValueError):
            return {}
        if status == 200:
            self.worker_pids.update(w["pid"] for w in health.get("workers", []) if w.get("pid"))
        return health if status == 200 else {}

    def _wait(self, proc: Proc, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.exited():
                raise StartupError(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n"
                                   f"{proc.log_tail()}")
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise StartupError(f"timed out after {self.startup_timeout:.0f}s waiting for {what}:\n{proc.log_tail()}")

    def wait_router(self, router: Proc, workers: int) -> dict:
        """Wait until the router reports ``workers`` ready workers; returns its /healthz."""
        health: dict = {}

        def ready() -> bool:
            nonlocal health
            health = self._record_workers(router)
            return health.get("ready_workers", 0) >= workers

        self._wait(router, ready, f"{workers} ready worker(s) behind {router.base_url}")
        return health

    def wait_worker(self, worker: Proc) -> None:
        self._wait(worker, lambda: get_json(worker.base_url + "/readyz", timeout=2.0)[0] == 200,
                   f"{worker.base_url}/readyz")


# --- CPU accounting -----------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads), from /proc; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[-1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds used by named processes (and by this process) between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> CpuMeter:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._start["client"] = time.process_time()
        return self

    def stop(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        now["client"] = time.process_time()
        self.used = {name: now[name] - self._start[name] for name in now}
        return self.used


# --- statistics and output ----------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], left: int = 1) -> str:
    """A plain-text table; the first ``left`` columns are left-aligned, the rest right-aligned."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = (c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        lines.append("  ".join(padded))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def run_bench(model: str | None, settings: dict[str, str], startup_timeout: float,
              body: Callable[[Services], None]) -> int:
    """Run ``body`` with services that are always stopped; print the load average around it.

    Returns the exit status: 0, 1 if the services could not start, 130 on Ctrl-C.
    """
    exit_on_sigterm()
    started = time.monotonic()
    print(f"load average at start: {load_average()}", flush=True)
    try:
        with Services(model, settings, startup_timeout) as services:
            body(services)
    except KeyboardInterrupt:
        print("interrupted; processes stopped", file=sys.stderr)
        return 130
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"\nload average at end:   {load_average()}")
    print(f"total time {time.monotonic() - started:.0f} s (including start-up and shutdown)")
    return 0
