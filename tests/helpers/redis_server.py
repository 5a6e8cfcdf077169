"""A real Debian redis-server in its own folder, stopped by PID: on a free loopback port, or on a test network host."""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers.procs import Proc, free_port, spawn, wait_until

if TYPE_CHECKING:
    from tests.helpers.netns import NetnsHost

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _answers(port: int) -> bool:
    """Is the server accepting commands? (PING, or the refusal a password-protected server sends.)"""
    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))


@dataclass
class RedisServer:
    """One redis-server without persistence (``--save '' --appendonly no``): a restart forgets everything.

    With ``host`` (a network namespace from tests.helpers.netns) it runs inside that host, listening on the host's
    address and its loopback, and ``url`` names the host's address, for clients on the other hosts.
    """

    directory: Path
    port: int
    password: str = ""
    proc: Proc | None = None
    host: NetnsHost | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host.address if self.host else '127.0.0.1'}:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or restart, on the same port) and wait until it answers PING."""
        assert os.access(REDIS_SERVER, os.X_OK), "Debian's redis-server is needed (make test installs it)"
        self.directory.mkdir(parents=True, exist_ok=True)
        bind = f"{self.host.address} 127.0.0.1" if self.host else "127.0.0.1"
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", bind, "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), *(["--requirepass", self.password] if self.password else [])]
        log_path = self.directory / f"redis-{self.port}.log"
        if self.host:
            self.proc = self.host.spawn(args, env=dict(os.environ), log_path=log_path)
        else:
            self.proc = spawn(args, dict(os.environ), log_path)
        wait_until(self._answers, 20, f"redis-server on {self.url}", self.proc)
        return self

    def _answers(self) -> bool:
        """PING on its loopback, from inside its host when it has one."""
        return self.host.call(_answers, self.port) if self.host else _answers(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=10)
            self.proc = None


def start_redis(directory: Path, *, password: str = "") -> RedisServer:
    return RedisServer(directory=directory, port=free_port(), password=password).start()


def start_redis_on(host: NetnsHost, directory: Path, *, port: int = 6379, password: str = "") -> RedisServer:
    """A redis-server inside ``host`` (a fresh namespace: ``port`` is free there), at ``url`` for the other hosts."""
    return RedisServer(directory=directory, port=port, password=password, host=host).start()
