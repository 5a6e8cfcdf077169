"""Datagrams between the processes of one host that share a SQLite job store: its notices.

Every process that waits for notices binds a Unix datagram socket in a folder beside the database
(created for the user alone, mode 0700); a process that queues or finishes a job sends one
datagram to every other socket there. Nothing polls: a waiting process is woken by the kernel, and
an idle one costs nothing. A socket left behind by a killed process is removed by the first sender
that finds nobody bound to it. A datagram to a process whose buffer is full is dropped, and none
is kept for a process not yet listening: receivers also re-check the store on a timer (see
jobs.notices), so a lost datagram costs latency, never a result.

Socket paths are limited to about 100 bytes; a longer folder is reached through
``/proc/self/fd/<folder fd>/`` (Linux), so the path length never matters there.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path

__all__ = ["LocalBus"]

MAX_SOCKET_PATH = 100
"""Longest socket path used as is (sun_path holds 108 bytes on Linux, 104 on the BSDs)."""
MAX_DATAGRAM = 512
"""Largest message read (notices are a word and a job id)."""


class LocalBus:
    """This process's end of the notices folder: ``listen`` to hear, ``publish`` to tell the others."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._name: str | None = None
        self._listener: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._dir_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def listen(self, on_message: Callable[[bytes], None]) -> None:
        """Bind this process's socket; every datagram goes to ``on_message`` on the running loop. OSError
        if the folder cannot hold a socket."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{os.getpid():x}.{secrets.token_hex(4)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.setblocking(False)
            listener.bind(self._address(name))
        except BaseException:
            listener.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(listener.fileno(), self._drain, listener, on_message)
        self._name, self._listener = name, listener

    def publish(self, message: bytes) -> None:
        """Send ``message`` to every other process listening on this folder (best effort, never blocks)."""
        try:
            names = [entry.name for entry in os.scandir(self.directory) if entry.name != self._name]
        except FileNotFoundError:  # nobody has listened yet
            return
        if not names:
            return
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        for name in names:
            try:
                self._sender.sendto(message, self._address(name))
            except ConnectionRefusedError:  # its process is gone
                self._remove_stale(name)
            except OSError as exc:  # full (EAGAIN), or not a socket: skip it
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ENOENT, errno.ENOTSOCK, errno.EPROTOTYPE):
                    raise

    def close(self) -> None:
        if self._listener is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            self._remove_stale(self._name or "")
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _address(self, name: str) -> str:
        path = str(self.directory / name)
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return path
        if self._dir_fd is None:
            self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self._dir_fd}/{name}"

    def _remove_stale(self, name: str) -> None:
        path = self.directory / name
        try:
            if name and stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        except FileNotFoundError:
            pass

    @staticmethod
    def _drain(listener: socket.socket, on_message: Callable[[bytes], None]) -> None:
        while True:
            try:
                message = listener.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            on_message(message)
