"""Receiving a request body: size limits while streaming, deadlines, minimum rate, disconnects."""

from __future__ import annotations

import asyncio

import pytest

from fastvlm_engine.errors import ClientClosedRequest, HttpError, MediaTooLarge, PayloadTooLarge, RequestTimeout
from fastvlm_engine.intake.body import BodyRules, declared_length, receive_body
from fastvlm_engine.intake.spool import Spool


def _spool(max_bytes: int = 10_000_000, memory: int = 1 << 20, tmp=None) -> Spool:
    return Spool(max_bytes=max_bytes, directory=str(tmp) if tmp else None, memory_bytes=memory,
                 too_large=lambda limit: PayloadTooLarge(f"over {limit}"))


def _receiver(chunks, delays=None):
    """An ASGI receive that yields ``chunks`` (after per-chunk delays), then waits forever."""
    items = list(chunks)
    waits = list(delays or [0.0] * len(items))

    async def receive():
        if not items:
            await asyncio.sleep(3600)
        await asyncio.sleep(waits.pop(0))
        chunk = items.pop(0)
        if chunk is None:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunk, "more_body": bool(items)}

    return receive


RULES = BodyRules(deadline_s=5.0, idle_s=0.3, min_rate_bps=0)


def test_a_body_arrives_whole():
    spool = asyncio.run(receive_body(_receiver([b"ab", b"cd", b"ef"]), _spool(), RULES))
    assert spool.read_bytes() == b"abcdef" and spool.size == 6 and not spool.on_disk


def test_a_large_body_goes_to_disk_and_reads_back(tmp_path):
    chunks = [bytes([i]) * 65536 for i in range(40)]  # 2.5 MiB
    spool = asyncio.run(receive_body(_receiver(chunks), _spool(memory=1 << 20, tmp=tmp_path), RULES))
    try:
        assert spool.on_disk and spool.path.startswith(str(tmp_path))
        assert spool.read_bytes() == b"".join(chunks)
    finally:
        path = spool.path
        spool.close()
    assert not (tmp_path / path.rsplit("/", 1)[-1]).exists()


def test_the_size_limit_applies_while_streaming_and_to_the_declared_length():
    with pytest.raises(PayloadTooLarge):
        asyncio.run(receive_body(_receiver([b"x" * 600, b"y" * 600]), _spool(max_bytes=1000), RULES))
    with pytest.raises(PayloadTooLarge):  # refused before a byte is read
        asyncio.run(receive_body(_receiver([]), _spool(max_bytes=1000), RULES, declared=5000))


def test_a_pause_longer_than_idle_is_a_request_timeout():
    with pytest.raises(RequestTimeout) as caught:
        asyncio.run(receive_body(_receiver([b"a", b"b"], delays=[0.0, 2.0]), _spool(), RULES))
    assert caught.value.status == 408 and caught.value.headers()["Connection"] == "close"


def test_a_slow_drip_below_the_minimum_rate_is_cut_off_even_without_long_pauses():
    rules = BodyRules(deadline_s=30.0, idle_s=0.3, min_rate_bps=1000)
    drip = [b"x"] * 200  # one byte every 0.1 s: never idle for 0.3 s, but 10 bytes/s
    with pytest.raises(RequestTimeout):
        asyncio.run(receive_body(_receiver(drip, delays=[0.1] * 200), _spool(), rules))


def test_the_whole_body_has_a_deadline():
    rules = BodyRules(deadline_s=0.5, idle_s=0.3, min_rate_bps=0)
    with pytest.raises(RequestTimeout):
        asyncio.run(receive_body(_receiver([b"x"] * 100, delays=[0.1] * 100), _spool(), rules))


def test_a_client_that_goes_away_is_a_client_closed_request():
    with pytest.raises(ClientClosedRequest) as caught:
        asyncio.run(receive_body(_receiver([b"abc", None]), _spool(), RULES))
    assert (caught.value.code, caught.value.status) == ("client_closed", 499)


@pytest.mark.parametrize(("headers", "expected"), [
    ([], None), ([(b"content-length", b"12")], 12), ([(b"content-length", b" 7 ")], 7)])
def test_declared_length(headers, expected):
    assert declared_length(headers) == expected


@pytest.mark.parametrize("value", [b"abc", b"-1", b"1e3", b"12, 13"])
def test_a_content_length_that_is_not_a_number_is_a_400(value):
    with pytest.raises(HttpError) as caught:
        declared_length([(b"content-length", value)])
    assert caught.value.status == 400 and caught.value.code == "http_error"


def test_spool_limits_and_persist(tmp_path):
    spool = Spool(max_bytes=10, too_large=lambda limit: MediaTooLarge(f"over {limit}"), memory_bytes=4,
                  directory=str(tmp_path))
    spool.write(b"12345")
    assert spool.on_disk
    with pytest.raises(MediaTooLarge):
        spool.write(b"678901")
    spool.persist(tmp_path / "kept" / "media.bin")
    assert (tmp_path / "kept" / "media.bin").read_bytes() == b"12345"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # the temporary file was moved
