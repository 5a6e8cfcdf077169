"""A real ``fastvlm worker`` process on loopback, driven over HTTP through every path."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time

import pytest

from tests.helpers.procs import FASTVLM, http, raw_exchange, spawn, start_worker, wait_ready, wait_until, worker_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir, media_root):
    tmp = tmp_path_factory.mktemp("worker")
    proc = start_worker(tmp, tiny_model_dir, media_roots=media_root, max_batch_wait_ms=100,
                        max_new_tokens_limit=3000)
    readiness: list[int] = []

    def ready() -> bool:
        status = http("GET", proc.base_url + "/readyz", timeout=5)
        readiness.append(status[0])
        if status[0] == 503:
            assert status[2]["error"]["code"] == "not_ready"
        return status[0] == 200

    try:
        wait_until(ready, 120, "worker readiness", proc, interval=0.02)
        proc.extra["readiness"] = readiness
        yield proc
    finally:
        proc.stop()


def post(worker, body, **kw):
    return http("POST", worker.base_url + "/predict_image", body, **kw)


def test_readyz_said_503_until_the_model_was_ready(worker):
    statuses = worker.extra["readiness"]
    assert statuses[-1] == 200
    assert 503 in statuses  # the port opened before the model finished loading


def test_healthz_reports_state_model_and_device(worker):
    status, _, body = http("GET", worker.base_url + "/healthz")
    assert status == 200
    assert body["state"] == "ready" and body["model"] and body["device"] == "cpu"


def test_predict_image_by_path_and_by_base64_agree(worker, media_root):
    status, headers, by_path = post(worker, {"image_path": str(media_root / "astronaut.jpg"),
                                             "max_new_tokens": 8})
    assert status == 200, by_path
    assert set(by_path) >= {"output", "prompt", "model", "image", "timing", "usage", "finish_reason"}
    assert by_path["prompt"] == "Describe the image."
    assert by_path["image"] == {"width": 512, "height": 512}
    assert set(by_path["timing"]) == {"decode_ms", "queue_ms", "ttft_ms", "inference_ms", "total_ms"}
    assert by_path["usage"]["completion_tokens"] <= 8
    assert headers.get("x-request-id")
    data = base64.b64encode((media_root / "astronaut.jpg").read_bytes()).decode()
    status, _, by_b64 = post(worker, {"image_base64": data, "max_new_tokens": 8})
    assert status == 200 and by_b64["output"] == by_path["output"]


def test_relative_path_prompt_and_request_id(worker):
    status, headers, body = post(worker, {"image_path": "sub/rocket.png", "prompt": "What is this?",
                                          "max_new_tokens": 4}, headers={"X-Request-ID": "req-123"})
    assert status == 200 and body["prompt"] == "What is this?"
    assert headers["x-request-id"] == "req-123"


def test_worker_health_reports_the_measured_latency_of_succeeded_requests(worker):
    status, _, body = http("POST", worker.base_url + "/predict_image", {"image_path": "coffee.jpg",
                                                                        "max_new_tokens": 3})
    assert status == 200, body
    health = http("GET", worker.base_url + "/worker_health")[2]
    assert health["latency_ms"]["/predict_image"] > 0  # what a node publishes for routers
    assert "/summarize_video" not in health["latency_ms"]  # nothing measured, nothing claimed


def test_concurrent_requests_share_batches_and_match_single_results(worker, media_root):
    names = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
    singles = {n: post(worker, {"image_path": n, "max_new_tokens": 10})[2]["output"] for n in names}
    results: dict[str, dict] = {}

    def call(name: str) -> None:
        results[name] = post(worker, {"image_path": name, "max_new_tokens": 10})[2]

    threads = [threading.Thread(target=call, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {n: r["output"] for n, r in results.items()} == singles
    assert max(r["batch_size"] for r in results.values()) > 1


def test_healthz_answers_while_a_batch_runs(worker):
    """Health checks are served by the event loop while the inference thread runs model steps."""
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            post(worker, {"image_path": "coffee.jpg", "max_new_tokens": 3000}, timeout=120)

    threads = [threading.Thread(target=stream) for _ in range(3)]
    for t in threads:
        t.start()
    seen = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(b.get("active_sequences") for _, b in seen[-50:]):
            status, _, body = http("GET", worker.base_url + "/healthz", timeout=10)
            seen.append((status, body))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert all(status == 200 for status, _ in seen)
    assert any(body["active_sequences"] for _, body in seen), "never answered while sequences were running"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"image_path": "/etc/passwd"}, 403, "path_not_allowed"),
    ({"image_path": "../../../../etc/hostname"}, 403, "path_not_allowed"),
    ({"image_path": "/nonexistent/file.jpg"}, 403, "path_not_allowed"),
    ({"image_path": "missing.jpg"}, 404, "media_not_found"),
    ({"image_path": "sub"}, 404, "media_not_found"),
    ({"image_path": "not_an_image.jpg"}, 415, "unsupported_media"),
    ({"image_path": "truncated.jpg"}, 422, "invalid_image"),
    ({"image_path": "bomb.png"}, 413, "image_too_large"),
    ({"image_base64": "!!!"}, 422, "invalid_request"),
    ({"image_base64": base64.b64encode(b"plain text").decode()}, 415, "unsupported_media"),
    ({}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "image_base64": "AAAA"}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "unknown": 1}, 422, "invalid_request"),
    ({"image_path": 42}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "max_new_tokens": 0}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "max_new_tokens": 10**6}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "prompt": "<image><|im_end|>"}, 422, "invalid_request"),
    ({"image_path": "coffee.jpg", "prompt": "x" * 5000}, 422, "invalid_request"),
])
def test_error_paths(worker, body, status, code):
    got, headers, answer = post(worker, body)
    assert (got, answer["error"]["code"]) == (status, code), answer
    assert answer["error"]["message"]
    text = json.dumps(answer)
    assert "Traceback" not in text and "/tmp/" not in text and "site-packages" not in text
    assert headers["content-type"].startswith("application/json")


def test_schema_violations_name_the_field(worker):
    _, _, answer = post(worker, {"image_path": "coffee.jpg", "max_new_tokens": "many"})
    assert answer["error"]["fields"][0]["field"] == "max_new_tokens"


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), [
    ("POST", "/predict_image", b"{not json", 400, "invalid_json"),
    ("POST", "/predict_image", b"", 400, "invalid_json"),
    ("POST", "/predict_image", b"[1, 2]", 422, "invalid_request"),
    ("POST", "/predict_image", b"[" * 100_000, 400, "invalid_json"),
    ("GET", "/predict_image", None, 405, "method_not_allowed"),
    ("GET", "/no/such/route", None, 404, "not_found"),
    ("DELETE", "/healthz", None, 405, "method_not_allowed"),
])
def test_protocol_errors_are_json(worker, method, path, body, status, code):
    got, headers, answer = http(method, worker.base_url + path, body)
    assert got == status and answer["error"]["code"] == code
    assert headers["content-type"].startswith("application/json")


def test_json_is_accepted_without_content_type(worker):
    got, _, answer = http("POST", worker.base_url + "/predict_image",
                          json.dumps({"image_path": "coffee.jpg", "max_new_tokens": 2}).encode(),
                          headers={"Content-Type": "text/plain"})
    assert got == 200, answer


def test_oversized_body_is_refused_before_it_is_read(worker):
    head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999\r\n\r\n")
    status, _, body = raw_exchange(worker.base_url, head, [b'{"image_base64": "'])
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_oversized_chunked_body_is_refused_while_streaming(worker):
    head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b"A" * (1 << 20)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    status, _, body = raw_exchange(worker.base_url, head, (chunk for _ in range(40)))
    assert status == 413 and body["error"]["code"] == "payload_too_large"


def test_worker_keeps_serving_after_every_error(worker):
    status, _, body = post(worker, {"image_path": "chelsea.jpg", "max_new_tokens": 3})
    assert status == 200 and body["output"] is not None
    assert worker.popen.poll() is None


def test_sigterm_stops_the_worker_cleanly(tmp_path, tiny_model_dir):
    proc = start_worker(tmp_path, tiny_model_dir)
    try:
        wait_ready(proc)
        proc.signal(signal.SIGTERM)
        code = proc.popen.wait(30)
    finally:
        proc.stop()
    # uvicorn shuts down gracefully, then re-raises the signal so the status says why it ended
    assert code in (0, -signal.SIGTERM)
    assert "worker state stopping" in proc.log() and "Application shutdown complete" in proc.log()


def test_a_model_that_cannot_load_exits_with_a_clear_status(tmp_path):
    proc = start_worker(tmp_path, str(tmp_path / "no-such-model"))
    try:
        code = proc.popen.wait(120)
    finally:
        proc.stop()
    assert code == 3
    assert "model load failed" in proc.log()


def test_describe_cli_prints_the_same_document(tmp_path, tiny_model_dir, media_root):
    result = subprocess.run([*FASTVLM, "describe", str(media_root / "coffee.jpg"), "--max-new-tokens", "5"],
                            env=worker_env(model=tiny_model_dir), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["image"] == {"width": 600, "height": 400}
    assert document["usage"]["completion_tokens"] <= 5
    bad = subprocess.run([*FASTVLM, "describe", str(media_root / "not_an_image.jpg")],
                         env=worker_env(model=tiny_model_dir), capture_output=True, text=True, timeout=180)
    assert bad.returncode == 1 and json.loads(bad.stdout)["error"]["code"] == "unsupported_media"


def test_invalid_configuration_stops_the_worker_with_the_setting_named(tmp_path, tiny_model_dir):
    proc = spawn([*FASTVLM, "worker", "--port", "0"], worker_env(model=tiny_model_dir, max_queue_size="lots"),
                 tmp_path / "bad-config.log")
    try:
        assert proc.popen.wait(60) == 2
    finally:
        proc.stop()
    assert "FASTVLM_MAX_QUEUE_SIZE" in proc.log()


def test_a_chat_about_a_video_holds_a_video_slot_while_it_runs(worker):
    """The router admits a chat with a video as a video; the worker must count it so too."""
    boundary = "chat-boundary-7f3a"
    chat = {"messages": [{"role": "user", "content": [{"type": "video", "path": "sample.mp4"},
                                                      {"type": "text", "text": "What happens?"}]}],
            "max_new_tokens": 8}
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"request\"\r\n"
            f"Content-Type: application/json\r\n\r\n{json.dumps(chat)}\r\n--{boundary}--\r\n").encode()
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            health = http("GET", worker.base_url + "/worker_health", timeout=5)[2]
            seen.append((health["in_flight"], health["video_in_flight"]))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        status, _, answer = http("POST", worker.base_url + "/v1/chat/completions", body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
    finally:
        done.set()
        watcher.join(10)
    assert status == 200, answer
    assert (1, 1) in seen, seen  # one request, held as a video
    assert all(videos <= held for held, videos in seen)
    health = http("GET", worker.base_url + "/worker_health", timeout=5)[2]
    assert (health["in_flight"], health["video_in_flight"]) == (0, 0)
