"""Queue mode end to end: a real router accepts jobs, real workers pull them, on SQLite and on Redis."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from fastvlm_engine.auth import hash_key
from fastvlm_engine.client import Client, JobFailed
from tests.helpers.procs import http, start_router, wait_until, wait_workers_ready
from tests.helpers.redis_server import start_redis

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "fvk_jobs_key_a_1234567890", "fvk_jobs_key_b_1234567890"
SLOW = "slow_steps=10"  # model steps 10 ms slower: jobs last long enough to be seen queued and running


def post(router, body, path="/predict_image", headers=None):
    return http("POST", router.base_url + path, body, headers=headers)


def job(router, job_id, wait=0.0, headers=None):
    return http("GET", router.base_url + f"/job/{job_id}" + (f"?wait={wait}" if wait else ""), headers=headers,
                timeout=wait + 30)


def finish(router, job_id, headers=None, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, doc = job(router, job_id, wait=10, headers=headers)
        assert status == 200, doc
        if doc["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return doc
    raise AssertionError(f"job {job_id} did not finish within {timeout}s")


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def queue_router(request, tmp_path_factory, tiny_model_dir, media_root, redis_server):
    tmp = tmp_path_factory.mktemp(f"queue-{request.param}")
    settings = dict(mode="queue", max_workers=1, queue_max_jobs=500, job_lease_s=3, fault_injection=SLOW)
    if request.param == "redis":
        settings["queue_url"] = redis_server.url
        settings["queue_key_prefix"] = f"jobs-http-{os.getpid()}:"
    proc = start_router(tmp, tiny_model_dir, media_roots=media_root, **settings)
    try:
        wait_workers_ready(proc, 1)
        proc.extra["backend"] = request.param
        yield proc
    finally:
        proc.stop()


def test_a_job_is_accepted_at_once_and_its_result_is_the_sync_answer(queue_router):
    status, headers, accepted = post(queue_router, {"image_path": "coffee.jpg", "max_new_tokens": 6})
    assert status == 202, accepted
    job_id = accepted["job_id"]
    assert accepted["status"] == "queued" and accepted["status_url"] == f"/job/{job_id}"
    assert {k.lower(): v for k, v in headers.items()}["location"] == f"/job/{job_id}"
    assert len(job_id) >= 22  # >= 128 random bits, url-safe
    done = finish(queue_router, job_id)
    assert done["status"] == "succeeded" and done["attempts"] == 1 and done["error"] is None
    assert done["endpoint"] == "/predict_image" and done["started_at"] >= done["created_at"]
    result = done["result"]
    assert set(result) == {"output", "prompt", "model", "image", "finish_reason", "usage", "batch_size", "timing"}
    assert result["image"] == {"width": 600, "height": 400} and result["usage"]["completion_tokens"] <= 6
    with Client(queue_router.base_url) as client:  # the same request answered by the engine, via the client
        again = client.submit_image(image_path="coffee.jpg", max_new_tokens=6).wait(120)
    assert again["output"] == result["output"] and again["usage"] == result["usage"]


def test_the_result_is_spliced_in_byte_for_byte(queue_router):
    accepted = post(queue_router, {"image_path": "rocket.jpg", "max_new_tokens": 4})[2]
    finish(queue_router, accepted["job_id"])
    import urllib.request

    with urllib.request.urlopen(queue_router.base_url + f"/job/{accepted['job_id']}", timeout=30) as response:
        raw = response.read()
    result = json.loads(raw)["result"]
    # The worker's own serialisation (JSONResponse of the response model) appears unchanged in the document.
    from fastapi.responses import JSONResponse

    assert JSONResponse(result).body in raw


def test_a_burst_far_above_capacity_all_succeed_once(queue_router):
    ids = []
    for i in range(60):
        status, _, accepted = post(queue_router, {"image_path": ("coffee.jpg", "chelsea.jpg")[i % 2],
                                                  "max_new_tokens": 4})
        assert status == 202, accepted
        ids.append(accepted["job_id"])
    assert len(set(ids)) == 60
    docs = [finish(queue_router, job_id, timeout=300) for job_id in ids]
    assert [d["status"] for d in docs] == ["succeeded"] * 60
    assert all(d["attempts"] == 1 for d in docs)


def test_idempotency_key_returns_the_same_job(queue_router):
    body = {"image_path": "coffee.jpg", "max_new_tokens": 2}
    first = post(queue_router, body, headers={"Idempotency-Key": "order-42"})[2]
    second = post(queue_router, body, headers={"Idempotency-Key": "order-42"})[2]
    other = post(queue_router, body, headers={"Idempotency-Key": "order-43"})[2]
    assert first["job_id"] == second["job_id"] != other["job_id"]


@pytest.mark.parametrize("job_id", ["x", "../../etc/passwd", "a" * 5000, "%00", "ünïcode", "job id with spaces"])
def test_garbage_ids_are_404_json(queue_router, job_id):
    import urllib.parse

    # An id with a slash never reaches the job route (the path has more segments): plain not_found.
    codes = {"job_not_found", "not_found"} if "/" in job_id else {"job_not_found"}
    for method in ("GET", "DELETE"):
        status, _, body = http(method, queue_router.base_url + "/job/" + urllib.parse.quote(job_id, safe=""))
        assert status == 404 and body["error"]["code"] in codes, (method, job_id, body)


def test_cancel_a_queued_and_a_running_job(queue_router):
    long = {"image_path": "coffee.jpg", "max_new_tokens": 400}
    ids = [post(queue_router, long)[2]["job_id"] for _ in range(3)]
    wait_until(lambda: job(queue_router, ids[0])[2]["status"] == "running", 60, "the first job to run")
    status, _, cancelled = http("DELETE", queue_router.base_url + f"/job/{ids[0]}")
    assert status == 200 and cancelled["status"] == "cancelled"
    assert finish(queue_router, ids[0])["status"] == "cancelled"
    for job_id in ids[1:]:
        http("DELETE", queue_router.base_url + f"/job/{job_id}")
        assert finish(queue_router, job_id)["status"] in ("cancelled", "succeeded")


def test_bad_requests_are_refused_at_once_in_queue_mode(queue_router):
    assert post(queue_router, {"image_path": "/etc/passwd"})[2]["error"]["code"] == "path_not_allowed"
    assert post(queue_router, {"image_path": "missing.jpg"})[2]["error"]["code"] == "media_not_found"
    assert post(queue_router, b"{oops")[0] == 400
    assert post(queue_router, {"image_path": "coffee.jpg", "max_new_tokens": 10**6})[0] == 422
    assert post(queue_router, {"prompt": "no image"})[0] == 422
    status, _, body = post(queue_router, {"image_path": "coffee.jpg"}, headers={"X-FastVLM-Tags": "gpu=big"})
    assert status == 400 and body["error"]["code"] == "invalid_tags", body  # refused, not silently ignored
    assert "queued job" in body["error"]["message"]


def test_a_video_job_reports_its_stage_and_completes(queue_router):
    accepted = post(queue_router, {"video_path": "sample.mp4"}, path="/summarize_video")[2]
    stages = set()

    def seen_stage() -> bool:
        doc = job(queue_router, accepted["job_id"])[2]
        if doc.get("progress"):
            stages.add(doc["progress"]["stage"])
        return doc["status"] == "succeeded"

    wait_until(seen_stage, 120, "the video job", interval=0.05)
    assert stages & {"analysis", "captioning", "summary", "tags"}
    assert finish(queue_router, accepted["job_id"])["result"]["scenes_detected"] == 3


def test_a_video_completes_under_sustained_image_load_in_queue_mode(queue_router):
    stop = threading.Event()

    def flood() -> None:  # sustained, bounded: each flooder keeps a few image jobs in the queue at all times
        for _ in range(200):
            if stop.is_set():
                return
            ids = [post(queue_router, {"image_path": "coffee.jpg", "max_new_tokens": 30})[2]["job_id"]
                   for _ in range(4)]
            for job_id in ids:
                finish(queue_router, job_id)

    floods = [threading.Thread(target=flood) for _ in range(3)]
    for t in floods:
        t.start()
    try:
        time.sleep(1.0)
        video = post(queue_router, {"video_path": "sample.mp4"}, path="/summarize_video")[2]
        done = finish(queue_router, video["job_id"], timeout=180)
    finally:
        stop.set()
        for t in floods:
            t.join(60)
    assert done["status"] == "succeeded"


def test_an_upload_job_keeps_its_bytes_until_a_worker_reads_them(queue_router, media_root):
    import httpx

    data = (media_root / "chelsea.jpg").read_bytes()
    response = httpx.post(queue_router.base_url + "/predict_image?max_new_tokens=3", content=data,
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert response.status_code == 202, response.text
    done = finish(queue_router, response.json()["job_id"])
    assert done["status"] == "succeeded" and done["result"]["image"] == {"width": 451, "height": 300}


def test_a_worker_killed_while_holding_jobs_loses_none(queue_router):
    ids = [post(queue_router, {"image_path": "coffee.jpg", "max_new_tokens": 200})[2]["job_id"] for _ in range(4)]
    wait_until(lambda: any(job(queue_router, i)[2]["status"] == "running" for i in ids), 60, "a job to run")
    pid = http("GET", queue_router.base_url + "/healthz")[2]["workers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    docs = [finish(queue_router, job_id, timeout=240) for job_id in ids]
    assert [d["status"] for d in docs] == ["succeeded"] * 4
    assert max(d["attempts"] for d in docs) >= 2  # a lease ran out with the worker and the job came back
    wait_workers_ready(queue_router, 1)


# --- one-off routers --------------------------------------------------------------------------

def test_prefer_respond_async_makes_a_job_in_sync_mode(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1)
    try:
        wait_workers_ready(proc, 1)
        assert post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2})[0] == 200
        status, headers, accepted = post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2},
                                         headers={"Prefer": "respond-async, wait=0"})
        assert status == 202 and {k.lower(): v for k, v in headers.items()}["preference-applied"] == "respond-async"
        assert finish(proc, accepted["job_id"])["status"] == "succeeded"
    finally:
        proc.stop()


def test_jobs_are_private_to_the_key_that_made_them_and_expire(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, mode="queue",
                        api_keys=f"{hash_key(KEY_A)},{hash_key(KEY_B)}", job_ttl_s=1)
    a, b = {"X-API-Key": KEY_A}, {"Authorization": f"Bearer {KEY_B}"}
    try:
        wait_workers_ready(proc, 1)
        accepted = post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2}, headers=a)[2]
        assert http("GET", proc.base_url + f"/job/{accepted['job_id']}")[0] == 401  # no key at all
        status, _, body = job(proc, accepted["job_id"], headers=b)
        assert (status, body["error"]["code"]) == (404, "job_not_found")  # another key: as if it did not exist
        assert http("DELETE", proc.base_url + f"/job/{accepted['job_id']}", headers=b)[0] == 404
        assert finish(proc, accepted["job_id"], headers=a)["status"] == "succeeded"
        wait_until(lambda: job(proc, accepted["job_id"], headers=a)[0] == 404, 30, "the finished job to be purged")
        assert job(proc, accepted["job_id"], headers=a)[2]["error"]["code"] == "job_not_found"
    finally:
        proc.stop()


def test_a_full_queue_answers_queue_full_with_a_retry_hint(tmp_path, tiny_model_dir, media_root):
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, mode="queue",
                        queue_max_jobs=2, engine_max_sequences=1, max_concurrent=1, fault_injection="slow_steps=50")
    try:
        wait_workers_ready(proc, 1)
        long = {"image_path": "coffee.jpg", "max_new_tokens": 400}
        answers = [post(proc, long) for _ in range(6)]
        statuses = [status for status, _, _ in answers]
        assert 503 in statuses and statuses[0] == 202
        status, headers, body = next(a for a in answers if a[0] == 503)
        assert body["error"]["code"] == "queue_full" and body["error"]["retry_after_sec"] >= 1
        assert {k.lower(): v for k, v in headers.items()}["retry-after"].isdigit()
    finally:
        proc.stop()


def test_queued_jobs_survive_a_router_restart_with_sqlite(tmp_path, tiny_model_dir, media_root):
    state = tmp_path / "state"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = start_router(tmp_path / "a", tiny_model_dir, media_roots=media_root, max_workers=1, mode="queue",
                         state_dir=state, engine_max_sequences=1, max_concurrent=1, fault_injection="slow_steps=50")
    ids: list[str] = []
    try:
        wait_workers_ready(first, 1)
        ids = [post(first, {"image_path": "coffee.jpg", "max_new_tokens": 100})[2]["job_id"] for _ in range(4)]
        first.popen.send_signal(signal.SIGKILL)  # its workers die with it; the jobs stay in the file
        first.popen.wait(30)
    finally:
        first.stop()
    second = start_router(tmp_path / "b", tiny_model_dir, media_roots=media_root, max_workers=1, mode="queue",
                          state_dir=state, job_lease_s=2)
    try:
        wait_workers_ready(second, 1)
        docs = [finish(second, job_id, timeout=240) for job_id in ids]
        assert [d["status"] for d in docs] == ["succeeded"] * 4
    finally:
        second.stop()


def test_redis_down_is_queue_unavailable_and_recovers_without_a_restart(tmp_path, tiny_model_dir, media_root):
    server = start_redis(tmp_path / "redis", password="s3cret-password")
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, max_workers=1, mode="queue",
                        queue_url=server.url)
    try:
        wait_workers_ready(proc, 1)
        before = post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2})
        assert before[0] == 202
        assert finish(proc, before[2]["job_id"])["status"] == "succeeded"
        server.stop()
        status, headers, body = post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2})
        assert (status, body["error"]["code"]) == (503, "queue_unavailable")
        assert "redis" in body["error"]["message"] and "s3cret" not in json.dumps(body)
        assert "s3cret" not in proc.log()
        server.start()  # same port, empty: the store reconnects by itself
        wait_until(lambda: post(proc, {"image_path": "coffee.jpg", "max_new_tokens": 2})[0] == 202, 30,
                   "the queue to accept jobs again")
    finally:
        proc.stop()
        server.stop()


def test_the_client_follows_jobs_and_raises_for_failed_ones(queue_router):
    with Client(queue_router.base_url) as client:
        handle = client.submit_video(video_path="sample.mp4")
        assert handle.job_id and handle.status()["status"] in ("queued", "running", "succeeded")
        assert handle.wait(180)["scenes_detected"] == 3
        broken = client.submit_image(image_path="not_an_image.jpg")
        with pytest.raises(JobFailed) as caught:
            broken.wait(120)
    assert caught.value.code == "unsupported_media" and caught.value.job["status"] == "failed"
