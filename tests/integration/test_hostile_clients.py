"""What a hostile or careless client found, each reproduced against a real router and worker."""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from tests.helpers.procs import http, start_router, wait_until, wait_workers_ready
from tests.helpers.sockets import closed_by_server, open_sockets, read_response, request_bytes

pytestmark = pytest.mark.integration

SLOW = dict(request_body_idle_s=1.0, request_body_min_rate_kib_s=1, http_header_timeout_s=1.5)


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    # One sequence at a time in the engine, so a second request waits in the worker's queue.
    proc = start_router(tmp_path_factory.mktemp("hostile"), tiny_model_dir, media_roots=media_root, max_workers=1,
                        max_concurrent=2, engine_max_sequences=1, max_new_tokens_limit=3000,
                        admission_queue_wait_ms=0, fault_injection="slow_steps=20", **SLOW)
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


def _health(router) -> dict:
    return http("GET", router.base_url + "/healthz", timeout=10)[2]


def _requests_total(router, code: str) -> float:
    text = http("GET", router.base_url + "/metrics")[2]
    pattern = rf'^fastvlm_requests_total\{{code="{code}",endpoint="/predict_image"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def test_slow_uploads_hold_no_slot_and_are_cut_off_with_408(router):
    head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{\"image_path\":")
    with open_sockets(router.base_url, 4) as stalled:
        for sock in stalled:
            sock.sendall(head)  # headers and a first chunk, then nothing: every slot would be held
        time.sleep(0.3)
        status, _, body = http("POST", router.base_url + "/predict_image",
                               {"image_path": "coffee.jpg", "max_new_tokens": 2})
        assert status == 200, body  # the two slots were free for a complete request
        answers = [read_response(sock, timeout=30) for sock in stalled]
    assert [(s, b["error"]["code"]) for s, _, b in answers] == [(408, "request_timeout")] * 4
    assert all(h.get("connection") == "close" for _, h, _ in answers)


def test_idle_and_half_sent_connections_are_closed(router):
    with open_sockets(router.base_url, 60) as idle, open_sockets(router.base_url, 60) as half:
        for sock in half:
            sock.sendall(b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-")
        wait_until(lambda: all(closed_by_server(s) for s in idle), 30, "idle connections to be closed")
        answers = [read_response(sock, timeout=30) for sock in half]
    assert {(s, b["error"]["code"]) for s, _, b in answers} == {(408, "request_timeout")}
    assert http("GET", router.base_url + "/readyz")[0] == 200


@pytest.mark.parametrize("raw", [b'{"image_path": "coffee.jpg", "prompt": "\\ud800"}',
                                 b'{"image_path": "\\udfff.jpg"}'])
def test_a_lone_surrogate_is_a_422_not_a_500(router, raw):
    status, _, body = http("POST", router.base_url + "/predict_image", raw)
    assert (status, body["error"]["code"]) == (422, "invalid_request")
    assert "surrogate" in body["error"]["message"]


@pytest.mark.parametrize("length", [b"abc", b"1e3", b"-5"])
def test_a_content_length_that_is_not_a_number_is_a_json_400(router, length):
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n{}")
        status, _, body = read_response(sock)
    assert status == 400 and body["error"]["code"] == "http_error"


def test_no_redirect_to_a_host_the_client_chose(router):
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(request_bytes("POST", "/predict_image/", b"{}", {"Host": "evil.example"}))
        status, headers, body = read_response(sock)
    assert status == 404 and "location" not in headers and body["error"]["code"] == "not_found"


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_load_balancers_may_probe_with_head(router, path):
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        sock.settimeout(10)
        head = sock.recv(65536).decode("latin-1")
    assert head.startswith("HTTP/1.1 200"), head


def test_an_upload_cut_off_by_its_client_is_counted_as_client_closed_not_as_a_500(router):
    before = _requests_total(router, "client_closed")
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                     b"Content-Length: 1000000\r\n\r\n" + b"\xff\xd8\xff" + b"x" * 5000)
        time.sleep(0.2)
    wait_until(lambda: _requests_total(router, "client_closed") > before, 10, "client_closed to be counted")
    assert _requests_total(router, "http_500") == 0 and _requests_total(router, "internal_error") == 0
    assert '"level": "ERROR"' not in router.log()


def _engine(router, outcome: str) -> float:
    """Requests the worker's engine finished with ``outcome``, scraped live through the router."""
    text = http("GET", router.base_url + "/metrics")[2]
    match = re.search(rf'^fastvlm_engine_requests_total\{{outcome="{outcome}",worker="w0"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def one_lane_router(tmp_path_factory, tiny_model_dir, media_root):
    """One worker whose engine runs one sequence at a time (so it has one slot), each model step
    slowed to 20 ms, behind a router whose admission queue lets a request wait up to 60 s."""
    proc = start_router(tmp_path_factory.mktemp("one-lane"), tiny_model_dir, media_roots=media_root, max_workers=1,
                        engine_max_sequences=1, fault_injection="slow_steps=20", admission_queue_wait_ms=60000,
                        admission_queue_size=4)
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


def test_a_queued_image_whose_client_left_never_runs(one_lane_router):
    """With the one slot busy on a long generation, a second request waits in the router's
    admission queue; when its client disconnects it must leave the queue, not run for nobody."""
    router = one_lane_router
    completed, cancelled = _engine(router, "completed"), _engine(router, "cancelled")

    def waiting() -> int:
        return http("GET", router.base_url + "/healthz")[2]["admission_queue"]["image"]

    long_call = threading.Thread(target=http, args=("POST", router.base_url + "/predict_image",
                                                    {"image_path": "coffee.jpg", "max_new_tokens": 400}),
                                 kwargs={"timeout": 300})
    long_call.start()
    try:
        wait_until(lambda: http("GET", router.base_url + "/healthz")[2]["workers"][0]["in_flight"] == 1, 30,
                   "the long request to run")
        with open_sockets(router.base_url, 1) as (sock,):
            sock.sendall(request_bytes("POST", "/predict_image",
                                       json.dumps({"image_path": "chelsea.jpg", "max_new_tokens": 400}).encode(),
                                       {"Content-Type": "application/json"}))
            wait_until(lambda: waiting() == 1, 30, "the second to wait in the admission queue")
        wait_until(lambda: waiting() == 0, 30, "the abandoned request to leave the queue")
    finally:
        long_call.join(300)
    status, _, body = http("POST", router.base_url + "/predict_image", {"image_path": "rocket.jpg",
                                                                        "max_new_tokens": 2})
    assert status == 200, body
    assert _engine(router, "completed") - completed == 2  # the long one and the last one
    assert _engine(router, "cancelled") - cancelled == 0  # the abandoned one never reached the worker


def test_a_stream_whose_client_leaves_frees_its_sequence_in_the_worker(router):
    """Streaming through the router: the client reads the first tokens, then goes away. The
    router closes its worker connection and the engine drops the running sequence."""
    cancelled = _engine(router, "cancelled")
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(request_bytes("POST", "/predict_image",
                                   json.dumps({"image_path": "coffee.jpg", "max_new_tokens": 400,
                                               "stream": True}).encode(), {"Content-Type": "application/json"}))
        sock.settimeout(30)
        received = b""
        while b"event: delta" not in received:
            received += sock.recv(65536)
        assert b"text/event-stream" in received
    wait_until(lambda: _engine(router, "cancelled") > cancelled, 30, "the worker to cancel the stream")
    wait_until(lambda: _health(router)["workers"][0]["in_flight"] == 0, 30, "the router to free the slot")


def test_an_abandoned_video_stops_in_the_worker(router, long_clip):
    with open_sockets(router.base_url, 1) as (sock,):
        sock.sendall(request_bytes("POST", "/summarize_video",
                                   json.dumps({"video_path": long_clip.path.name}).encode(),
                                   {"Content-Type": "application/json"}))
        wait_until(lambda: _health(router)["workers"][0]["worker_in_flight"] == 1, 30, "the video to start")
    wait_until(lambda: "video analysis stopped" in router.log(), 30, "the worker to stop the abandoned video")
    wait_until(lambda: _health(router)["workers"][0]["worker_in_flight"] == 0, 30, "the worker to let it go")


def test_one_client_with_fresh_request_ids_cannot_inflate_everyone_s_retry_hint(tmp_path, tiny_model_dir,
                                                                              media_root, long_clip):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, max_concurrent=1,
                        admission_queue_wait_ms=0)
    holder = None
    try:
        wait_workers_ready(proc, 1)
        holder = threading.Thread(target=http, args=("POST", proc.base_url + "/summarize_video",
                                                     {"video_path": long_clip.path.name}), kwargs={"timeout": 300})
        holder.start()
        wait_until(lambda: http("GET", proc.base_url + "/healthz")[2]["workers"][0]["in_flight"] == 1, 30,
                   "the only slot to be taken")

        def hint(endpoint: str, body: dict, request_id: str) -> float:
            status, _, answer = http("POST", proc.base_url + endpoint, body, headers={"X-Request-ID": request_id})
            assert status == 503, answer
            return answer["error"]["retry_after_sec"]

        for endpoint, body in (("/predict_image", {"image_path": "coffee.jpg"}),
                               ("/summarize_video", {"video_path": "sample.mp4"})):
            first = hint(endpoint, body, "honest-0")
            for i in range(300):
                hint(endpoint, body, f"fresh-{i}")
            assert hint(endpoint, body, "honest-1") == first, endpoint
    finally:
        proc.stop()
        if holder is not None:
            holder.join(60)


def test_the_ip_allowlist_cannot_be_bypassed_with_x_forwarded_for(tmp_path, tiny_model_dir):
    proc = start_router(tmp_path, tiny_model_dir, max_workers=1, ip_allowlist="10.0.0.0/8")
    try:
        wait_workers_ready(proc, 1)
        for forwarded in ("10.1.2.3", "1.1.1.1, 10.1.2.3", "::ffff:10.1.2.3"):
            for method, path in (("POST", "/predict_image"), ("GET", "/metrics"), ("GET", "/docs")):
                status, _, body = http(method, proc.base_url + path, {} if method == "POST" else None,
                                       headers={"X-Forwarded-For": forwarded})
                assert (status, body["error"]["code"]) == (403, "forbidden_ip"), (forwarded, path)
    finally:
        proc.stop()


def test_shutdown_drains_with_json_answers_and_no_refused_connections(tmp_path, tiny_model_dir, media_root):
    # The first request's inference never ends (a hung inference thread): it outlives any grace period.
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, shutdown_grace_s=3,
                        fault_injection="hang_after=1", stall_timeout_s=600)
    results: dict[str, tuple] = {}
    try:
        wait_workers_ready(proc, 1)
        with open_sockets(proc.base_url, 1, timeout=30) as (keep_alive,):
            keep_alive.sendall(request_bytes("GET", "/healthz"))
            assert read_response(keep_alive)[0] == 200  # an idle keep-alive connection from before the drain
            long_call = threading.Thread(target=lambda: results.setdefault("long", http(
                "POST", proc.base_url + "/predict_image", {"image_path": "coffee.jpg"}, timeout=120)))
            long_call.start()
            wait_until(lambda: http("GET", proc.base_url + "/healthz")[2]["workers"][0]["in_flight"] == 1, 30,
                       "the long request to start")
            proc.popen.send_signal(signal.SIGTERM)
            wait_until(lambda: http("GET", proc.base_url + "/readyz")[0] == 503, 10, "readiness to go 503")
            status, headers, body = http("GET", proc.base_url + "/readyz")
            assert body["error"]["code"] == "shutting_down"
            status, headers, body = http("POST", proc.base_url + "/predict_image", {"image_path": "coffee.jpg"})
            retry_after = {k.lower(): v for k, v in headers.items()}.get("retry-after", "")
            assert (status, body["error"]["code"]) == (503, "shutting_down") and retry_after.isdigit()
            keep_alive.sendall(request_bytes("POST", "/predict_image", b'{"image_path": "coffee.jpg"}',
                                             {"Content-Type": "application/json"}))
            status, headers, body = read_response(keep_alive)
            assert (status, body["error"]["code"]) == (503, "shutting_down")
            assert headers.get("connection") == "close"
            long_call.join(60)
        status, _, body = results["long"]
        assert status == 503 and isinstance(body, dict) and body["error"]["code"] == "shutting_down"
        assert proc.popen.wait(60) == 0
    finally:
        proc.stop()


def test_a_worker_that_prints_a_huge_line_keeps_serving(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1,
                        fault_injection="long_log_line")
    try:
        wait_workers_ready(proc, 1)
        status, _, body = http("POST", proc.base_url + "/predict_image", {"image_path": "coffee.jpg",
                                                                          "max_new_tokens": 2})
        assert status == 200, body
        assert "more bytes cut" in proc.log()
    finally:
        proc.stop()
