"""``fastvlm serve``: a real router spawning real workers, over loopback HTTP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers.procs import (
    http,
    pid_alive,
    raw_exchange,
    start_router,
    wait_until,
    wait_workers_ready,
    worker_pids,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    # No admission queue here: these tests are about shedding the moment every slot is taken. Model
    # steps are 10 ms slower, so that requests last long enough to hold slots and to be measured.
    proc = start_router(tmp_path_factory.mktemp("router"), tiny_model_dir, media_roots=media_root,
                        max_workers=2, max_concurrent=2, max_new_tokens_limit=3000, admission_queue_wait_ms=0,
                        fault_injection="slow_steps=10")
    try:
        proc.extra["health"] = wait_workers_ready(proc, 2)
        yield proc
    finally:
        proc.stop()


def post(router, body, path="/predict_image", **kw):
    return http("POST", router.base_url + path, body, **kw)


def test_healthz_lists_every_worker(router):
    status, _, health = http("GET", router.base_url + "/healthz")
    assert status == 200 and health["status"] == "ok" and health["gpus"] == []
    assert len(health["workers"]) == 2
    for worker in health["workers"]:
        assert {"id", "state", "device", "in_flight", "max_concurrent", "pid"} <= set(worker)
        assert worker["state"] == "ready" and worker["device"] == "cpu" and worker["max_concurrent"] == 2
    assert http("GET", router.base_url + "/readyz")[0] == 200


def test_router_process_never_loads_torch(router):
    with open(f"/proc/{router.pid}/maps") as maps:
        assert "libtorch" not in maps.read()
    probe = subprocess.run([sys.executable, "-c", "import sys, fastvlm_engine.cli, fastvlm_engine.router.server, "
                            "fastvlm_engine.client; print('torch' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


def test_proxies_predict_image_and_keeps_the_request_id(router):
    status, headers, body = post(router, {"image_path": "astronaut.jpg", "max_new_tokens": 5},
                                 headers={"X-Request-ID": "trace-me-1"})
    assert status == 200, body
    assert body["image"] == {"width": 512, "height": 512}
    assert headers["x-request-id"] == "trace-me-1"
    assert headers["x-fastvlm-worker"] in {"w0", "w1"}
    # Hop-by-hop headers of the router → worker connection are not passed on to the client.
    assert {k.lower() for k in headers}.isdisjoint({"keep-alive", "transfer-encoding", "upgrade", "trailer",
                                                    "proxy-authenticate", "te"})
    assert int(headers["content-length"]) > 0


@pytest.mark.parametrize(("raw", "status", "code"), [
    (b"{oops", 400, "invalid_json"),
    (b"", 400, "invalid_json"),
    (b'{"prompt": "hi"}', 422, "invalid_request"),
    (b'{"image_path": "a.jpg", "extra": true}', 422, "invalid_request"),
    (b'"just a string"', 422, "invalid_request"),
])
def test_router_rejects_bad_input_itself(router, raw, status, code):
    got, headers, body = post(router, raw)
    assert (got, body["error"]["code"]) == (status, code)
    assert "x-fastvlm-worker" not in headers  # no worker was bothered


def test_worker_errors_pass_through_unchanged(router):
    status, _, body = post(router, {"image_path": "/etc/passwd"})
    assert status == 403 and body["error"]["code"] == "path_not_allowed"
    status, _, body = post(router, {"image_path": "not_an_image.jpg"})
    assert status == 415 and body["error"]["code"] == "unsupported_media"


@pytest.mark.parametrize(("method", "path", "status", "code"), [
    ("GET", "/predict_image", 405, "method_not_allowed"),
    ("GET", "/nope", 404, "not_found"),
    ("POST", "/healthz", 405, "method_not_allowed"),
])
def test_protocol_errors(router, method, path, status, code):
    got, _, body = http(method, router.base_url + path, b"{}" if method == "POST" else None)
    assert (got, body["error"]["code"]) == (status, code)


def _saturate(router, n: int, tokens: int = 3000) -> list[tuple[int, dict, dict]]:
    results: list[tuple[int, dict, dict]] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        result = post(router, {"image_path": "coffee.jpg", "max_new_tokens": tokens}, timeout=180)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


def test_sheds_load_with_an_adaptive_retry_after(router):
    results = _saturate(router, 16)
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 4 and statuses.count(503) >= 1
    for status, headers, body in results:
        if status != 503:
            continue
        error = body["error"]
        assert error["code"] == "workers_busy" and error["message"]
        assert 1.0 <= error["retry_after_sec"] <= 30.0
        assert headers["retry-after"].isdigit()
        assert int(headers["retry-after"]) == math.ceil(error["retry_after_sec"])


def _hold_all_slots(router, stop: threading.Event) -> list[threading.Thread]:
    def hold() -> None:
        while not stop.is_set():
            post(router, {"image_path": "coffee.jpg", "max_new_tokens": 3000}, timeout=180)

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: sum(w["in_flight"] for w in http("GET", router.base_url + "/healthz")[2]["workers"]) == 4,
               30, "all four slots to be taken", interval=0.01)
    return threads


def test_admission_happens_before_the_body_is_read(router):
    """When every slot is taken, a request declaring a 20 MB body is answered without sending it."""
    stop = threading.Event()
    threads = _hold_all_slots(router, stop)
    try:
        head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 20000000\r\n\r\n")
        for _ in range(20):
            try:
                status, headers, body = raw_exchange(router.base_url, head, timeout=3)
            except TimeoutError:  # a slot freed up between hold requests: it waits for our body
                continue
            if status == 503:
                break
        assert status == 503 and body["error"]["code"] == "workers_busy"
        assert headers["retry-after"].isdigit()
    finally:
        stop.set()
        for t in threads:
            t.join(180)


@pytest.mark.parametrize("attempt", ["abc", "-5", "99999999999999999999", "1e400", "", "3.5", "\u00e9"])
def test_any_retry_attempt_header_is_harmless(router, attempt):
    stop = threading.Event()
    threads = _hold_all_slots(router, stop)
    try:
        codes = []
        for _ in range(10):
            status, headers, body = post(router, {"image_path": "coffee.jpg"},
                                         headers={"X-Retry-Attempt": attempt.encode("utf-8").decode("latin-1")})
            codes.append(status)
            if status == 503:
                assert body["error"]["code"] == "workers_busy" and headers["retry-after"].isdigit()
                break
        assert codes[-1] == 503, codes  # the header was really read, on the shedding path
        assert 500 not in codes
    finally:
        stop.set()
        for t in threads:
            t.join(180)


def test_retry_attempt_raises_the_hint(router):
    stop = threading.Event()
    threads = _hold_all_slots(router, stop)
    try:
        hints = {}
        for attempt in ("0", "6"):
            for _ in range(10):
                status, _, body = post(router, {"image_path": "coffee.jpg"}, headers={"X-Retry-Attempt": attempt})
                if status == 503:
                    hints[attempt] = body["error"]["retry_after_sec"]
                    break
        assert hints["6"] > hints["0"]
    finally:
        stop.set()
        for t in threads:
            t.join(180)


def test_simulated_gpus_place_workers_by_memory(tmp_path, tiny_model_dir):
    """SIMULATION: 16 GiB + 8 GiB GPUs, 6 GiB per worker, 2 GiB reserve → 2 workers + 1 worker."""
    proc = start_router(tmp_path, tiny_model_dir, simulate_gpus="16GiB,8GiB", simulate_gpu_worker_mib=6144,
                        gpu_memory_reserve_mib=2048, max_workers_per_gpu=4)
    try:
        health = wait_workers_ready(proc, 3)
        time.sleep(1.0)  # a fourth worker would have been spawned by now if placement allowed it
        status, _, health = http("GET", proc.base_url + "/healthz")
        devices = sorted(w["device"] for w in health["workers"])
        assert devices == ["sim-gpu:0", "sim-gpu:0", "sim-gpu:1"]
        assert all(g["simulated"] for g in health["gpus"]) and len(health["gpus"]) == 2
        used = {g["index"]: g["memory_used_bytes"] for g in health["gpus"]}
        assert used == {0: 2 * 6144 << 20, 1: 6144 << 20}
        assert "SIMULATED GPU inventory" in proc.log()
    finally:
        proc.stop()


def test_sigterm_drains_in_flight_requests_then_stops_every_worker(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, max_new_tokens_limit=3000)
    try:
        pids = worker_pids(wait_workers_ready(proc, 1))
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 3000}, timeout=120)[0])) for _ in range(2)]
        for t in threads:
            t.start()
        wait_until(lambda: http("GET", proc.base_url + "/healthz")[2]["workers"][0]["in_flight"] == 2, 30,
                   "two requests in flight", interval=0.01)
        proc.popen.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
        code = proc.popen.wait(60)
        assert results == [200, 200]  # in-flight requests finished
        assert code in (0, -signal.SIGTERM)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "workers to exit")
        assert "admission stopped" in proc.log()
    finally:
        proc.stop()


def test_workers_die_with_a_sigkilled_router(tmp_path, tiny_model_dir):
    proc = start_router(tmp_path, tiny_model_dir, max_workers=2)
    try:
        pids = worker_pids(wait_workers_ready(proc, 2))
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(10)
        wait_until(lambda: not any(pid_alive(p) for p in pids), 15, "orphaned workers to die")
    finally:
        proc.stop()
        for pid in locals().get("pids", []):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_openapi_documents_the_bodies(router):
    status, _, spec = http("GET", router.base_url + "/openapi.json")
    assert status == 200
    body = spec["paths"]["/predict_image"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "image_path" in json.dumps(body)


# --- through the reference client -------------------------------------------------------------

def _burst(base_url: str, n: int, tokens: int, events: list) -> list[dict]:
    import asyncio

    from fastvlm_engine.client import AsyncClient, RetryPolicy

    async def run() -> list[dict]:
        policy = RetryPolicy(max_attempts=40, image_deadline_s=300)
        async with AsyncClient(base_url, retry=policy, on_retry=events.append) as client:
            names = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg", "rocket.jpg"]
            return await asyncio.gather(*(client.predict_image(image_path=names[i % 4], max_new_tokens=tokens)
                                          for i in range(n)))

    return asyncio.run(run())


def test_parallel_image_stress_every_request_completes_through_the_client(router):
    events: list = []
    results = _burst(router.base_url, 48, 48, events)
    assert len(results) == 48 and all("output" in r for r in results)
    reasons = {e.reason for e in events}
    assert "workers_busy" in reasons  # load was really shed (48 clients, 4 slots)
    assert reasons <= {"workers_busy"}, reasons  # and no other 5xx or connection error happened
    assert all(e.delay_s >= e.retry_after_sec for e in events)  # never earlier than the server asked
    assert all(e.retry_after_sec >= 1.0 for e in events)


def test_retry_drain_down_a_burst_well_over_capacity(router):
    events: list = []
    results = _burst(router.base_url, 40, 16, events)
    assert len(results) == 40 and all(r["usage"]["completion_tokens"] <= 16 for r in results)
    assert max(e.attempt for e in events) >= 1
    health = http("GET", router.base_url + "/healthz")[2]
    assert [w["in_flight"] for w in health["workers"]] == [0, 0]
    assert all(w["state"] == "ready" for w in health["workers"])


def test_client_cli_against_the_router(router, media_root):
    from tests.helpers.procs import FASTVLM, worker_env

    done = subprocess.run([*FASTVLM, "client", "--url", router.base_url, "image", "chelsea.jpg"],
                          capture_output=True, text=True, timeout=120, env=worker_env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["image"] == {"width": 451, "height": 300}
    failed = subprocess.run([*FASTVLM, "client", "--url", router.base_url, "image", "/etc/passwd"],
                            capture_output=True, text=True, timeout=120, env=worker_env())
    assert failed.returncode == 1 and json.loads(failed.stdout)["error"]["code"] == "path_not_allowed"
    local = subprocess.run([*FASTVLM, "client", "--url", router.base_url, "image", "--base64",
                            str(media_root / "rocket.jpg")], capture_output=True, text=True, timeout=120,
                           env=worker_env())
    assert local.returncode == 0, local.stdout + local.stderr


def test_videos_are_forwarded(router):
    status, headers, doc = post(router, {"video_path": "sample.mp4"}, path="/summarize_video")
    assert status == 200, doc
    assert doc["scenes_detected"] == 3 and doc["video"]["width"] == 360
    assert headers["x-fastvlm-worker"] in {"w0", "w1"}


def test_images_are_not_starved_by_videos(router, long_clip):
    """Each worker lets videos hold at most one of its two slots; the other stays for images."""
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        post(router, {"video_path": long_clip.path.name}, path="/summarize_video", timeout=300)[0]))
        for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: [w["video_in_flight"] for w in http("GET", router.base_url + "/healthz")[2]["workers"]]
                   == [1, 1], 30, "both workers to hold a video", interval=0.005)
        third_video = post(router, {"video_path": long_clip.path.name}, path="/summarize_video")
        image = post(router, {"image_path": "coffee.jpg", "max_new_tokens": 4})
    finally:
        for t in threads:
            t.join(300)
    assert third_video[0] == 503 and third_video[2]["error"]["code"] == "workers_busy"
    assert 5.0 <= third_video[2]["error"]["retry_after_sec"] <= 300.0  # the video bounds apply
    assert image[0] == 200
    assert results == [200, 200]


def test_workers_refuse_anyone_but_the_router(router):
    """Each spawned worker checks a per-process token only its router knows."""
    worker = http("GET", router.base_url + "/healthz")[2]["workers"][0]
    base = f"http://127.0.0.1:{worker['port']}"
    for method, path, body in (("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/worker_health", None),
                               ("POST", "/predict_image", {"image_path": "coffee.jpg"})):
        status, _, answer = http(method, base + path, body)
        assert (status, answer["error"]["code"]) == (401, "unauthorized"), path
    assert post(router, {"image_path": "coffee.jpg", "max_new_tokens": 2})[0] == 200  # the router still gets in
