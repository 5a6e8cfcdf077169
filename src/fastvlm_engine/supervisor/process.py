"""Starting and stopping one worker process.

A worker gets a socket its supervisor bound first (so its port is known and never raced), runs in
its own session (stopped by process group) and dies with its supervisor: the kernel sends it
SIGKILL when the supervisor's process dies (PR_SET_PDEATHSIG), and the worker also watches its
parent's PID. Its settings are passed explicitly — serialised by the supervisor and read from an
inherited pipe — not inherited through the environment; only the CUDA runtime's variables
(which GPU it may see) go through the environment, because that is where CUDA reads them.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ..config import Settings

__all__ = ["Spawned", "settings_payload", "spawn_worker", "terminate"]

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: the kernel kills the child when the supervisor dies, even by SIGKILL."""
    def preexec() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass  # not Linux: the worker's own parent watchdog still applies
        if os.getppid() != parent_pid:  # the supervisor died before prctl took effect
            os._exit(1)
    return preexec


def settings_payload(settings: Settings, **overrides: Any) -> bytes:
    """The worker's settings as JSON, secrets included (it reads them from a pipe only it holds)."""
    values = {**settings.model_dump(), **overrides}

    def plain(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return json.dumps({name: plain(value) for name, value in values.items()}).encode()


@dataclass
class Spawned:
    process: asyncio.subprocess.Process
    port: int


async def spawn_worker(settings_json: bytes, *, host: str, worker_id: str, incarnation: int,
                       cuda_env: Mapping[str, str]) -> Spawned:
    """Start ``fastvlm worker`` on a socket bound here, its output on a pipe (stdout+stderr)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    read_end = write_end = -1
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        read_end, write_end = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FASTVLM_")}
        env.update(cuda_env)
        args = [sys.executable, "-m", "fastvlm_engine.cli", "worker", "--fd", str(sock.fileno()),
                "--settings-fd", str(read_end), "--host", host, "--parent-pid", str(os.getpid()),
                "--worker-id", worker_id, "--incarnation", str(incarnation)]
        process = await asyncio.create_subprocess_exec(
            *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, pass_fds=(sock.fileno(), read_end), start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()))
        os.close(read_end)
        read_end = -1
        with os.fdopen(write_end, "wb") as pipe:  # a few KB: fits the pipe buffer, never blocks
            write_end = -1
            pipe.write(settings_json)
        return Spawned(process=process, port=port)
    finally:
        sock.close()  # the child holds its own copy
        for fd in (read_end, write_end):
            if fd >= 0:
                os.close(fd)


async def terminate(process: asyncio.subprocess.Process, grace: float) -> None:
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
