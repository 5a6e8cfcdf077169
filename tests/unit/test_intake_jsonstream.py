"""The streaming JSON parser against json.loads (differential fuzz), base64 media, limits, memory."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import random
import re
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import pytest

from fastvlm_engine.errors import InvalidJSON, InvalidRequest, MediaTooLarge, PayloadTooLarge
from fastvlm_engine.intake import jsonstream
from fastvlm_engine.intake.jsonstream import (
    NO_MEDIA,
    JsonLimits,
    MediaPolicy,
    MediaRef,
    collect_media,
    format_path,
    parse_json,
)
from fastvlm_engine.intake.sinks import SinkInfo, SpooledSink, spool_sinks
from fastvlm_engine.media import decode_base64

T = TypeVar("T")
MiB = 1 << 20
ODD_CHUNKS = (2, 3, 7, 13, 64)
INVALID = "invalid"


# --- helpers ------------------------------------------------------------------------------------

class _Rejected(ValueError):
    pass


def _reject(name: str) -> None:
    raise _Rejected(name)


def reference(data: bytes) -> object:
    """What the parser must return: json.loads over strict UTF-8, NaN/Infinity refused (documented)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject)
    except (ValueError, RecursionError):
        return INVALID


def ours(data: bytes, chunk: int, policy: MediaPolicy = NO_MEDIA) -> object:
    try:
        return parse_json(io.BytesIO(data), media=policy, chunk_bytes=chunk)
    except InvalidJSON:
        return INVALID


def same(a: object, b: object) -> bool:
    """Equal values of the same types, in the same key order (repr shows 1 vs 1.0 and -0.0)."""
    return repr(a) == repr(b)


class StreamSource:
    """A body produced piece by piece, so that the test never holds it whole; counts what was read."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces: Iterator[bytes] = iter(pieces)
        self._left = b""
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        while not self._left:
            try:
                self._left = next(self._pieces)
            except StopIteration:
                return b""
        out, self._left = self._left[:size], self._left[size:]
        self.consumed += len(out)
        return out


class HashSink:
    """Keeps only a digest and a size: a sink for bodies too large to keep."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        self.closed = True


class HashSinks:
    """A sink factory whose sinks keep only digests, remembering each sink it opened."""

    def __init__(self) -> None:
        self.sinks: list[HashSink] = []

    def __call__(self, info: SinkInfo) -> HashSink:
        self.sinks.append(HashSink())
        return self.sinks[-1]


def repeated_digest(block: bytes, count: int) -> str:
    """The SHA-256 of ``block`` repeated ``count`` times, without building it."""
    digest = hashlib.sha256()
    for _ in range(count):
        digest.update(block)
    return digest.hexdigest()


def traced_peak(run: Callable[[], T]) -> tuple[T, int]:
    """What ``run`` returns, and the peak of memory traced while it ran (bytes)."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class RecordingFactory:
    """The default spooled sinks, remembering what was asked for and what was opened."""

    def __init__(self) -> None:
        self.infos: list[SinkInfo] = []
        self.sinks: list[SpooledSink] = []

    def __call__(self, info: SinkInfo) -> SpooledSink:
        self.infos.append(info)
        self.sinks.append(SpooledSink())
        return self.sinks[-1]


def media_policy(**overrides) -> MediaPolicy:
    """The service's shape of policy; fields follow the kinds given a size limit."""
    settings = {"max_bytes": {"image": 4 * MiB, "video": 16 * MiB}}
    settings.update(overrides)
    settings.setdefault("fields", {f"{kind}_base64": kind for kind in settings["max_bytes"]})
    return MediaPolicy(**settings)


# --- random documents, serialised in many ways ------------------------------------------------

_CHARS = ["a", "Z", "0", " ", "~", '"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x1f", "\x7f",
          "\u00e9", "\u20ac", "\u2028", "\ufeff", "\U0001f600", "\U00010000", "\ud800", "\udbff", "\udc00"]
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                  "\t": "\\t"}


def random_string(rng: random.Random, lone_surrogates: bool) -> str:
    size = rng.choice([0, 1, 2, 5, 12, 40]) if rng.random() < 0.97 else rng.randint(300, 3000)
    chars = _CHARS if lone_surrogates else [c for c in _CHARS if not 0xD800 <= ord(c) <= 0xDFFF]
    return "".join(rng.choice(chars) if rng.random() < 0.5 else chr(rng.randint(0x20, 0x7e)) for _ in range(size))


def random_number_text(rng: random.Random) -> str:
    """Any spelling the JSON number grammar allows, including ones json.dumps never writes."""
    text = "-" if rng.random() < 0.3 else ""
    digits = rng.choice([1, 1, 2, 5, 19, 20, 40])
    text += "0" if rng.random() < 0.2 else str(rng.randint(1, 9)) + "".join(
        rng.choice("0123456789") for _ in range(digits - 1))
    if rng.random() < 0.4:
        text += "." + "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 18)))
    if rng.random() < 0.3:
        text += rng.choice("eE") + rng.choice(["", "+", "-"]) + str(rng.choice([0, 1, 5, 45, 308, 324, 400]))
    return text


def random_value(rng: random.Random, depth: int, lone: bool) -> object:
    roll = rng.random()
    if depth >= 4 or roll < 0.45:
        kind = rng.choice(["str", "str", "num", "num", "true", "false", "null"])
        if kind == "str":
            return random_string(rng, lone)
        if kind == "num":
            return _Number(random_number_text(rng))
        return {"true": True, "false": False, "null": None}[kind]
    if roll < 0.7:
        return [random_value(rng, depth + 1, lone) for _ in range(rng.randint(0, 5))]
    pairs = []
    for _ in range(rng.randint(0, 5)):
        key = random_string(rng, lone) if rng.random() < 0.3 else rng.choice(["a", "b", "key", "\u00e9", ""])
        pairs.append((key, random_value(rng, depth + 1, lone)))
    if pairs and rng.random() < 0.2:
        pairs.append((pairs[0][0], random_value(rng, depth + 1, lone)))  # a duplicate key: the last wins
    return _Object(pairs)


class _Number(str):
    """Number text to emit verbatim."""


class _Object(list):
    """Key/value pairs, possibly with duplicate keys, to emit in order."""


def emit(value: object, rng: random.Random, ascii_only: bool) -> str:
    """Serialise with random whitespace and random (but valid) escaping of every character."""
    def ws() -> str:
        return "".join(rng.choice(" \t\n\r") for _ in range(rng.choice([0, 0, 0, 1, 2])))

    def string(text: str) -> str:
        out = []
        for ch in text:
            code = ord(ch)
            if ch in _SHORT_ESCAPES and (code < 0x20 or ch in '"\\' or rng.random() < 0.5):
                out.append(_SHORT_ESCAPES[ch])
            elif code < 0x20 or 0xD800 <= code <= 0xDFFF or (code > 0x7e and ascii_only) or rng.random() < 0.05:
                if code > 0xFFFF:
                    code -= 0x10000
                    units = [0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)]
                else:
                    units = [code]
                for unit in units:
                    hexed = f"{unit:04x}"
                    out.append("\\u" + (hexed.upper() if rng.random() < 0.5 else hexed))
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'

    def walk(item: object) -> str:
        if isinstance(item, _Number):
            return str(item)
        if isinstance(item, str):
            return string(item)
        if isinstance(item, _Object):
            return "{" + ws() + ",".join(ws() + string(k) + ws() + ":" + ws() + walk(v) + ws()
                                         for k, v in item) + ws() + "}"
        if isinstance(item, list):
            return "[" + ws() + ",".join(ws() + walk(v) + ws() for v in item) + ws() + "]"
        return json.dumps(item)

    return ws() + walk(value) + ws()


def to_plain(value: object) -> object:
    """The same document as ordinary Python values, for json.dumps."""
    if isinstance(value, _Number):
        number = json.loads(value)
        return number if math.isfinite(number) else 1e308  # json.dumps would write Infinity
    if isinstance(value, _Object):
        return {k: to_plain(v) for k, v in value}
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    return value


def random_documents(seed: int, count: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        ascii_only = rng.random() < 0.5
        value = random_value(rng, 0, lone=ascii_only)
        if rng.random() < 0.5:
            yield emit(value, rng, ascii_only).encode("utf-8")
        else:
            plain = to_plain(value)
            text = json.dumps(plain, ensure_ascii=ascii_only, sort_keys=rng.random() < 0.2,
                              indent=rng.choice([None, None, 0, 2, "\t"]),
                              separators=rng.choice([None, (",", ":"), (" , ", " : "), (",\n", ":\t")]))
            yield text.encode("utf-8")


# --- differential against json.loads ------------------------------------------------------------

@pytest.mark.parametrize("seed", range(3))
def test_valid_documents_match_json_loads_at_every_chunking(seed):
    checked = 0
    for n, data in enumerate(random_documents(seed, 700)):
        expected = reference(data)
        assert expected is not INVALID, data  # the generator writes valid JSON only
        for chunk in (1, ODD_CHUNKS[n % len(ODD_CHUNKS)], 1 << 18):
            got = ours(data, chunk)
            assert same(got, expected), (chunk, data[:200])
            checked += 1
    assert checked == 3 * 700


def _mutations(rng: random.Random, data: bytes) -> Iterator[bytes]:
    yield data[:rng.randint(0, len(data))]
    for _ in range(3):
        i = rng.randrange(len(data))
        replacement = bytes([rng.randrange(256)]) if rng.random() < 0.5 else rng.choice(
            [b'"', b"\\", b"{", b"}", b"[", b"]", b",", b":", b" ", b"0", b"-", b".", b"e", b"\x00", b"\xc3", b"u"])
        yield data[:i] + replacement + data[i + 1:]
    i = rng.randrange(len(data))
    yield data[:i] + data[i + 1:]
    yield data + rng.choice([b"x", b",", b" 1", b"]", b"}", b"\x00", b" \n"])


@pytest.mark.parametrize("seed", range(2))
def test_malformed_documents_fail_exactly_when_json_loads_fails(seed):
    rng = random.Random(1000 + seed)
    outcomes = {"invalid": 0, "valid": 0}
    for data in random_documents(seed + 10, 500):
        for mutated in _mutations(rng, data):
            expected = reference(mutated)
            outcomes["invalid" if expected is INVALID else "valid"] += 1
            for chunk in (1, 1 << 18):
                got = ours(mutated, chunk)
                assert same(got, expected), (chunk, mutated[:200])
    assert outcomes["invalid"] > 1000 and outcomes["valid"] > 100  # both sides were exercised


def test_every_truncation_of_a_document_is_refused():
    data = json.dumps({"a": [1, -2.5e-3, "x\u00e9\U0001f600\\\"", {"b": None}], "c": True, "d": "\ud800"},
                      ensure_ascii=True).encode()
    for end in range(len(data)):
        for chunk in (1, 3, 1 << 18):
            with pytest.raises(InvalidJSON):
                parse_json(io.BytesIO(data[:end]), media=NO_MEDIA, chunk_bytes=chunk)


# --- semantics, one at a time --------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    '"\\ud800"', '"\\udc00x"', '"\\ud800\\ud800\\udc00"', '"\\uD83D\\uDE00"', '"a\\u0000b"', '-0', '-0.0', '0e0',
    '1E+2', '123456789012345678901234567890', '1e400', '-1e400', '5e-324', '[1,[2,[3,[]]],{}]',
    '{"a":1,"a":2,"b":{"a":3},"a":4}', ' \t\n\r"x" \r\n', '"\\/\\b\\f\\n\\r\\t\\"\\\\"',
])
def test_values_match_json_loads(text):
    for chunk in (1, 2, 5, 1 << 18):
        assert same(parse_json(io.BytesIO(text.encode()), media=NO_MEDIA, chunk_bytes=chunk), json.loads(text))


def test_surrogate_pair_split_across_every_read_boundary_is_joined():
    text = '["' + "a" * 5 + '\\ud83d\\ude00' + '"]'
    for chunk in range(1, len(text) + 1):
        assert parse_json(io.BytesIO(text.encode()), media=NO_MEDIA, chunk_bytes=chunk) == ["a" * 5 + "\U0001f600"]


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"a": -Infinity}'])
def test_nan_and_infinity_are_refused_although_json_loads_takes_them(text):
    json.loads(text)  # the deliberate difference: json.loads accepts these
    for chunk in (1, 1 << 18):
        with pytest.raises(InvalidJSON):
            parse_json(io.BytesIO(text.encode()), media=NO_MEDIA, chunk_bytes=chunk)


@pytest.mark.parametrize("body", [b"", b"  \n\t\r "])
def test_empty_body_has_its_own_message(body):
    with pytest.raises(InvalidJSON) as info:
        parse_json(io.BytesIO(body), media=NO_MEDIA)
    assert info.value.message == "The request body is empty; send a JSON object."


@pytest.mark.parametrize("body", [
    b'"\xff"', b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\xe2\x82"', b'["\xe2\x82', "[1]".encode("utf-16"),
])
def test_text_that_is_not_utf8_is_refused(body):
    for chunk in (1, 1 << 18):
        with pytest.raises(InvalidJSON):
            parse_json(io.BytesIO(body), media=NO_MEDIA, chunk_bytes=chunk)


def test_a_leading_utf8_bom_is_skipped_as_json_loads_skips_it_in_bytes():
    body = b"\xef\xbb\xbf" + b'{"a": "\xef\xbb\xbf"}'
    for chunk in (1, 1 << 18):
        assert parse_json(io.BytesIO(body), media=NO_MEDIA, chunk_bytes=chunk) == json.loads(body)


@pytest.mark.parametrize("text", ["[1] 2", '{"a":1}}', '"a""b"', "truex", "nul", "[01]", "1.", "-", "[1,]", "{,}"])
def test_trailing_garbage_and_bad_tokens_are_refused(text):
    with pytest.raises(ValueError):
        json.loads(text)
    for chunk in (1, 1 << 18):
        with pytest.raises(InvalidJSON):
            parse_json(io.BytesIO(text.encode()), media=NO_MEDIA, chunk_bytes=chunk)


def test_integers_past_pythons_digit_limit_are_invalid_as_in_json_loads():
    fits, too_long = "9" * 4300, "9" * 4301
    assert parse_json(io.BytesIO(fits.encode()), media=NO_MEDIA) == json.loads(fits)
    with pytest.raises(ValueError):
        json.loads(too_long)
    for body in (too_long, f"[{too_long}]"):
        for chunk in (1000, 1 << 18):
            with pytest.raises(InvalidJSON):
                parse_json(io.BytesIO(body.encode()), media=NO_MEDIA, chunk_bytes=chunk)


@pytest.mark.parametrize("opener,closer", [("[", "]"), ('{"k":', "}")])
def test_nesting_is_limited(opener, closer):
    limits = JsonLimits(max_depth=64)
    for chunk in (1, 1 << 18):
        deepest = (opener * 64 + "0" + closer * 64).encode()
        assert json.loads(deepest) == parse_json(io.BytesIO(deepest), media=NO_MEDIA, limits=limits,
                                                 chunk_bytes=chunk)
        too_deep = (opener * 65 + "0" + closer * 65).encode()
        with pytest.raises(InvalidJSON, match="nesting deeper than 64"):
            parse_json(io.BytesIO(too_deep), media=NO_MEDIA, limits=limits, chunk_bytes=chunk)
    with pytest.raises(InvalidJSON, match="nesting deeper"):
        parse_json(io.BytesIO(b"[" * 100_000), media=NO_MEDIA)


# --- base64 media ----------------------------------------------------------------------------------

def _encodings(raw: bytes) -> dict[str, str]:
    """The same bytes as clients send them (the JSON string content, before JSON escaping)."""
    std = base64.b64encode(raw).decode()
    return {
        "standard": std,
        "no padding": std.rstrip("="),
        "urlsafe": base64.urlsafe_b64encode(raw).decode(),
        "urlsafe no padding": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "mime lines": base64.encodebytes(raw).decode(),
        "crlf lines": base64.encodebytes(raw).decode().replace("\n", "\r\n"),
        "spaces and tabs": " \t".join(std[i:i + 10] for i in range(0, len(std), 10)),
        "data url": "data:image/png;base64," + std,
    }


def _json_forms(text: str) -> dict[str, str]:
    """JSON spellings of one string: plain, escaped slashes (PHP), \\u escapes for / and +."""
    plain = json.dumps(text)
    return {"plain": plain, "escaped slashes": plain.replace("/", "\\/"),
            "unicode escapes": plain.replace("/", "\\u002f").replace("+", "\\u002B")}


@pytest.mark.parametrize("size", [1, 2, 3, 4, 57, 1000, 300_000])
def test_media_round_trips_byte_for_byte_in_every_encoding_and_chunking(size):
    raw = random.Random(size).randbytes(size)
    chunks = (1, 7, 1 << 18) if size <= 1000 else (4093, 1 << 18)
    for name, encoded in _encodings(raw).items():
        for form_name, json_text in _json_forms(encoded).items():
            body = ('{"prompt": "hi", "image_base64": ' + json_text + ', "n": 1}').encode()
            for chunk in chunks:
                factory = RecordingFactory()
                value = parse_json(io.BytesIO(body), media=media_policy(open_sink=factory), chunk_bytes=chunk)
                ref = value["image_base64"]
                assert isinstance(ref, MediaRef), (name, form_name, chunk)
                assert ref.sink.read_bytes() == raw, (name, form_name, chunk)
                assert (ref.size, ref.kind, ref.path, ref.index) == (size, "image", ("image_base64",), 0)
                assert ref.mime == ("image/png" if name == "data url" else None)
                assert value["prompt"] == "hi" and value["n"] == 1
                assert [info.field for info in factory.infos] == ["image_base64"]
                ref.sink.close()


def test_data_urls_anywhere_are_media_with_their_kind_and_path():
    raw_image, raw_video = os.urandom(5000), os.urandom(7000)
    body = json.dumps({"model": "fastvlm", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image_url", "image_url": {"url": "data:IMAGE/JPEG;base64," + base64.b64encode(raw_image).decode()}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;codecs=avc1;base64,"
                                                   + base64.b64encode(raw_video).decode()}},
    ]}]}).replace("/", "\\/").encode()
    for chunk in (1, 7, 1 << 18):
        factory = RecordingFactory()
        value = parse_json(io.BytesIO(body), media=media_policy(open_sink=factory), chunk_bytes=chunk)
        refs = collect_media(value)
        assert [(r.index, r.kind, r.mime, r.field) for r in refs] == [
            (0, "image", "image/jpeg", "messages[0].content[1].image_url.url"),
            (1, "video", "video/mp4", "messages[0].content[2].video_url.url")]
        assert [r.sink.read_bytes() for r in refs] == [raw_image, raw_video]
        assert [(i.kind, i.max_bytes, i.mime) for i in factory.infos] == [
            ("image", 4 * MiB, "image/jpeg"), ("video", 16 * MiB, "video/mp4")]
        assert value["messages"][0]["content"][0] == {"type": "text", "text": "describe"}


@pytest.mark.parametrize("text", [
    "data:application/pdf;base64,QUJD",  # a kind without a size limit
    "data:image/png,QUJD",  # not base64
    "data:image/png;base64",  # no comma: not a data: URL prefix
    "database: postgres", "d", "da", "DATA", "",
])
def test_strings_that_are_not_media_data_urls_stay_text(text):
    body = json.dumps({"a": [text], "b": text}).encode()
    for chunk in (1, 1 << 18):
        assert parse_json(io.BytesIO(body), media=media_policy(), chunk_bytes=chunk) == {"a": [text], "b": text}


def test_data_urls_are_text_when_the_policy_does_not_want_them():
    body = json.dumps({"url": "data:image/png;base64,QUJD", "image_base64": "QUJD"}).encode()
    value = parse_json(io.BytesIO(body), media=media_policy(data_urls=False))
    assert value["url"] == "data:image/png;base64,QUJD"
    assert value["image_base64"].sink.read_bytes() == b"ABC"


def test_fields_only_select_top_level_keys_and_strings():
    body = json.dumps({"nested": {"image_base64": "QUJD"}, "image_base64": 5, "list": ["QUJD"]}).encode()
    assert parse_json(io.BytesIO(body), media=media_policy()) == json.loads(body)


def test_a_fields_callable_sees_every_string_path():
    seen = []

    def kind_of(path):
        seen.append(path)
        return "image" if path[-1] == "blob" else None

    body = json.dumps({"items": [{"blob": "QUJD", "name": "x"}, {"blob": "REVG"}], "top": "y"}).encode()
    for chunk in (1, 1 << 18):
        seen.clear()
        value = parse_json(io.BytesIO(body), media=media_policy(fields=kind_of), chunk_bytes=chunk)
        assert [ref.sink.read_bytes() for ref in collect_media(value)] == [b"ABC", b"DEF"]
        assert value["items"][0]["name"] == "x" and value["top"] == "y"
        assert ("items", 0, "blob") in seen and ("items", 0, "name") in seen and ("top",) in seen


def test_a_media_value_replaced_by_a_duplicate_key_is_closed():
    factory = RecordingFactory()
    body = b'{"image_base64": "QUJD", "x": {"u": "data:image/png;base64,QUJD"}, "x": 1, "image_base64": "REVG"}'
    value = parse_json(io.BytesIO(body), media=media_policy(open_sink=factory), chunk_bytes=5)
    assert value["x"] == 1
    refs = collect_media(value)
    assert [(r.index, r.sink.read_bytes()) for r in refs] == [(2, b"DEF")]
    assert [s.closed for s in factory.sinks] == [True, True, False]


_BASE64_NOISE = ["=", "==", " ", "\n", "\u2028", "\u00a0", "-", "_", "!", "\u00e9", "A", "\x0b"]


def _base64_variants(rng: random.Random, raw: bytes) -> Iterator[str]:
    text = base64.b64encode(raw).decode()
    yield text
    for _ in range(12):
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(chars) + 1)
            chars.insert(i, rng.choice(_BASE64_NOISE))
        if rng.random() < 0.3:
            del chars[rng.randrange(len(chars)):]
        yield "".join(chars)


def test_base64_tolerance_matches_decode_base64():
    rng = random.Random(7)
    outcomes = {"decoded": 0, "refused": 0}
    for size in [0, 1, 2, 3, 4, 5, 10, 100, 1000]:
        raw = rng.randbytes(size)
        for text in _base64_variants(rng, raw):
            try:
                expected: object = decode_base64(text, field="image_base64", max_bytes=MiB)
            except InvalidRequest:
                expected = InvalidRequest
            body = json.dumps({"image_base64": text}).encode()
            for chunk in (1, 3, 1 << 18):
                try:
                    got: object = parse_json(io.BytesIO(body), media=media_policy(), chunk_bytes=chunk)
                    got = got["image_base64"].sink.read_bytes()
                except InvalidRequest as exc:
                    assert exc.details["field"] == "image_base64"
                    got = InvalidRequest
                assert got == expected, (text, chunk)
            outcomes["refused" if expected is InvalidRequest else "decoded"] += 1
    assert outcomes["decoded"] > 20 and outcomes["refused"] > 20


@pytest.mark.parametrize("text,message", [
    ("", "image_base64 is empty."), ("  \\n ", "image_base64 is empty."),
    ("QUJ*", "image_base64 is not valid base64."), ("QQ==QQ==", "image_base64 is not valid base64."),
    ("data:image/png;base64,", "image_base64 is empty."), ("Q", "image_base64 is not valid base64."),
])
def test_bad_media_is_an_invalid_request_naming_the_field(text, message):
    for chunk in (1, 1 << 18):
        factory = RecordingFactory()
        with pytest.raises(InvalidRequest) as info:
            parse_json(io.BytesIO(b'{"image_base64": "' + text.encode() + b'"}'),
                       media=media_policy(open_sink=factory), chunk_bytes=chunk)
        assert (info.value.message, info.value.details["field"]) == (message, "image_base64")
        assert all(s.closed for s in factory.sinks)


# --- limits -----------------------------------------------------------------------------------------

def test_media_over_its_kind_limit_is_refused_as_soon_as_it_passes():
    limit = 3 * MiB
    block = base64.b64encode(os.urandom(3 * 64 * 1024))  # 256 KiB of base64
    pieces = [b'{"image_base64": "'] + [block] * 400 + [b'"}']  # 75 MiB decoded in all
    source = StreamSource(pieces)
    factory = RecordingFactory()
    with pytest.raises(MediaTooLarge) as info:
        parse_json(source, media=media_policy(max_bytes={"image": limit}, open_sink=factory))
    assert info.value.details["field"] == "image_base64"
    assert source.consumed < 2 * limit  # it stopped reading long before the end
    assert factory.sinks[0].closed


def test_media_exactly_at_the_limit_is_taken():
    raw = os.urandom(1000)
    for name, encoded in _encodings(raw).items():
        body = json.dumps({"image_base64": encoded}).encode()
        value = parse_json(io.BytesIO(body), media=media_policy(max_bytes={"image": 1000}), chunk_bytes=7)
        assert value["image_base64"].size == 1000, name
        with pytest.raises(MediaTooLarge):
            parse_json(io.BytesIO(body), media=media_policy(max_bytes={"image": 999}), chunk_bytes=7)


def test_too_many_media_values_are_refused_and_all_sinks_closed():
    item = {"type": "image_url", "image_url": {"url": "data:image/png;base64,QUJD"}}
    for count, ok in ((3, True), (4, False)):
        body = json.dumps({"messages": [{"content": [item] * count}]}).encode()
        factory = RecordingFactory()
        policy = media_policy(max_items=3, open_sink=factory)
        if ok:
            assert len(collect_media(parse_json(io.BytesIO(body), media=policy))) == 3
            continue
        with pytest.raises(InvalidRequest) as info:
            parse_json(io.BytesIO(body), media=policy)
        assert info.value.details["field"] == "messages[0].content[3].image_url.url"
        assert len(factory.sinks) == 3 and all(s.closed for s in factory.sinks)


def test_a_long_string_is_refused_naming_its_path():
    limits = JsonLimits(max_string_chars=100)
    ok = json.dumps({"messages": [{"content": "x" * 100}]}).encode()
    assert parse_json(io.BytesIO(ok), media=media_policy(), limits=limits)["messages"][0]["content"] == "x" * 100
    for text in ("x" * 101, "\\u00e9" * 101, "data:text/plain;base64," + "x" * 90):
        body = ('{"messages": [{"content": "' + text + '"}]}').encode()
        for chunk in (1, 7, 1 << 18):
            with pytest.raises(PayloadTooLarge) as info:
                parse_json(io.BytesIO(body), media=media_policy(), limits=limits, chunk_bytes=chunk)
            assert info.value.details["field"] == "messages[0].content"
            assert "messages[0].content" in info.value.message


@pytest.mark.parametrize("document,where", [
    ({"k" * 101: 1}, "body"), ({"a": 1, "k" * 101: 1}, "body"), ({"o": [{"x": 1, "k" * 101: 1}]}, "o[0]"),
])
def test_a_long_key_is_refused_naming_its_object(document, where):
    body = json.dumps(document).encode()
    for chunk in (1, 1 << 18):
        with pytest.raises(PayloadTooLarge) as info:
            parse_json(io.BytesIO(body), media=NO_MEDIA, limits=JsonLimits(max_string_chars=100), chunk_bytes=chunk)
        assert info.value.details["field"] == where and info.value.message.startswith(f"A key in {where} ")


def test_a_data_url_prefix_must_end_within_256_characters_whatever_the_chunking():
    near = "data:image/png;" + "p=v;" * 57 + "base64,QUJD"  # the prefix ends at character 250
    far = "data:image/png;" + "p=v;" * 70 + "base64,QUJD"
    for chunk in (1, 7, 1 << 18):
        value = parse_json(io.BytesIO(json.dumps([near, far]).encode()), media=media_policy(), chunk_bytes=chunk)
        assert isinstance(value[0], MediaRef) and value[0].sink.read_bytes() == b"ABC"
        assert value[1] == far


def test_the_text_outside_media_is_bounded_but_media_does_not_count():
    limits = JsonLimits(max_text_chars=10_000)
    media = base64.b64encode(os.urandom(600_000)).decode()
    small = json.dumps({"image_base64": media, "prompt": "p" * 9000}).encode()
    assert parse_json(io.BytesIO(small), media=media_policy(), limits=limits)["prompt"] == "p" * 9000
    big = json.dumps({"image_base64": media, "items": ["p" * 900] * 12}).encode()
    for chunk in (997, 1 << 18):
        with pytest.raises(PayloadTooLarge) as info:
            parse_json(io.BytesIO(big), media=media_policy(), limits=limits, chunk_bytes=chunk)
        assert "10000 characters" in info.value.message
    numbers = ("[" + ",".join(["1234567890"] * 1000) + "]").encode()
    with pytest.raises(PayloadTooLarge):
        parse_json(io.BytesIO(numbers), media=NO_MEDIA, limits=limits, chunk_bytes=1000)


def test_a_failed_parse_closes_every_sink_it_opened():
    body = b'{"image_base64": "QUJD", "video_base64": "REVG", "x": [1, 2,]}'
    for chunk in (1, 1 << 18):
        factory = RecordingFactory()
        with pytest.raises(InvalidJSON):
            parse_json(io.BytesIO(body), media=media_policy(open_sink=factory), chunk_bytes=chunk)
        assert len(factory.sinks) == 2 and all(s.closed for s in factory.sinks)


# --- memory and the default sink ---------------------------------------------------------------------

def test_a_300_mb_base64_string_is_never_held_in_memory():
    block_raw = random.Random(3).randbytes(3 * 64 * 1024)
    block = base64.b64encode(block_raw)  # 256 KiB, no padding: blocks concatenate into one valid string
    count = 1200  # 300 MiB of base64, 225 MiB decoded
    sinks = HashSinks()
    source = StreamSource([b'{"prompt": "describe", "video_base64": "'] + [block] * count + [b'", "n": [1, 2]}'])
    policy = media_policy(max_bytes={"image": MiB, "video": 300 * MiB}, open_sink=sinks)
    value, peak = traced_peak(lambda: parse_json(source, media=policy))
    assert source.consumed > 300 * MiB
    assert peak < 16 * MiB, peak  # the body is 300 MiB
    assert value["video_base64"].size == count * len(block_raw) == sinks.sinks[0].size
    assert sinks.sinks[0].digest.hexdigest() == repeated_digest(block_raw, count)
    assert value["prompt"] == "describe" and value["n"] == [1, 2]


def test_spooled_sink_keeps_small_media_in_memory_and_spills_large_media_to_the_directory(tmp_path):
    small, large = os.urandom(1000), os.urandom(3 * MiB)
    body = json.dumps({"image_base64": base64.b64encode(small).decode(),
                       "video_base64": base64.b64encode(large).decode()}).encode()
    value = parse_json(io.BytesIO(body), media=media_policy(open_sink=spool_sinks(tmp_path, memory_bytes=MiB)))
    image, video = value["image_base64"].sink, value["video_base64"].sink
    assert image.read_bytes() == small and video.read_bytes() == large
    assert len(_open_files_under(tmp_path)) == 1  # the video's; the image stayed in memory
    assert os.readlink(f"/proc/self/fd/{video.reader().fileno()}").startswith(str(tmp_path))
    video.reader().seek(100)
    assert video.reader().read(10) == large[:10]  # reader() always starts again at the beginning
    video.close()
    image.close()
    assert video.closed and image.closed
    assert os.listdir(tmp_path) == [] and _open_files_under(tmp_path) == []


def _open_files_under(folder) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [t for t in targets if t.startswith(str(folder))]


def test_the_whitespace_base64_ignores_is_exactly_what_decode_base64_ignores():
    assert jsonstream.WHITESPACE == "".join(chr(c) for c in range(0x110000) if re.fullmatch(r"\s", chr(c)))


def test_format_path_names_fields_as_messages_do():
    assert format_path(()) == "body"
    assert format_path(("image_base64",)) == "image_base64"
    assert format_path(("messages", 0, "content", 12, "image_url", "url")) == "messages[0].content[12].image_url.url"
    assert format_path(("a b", 1, "\n")) == '["a b"][1]["\\n"]'
    assert len(format_path(("x" * 1000,) * 10)) <= 200


def test_policy_configuration_errors_are_value_errors():
    with pytest.raises(ValueError):
        MediaPolicy(max_bytes={"image": 0})
    with pytest.raises(ValueError):
        MediaPolicy(max_bytes={"image": 10}, fields={"video_base64": "video"})
    with pytest.raises(ValueError):
        JsonLimits(max_depth=0)
    with pytest.raises(ValueError):
        JsonLimits(max_depth=513)
    with pytest.raises(ValueError):
        parse_json(io.BytesIO(b"1"), media=NO_MEDIA, chunk_bytes=0)
