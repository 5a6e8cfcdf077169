"""Streaming JSON for request bodies: json.loads semantics, with base64 media spooled to sinks.

Why: a request that carries a 300 MB video as base64 inside JSON must not become a 300 MB
string (and then 225 MB of bytes) in a router or worker process. ``parse_json`` reads a spooled
body in chunks, builds every ordinary value exactly as ``json.loads`` would, and streams each
media string through a base64 decoder into a sink, leaving a ``MediaRef`` in its place. Memory
stays at about one chunk plus the ordinary values, whatever the size of the media.

Which strings are media (``MediaPolicy``): a top-level key listed in ``fields`` (or any path a
``fields`` callable names), and, when ``data_urls`` is on, any string anywhere that starts with
``data:<type>/<subtype>;base64,`` whose major type has a size limit (OpenAI-style bodies put
images at ``messages[i].content[j].image_url.url``). Base64 is decoded as
``media.uploads.decode_base64`` decodes it: whitespace (also JSON-escaped newlines) ignored, the
urlsafe alphabet accepted, padding optional, a data: URL prefix stripped.

Semantics, held by a differential test against json.loads:
- Same values for numbers (int or float as json.loads picks; big ints, exponents, ``-0``),
  strings (every escape; surrogate pairs joined; a lone ``"\\ud800"`` kept as json.loads keeps
  it), literals and containers; duplicate keys: the last wins.
- Deliberately stricter: ``NaN``/``Infinity``/``-Infinity`` are refused, since JSON has no such
  tokens; the text must be UTF-8 (RFC 8259 section 8.1; a leading UTF-8 BOM is skipped, as
  json.loads skips it in bytes, but UTF-16/32 bodies are refused); nesting is limited.
- Limits count characters of JSON text, not bytes. Strings (also keys) and the whole text
  outside media strings are bounded (PayloadTooLarge); each media value by its kind's
  ``max_bytes`` (MediaTooLarge, raised by the first write past it); the number of media values
  by ``max_items`` (InvalidRequest). Numbers count only towards the whole text.

Speed: a container that lies wholly in the buffer and holds nothing to spool and nothing over a
limit is built by the C scanner json.loads itself uses (and then checked); everything else goes
through the Python tokenizer below, which scans strings in bulk with regular expressions, never
character by character, and is the one authority on errors. Clean base64 goes from the buffer
to binascii with only str.find in between. One consequence of the two paths: a value that a
later duplicate key replaces is dropped unseen by the C scanner (as by json.loads) but read,
checked and counted by the tokenizer, so whether such a replaced value can cause a refusal
(too long, bad base64, one media value too many) depends on where the reads split the body.
The value returned is the same either way, and a given body read in the same chunks always
gets the same answer.
"""

from __future__ import annotations

import binascii
import codecs
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from json.decoder import scanstring
from typing import Any, BinaryIO

from ..errors import InvalidJSON, InvalidRequest, PayloadTooLarge
from .sinks import MeteredWriter, MiB, Sink, SinkFactory, SinkInfo, SinkLedger, spool_sinks

__all__ = ["DEFAULT_CHUNK_BYTES", "NO_MEDIA", "JsonLimits", "JsonPath", "MediaPolicy", "MediaRef", "collect_media",
           "format_path", "parse_json"]

JsonPath = tuple[str | int, ...]
"""Keys and list indices from the document root to a value; () is the root."""

DEFAULT_CHUNK_BYTES = 256 * 1024

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER_CHARS = "-+.eE0123456789"
_NUMBER_RUN = re.compile(r"[-+.eE0-9]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_PLAIN_STRING = re.compile(r'[^"\\\x00-\x1f]*"')
# A run of complete string content: plain characters and whole escapes. A high-surrogate escape
# is taken only when the text after it (which decides whether it pairs with a following low one)
# is in the buffer too, so a pair always falls in one run (json.loads joins pairs; two runs would not).
_STRING_RUN = re.compile(
    r"(?:[^\"\\\x00-\x1f]++"
    r"|\\[\"\\/bfnrt]"
    r"|\\u[dD][89abAB][0-9a-fA-F]{2}(?=\\u[0-9a-fA-F]{4}|\\[^u]|[^\\])"
    r"|\\u(?![dD][89abAB])[0-9a-fA-F]{4})*+")
_LONGEST_ESCAPE = 12  # a surrogate pair: \\uD83D\\uDE00
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)(?:;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)
_HEAD_CHARS = 256  # a data: URL prefix must end within this many characters of the string's start
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/]")
# decode_base64 drops every character re's \s matches (str.isspace: these 29) and reads -_ as +/.
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
              "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_CLEAN_BASE64 = {**dict.fromkeys(map(ord, WHITESPACE)), ord("-"): "+", ord("_"): "/"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERALS = (("true", True), ("false", False), ("null", None))


@dataclass(frozen=True)
class MediaRef:
    """A media string that was decoded into a sink instead of being returned as text."""

    index: int
    """Order among the media values of the body, from 0 (a value replaced by a duplicate key leaves a gap)."""
    path: JsonPath
    kind: str
    """The policy's kind: from the field, or the major type of a data: URL."""
    size: int
    """Decoded bytes written to the sink."""
    mime: str | None
    """The type a data: URL declared (lower case), if any; never verified."""
    sink: Sink

    @property
    def field(self) -> str:
        """The path as error messages name it, e.g. ``messages[0].content[1].image_url.url``."""
        return format_path(self.path)


KindOfPath = Mapping[str, str] | Callable[[JsonPath], "str | None"]


@dataclass(frozen=True)
class MediaPolicy:
    """Which strings are media, how large each kind may be, and where the decoded bytes go.

    ``fields`` maps top-level keys to kinds (``{"image_base64": "image"}``), or is a callable
    given the path of every string value that returns its kind or None.
    """

    max_bytes: Mapping[str, int]
    """Largest decoded size per kind, e.g. ``{"image": 20 * MiB, "video": 200 * MiB}``."""
    fields: KindOfPath = field(default_factory=dict)
    data_urls: bool = True
    """Also treat ``data:<type>/<subtype>;base64,...`` strings anywhere as media of kind <type>."""
    max_items: int = 16
    """Most media values one body may carry."""
    open_sink: SinkFactory = field(default_factory=spool_sinks)

    def __post_init__(self) -> None:
        if any(not isinstance(n, int) or n < 1 for n in self.max_bytes.values()):
            raise ValueError("MediaPolicy.max_bytes values must be integers >= 1")
        if self.max_items < 0:
            raise ValueError("MediaPolicy.max_items must be >= 0")
        if isinstance(self.fields, Mapping):
            unknown = sorted(set(self.fields.values()) - set(self.max_bytes))
            if unknown:
                raise ValueError(f"MediaPolicy.fields names kinds without max_bytes: {unknown}")
        elif not callable(self.fields):
            raise ValueError("MediaPolicy.fields must be a mapping of top-level keys to kinds, or a callable")


NO_MEDIA = MediaPolicy(max_bytes={}, data_urls=False, max_items=0)
"""A policy under which nothing is media: plain bounded JSON."""


@dataclass(frozen=True)
class JsonLimits:
    """Bounds on the ordinary (non-media) part of a document, counted in characters."""

    max_string_chars: int = 256 * 1024
    """Longest string or key that is not media."""
    max_text_chars: int = 4 * MiB
    """Most JSON text outside media strings. Built values take several times this in memory."""
    max_depth: int = 64
    """Deepest nesting of arrays and objects (at most 512: the fast path's check recurses)."""

    def __post_init__(self) -> None:
        if min(self.max_string_chars, self.max_text_chars, self.max_depth) < 1:
            raise ValueError("JsonLimits values must be >= 1")
        if self.max_depth > 512:
            raise ValueError("JsonLimits.max_depth must be <= 512")


def parse_json(source: BinaryIO, *, media: MediaPolicy, limits: JsonLimits = JsonLimits(),
               chunk_bytes: int = DEFAULT_CHUNK_BYTES, subject: str = "The request body") -> Any:
    """Parse the JSON document in ``source`` (read from its current position to its end).

    Returns what json.loads would, with each media string replaced by a MediaRef whose sink the
    caller now owns (``collect_media`` finds them). Raises InvalidJSON, PayloadTooLarge,
    MediaTooLarge or InvalidRequest; on any failure every sink opened so far is closed.
    ``subject`` names the document in messages (a multipart part is not "the request body").
    """
    if chunk_bytes < 1:
        raise ValueError("chunk_bytes must be >= 1")
    return _Parser(source, media, limits, chunk_bytes, subject).parse()


def collect_media(value: Any) -> list[MediaRef]:
    """Every MediaRef inside a parsed value, in body order."""
    return sorted(_iter_media(value), key=lambda ref: ref.index)


def format_path(path: JsonPath) -> str:
    """A path for messages: ``image_base64``, ``messages[0].content``, ``body`` for the root."""
    parts: list[str] = []
    for key in path:
        if isinstance(key, int):
            parts.append(f"[{key}]")
        elif _IDENTIFIER.fullmatch(key) and len(key) <= 64:
            parts.append(f".{key}" if parts else key)
        else:
            parts.append("[" + json.dumps(key if len(key) <= 64 else key[:64] + "...") + "]")
    text = "".join(parts) or "body"
    return text if len(text) <= 200 else "..." + text[-197:]


def _iter_media(value: Any) -> Iterator[MediaRef]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, MediaRef):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class _Rejected(Exception):
    """NaN or Infinity met by the C scanner: leave the value to the tokenizer, which refuses it."""


def _reject_constant(name: str) -> Any:
    raise _Rejected(name)


_C_SCAN = json.JSONDecoder(parse_constant=_reject_constant).scan_once
_MISS = object()


class _Base64Stream:
    """Decode base64 text arriving in pieces into a metered sink, four characters at a time in bulk.

    Accepts exactly what decode_base64 accepts: with all whitespace removed and ``-_`` read as
    ``+/``, padded with ``=`` to a multiple of four, the text must pass binascii's strict mode.
    Letters in the middle are decoded in bulk; the end (the last whole group, what follows it and
    the padding) is checked by that same strict call, so padding quirks match it exactly.
    """

    __slots__ = ("_carry", "_last", "_padding", "out")

    def __init__(self, out: MeteredWriter) -> None:
        self.out = out
        self._carry = ""  # up to three letters waiting for the rest of their group
        self._last = ""  # the last whole group decoded, re-checked with the end
        self._padding = 0

    def feed(self, text: str) -> None:
        """Decode a piece of string content, tolerating whitespace, urlsafe letters and padding."""
        if self.feed_letters(text):
            return
        text = text.translate(_CLEAN_BASE64)
        letters = text.rstrip("=")
        if not self.feed_letters(letters):
            raise self._invalid()
        self._padding += len(text) - len(letters)

    def feed_letters(self, letters: str) -> bool:
        """Decode ``letters`` if they are all standard base64 letters; False (nothing taken) if not."""
        if not letters:
            return True
        if self._padding or "=" in letters:
            return False
        text = self._carry + letters if self._carry else letters
        whole = len(text) & ~3
        group = text[:whole] if whole < len(text) else text
        if whole < len(text) and _NOT_BASE64.search(text, whole):
            return False
        try:
            data = binascii.a2b_base64(group)
        except ValueError:  # not ASCII, or stray letters that break the padding rule
            return False
        if len(data) * 4 != whole * 3:  # a2b_base64 skips what is not a letter: the length tells
            return False
        self.out.write(data)
        if whole:
            self._last = group[-4:]
        self._carry = text[whole:]
        return True

    def finish(self) -> int:
        """Decode the end of the text and return the decoded size (InvalidRequest if empty)."""
        tail, padding = self._carry, self._padding
        end = self._last + tail + "=" * (padding + -(len(tail) + padding) % 4)
        try:
            data = binascii.a2b_base64(end, strict_mode=True)
        except ValueError:
            raise self._invalid() from None
        self.out.write(data[3:] if self._last else data)  # the last whole group is in the sink already
        if self.out.size == 0:
            raise InvalidRequest(f"{self.out.info.field} is empty.", field=self.out.info.field)
        return self.out.size

    def _invalid(self) -> InvalidRequest:
        where = self.out.info.field
        return InvalidRequest(f"{where} is not valid base64.", field=where)


class _Parser:
    """One parse: a sliding window of decoded text over the source, and an explicit container stack."""

    def __init__(self, source: BinaryIO, policy: MediaPolicy, limits: JsonLimits, chunk_bytes: int,
                 subject: str) -> None:
        self._source = source
        self._subject = subject
        self._chunk = chunk_bytes
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._started = False  # whether any text has been decoded (a BOM may lead it)
        self.buf = ""
        self.pos = 0
        self.base = 0  # offset of buf[0] in the whole text
        self.eof = False
        self._policy = policy
        self._fields = policy.fields
        self._fields_map = isinstance(policy.fields, Mapping)
        self._has_fields = bool(policy.fields) if self._fields_map else True
        self._data_urls = policy.data_urls and bool(policy.max_bytes)
        self._max_string = limits.max_string_chars
        self._max_text = limits.max_text_chars
        self._max_depth = limits.max_depth
        self._path: list[str | int] = []
        self._ledger = SinkLedger(policy.open_sink)
        self._live: dict[int, MediaRef] = {}  # media in the value being built, by index
        self._media_chars = 0  # characters of finished media strings
        self._media_start: int | None = None  # offset where the media string being read began

    # --- the document -----------------------------------------------------------------------

    def parse(self) -> Any:
        try:
            if not self._peek():
                raise InvalidJSON(f"{self._subject} is empty; send a JSON object.")
            value = self._value()
            if self._peek():
                raise self._invalid("unexpected data after the JSON value")
            self._check_text()
            return value
        except BaseException:
            self._ledger.close_all()
            raise

    def _value(self) -> Any:
        """Parse one value with an explicit stack, so nesting costs no Python recursion."""
        stack: list[list[Any]] = []  # [container, current key or index]
        path = self._path
        while True:
            c = self._peek()
            if c == "{" or c == "[":
                if len(stack) >= self._max_depth:
                    raise self._invalid(f"nesting deeper than {self._max_depth} levels")
                value = self._fast_container(len(stack))
                if value is _MISS:
                    self.pos += 1
                    closer = "}" if c == "{" else "]"
                    if self._peek() == closer:
                        self.pos += 1
                        value = {} if c == "{" else []
                    elif c == "{":
                        key = self._key(len(path))
                        stack.append([{}, key])
                        path.append(key)
                        continue
                    else:
                        stack.append([[], 0])
                        path.append(0)
                        continue
            elif c == '"':
                self.pos += 1
                value = self._string_value()
            elif c == "-" or "0" <= c <= "9":
                value = self._number()
            elif c and c in "tfn":
                value = self._literal()
            else:
                raise self._invalid("expecting a value")
            # A value is complete: store it, then close containers until another value is due.
            while True:
                if not stack:
                    return value
                frame = stack[-1]
                container = frame[0]
                if type(container) is list:
                    container.append(value)
                    c = self._peek()
                    if c == ",":
                        self.pos += 1
                        frame[1] += 1
                        path[-1] = frame[1]
                        break
                    if c != "]":
                        raise self._invalid("expecting ',' or ']'")
                else:
                    key = frame[1]
                    if self._live and key in container:
                        self._drop(container[key])
                    container[key] = value
                    c = self._peek()
                    if c == ",":
                        self.pos += 1
                        frame[1] = path[-1] = self._key(len(path) - 1)
                        break
                    if c != "}":
                        raise self._invalid("expecting ',' or '}'")
                self.pos += 1
                value = container
                stack.pop()
                path.pop()

    def _fast_container(self, depth: int) -> Any:
        """The container at the cursor built by json's C scanner, or _MISS to tokenize it here.

        Taken only when the whole container is in the buffer and the result is exactly what the
        tokenizer would build: nothing media, no string over the limit, not too deep.
        """
        try:
            value, end = _C_SCAN(self.buf, self.pos)
        except (ValueError, RecursionError, StopIteration, _Rejected):
            return _MISS
        if depth == 0 and self._fields_map and type(value) is dict:
            if any(type(value.get(key)) is str for key in self._fields):
                return _MISS
        if not self._ordinary(value, depth + 1, None if self._fields_map else list(self._path)):
            return _MISS
        self.pos = end
        return value

    def _ordinary(self, value: Any, depth: int, path: list[str | int] | None) -> bool:
        """Whether a C-scanned value holds no media candidate, no over-long string, no excess depth.

        ``path`` (the value's own) is tracked only for a fields callable, which must see every string.
        """
        if depth > self._max_depth:
            return False
        limit, urls = self._max_string, self._data_urls
        for key, item in value.items() if type(value) is dict else enumerate(value):
            if type(key) is str and len(key) > limit:
                return False
            kind = type(item)
            if kind is str:
                if len(item) > limit or (urls and item[:1] in ("d", "D") and item[:5].lower() == "data:"):
                    return False
                if path is not None and self._kind_of([*path, key]) is not None:
                    return False
            elif kind is dict or kind is list:
                if not self._ordinary(item, depth + 1, None if path is None else [*path, key]):
                    return False
        return True

    def _kind_of(self, path: JsonPath | list[str | int]) -> str | None:
        """The media kind the policy gives the string at ``path``, or None."""
        if not self._has_fields:
            return None
        if self._fields_map:
            if len(path) == 1 and type(path[0]) is str:
                return self._fields.get(path[0])  # type: ignore[union-attr]
            return None
        kind = self._fields(tuple(path))  # type: ignore[operator]
        if kind is not None and kind not in self._policy.max_bytes:
            raise ValueError(f"MediaPolicy.fields returned kind {kind!r}, which has no max_bytes")
        return kind

    # --- scalars ------------------------------------------------------------------------------

    def _key(self, depth: int) -> str:
        """The next key of the object whose path is ``self._path[:depth]``, and its colon."""
        if self._peek() != '"':
            raise self._invalid("expecting a property name in double quotes")
        self.pos += 1
        key = self._plain_string(depth)
        if self._peek() != ":":
            raise self._invalid("expecting ':'")
        self.pos += 1
        return key

    def _literal(self) -> Any:
        while len(self.buf) - self.pos < 5 and self._more():
            pass
        for word, value in _LITERALS:
            if self.buf.startswith(word, self.pos):
                self.pos += len(word)
                return value
        raise self._invalid("expecting a value")

    def _number(self) -> int | float:
        buf, pos = self.buf, self.pos
        try:  # json's C scanner, when the character after the number shows the number is whole
            value, end = _C_SCAN(buf, pos)
        except (ValueError, StopIteration, _Rejected):
            pass
        else:
            if end < len(buf) and buf[end] not in _NUMBER_CHARS:
                self.pos = end
                return value  # type: ignore[no-any-return]
        start = self.base + self.pos
        end = _NUMBER_RUN.match(self.buf, self.pos).end()  # type: ignore[union-attr]
        if end < len(self.buf) or self.eof:
            text = self.buf[self.pos:end]
            self.pos = end
        else:
            text = self._number_across_reads()
        match = _NUMBER.match(text)
        if match is None or match.end() != len(text):
            raise self._invalid("invalid number", start + (match.end() if match else 0))
        try:
            return float(text) if match.group(1) or match.group(2) else int(text)
        except ValueError:  # an integer past Python's int-conversion digit limit, as json.loads
            raise self._invalid("integer with too many digits", start) from None

    def _number_across_reads(self) -> str:
        parts = []
        while True:
            end = _NUMBER_RUN.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            parts.append(self.buf[self.pos:end])
            self.pos = end
            if end < len(self.buf) or not self._more():
                return "".join(parts)

    # --- strings ------------------------------------------------------------------------------

    def _plain_string(self, key_depth: int) -> str:
        """A key, cursor just past its opening quote; keys are never media."""
        match = _PLAIN_STRING.match(self.buf, self.pos)
        if match is not None:
            text = self.buf[self.pos:match.end() - 1]
            self._check_string(len(text), key_depth)
            self.pos = match.end()
            return text
        return self._collect(self._pieces(), "", 0, key_depth)

    def _collect(self, pieces: Iterator[str], text: str, size: int, key_depth: int | None = None) -> str:
        parts = [text] if text else []
        for piece in pieces:
            size += len(piece)
            self._check_string(size, key_depth)
            parts.append(piece)
        return "".join(parts)

    def _check_string(self, size: int, key_depth: int | None = None) -> None:
        """Refuse a string past the limit: a value (named by its path) or a key (by its object's)."""
        if size <= self._max_string:
            return
        if key_depth is None:
            where = format_path(tuple(self._path))
            message = f"{where} is longer than the limit of {self._max_string} characters."
        else:
            where = format_path(tuple(self._path[:key_depth]))
            message = f"A key in {where} is longer than the limit of {self._max_string} characters."
        raise PayloadTooLarge(message, field=where)

    def _string_value(self) -> str | MediaRef:
        """A string in value position: plain text, or media streamed into a sink."""
        kind = self._kind_of(self._path)
        match = _PLAIN_STRING.match(self.buf, self.pos)
        if match is not None and kind is None:
            text = self.buf[self.pos:match.end() - 1]
            if not (self._data_urls and text[:1] in ("d", "D") and text[:5].lower() == "data:"):
                self._check_string(len(text))
                self.pos = match.end()
                return text
        if kind is None and not self._data_urls:
            return self._collect(self._pieces(), "", 0)
        # Read a head long enough to recognise a data: URL before choosing plain text or media.
        self._media_start = self.base + self.pos
        pieces = self._pieces()
        head = ""
        ended = True
        for piece in pieces:
            head += piece
            if len(head) >= _HEAD_CHARS or (kind is None and not _may_be_data_url(head)):
                ended = False
                break
        stream = self._open_media(head, kind)
        if stream is None:
            self._media_start = None
            self._check_string(len(head))
            return head if ended else self._collect(pieces, head, len(head))
        if not ended:
            self._spool(stream)
        return self._finish_media(stream)

    def _open_media(self, head: str, kind: str | None) -> _Base64Stream | None:
        """Start spooling the string whose first characters are ``head``; None if it is plain text."""
        url = _DATA_URL.match(head, 0, _HEAD_CHARS)
        mime = url.group(1).lower() if url else None
        if kind is None:
            if mime is None:
                return None
            kind = mime.partition("/")[0]
            if kind not in self._policy.max_bytes:
                return None
        where = format_path(tuple(self._path))
        if self._ledger.opened >= self._policy.max_items:
            raise InvalidRequest(f"{self._subject} holds more than {self._policy.max_items} media values "
                                 f"({where} is one too many).", field=where)
        info = SinkInfo(index=self._ledger.opened, field=where, kind=kind,
                        max_bytes=self._policy.max_bytes[kind], mime=mime)
        stream = _Base64Stream(self._ledger.open(info))
        stream.feed(head[url.end():] if url else head)
        return stream

    def _finish_media(self, stream: _Base64Stream) -> MediaRef:
        info = stream.out.info
        size = stream.finish()
        self._media_chars += self.base + self.pos - 1 - self._media_start  # type: ignore[operator]
        self._media_start = None
        ref = MediaRef(index=info.index, path=tuple(self._path), kind=info.kind, size=size, mime=info.mime,
                       sink=stream.out.sink)
        self._live[ref.index] = ref
        return ref

    def _drop(self, value: Any) -> None:
        """Close the sinks of a value a duplicate key replaced (the last one wins, as in json.loads)."""
        for ref in _iter_media(value):
            self._live.pop(ref.index, None)
            self._ledger.discard(ref.sink)

    def _pieces(self) -> Iterator[str]:
        """The unescaped text of the string at the cursor in bulk pieces, up to its closing quote."""
        while (piece := self._piece()) is not None:
            yield piece

    def _piece(self) -> str | None:
        """The next bulk piece of the string at the cursor, unescaped; None once its closing quote is taken."""
        while True:
            buf, pos = self.buf, self.pos
            end = _STRING_RUN.match(buf, pos).end()  # type: ignore[union-attr]
            if end > pos:
                run = buf[pos:end]
                self.pos = end
                # The run holds only whole escapes, so json's own C scanstring unescapes it exactly.
                return scanstring(run + '"', 0, True)[0] if "\\" in run else run
            if end < len(buf):
                c = buf[end]
                if c == '"':
                    self.pos = end + 1
                    return None
                if c != "\\":
                    raise self._invalid("control character in a string")
                if len(buf) - end >= _LONGEST_ESCAPE:
                    raise self._invalid("invalid escape in a string")
            if not self._more():
                raise self._invalid("unterminated string" if end == len(buf) else "invalid escape in a string")

    def _spool(self, stream: _Base64Stream) -> None:
        """Feed the rest of the media string at the cursor into ``stream``.

        A stretch up to the next quote or the buffer's end with no backslash that is pure base64
        goes straight to the decoder (its letters are what JSON allows in a string); anything
        else (escapes, whitespace, padding, junk) goes through the exact tokenizer.
        """
        while True:
            buf, pos = self.buf, self.pos
            quote = buf.find('"', pos)
            stop = len(buf) if quote < 0 else quote
            if stop > pos and buf.find("\\", pos, stop) < 0 and stream.feed_letters(buf[pos:stop]):
                self.pos = stop
                if quote < 0 and not self._more():
                    raise self._invalid("unterminated string")
                continue
            piece = self._piece()
            if piece is None:
                return
            stream.feed(piece)

    # --- the window over the source -------------------------------------------------------------

    def _peek(self) -> str:
        """Skip whitespace and return the next character without taking it ('' at the end)."""
        buf, pos = self.buf, self.pos
        if pos < len(buf) and buf[pos] not in " \t\n\r":
            return buf[pos]
        while True:
            buf = self.buf
            pos = _WS.match(buf, self.pos).end()  # type: ignore[union-attr]
            self.pos = pos
            if pos < len(buf):
                return buf[pos]
            if not self._more():
                return ""

    def _more(self) -> bool:
        """Append the next read to the window, dropping what is consumed; False once at the end."""
        self._check_text()
        if self.eof:
            return False
        data = self._source.read(self._chunk)
        try:
            text = self._decoder.decode(data, final=not data)
        except UnicodeDecodeError:
            raise InvalidJSON(f"{self._subject} is not valid UTF-8 text.") from None
        if not data:
            self.eof = True
        if text and not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                self.base += 1
        self.base += self.pos
        self.buf = self.buf[self.pos:] + text if self.pos < len(self.buf) else text
        self.pos = 0
        return True

    def _check_text(self) -> None:
        offset = self.base + self.pos
        media = self._media_chars + (offset - self._media_start if self._media_start is not None else 0)
        if offset - media > self._max_text:
            where = format_path(tuple(self._path))
            raise PayloadTooLarge(f"{self._subject} holds more than {self._max_text} characters of JSON "
                                  f"outside media values (reached at {where}).", field=where)

    def _invalid(self, what: str, offset: int | None = None) -> InvalidJSON:
        offset = self.base + self.pos if offset is None else offset
        return InvalidJSON(f"{self._subject} is not valid JSON: {what} at character {offset}.")


def _may_be_data_url(head: str) -> bool:
    start = head[:5].lower()
    return "data:".startswith(start) if len(start) < 5 else start == "data:"
