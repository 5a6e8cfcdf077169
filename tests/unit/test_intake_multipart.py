"""The streaming multipart/form-data parser: real encoders, odd chunkings, limits, malformed bodies."""

from __future__ import annotations

import asyncio
import io
import os
import random

import aiohttp
import httpx
import pytest

from fastvlm_engine.errors import InvalidJSON, InvalidRequest, MediaTooLarge, PayloadTooLarge, RequestError
from fastvlm_engine.intake.multipart import MultipartLimits, clean_filename, parse_multipart
from fastvlm_engine.intake.sinks import SinkInfo, SpooledSink, spool_sinks
from tests.unit.test_intake_jsonstream import HashSinks, RecordingFactory, StreamSource, repeated_digest, traced_peak

MiB = 1 << 20
FILES = {"image": 4 * MiB, "video": 16 * MiB}
BOUNDARY = "----fastvlm-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
CHUNKS = (1, 2, 3, 7, 64, 1 << 18)


def part(name: str, content: bytes, *, filename: str | None = None, content_type: str | None = None,
         extra: str = "") -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    headers = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        headers += f"Content-Type: {content_type}\r\n"
    return (headers + extra + "\r\n").encode("utf-8") + content


def body(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    delimiter = f"--{boundary}\r\n".encode()
    return b"".join(delimiter + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()


def parse(data: bytes, content_type: str = CONTENT_TYPE, **kwargs):
    kwargs.setdefault("file_fields", FILES)
    return parse_multipart(io.BytesIO(data), content_type, **kwargs)


def tricky_bytes(size: int, boundary: str = BOUNDARY) -> bytes:
    """Random bytes salted with near-boundaries: CRLF, dashes and boundary prefixes, never the real one."""
    rng = random.Random(size)
    near = [b"\r\n", b"\r\n--", f"\r\n--{boundary[:-1]}".encode(), f"--{boundary}".encode(), b"\r", b"\n--", b"-"]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(near) if rng.random() < 0.2 else rng.randbytes(rng.randint(1, 50))
    return bytes(out[:size])


# --- real bodies, odd chunkings ----------------------------------------------------------------------

def test_hand_built_form_round_trips_at_every_chunking():
    image = tricky_bytes(5000)
    data = body(part("prompt", "d\u00e9cris \U0001f600".encode()), part("image", image, filename="p.jpg",
                                                                       content_type="image/jpeg"),
                part("max_new_tokens", b"32"), part("prompt", b""), part("empty", b""))
    for chunk in CHUNKS:
        with parse(data, chunk_bytes=chunk) as form:
            assert form.fields == {"prompt": ["d\u00e9cris \U0001f600", ""], "max_new_tokens": ["32"], "empty": [""]}
            image_part = form.files["image"]
            assert image_part.sink.read_bytes() == image, chunk
            assert (image_part.name, image_part.filename, image_part.content_type, image_part.size) == (
                "image", "p.jpg", "image/jpeg", len(image))
            assert form.json is None


def test_httpx_encoded_form_round_trips():
    video = tricky_bytes(300_000)
    request = httpx.Request("POST", "http://127.0.0.1/summarize_video",
                            files={"video": ("clip.mp4", video, "video/mp4")},
                            data={"prompt": "summarize", "tags": ["a", "b"]})
    data, content_type = request.read(), request.headers["Content-Type"]
    for chunk in (1, 7, 4096, 1 << 18):
        with parse(data, content_type, chunk_bytes=chunk) as form:
            assert form.files["video"].sink.read_bytes() == video
            assert form.files["video"].filename == "clip.mp4"
            assert form.files["video"].content_type == "video/mp4"
            assert form.fields == {"prompt": ["summarize"], "tags": ["a", "b"]}


def test_aiohttp_multipart_writer_form_with_a_json_request_part_round_trips():
    image = os.urandom(100_000)

    async def encode() -> tuple[bytes, str]:
        writer = aiohttp.MultipartWriter("form-data")
        payload = writer.append(image, {"Content-Type": "image/png"})
        payload.set_content_disposition("form-data", name="image", filename="sh\u00f6t.png")
        payload = writer.append_json({"prompt": "what is this?", "max_new_tokens": 16, "opts": [1.5, None]})
        payload.set_content_disposition("form-data", name="request")
        payload = writer.append("plain text")
        payload.set_content_disposition("form-data", name="note")
        return await writer.as_bytes(), writer.headers["Content-Type"]

    data, content_type = asyncio.run(encode())
    for chunk in (1, 3, 1 << 18):
        with parse(data, content_type, chunk_bytes=chunk) as form:
            assert form.json == {"prompt": "what is this?", "max_new_tokens": 16, "opts": [1.5, None]}
            assert form.fields == {"note": ["plain text"]}
            assert form.files["image"].sink.read_bytes() == image
            assert form.files["image"].filename == "sh\u00f6t.png"


def test_file_fields_are_files_even_without_a_filename_and_sinks_learn_about_them():
    factory = RecordingFactory()
    data = body(part("video", b"\x00\x01raw", content_type="video/mp4"), part("image", b"img", filename="a.png"))
    with parse(data, open_sink=factory) as form:
        assert form.files["video"].sink.read_bytes() == b"\x00\x01raw" and form.files["video"].filename is None
    assert factory.infos == [
        SinkInfo(index=0, field="video", kind="video", max_bytes=16 * MiB, mime="video/mp4", filename=None),
        SinkInfo(index=1, field="image", kind="image", max_bytes=4 * MiB, mime=None, filename="a.png")]
    assert all(sink.closed for sink in factory.sinks)  # Form.__exit__ closed them


def test_the_request_part_is_text_unless_it_is_declared_json():
    with parse(body(part("request", b'{"a": 1}'))) as form:
        assert form.json is None and form.fields == {"request": ['{"a": 1}']}
    with parse(body(part("request", b'{"a": 1}', content_type="application/json; charset=utf-8"))) as form:
        assert form.json == {"a": 1} and form.fields == {}


def test_preamble_whitespace_and_epilogue_are_ignored():
    data = b"\r\n" + body(part("prompt", b"x")) + b"epilogue that is not parsed\r\n--junk"
    assert parse(data).fields == {"prompt": ["x"]}


def test_a_form_with_no_parts_is_empty():
    with parse(f"--{BOUNDARY}--\r\n".encode()) as form:
        assert (form.fields, form.files, form.json) == ({}, {}, None)


# --- limits ----------------------------------------------------------------------------------------------

def test_a_file_over_its_limit_is_refused_as_soon_as_it_passes():
    head = f"--{BOUNDARY}\r\n".encode() + part("video", b"", filename="big.mp4")
    block = os.urandom(256 * 1024)
    source = StreamSource([head] + [block] * 400 + [f"\r\n--{BOUNDARY}--\r\n".encode()])  # 100 MiB
    factory = RecordingFactory()
    with pytest.raises(MediaTooLarge) as info:
        parse_multipart(source, CONTENT_TYPE, file_fields={"video": 2 * MiB}, open_sink=factory)
    assert info.value.details["field"] == "video"
    assert source.consumed < 3 * MiB
    assert factory.sinks[0].closed


def test_a_file_exactly_at_its_limit_is_taken():
    content = tricky_bytes(1000)
    for chunk in (1, 7, 1 << 18):
        with parse(body(part("image", content, filename="x")), file_fields={"image": 1000}, chunk_bytes=chunk) as f:
            assert f.files["image"].size == 1000
        with pytest.raises(MediaTooLarge):
            parse(body(part("image", content, filename="x")), file_fields={"image": 999}, chunk_bytes=chunk)


def test_a_long_text_part_is_refused_naming_it():
    limits = MultipartLimits(max_text_bytes=100)
    assert parse(body(part("prompt", b"p" * 100)), limits=limits).fields == {"prompt": ["p" * 100]}
    for chunk in (1, 1 << 18):
        with pytest.raises(PayloadTooLarge) as info:
            parse(body(part("prompt", b"p" * 101)), limits=limits, chunk_bytes=chunk)
        assert info.value.details["field"] == "prompt" and "prompt" in info.value.message


def test_text_parts_together_are_bounded():
    limits = MultipartLimits(max_text_bytes=100, max_text_total_bytes=250)
    assert len(parse(body(*[part(f"f{i}", b"x" * 50) for i in range(5)]), limits=limits).fields) == 5
    with pytest.raises(PayloadTooLarge):
        parse(body(*[part(f"f{i}", b"x" * 50) for i in range(6)]), limits=limits)


def test_too_many_parts_are_refused():
    limits = MultipartLimits(max_parts=5)
    assert len(parse(body(*[part("p", b"x")] * 5), limits=limits).fields["p"]) == 5
    with pytest.raises(PayloadTooLarge):
        parse(body(*[part("p", b"x")] * 6), limits=limits)


def test_too_many_or_too_long_part_headers_are_refused():
    with pytest.raises(InvalidRequest):
        parse(body(part("p", b"x", extra="".join(f"X-H{i}: v\r\n" for i in range(8)))))
    with pytest.raises(InvalidRequest):
        parse(body(part("p", b"x", extra="X-Long: " + "v" * 5000 + "\r\n")))


# --- refusals ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [
    "multipart/form-data", "multipart/form-data; boundary=", "multipart/form-data; boundary=" + "b" * 71,
    "multipart/form-data; boundary=\"bad\x01\"", "multipart/form-data; boundary=\"ends with space \"",
    "multipart/mixed; boundary=abc", "application/json", "", "multipart/form-data; boundary=\u20ac",
])
def test_missing_or_malformed_content_type_is_an_invalid_request_on_the_body(content_type):
    with pytest.raises(InvalidRequest) as info:
        parse(body(part("p", b"x")), content_type)
    assert info.value.details["field"] == "body"


def test_a_file_under_an_unknown_name_is_refused_naming_it():
    with pytest.raises(InvalidRequest) as info:
        parse(body(part("document", b"%PDF", filename="x.pdf")))
    assert info.value.details["field"] == "document" and "image, video" in info.value.message


def test_a_second_file_under_one_name_is_refused():
    factory = RecordingFactory()
    with pytest.raises(InvalidRequest, match="Only one file") as info:
        parse(body(part("image", b"a", filename="1.png"), part("image", b"b", filename="2.png")), open_sink=factory)
    assert info.value.details["field"] == "image"
    assert len(factory.sinks) == 1 and factory.sinks[0].closed


def test_text_that_is_not_utf8_is_refused_naming_the_field():
    with pytest.raises(InvalidRequest) as info:
        parse(body(part("prompt", b"caf\xe9")))
    assert info.value.details["field"] == "prompt"


def test_empty_files_are_refused():
    with pytest.raises(InvalidRequest, match="image is empty"):
        parse(body(part("image", b"", filename="x.png")))


@pytest.mark.parametrize("content,error", [
    (b'{"a": ', InvalidJSON), (b"", InvalidJSON), (b"[1, 2]", InvalidRequest), (b'{"a": NaN}', InvalidJSON),
])
def test_a_bad_json_request_part_is_refused(content, error):
    with pytest.raises(error) as info:
        parse(body(part("request", content, content_type="application/json")))
    assert "request part" in info.value.message


def test_a_second_json_request_part_is_refused():
    json_part = part("request", b"{}", content_type="application/json")
    with pytest.raises(InvalidRequest, match="Only one request part"):
        parse(body(json_part, json_part))


@pytest.mark.parametrize("headers", [
    b"Content-Type: text/plain\r\n\r\n",  # no Content-Disposition
    b"Content-Disposition: attachment; name=\"p\"\r\n\r\n",
    b"Content-Disposition: form-data\r\n\r\n",  # no name
    b"Content-Disposition: form-data; name=\"\xff\"\r\n\r\n",
    b"Content-Disposition: form-data; name=\"p\"\r\nContent-Transfer-Encoding: base64\r\n\r\n",
    b"Content-Disposition form-data\r\n\r\n",
])
def test_bad_part_headers_are_refused(headers):
    with pytest.raises(InvalidRequest):
        parse(f"--{BOUNDARY}\r\n".encode() + headers + b"x\r\n" + f"--{BOUNDARY}--\r\n".encode())


def test_every_truncation_is_a_clean_refusal_and_leaves_no_sink_open():
    data = body(part("prompt", b"hello"), part("image", tricky_bytes(300), filename="a.png"), part("n", b"1"))
    for end in range(len(data) - len("--\r\n")):  # a body cut anywhere before its closing boundary's end
        for chunk in (1, 1 << 18):
            factory = RecordingFactory()
            with pytest.raises(RequestError) as info:
                parse(data[:end], open_sink=factory, chunk_bytes=chunk)
            assert info.value.http_status in (400, 413, 422)
            assert all(sink.closed for sink in factory.sinks)


def test_mutated_bodies_parse_or_fail_as_client_errors_never_otherwise():
    rng = random.Random(5)
    base = body(part("prompt", b"describe"), part("image", tricky_bytes(2000), filename="a.png",
                                                  content_type="image/png"),
                part("request", b'{"x": [1, 2]}', content_type="application/json"))
    outcomes = {"parsed": 0, "refused": 0}
    for _ in range(1500):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            choice = rng.random()
            if choice < 0.5:
                data[i] = rng.randrange(256)
            elif choice < 0.75:
                del data[i:i + rng.randint(1, 40)]
            else:
                data[i:i] = rng.choice([b"\r\n", b"--", f"\r\n--{BOUNDARY}\r\n".encode(), b":", b'"', b";"])
        factory = RecordingFactory()
        try:
            form = parse(bytes(data), open_sink=factory, chunk_bytes=rng.choice(CHUNKS))
        except RequestError as exc:
            assert exc.http_status in (400, 413, 422)
            assert all(sink.closed for sink in factory.sinks)
            outcomes["refused"] += 1
        else:
            form.close()
            outcomes["parsed"] += 1
    assert outcomes["refused"] > 300 and outcomes["parsed"] > 100


# --- file names ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,shown", [
    (b"photo.jpg", "photo.jpg"),
    (b"../../etc/passwd", "passwd"),
    (b"C:\\Users\\me\\Desktop\\clip.mp4", "clip.mp4"),
    (b"/abs/path/", None),
    (b"..", None),
    (b"", None),
    (b"a\x00b\x1b[31mc\r\n.png", "ab[31mc.png"),
    ("evil\u202egnp.exe".encode(), "evilgnp.exe"),  # a right-to-left override would disguise the extension
    ("\u0444\u043e\u0442\u043e.jpg".encode(), "\u0444\u043e\u0442\u043e.jpg"),
    (b"bad\xffutf8.png", "bad\ufffdutf8.png"),
    (b"sh%C3%B6t.png", "sh\u00f6t.png"),  # percent-encoded, as aiohttp sends non-ASCII names
    (b"..%2F..%2Fetc%2Fpasswd%00", "passwd"),
    (b"100%.png", "100%.png"),
])
def test_filenames_are_kept_for_display_only(raw, shown):
    assert clean_filename(raw) == shown


def test_filenames_are_bounded_and_taken_from_the_part():
    with parse(body(part("image", b"x", filename="../" + "n" * 1000 + ".png"))) as form:
        assert form.files["image"].filename == "n" * 255
    assert clean_filename(b"x" * 10, max_chars=4) == "xxxx"


# --- memory ---------------------------------------------------------------------------------------------------

def test_a_large_file_part_is_never_held_in_memory():
    block = random.Random(9).randbytes(256 * 1024)
    count = 480  # 120 MiB
    sinks = HashSinks()
    head = f"--{BOUNDARY}\r\n".encode() + part("prompt", b"describe") + f"\r\n--{BOUNDARY}\r\n".encode() + part(
        "video", b"", filename="clip.mp4", content_type="video/mp4")
    source = StreamSource([head] + [block] * count + [f"\r\n--{BOUNDARY}--\r\n".encode()])
    form, peak = traced_peak(lambda: parse_multipart(source, CONTENT_TYPE, file_fields={"video": 200 * MiB},
                                                     open_sink=sinks))
    assert source.consumed > 120 * MiB
    assert peak < 16 * MiB, peak
    assert form.files["video"].size == count * len(block) == sinks.sinks[0].size
    assert sinks.sinks[0].digest.hexdigest() == repeated_digest(block, count)
    assert form.fields == {"prompt": ["describe"]}


def test_the_default_sink_spools_a_large_file_to_the_given_directory(tmp_path):
    video = os.urandom(3 * MiB)
    data = body(part("video", video, filename="clip.mp4"))
    form = parse(data, open_sink=spool_sinks(tmp_path, memory_bytes=MiB))
    sink = form.files["video"].sink
    assert isinstance(sink, SpooledSink)
    assert os.readlink(f"/proc/self/fd/{sink.reader().fileno()}").startswith(str(tmp_path))
    assert sink.reader().read() == video
    form.close()
    assert sink.closed
