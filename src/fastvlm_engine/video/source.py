"""Opening a video with PyAV, and the one place where PyAV's errors become ours.

PyAV raises many unrelated types for bad input (``av.error.InvalidDataError``, other
``FFmpegError`` subclasses, ``OSError``, ``ValueError``, ``EOFError``, ``IndexError`` ...).
Like httpx wrapping httpcore, nothing outside this module knows about them: code that touches
PyAV runs inside :func:`media_errors`, which re-raises them as :class:`~fastvlm_engine.errors`
media errors with fixed, path-free messages (PyAV's own messages contain the file name).

Whether a failure means "not a video" (415) or "a broken video" (422) is decided by sniffing the
first bytes for a known video container signature: a JPEG or a text file is unsupported, while
an MP4 whose index is missing is an invalid video.

Sources are always handed to FFmpeg as Python file objects, never as path strings, so FFmpeg's
protocol syntax (``concat:``, ``subfile,,``, URLs) can never be reached through a file name, and
probing is restricted to real video container demuxers (:data:`ALLOWED_DEMUXERS`) so a still
image or a text file is not read as a one-frame "video".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Self

import av
import av.error

from ..errors import EngineError, InvalidVideo, MediaNotFound, MediaTooLarge, UnsupportedMedia

__all__ = [
    "ALLOWED_DEMUXERS",
    "OpenedAudio",
    "OpenedVideo",
    "VideoSource",
    "looks_like_video_container",
    "media_errors",
    "open_audio",
    "open_video",
]

logger = logging.getLogger(__name__)

VideoSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO
"""A file path (already checked against the media roots), raw bytes, or an open binary file
(read from its current position; the caller keeps ownership and closes it)."""

ALLOWED_DEMUXERS = ("mov", "mp4", "matroska", "webm", "avi", "flv", "mpegts", "mpeg", "ogg", "asf")
"""FFmpeg demuxers probing may pick (FFmpeg ``format_whitelist``): real video containers only."""

IO_BUFFER_BYTES = 256 * 1024
"""Read size of PyAV's Python-file bridge; larger than its 32 KiB default to cut callbacks."""

SNIFF_BYTES = 512

_NOT_VIDEO = "The data is not a video in a supported container (MP4/MOV, MKV/WebM, AVI, FLV, MPEG-TS/PS, Ogg, ASF)."
_NO_VIDEO_STREAM = "The file contains no video stream (audio-only or data-only media is not supported)."
_BROKEN = "The video is corrupt or truncated and cannot be decoded."
_EMPTY = "The video is empty."
_NOT_FOUND = "The video file could not be opened."

_FFMPEG_OR_IO_ERRORS: tuple[type[BaseException], ...] = (
    av.error.FFmpegError, OSError, ValueError, EOFError, IndexError, OverflowError,
)
"""What PyAV raises for bad data (FFmpegError subclasses ValueError; UnicodeError is a
ValueError). Anything else is a bug and is left to surface as a 500."""


def looks_like_video_container(head: bytes) -> bool:
    """True when ``head`` starts with the signature of a video container we accept."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip", b"pnot"):
        return True
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska / WebM
        return True
    if head[:4] == b"RIFF" and head[8:12] in (b"AVI ", b"AVIX"):
        return True
    if head[:3] == b"FLV" or head[:4] == b"OggS" or head[:4] == b"\x00\x00\x01\xba":
        return True
    if head[:8] == b"\x30\x26\xb2\x75\x8e\x66\xcf\x11":  # ASF / WMV
        return True
    # MPEG-TS: a 0x47 sync byte every 188 bytes.
    return len(head) > 188 and head[0] == 0x47 and head[188] == 0x47


@contextlib.contextmanager
def media_errors(*, container_like: bool, opening: bool = False) -> Iterator[None]:
    """Translate PyAV/IO errors raised inside the block into media errors.

    ``container_like`` is the sniffing verdict; ``opening`` marks the av.open() call, where a
    failure on something that does not even look like a video means "unsupported".
    """
    try:
        yield
    except EngineError:
        raise
    except _FFMPEG_OR_IO_ERRORS as exc:
        logger.debug("video rejected: %s: %s", type(exc).__name__, getattr(exc, "strerror", None))
        if opening and not container_like:
            raise UnsupportedMedia(_NOT_VIDEO) from exc
        raise InvalidVideo(_BROKEN) from exc


def _close(container: av.container.InputContainer, owned_file: BinaryIO | None) -> None:
    with contextlib.suppress(Exception):
        container.close()
    if owned_file is not None:
        with contextlib.suppress(Exception):
            owned_file.close()


class _Opened:
    """Closes the container, then the file we opened for it (if we did)."""

    container: av.container.InputContainer
    _owned_file: BinaryIO | None

    def close(self) -> None:
        _close(self.container, self._owned_file)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@dataclass
class OpenedVideo(_Opened):
    """An open container with its chosen video stream; close() releases both."""

    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    container_like: bool
    size_bytes: int
    _owned_file: BinaryIO | None


@dataclass
class OpenedAudio(_Opened):
    """An open container with its chosen audio stream; close() releases both."""

    container: av.container.InputContainer
    stream: av.audio.stream.AudioStream
    _owned_file: BinaryIO | None


def _file_object(source: VideoSource, max_bytes: int) -> tuple[BinaryIO, BinaryIO | None, int]:
    """(file to read, file we must close or None, size in bytes); enforces ``max_bytes``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise MediaTooLarge(f"The video is {len(data)} bytes; the limit is {max_bytes}.")
        return io.BytesIO(data), None, len(data)
    if isinstance(source, (str, os.PathLike)):
        try:
            handle: BinaryIO = open(os.fspath(source), "rb")  # noqa: SIM115 - closed by OpenedVideo
            size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise MediaNotFound(_NOT_FOUND) from exc
        if size > max_bytes:
            handle.close()
            raise MediaTooLarge(f"The video is {size} bytes; the limit is {max_bytes}.")
        return handle, handle, size
    if hasattr(source, "read") and hasattr(source, "seek"):
        try:
            start = source.tell()
            size = source.seek(0, os.SEEK_END) - start
            source.seek(start)
        except (OSError, ValueError) as exc:
            raise InvalidVideo("The video stream cannot be read.") from exc
        if size > max_bytes:
            raise MediaTooLarge(f"The video is {size} bytes; the limit is {max_bytes}.")
        return source, None, size
    raise TypeError(f"unsupported video source type {type(source).__name__}")


_STILL = av.stream.Disposition.attached_pic | av.stream.Disposition.still_image | \
    av.stream.Disposition.timed_thumbnails


def _pick_video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The default (else first) real video stream; cover art and thumbnails do not count."""
    streams = [s for s in container.streams.video if not (s.disposition & _STILL)]
    if not streams:
        raise UnsupportedMedia(_NO_VIDEO_STREAM)
    defaults = [s for s in streams if s.disposition & av.stream.Disposition.default]
    return (defaults or streams)[0]


def _open_container(source: VideoSource, max_bytes: int
                    ) -> tuple[av.container.InputContainer, bool, int, BinaryIO | None]:
    """(container, looks like a video container, size in bytes, file we must close or None)."""
    handle, owned, size = _file_object(source, max_bytes)
    try:
        if size == 0:
            raise InvalidVideo(_EMPTY)
        start = handle.tell()
        head = handle.read(SNIFF_BYTES)
        handle.seek(start)
        container_like = looks_like_video_container(head)
        with media_errors(container_like=container_like, opening=True):
            container = av.open(handle, mode="r", options={"format_whitelist": ",".join(ALLOWED_DEMUXERS)},
                                metadata_errors="replace", buffer_size=IO_BUFFER_BYTES)
        return container, container_like, size, owned
    except BaseException:
        if owned is not None:
            owned.close()
        raise


def open_video(source: VideoSource, *, max_bytes: int, max_frame_pixels: int) -> OpenedVideo:
    """Open ``source`` and pick its first video stream, or raise a media error.

    Raises MediaTooLarge (file size, or a coded frame size over ``max_frame_pixels``),
    UnsupportedMedia (not a video container, or no video stream), InvalidVideo (empty or
    unreadable container) or MediaNotFound (a path that cannot be opened).
    """
    container, container_like, size, owned = _open_container(source, max_bytes)
    try:
        with media_errors(container_like=True):
            stream = _pick_video_stream(container)
            context = stream.codec_context
            width, height = int(context.width or 0), int(context.height or 0)
            if width * height > max_frame_pixels:
                raise MediaTooLarge(f"The video frames are {width}x{height} pixels; the limit is "
                                    f"{max_frame_pixels} pixels per frame.")
    except BaseException:
        _close(container, owned)
        raise
    return OpenedVideo(container, stream, container_like, size, owned)


def open_audio(source: VideoSource, *, max_bytes: int) -> OpenedAudio | None:
    """Open ``source`` and pick its default (else first) audio stream; None when it has none.

    Raises the same media errors as :func:`open_video` for a file that cannot be opened.
    """
    container, _, _, owned = _open_container(source, max_bytes)
    with media_errors(container_like=True):
        streams = list(container.streams.audio)
    if not streams:
        _close(container, owned)
        return None
    defaults = [s for s in streams if s.disposition & av.stream.Disposition.default]
    return OpenedAudio(container, (defaults or streams)[0], owned)
