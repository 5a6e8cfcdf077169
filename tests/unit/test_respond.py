"""The router's stream relay: a stream that ends in an error event is not a success."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from fastvlm_engine.router.respond import ErrorEvents, _relay
from fastvlm_engine.web.sse import sse_event


def seen(*chunks: bytes) -> bool:
    watch = ErrorEvents()
    for chunk in chunks:
        watch.feed(chunk)
    return watch.seen


def test_native_and_openai_error_events_are_seen_even_split_across_chunks():
    error = sse_event({"error": {"code": "inference_timeout"}}, "error")
    delta = sse_event({"delta": "hi"}, "delta")
    assert seen(delta, error)
    stream = delta + error
    assert all(seen(stream[:cut], stream[cut:]) for cut in range(1, len(stream)))
    assert seen(sse_event({"error": {"message": "m", "code": "worker_failed"}}), b"data: [DONE]\n\n")  # OpenAI


def test_text_that_looks_like_an_error_event_is_not_one():
    tricky = sse_event({"delta": '\nevent: error\ndata: {"error": 1}'}, "delta")  # JSON escapes the newlines
    assert not seen(tricky, sse_event({"output": "x"}, "done"))
    assert not seen(sse_event({"choices": [{"delta": {"content": "error"}}]}), b"data: [DONE]\n\n")


class Upstream:
    status = 200

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks
        self.closed = False

    async def _gen(self):
        for chunk in self._chunks:
            yield chunk

    def chunks(self):
        return self._gen()

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(("last", "succeeded"), [(sse_event({"output": "x"}, "done"), True),
                                                 (sse_event({"error": {"code": "inference_timeout"}}, "error"), False)])
def test_the_lease_is_released_as_a_success_only_when_the_stream_did_not_end_in_error(last, succeeded):
    released: list[bool] = []
    observed: list[float] = []

    async def passthrough(awaitable):
        return await awaitable

    worker = SimpleNamespace(unless_lost=passthrough)
    lease = SimpleNamespace(worker=worker, endpoint="/predict_image",
                            release=lambda succeeded: released.append(succeeded) or 0.5)
    state = SimpleNamespace(retry_after=SimpleNamespace(observe=lambda endpoint, seconds: observed.append(seconds)))
    upstream = Upstream([sse_event({"delta": "a"}, "delta"), last])

    async def drain() -> list[bytes]:
        return [chunk async for chunk in _relay(state, lease, upstream, lambda error: b"")]

    assert asyncio.run(drain()) == upstream._chunks  # relayed unchanged either way
    assert released == [succeeded] and observed == ([0.5] if succeeded else []) and upstream.closed
