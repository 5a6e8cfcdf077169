"""Token streaming and sampling through a real router and worker, and the client's stream API."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from fastvlm_engine.client import AsyncClient, Client, RequestRejected
from tests.helpers.procs import http, start_router, wait_workers_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    proc = start_router(tmp_path_factory.mktemp("stream"), tiny_model_dir, media_roots=media_root, max_workers=1)
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


def _events(text: str) -> list[tuple[str, str]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append((fields.get("event", ""), fields.get("data", "")))
    return events


def test_the_router_relays_server_sent_events(router):
    request = {"image_path": "coffee.jpg", "max_new_tokens": 40, "prompt": "What is on the table?"}
    plain = http("POST", router.base_url + "/predict_image", request)[2]
    with httpx.stream("POST", router.base_url + "/predict_image", json={**request, "stream": True},
                      timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fastvlm-worker"] == "w0"
        chunks = list(response.iter_text())
    events = _events("".join(chunks))
    import json

    deltas = [json.loads(data)["text"] for name, data in events if name == "delta"]
    done = [json.loads(data) for name, data in events if name == "done"]
    assert len(deltas) > 1 and len(done) == 1 and events[-1][0] == "done"
    assert "".join(deltas) == done[0]["output"] == plain["output"]  # greedy: the same text either way
    assert done[0]["usage"] == plain["usage"] and done[0]["timing"]["ttft_ms"] <= done[0]["timing"]["total_ms"]


def test_the_client_streams_sync_and_async(router):
    with Client(router.base_url) as client:
        stream = client.stream_predict_image(image_path="chelsea.jpg", max_new_tokens=30)
        deltas = list(stream)
        expected = client.predict_image(image_path="chelsea.jpg", max_new_tokens=30)["output"]
    assert "".join(deltas) == stream.text == stream.document["output"] == expected

    async def run() -> tuple[list[str], dict]:
        async with AsyncClient(router.base_url) as client:
            stream = client.stream_predict_image(image_path="chelsea.jpg", max_new_tokens=30)
            return [delta async for delta in stream], stream.document

    deltas, document = asyncio.run(run())
    assert "".join(deltas) == document["output"] == expected


def test_the_same_seed_gives_the_same_sample(router):
    request = {"image_path": "rocket.jpg", "max_new_tokens": 24, "temperature": 1.3, "top_p": 0.9, "top_k": 50}
    first = http("POST", router.base_url + "/predict_image", {**request, "seed": 7})[2]
    again = http("POST", router.base_url + "/predict_image", {**request, "seed": 7})[2]
    other = http("POST", router.base_url + "/predict_image", {**request, "seed": 8})[2]
    greedy = http("POST", router.base_url + "/predict_image", {"image_path": "rocket.jpg", "max_new_tokens": 24})[2]
    assert first["output"] == again["output"]
    assert {first["output"], other["output"], greedy["output"]} != {first["output"]}  # sampling really samples


@pytest.mark.parametrize(("option", "field"), [
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"top_k": -3}, "top_k"), ({"seed": -1}, "seed"), ({"stop": [""]}, "stop"), ({"stop": ["x"] * 9}, "stop"),
    ({"repetition_penalty": 0}, "repetition_penalty"), ({"stream": "sometimes"}, "stream"),
])
def test_invalid_sampling_values_are_422_naming_the_field(router, option, field):
    status, _, body = http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg", **option})
    assert status == 422 and body["error"]["code"] == "invalid_request"
    assert field in body["error"]["message"]


def test_a_stop_string_ends_the_answer_before_it(router):
    full = http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg", "max_new_tokens": 60})[2]
    words = full["output"].split()
    assert len(words) > 3, full["output"]
    stop = words[2]
    cut = http("POST", router.base_url + "/predict_image",
               {"image_path": "coffee.jpg", "max_new_tokens": 60, "stop": [stop]})[2]
    assert stop not in cut["output"] and full["output"].startswith(cut["output"])
    assert cut["finish_reason"] == "stop"


def test_a_request_too_long_for_one_sequence_is_refused_before_it_runs(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1,
                        engine_max_context_tokens=128, max_new_tokens_limit=4000)
    try:
        wait_workers_ready(proc, 1)
        with Client(proc.base_url) as client, pytest.raises(RequestRejected) as caught:
            client.predict_image(image_path="coffee.jpg", max_new_tokens=200)
        assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")
    finally:
        proc.stop()
