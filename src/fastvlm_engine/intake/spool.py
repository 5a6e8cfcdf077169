"""Bytes a request brought, in memory while small and in a temporary file once they are not.

A request body, or the media decoded from it, is written into a :class:`Spool` as it arrives.
The first ``memory_bytes`` stay in memory (most image requests never touch the disk); past that
the bytes go to a file in the spool directory, so a 200 MB video costs the router a few
megabytes of memory whatever way it was sent. A spool enforces its own size limit on every
write, so an upload is refused the moment it passes the limit, not after it was stored.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..errors import EngineError

__all__ = ["MEMORY_BYTES", "Spool"]

MEMORY_BYTES = 1 << 20
"""Bytes a spool keeps in memory before it moves to a file."""


class Spool:
    """A write-once, read-many byte store with a size limit (not thread-safe; one writer at a time)."""

    def __init__(self, *, max_bytes: int, too_large: Callable[[int], EngineError], directory: str | None = None,
                 memory_bytes: int = MEMORY_BYTES, suffix: str = "") -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._too_large = too_large
        self._directory = directory
        self._memory_bytes = memory_bytes
        self._suffix = suffix
        self._buffer: io.BytesIO | None = io.BytesIO()
        self._file: BinaryIO | None = None
        self.path: str | None = None
        """The backing file once the spool is on disk, else None."""

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def will_spill(self, extra: int) -> bool:
        """Would writing ``extra`` more bytes put (or keep) this spool on disk?"""
        return self.on_disk or self.size + extra > self._memory_bytes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; raises the spool's too-large error as soon as the limit is passed."""
        if not data:
            return
        if self.size + len(data) > self.max_bytes:
            raise self._too_large(self.max_bytes)
        if self._buffer is not None and self.size + len(data) > self._memory_bytes:
            self._spill()
        if self._file is not None:
            self._file.write(data)
        elif self._buffer is not None:
            self._buffer.write(data)
        else:
            raise ValueError("write to a closed spool")
        self.size += len(data)

    def _spill(self) -> None:
        if self._directory:
            os.makedirs(self._directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="fastvlm-", suffix=self._suffix, dir=self._directory or None)
        self._file = os.fdopen(fd, "w+b")
        self.path = path
        if self._buffer is not None:
            self._file.write(self._buffer.getbuffer())
        self._buffer = None

    def finish(self) -> Spool:
        """Flush what was written (call once writing is over); returns self."""
        if self._file is not None:
            self._file.flush()
        return self

    def open(self) -> BinaryIO:
        """A new reader positioned at the first byte."""
        if self._buffer is not None:
            return io.BytesIO(self._buffer.getvalue())
        if self.path is None:
            raise ValueError("read from a closed spool")
        self.finish()
        return open(self.path, "rb")  # noqa: SIM115 - the caller owns it

    def read_bytes(self) -> bytes:
        """Everything, in memory (for bodies already known to be small)."""
        if self._buffer is not None:
            return self._buffer.getvalue()
        with self.open() as reader:
            return reader.read()

    def head(self, count: int) -> bytes:
        """The first ``count`` bytes (for sniffing the media type)."""
        if self._buffer is not None:
            return self._buffer.getbuffer()[:count].tobytes()
        with self.open() as reader:
            return reader.read(count)

    def persist(self, destination: str | os.PathLike) -> None:
        """Store the bytes at ``destination`` (moved when possible), durably, and close the spool."""
        target = Path(destination)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_name(target.name + ".partial")
        if self.path is not None:
            if self._file is not None:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
            try:
                os.replace(self.path, staging)
            except OSError:  # another file system
                shutil.copyfile(self.path, staging)
                os.unlink(self.path)
            self.path = None
        else:
            with open(staging, "wb") as out:
                out.write(self.read_bytes())
                out.flush()
                os.fsync(out.fileno())
            self._buffer = None
        os.replace(staging, target)

    def close(self) -> None:
        """Release the memory or delete the file; safe to call twice."""
        self._buffer = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Spool(size={self.size}, on_disk={self.on_disk})"
