"""Real processes for integration tests, always stopped by process group in teardown."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FASTVLM = [sys.executable, "-m", "fastvlm_engine.cli"]


def worker_env(**settings: object) -> dict[str, str]:
    """The environment for a spawned process: offline, one torch thread, FASTVLM_* from kwargs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVLM_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1", FASTVLM_TORCH_THREADS="1")
    for name, value in settings.items():
        env[f"FASTVLM_{name.upper()}"] = str(value)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Proc:
    """A spawned process in its own session, with its output captured to a file."""

    popen: subprocess.Popen
    log_path: Path
    base_url: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the group, then SIGKILL what is left; returns the exit status."""
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # stragglers in the group, even if the leader exited
        try:
            return self.popen.wait(5)
        except subprocess.TimeoutExpired:
            return None


def spawn(args: list[str], env: dict[str, str], log_path: Path, **popen_kwargs) -> Proc:
    handle = open(log_path, "wb")
    popen = subprocess.Popen(args, env=env, stdout=handle, stderr=subprocess.STDOUT,
                             start_new_session=True, **popen_kwargs)
    handle.close()
    return Proc(popen=popen, log_path=log_path)


def http(method: str, url: str, body: object | bytes | None = None, headers: dict | None = None,
         timeout: float = 60.0) -> tuple[int, dict, dict | str]:
    """One request with urllib; returns (status, headers, parsed JSON or text)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, hdrs = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, hdrs = exc.code, exc.read(), dict(exc.headers)
    try:
        return status, hdrs, json.loads(raw)
    except ValueError:
        return status, hdrs, raw.decode(errors="replace")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, proc: Proc | None = None,
               interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise AssertionError(f"process exited ({proc.popen.returncode}) while waiting for {what}:\n"
                                 f"{proc.log()[-3000:]}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" +
                         (f":\n{proc.log()[-3000:]}" if proc else ""))


def start_worker(tmp_path: Path, model_dir: str, **settings: object) -> Proc:
    """A real ``fastvlm worker`` on a free loopback port (not waited for)."""
    port = free_port()
    settings.setdefault("state_dir", tmp_path / f"state-{port}")  # its own job store, not the user's
    env = worker_env(model=model_dir, **settings)
    proc = spawn([*FASTVLM, "worker", "--host", "127.0.0.1", "--port", str(port)], env,
                 tmp_path / f"worker-{port}.log")
    proc.base_url = f"http://127.0.0.1:{port}"
    return proc


def wait_ready(proc: Proc, timeout: float = 120.0) -> None:
    wait_until(lambda: http("GET", proc.base_url + "/readyz", timeout=5)[0] == 200, timeout,
               f"{proc.base_url}/readyz", proc)


def start_router(tmp_path: Path, model_dir: str, *, extra_env: dict[str, str] | None = None,
                 **settings: object) -> Proc:
    """A real ``fastvlm serve`` (router + its spawned workers) on a free loopback port."""
    port = free_port()
    settings.setdefault("state_dir", tmp_path / f"state-{port}")  # its own job store, not the user's
    env = {**worker_env(model=model_dir, port=port, **settings), **(extra_env or {})}
    proc = spawn([*FASTVLM, "serve"], env, tmp_path / f"router-{port}.log")
    proc.base_url = f"http://127.0.0.1:{port}"
    return proc


def wait_workers_ready(proc: Proc, count: int, timeout: float = 180.0) -> dict:
    """Wait until the router reports ``count`` ready workers; returns its /healthz."""
    health: dict = {}

    def enough() -> bool:
        nonlocal health
        status, _, health = http("GET", proc.base_url + "/healthz", timeout=5)
        return status == 200 and health["ready_workers"] >= count

    wait_until(enough, timeout, f"{count} ready worker(s) behind {proc.base_url}", proc, interval=0.2)
    return health


def worker_pids(health: dict) -> list[int]:
    return [w["pid"] for w in health["workers"] if w.get("pid")]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _headers(head: bytes) -> dict:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def raw_exchange(base_url: str, head: bytes, chunks=(), timeout: float = 30.0) -> tuple[int, dict, dict]:
    """Send a request piece by piece and read the answer as soon as the server gives one."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body was done: what we want
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = sock.recv(65536)
            if not data:
                break
            raw += data
        header, _, rest = raw.partition(b"\r\n\r\n")
        length = int(next((line.split(b":")[1] for line in header.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), b"0"))
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                break
            rest += data
    return int(header.split(b" ")[1]), _headers(header), json.loads(rest[:length])
