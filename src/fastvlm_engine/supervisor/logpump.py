"""Worker output: read without a line-length limit, written without blocking the event loop.

A child's stdout is read in chunks and split into lines here (``StreamReader.readline`` gives up on
lines over 64 KiB, which stopped the pump and left the worker blocked on a full pipe until it was
killed for missed heartbeats). Overlong lines are cut, never dropped. Lines go to the router's
stderr from one writer thread behind a bounded queue: a slow terminal or log collector can lose
lines (counted, and said so) but can never stall routing.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
from collections.abc import Callable
from typing import TextIO

__all__ = ["LineSplitter", "LogWriter", "MAX_LINE_BYTES", "pump_lines"]

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 16 * 1024
"""Longest line kept whole; longer ones are cut to this and marked."""
_CHUNK = 64 * 1024


class LineSplitter:
    """Bytes in, complete lines out; a line longer than ``max_bytes`` is cut and marked."""

    def __init__(self, max_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._partial = bytearray()
        self._dropped = 0  # bytes cut from the line being read

    def feed(self, data: bytes) -> list[str]:
        lines = []
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return lines
            self._keep(data[start:end])
            lines.append(self._take())
            start = end + 1

    def flush(self) -> list[str]:
        """The last line if the stream ended without a newline."""
        return [self._take()] if self._partial or self._dropped else []

    def _keep(self, piece: bytes) -> None:
        room = self.max_bytes - len(self._partial)
        if len(piece) > room:
            self._dropped += len(piece) - max(room, 0)
            piece = piece[:max(room, 0)]
        self._partial += piece

    def _take(self) -> str:
        text = self._partial.decode(errors="replace").rstrip("\r")
        if self._dropped:
            text += f" … [{self._dropped} more bytes cut]"
        self._partial.clear()
        self._dropped = 0
        return text


class LogWriter:
    """One thread writing lines to a stream; ``write`` never blocks (it drops when the queue is full)."""

    def __init__(self, stream: TextIO | None = None, capacity: int = 10_000) -> None:
        self._stream = stream
        self._queue: queue.Queue[str | None] = queue.Queue(capacity)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="worker-log-writer", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _run(self) -> None:
        reported = 0
        while True:
            line = self._queue.get()
            if line is None:
                return
            stream = self._stream or sys.stderr
            try:
                if self.dropped > reported:
                    stream.write(f"[{self.dropped - reported} worker log line(s) dropped: output too slow]\n")
                    reported = self.dropped
                stream.write(line + "\n")
                stream.flush()
            except (OSError, ValueError):
                pass  # stderr closed: nothing useful left to do with the line


async def pump_lines(stream: asyncio.StreamReader, on_line: Callable[[str], None]) -> None:
    """Read ``stream`` to its end, calling ``on_line`` for each line (however long)."""
    splitter = LineSplitter()
    while True:
        data = await stream.read(_CHUNK)
        if not data:
            break
        for line in splitter.feed(data):
            on_line(line)
    for line in splitter.flush():
        on_line(line)
