"""A real Debian redis-server on a free loopback port, in its own folder, stopped by PID."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.procs import Proc, free_port, spawn, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _answers(port: int) -> bool:
    """Is the server accepting commands? (PING, or the refusal a password-protected server sends.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class RedisServer:
    """One redis-server without persistence (``--save '' --appendonly no``): a restart forgets everything."""

    directory: Path
    port: int
    password: str = ""
    proc: Proc | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        assert os.access(REDIS_SERVER, os.X_OK), "Debian's redis-server is needed (make test installs it)"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = spawn([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(self.directory),
                           *(["--requirepass", self.password] if self.password else [])],
                          dict(os.environ), self.directory / f"redis-{self.port}.log")
        wait_until(lambda: _answers(self.port), 20, f"redis-server on port {self.port}", self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None


def start_redis(directory: Path, *, password: str = "") -> RedisServer:
    return RedisServer(directory=directory, port=free_port(), password=password).start()
