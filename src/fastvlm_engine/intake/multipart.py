"""Streaming multipart/form-data over a spooled body: file parts go straight into sinks.

Why: ``curl -F video=@clip.mp4`` must not cost the size of the clip in memory. The body is fed in
chunks to python-multipart's low-level parser, whose callbacks write each file part's bytes into
a metered sink (MediaTooLarge as soon as a file passes its limit) and keep only the small text
parts. Nothing a client writes is trusted: field names are checked against the allowed file
fields, file names are kept for display only (directories and control characters removed,
length bounded), and every malformed or truncated body ends in a 4xx error, never a 500.

Parts whose name is in ``file_fields`` are files whether or not they carry a filename; a part
with a filename under any other name is refused, as is a second file under one name. A text part
named ``request`` with Content-Type ``application/json`` is parsed (by ``parse_json`` with no
media, so JSON means the same here as in a JSON body) and exposed as ``Form.json``.
"""

from __future__ import annotations

import io
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import unquote

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidRequest, PayloadTooLarge
from .jsonstream import DEFAULT_CHUNK_BYTES, NO_MEDIA, JsonLimits, parse_json
from .sinks import MeteredWriter, Sink, SinkFactory, SinkInfo, SinkLedger, spool_sinks

__all__ = ["FilePart", "Form", "MultipartLimits", "clean_filename", "parse_multipart"]

JSON_PART = "request"

# RFC 2046 section 5.1.1: 1 to 70 of these, not ending in a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
_PLAIN_ENCODINGS = {"7bit", "8bit", "binary"}


@dataclass(frozen=True)
class FilePart:
    """One uploaded file: where its bytes went and what the client said about it."""

    name: str
    filename: str | None
    """For display only: cleaned by clean_filename, never a path."""
    content_type: str | None
    """The part's declared Content-Type; never verified."""
    size: int
    sink: Sink


@dataclass
class Form:
    """A parsed form. The caller owns the file sinks: close() (or ``with``) releases them."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    """Text parts by name, values in body order."""
    files: dict[str, FilePart] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    """The ``request`` part, when sent as application/json."""

    def close(self) -> None:
        """Close every file sink."""
        for part in self.files.values():
            part.sink.close()

    def __enter__(self) -> Form:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class MultipartLimits:
    """Bounds on everything in a form that is not a file."""

    max_text_bytes: int = 256 * 1024
    """Largest text part (the ``request`` JSON part included)."""
    max_text_total_bytes: int = 1024 * 1024
    """All text parts together."""
    max_parts: int = 64
    max_header_bytes: int = 4096
    """Longest header line of one part."""
    max_headers: int = 8
    """Most headers one part may carry."""
    max_filename_chars: int = 255

    def __post_init__(self) -> None:
        if min(self.max_text_bytes, self.max_text_total_bytes, self.max_parts, self.max_header_bytes,
               self.max_headers, self.max_filename_chars) < 1:
            raise ValueError("MultipartLimits values must be >= 1")


def parse_multipart(source: BinaryIO, content_type: str, *, file_fields: Mapping[str, int],
                    open_sink: SinkFactory | None = None, limits: MultipartLimits = MultipartLimits(),
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Form:
    """Parse the multipart/form-data body in ``source`` (from its current position to its end).

    ``content_type`` is the request's header (it carries the boundary); ``file_fields`` maps each
    allowed file field to its largest size in bytes, e.g. ``{"image": 20 * MiB}``. Raises
    InvalidRequest (422, ``field`` names the part, or ``body``), PayloadTooLarge or MediaTooLarge;
    on any failure every sink opened so far is closed.
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    if any(not isinstance(n, int) or n < 1 for n in file_fields.values()):
        raise ValueError("file_fields sizes must be integers >= 1")
    boundary = _boundary(content_type)
    form = _FormBuilder(file_fields, open_sink or spool_sinks(), limits)
    try:
        try:
            parser = MultipartParser(boundary, form.callbacks(), max_header_count=limits.max_headers,
                                     max_header_size=limits.max_header_bytes)
            while data := source.read(chunk_bytes):
                parser.write(data)
        except FormParserError as exc:
            raise InvalidRequest(f"The multipart body is malformed: {str(exc)[:200]}", field="body") from None
        if not form.ended:
            raise InvalidRequest("The multipart body ended before its closing boundary.", field="body")
    except BaseException:
        form.ledger.close_all()
        raise
    return form.form


def clean_filename(raw: bytes, max_chars: int = 255) -> str | None:
    """A client's file name made safe to show: last path segment, no control or format characters.

    Percent-encoding is decoded first (RFC 7578 section 4.2 lets senders use it for non-ASCII
    names, and aiohttp does), so an encoded slash or control character is removed like a raw one.
    """
    text = raw.decode("utf-8", "replace")
    if "%" in text:
        text = unquote(text, errors="replace")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if unicodedata.category(c)[0] != "C").strip()
    if text in ("", ".", ".."):
        return None
    return text[:max_chars]


def _boundary(content_type: str) -> bytes:
    try:
        kind, params = parse_options_header(content_type.encode("latin-1"))
    except (UnicodeError, ValueError):
        kind, params = b"", {}
    if kind != b"multipart/form-data":
        raise InvalidRequest("The Content-Type must be multipart/form-data with a boundary.", field="body")
    boundary = params.get(b"boundary", b"")
    if not _BOUNDARY.fullmatch(boundary.decode("latin-1")):
        raise InvalidRequest("The multipart boundary is missing or malformed (RFC 2046: 1 to 70 characters).",
                             field="body")
    return boundary


class _FormBuilder:
    """The parser callbacks for one body, as a small state machine over the current part."""

    def __init__(self, file_fields: Mapping[str, int], open_sink: SinkFactory, limits: MultipartLimits) -> None:
        self._file_fields = file_fields
        self._limits = limits
        self.ledger = SinkLedger(open_sink)
        self.form = Form()
        self.ended = False
        self._parts = 0
        self._text_total = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_name = bytearray()
        self._header_value = bytearray()
        # The part being read: its name, and either a file writer or a text buffer.
        self._name = ""
        self._writer: MeteredWriter | None = None
        self._text: bytearray | None = None
        self._is_json = False

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._limits.max_parts:
            raise PayloadTooLarge(f"The form has more than {self._limits.max_parts} parts.", field="body")
        self._headers = []
        self._header_name.clear()
        self._header_value.clear()
        self._writer, self._text, self._is_json, self._name = None, None, False, ""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((bytes(self._header_name).lower(), bytes(self._header_value).strip()))
        self._header_name.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        headers = dict(self._headers)
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise InvalidRequest("A multipart part lacks 'Content-Disposition: form-data; name=...'.", field="body")
        try:
            name = params[b"name"].decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("A multipart part name is not valid UTF-8.", field="body") from None
        self._name = name
        encoding = headers.get(b"content-transfer-encoding", b"binary").decode("latin-1").lower()
        if encoding not in _PLAIN_ENCODINGS:
            raise InvalidRequest(f"Part {_shown(name)} uses Content-Transfer-Encoding {_shown(encoding)}; "
                                 "send the bytes as they are.", field=_shown(name))
        content_type = _header_text(headers.get(b"content-type"))
        filename = params.get(b"filename")
        if name in self._file_fields:
            self._open_file(name, filename, content_type)
        elif filename is not None:
            allowed = ", ".join(sorted(self._file_fields)) or "none"
            raise InvalidRequest(f"The form sends a file as {_shown(name)}; file fields accepted here: {allowed}.",
                                 field=_shown(name))
        else:
            self._text = bytearray()
            self._is_json = (name == JSON_PART and content_type is not None
                             and parse_options_header(content_type)[0] == b"application/json")

    def _open_file(self, name: str, filename: bytes | None, content_type: str | None) -> None:
        if name in self.form.files:
            raise InvalidRequest(f"Only one file may be sent as {name}.", field=name)
        shown = clean_filename(filename, self._limits.max_filename_chars) if filename is not None else None
        info = SinkInfo(index=self.ledger.opened, field=name, kind=name, max_bytes=self._file_fields[name],
                        mime=content_type, filename=shown)
        self._writer = self.ledger.open(info)
        # Reserve the name now: a second part under it is refused even before this one ends.
        self.form.files[name] = FilePart(name=name, filename=shown, content_type=content_type, size=0,
                                         sink=self._writer.sink)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._writer.write(data[start:end])
            return
        if self._text is None:
            return  # the parser only calls this after the headers, which set one of the two
        size = end - start
        self._text_total += size
        if len(self._text) + size > self._limits.max_text_bytes:
            raise PayloadTooLarge(f"The form field {_shown(self._name)} is larger than the limit of "
                                  f"{self._limits.max_text_bytes} bytes.", field=_shown(self._name))
        if self._text_total > self._limits.max_text_total_bytes:
            raise PayloadTooLarge(f"The form's text fields together are larger than the limit of "
                                  f"{self._limits.max_text_total_bytes} bytes.", field=_shown(self._name))
        self._text += data[start:end]

    def _part_end(self) -> None:
        name = self._name
        if self._writer is not None:
            if self._writer.size == 0:
                raise InvalidRequest(f"{name} is empty.", field=name)
            part = self.form.files[name]
            self.form.files[name] = FilePart(name=name, filename=part.filename, content_type=part.content_type,
                                             size=self._writer.size, sink=part.sink)
            self._writer = None
        elif self._text is not None:
            if self._is_json:
                self._set_json(bytes(self._text))
            else:
                try:
                    text = self._text.decode("utf-8")
                except UnicodeDecodeError:
                    raise InvalidRequest(f"The form field {_shown(name)} is not valid UTF-8 text.",
                                         field=_shown(name)) from None
                self.form.fields.setdefault(name, []).append(text)
            self._text = None

    def _set_json(self, data: bytes) -> None:
        if self.form.json is not None:
            raise InvalidRequest(f"Only one {JSON_PART} part may be sent.", field=JSON_PART)
        limits = JsonLimits(max_string_chars=self._limits.max_text_bytes, max_text_chars=self._limits.max_text_bytes)
        value = parse_json(io.BytesIO(data), media=NO_MEDIA, limits=limits, subject=f"The {JSON_PART} part")
        if not isinstance(value, dict):
            raise InvalidRequest(f"The {JSON_PART} part must be a JSON object.", field=JSON_PART)
        self.form.json = value

    def _end(self) -> None:
        self.ended = True


def _header_text(value: bytes | None) -> str | None:
    """A header value fit to keep and show: printable ASCII, bounded; None otherwise."""
    if not value:
        return None
    text = value.decode("latin-1")[:255]
    return text if text.isprintable() and text.isascii() else None


def _shown(name: str) -> str:
    """A client-chosen name as messages quote it: bounded and printable."""
    text = "".join(c if c.isprintable() else "?" for c in name[:64])
    return text + ("..." if len(name) > 64 else "")
