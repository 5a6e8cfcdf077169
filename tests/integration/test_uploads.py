"""Uploads as files: multipart, raw bodies and base64 JSON, through a real router to real workers."""

from __future__ import annotations

import base64
import json
import urllib.parse

import httpx
import psutil
import pytest

from tests.helpers.procs import http, start_router, wait_workers_ready

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    proc = start_router(tmp_path_factory.mktemp("uploads"), tiny_model_dir, media_roots=media_root,
                        max_workers=1, max_concurrent=4, max_image_bytes=4 * 1024 * 1024,
                        video_max_bytes=64 * 1024 * 1024)
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


def _by_path(router, name, **options):
    status, _, body = http("POST", router.base_url + "/predict_image", {"image_path": name, **options})
    assert status == 200, body
    return body


def test_multipart_raw_and_base64_give_the_same_answer_as_a_path(router, media_root):
    data = (media_root / "coffee.jpg").read_bytes()
    expected = _by_path(router, "coffee.jpg", prompt="What is on the table?", max_new_tokens=6)
    with httpx.Client(base_url=router.base_url, timeout=60) as client:
        multipart = client.post("/predict_image", files={"image": ("coffee.jpg", data, "image/jpeg")},
                                data={"prompt": "What is on the table?", "max_new_tokens": "6"})
        as_request_part = client.post("/predict_image", files={
            "image": ("c.jpg", data, "image/jpeg"),
            "request": (None, json.dumps({"prompt": "What is on the table?", "max_new_tokens": 6}),
                        "application/json")})
        raw = client.post("/predict_image?" + urllib.parse.urlencode({"prompt": "What is on the table?",
                                                                      "max_new_tokens": 6}),
                          content=data, headers={"Content-Type": "image/jpeg"})
        octets = client.post("/predict_image?max_new_tokens=6&prompt=What+is+on+the+table%3F", content=data,
                             headers={"Content-Type": "application/octet-stream"})
        b64 = client.post("/predict_image", json={"image_base64": base64.b64encode(data).decode(),
                                                  "prompt": "What is on the table?", "max_new_tokens": 6})
    for response in (multipart, as_request_part, raw, octets, b64):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["output"], body["image"], body["usage"]) == \
            (expected["output"], expected["image"], expected["usage"])


def test_a_video_uploads_as_a_file(router, media_root):
    data = (media_root / "sample.mp4").read_bytes()
    with httpx.Client(base_url=router.base_url, timeout=120) as client:
        multipart = client.post("/summarize_video", files={"video": ("clip.mp4", data, "video/mp4")})
        raw = client.post("/summarize_video", content=data, headers={"Content-Type": "video/mp4"})
    assert multipart.status_code == raw.status_code == 200, (multipart.text, raw.text)
    assert multipart.json()["scenes"] == raw.json()["scenes"]
    assert multipart.json()["scenes_detected"] == 3


@pytest.mark.parametrize(("files", "data", "code", "status"), [
    ({"picture": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}, {}, "invalid_request", 422),    # wrong field name
    ({"request": (None, '{"prompt": "no image"}', "application/json")}, {}, "invalid_request", 422),  # no image
    ({"image": ("a.jpg", b"not an image", "image/jpeg")}, {}, "unsupported_media", 415),
    ({"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}, {"max_new_tokens": "many"}, "invalid_request", 422),
    ({"image": ("a.jpg", b"\xff\xd8\xff", "image/jpeg")}, {"surprise": "1"}, "invalid_request", 422),
])
def test_bad_multipart_requests_get_clear_errors(router, files, data, code, status):
    response = httpx.post(router.base_url + "/predict_image", files=files or None, data=data, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text


def test_a_raw_video_sent_to_the_image_endpoint_is_unsupported(router, media_root):
    response = httpx.post(router.base_url + "/predict_image", content=(media_root / "sample.mp4").read_bytes(),
                          headers={"Content-Type": "video/mp4"}, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (415, "unsupported_media")


def test_query_options_are_refused_for_json_bodies(router):
    response = httpx.post(router.base_url + "/predict_image?prompt=x", json={"image_path": "coffee.jpg"}, timeout=30)
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")


def test_an_upload_over_the_limit_is_refused_while_it_streams(router):
    """413 arrives as soon as the limit is passed; the rest of the body is never read."""
    too_big = 5 * 1024 * 1024  # the router was started with a 4 MiB image limit

    def body():
        yield b"\xff\xd8\xff"
        for _ in range(too_big // 65536):
            yield b"\x00" * 65536

    response = httpx.post(router.base_url + "/predict_image", content=body(), headers={"Content-Type": "image/jpeg"},
                          timeout=60)
    assert response.status_code == 413 and response.json()["error"]["code"] in ("payload_too_large",
                                                                                 "media_too_large")


def test_the_router_streams_uploads_instead_of_holding_them(router):
    """A 48 MB upload flows through the router (to the worker, which refuses it as not a video)
    without raising the router's memory by anything like its size."""
    import threading
    import time

    size = 48 * 1024 * 1024
    router_process = psutil.Process(router.pid)
    before = router_process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], router_process.memory_info().rss)
            time.sleep(0.01)

    def body():
        for _ in range(size // 65536):
            yield b"\x00" * 65536

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = httpx.post(router.base_url + "/summarize_video", content=body(),
                              headers={"Content-Type": "video/mp4"}, timeout=300)
    finally:
        done.set()
        sampler.join()
    assert response.status_code == 415 and response.headers.get("x-fastvlm-worker"), response.text
    assert peak[0] - before < 24 * 1024 * 1024, (before, peak[0])
