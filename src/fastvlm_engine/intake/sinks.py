"""Where streamed uploads land: one sink per media value, and the meter that enforces its limit.

Both body parsers (JSON carrying base64 media, and multipart/form-data) write decoded media into
a sink as it arrives, so no upload is ever held whole in memory. The size limit is checked here,
once for both parsers, on decoded bytes and before each write, so a client is refused as soon as
its upload passes the limit rather than after the whole body has been read. A parse that fails
closes every sink it opened, so a rejected body leaves no spool file behind.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO, Protocol

from ..errors import MediaTooLarge

__all__ = ["MiB", "MeteredWriter", "Sink", "SinkFactory", "SinkInfo", "SinkLedger", "SpooledSink", "spool_sinks"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class SinkInfo:
    """What a sink factory learns about the media value it is about to receive."""

    index: int
    """Order of the value among the media of one body, from 0."""
    field: str
    """Where the value sits, as messages name it: ``image``, ``messages[0].content[1].image_url.url``."""
    kind: str
    """``image``/``video`` (JSON: from the field or the data: URL), or the multipart field name."""
    max_bytes: int
    """Largest decoded size allowed; one byte more raises MediaTooLarge."""
    mime: str | None = None
    """Declared type: a data: URL's, or a multipart part's Content-Type. Never verified."""
    filename: str | None = None
    """A multipart part's file name, cleaned for display only (never used as a path)."""


class Sink(Protocol):
    """The storage a parser writes decoded media into; the parser never reads it back."""

    def write(self, data: bytes, /) -> object: ...

    def close(self) -> None:
        """Release the storage; called by the parser on failure and for values a later one replaced."""


SinkFactory = Callable[[SinkInfo], Sink]


class SpooledSink:
    """The default sink: memory up to ``memory_bytes``, then an anonymous temporary file.

    Small images never touch the disk; a large video goes to ``directory`` (the lead's spool
    folder) as an unlinked temporary file, so nothing is left behind even if the process dies.
    """

    def __init__(self, *, directory: str | os.PathLike[str] | None = None, memory_bytes: int = MiB) -> None:
        if memory_bytes < 0:
            raise ValueError("memory_bytes must be >= 0")
        self._file = tempfile.SpooledTemporaryFile(max_size=memory_bytes, mode="w+b", dir=directory)
        self.size = 0

    def write(self, data: bytes, /) -> int:
        """Append ``data``; the size grows with it."""
        if self._file.closed:
            raise ValueError("write to a closed sink")
        self._file.write(data)
        self.size += len(data)
        return len(data)

    def reader(self) -> BinaryIO:
        """The spooled content as a binary file positioned at its start (closed with the sink)."""
        self._file.seek(0)
        return self._file  # type: ignore[return-value]

    def read_bytes(self) -> bytes:
        """The whole content; meant for images, which are small enough to hold."""
        return self.reader().read()

    @property
    def closed(self) -> bool:
        """Whether close() has run and the storage is gone."""
        return self._file.closed

    def close(self) -> None:
        """Drop the content (memory or temporary file); safe to call more than once."""
        self._file.close()

    def __enter__(self) -> SpooledSink:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SpooledSink(size={self.size}, closed={self.closed})"


def spool_sinks(directory: str | os.PathLike[str] | None = None, *, memory_bytes: int = MiB) -> SinkFactory:
    """A factory of SpooledSink in ``directory`` (None: the system temporary folder)."""
    if memory_bytes < 0:
        raise ValueError("memory_bytes must be >= 0")

    def open_sink(info: SinkInfo) -> SpooledSink:
        return SpooledSink(directory=directory, memory_bytes=memory_bytes)

    return open_sink


class MeteredWriter:
    """Counts the bytes written into one sink and refuses the first write that would pass its limit."""

    __slots__ = ("info", "sink", "size")

    def __init__(self, sink: Sink, info: SinkInfo) -> None:
        self.sink = sink
        self.info = info
        self.size = 0

    def write(self, data: bytes) -> None:
        """Write ``data`` unless it takes the value past ``info.max_bytes`` (then MediaTooLarge)."""
        size = self.size + len(data)
        if size > self.info.max_bytes:
            raise MediaTooLarge(f"{self.info.field} is larger than the limit of {self.info.max_bytes} bytes.",
                                field=self.info.field)
        if data:
            self.sink.write(data)
            self.size = size


class SinkLedger:
    """The sinks one parse has opened, so that a failed parse can close every one of them."""

    def __init__(self, factory: SinkFactory) -> None:
        self._factory = factory
        self._open: dict[int, Sink] = {}
        self.opened = 0
        """How many sinks this parse has opened, closed ones included; the next SinkInfo.index."""

    def open(self, info: SinkInfo) -> MeteredWriter:
        """Open a sink for ``info`` through the factory and meter writes into it."""
        sink = self._factory(info)
        self._open[id(sink)] = sink
        self.opened += 1
        return MeteredWriter(sink, info)

    def discard(self, sink: Sink) -> None:
        """Close one sink whose value the parse no longer returns."""
        self._open.pop(id(sink), None)
        sink.close()

    def close_all(self) -> None:
        """Close every sink still open; used when the parse fails."""
        sinks, self._open = list(self._open.values()), {}
        for sink in sinks:
            sink.close()
