"""Self-healing pool (v0.2): real workers killed, frozen, hung, crash-looping and out of memory."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from fastvlm_engine.auth import hash_key
from fastvlm_engine.client import AsyncClient, Client, RetryPolicy
from tests.helpers.procs import http, pid_alive, start_router, wait_until, wait_workers_ready

pytestmark = pytest.mark.integration

FAST_HEALING = dict(heartbeat_interval_s=0.3, heartbeat_timeout_s=1.0, heartbeat_failures=3, stall_timeout_s=2.0,
                    respawn_backoff_initial_s=0.2, respawn_backoff_max_s=1.0, max_workers=2, max_concurrent=2)
ADMIN_KEY = "admin-key-for-tests"


def health(proc) -> dict:
    return http("GET", proc.base_url + "/healthz")[2]


def worker(proc, worker_id: str) -> dict:
    return next(w for w in health(proc)["workers"] if w["id"] == worker_id)


def stream(proc, n: int, tokens: int, events: list, during=None) -> list[dict]:
    """n image requests through the reference client, 4 at a time; ``during`` runs alongside."""
    async def run() -> list[dict]:
        policy = RetryPolicy(max_attempts=40, image_deadline_s=300)
        async with AsyncClient(proc.base_url, retry=policy, on_retry=events.append) as client:
            limit = asyncio.Semaphore(4)

            async def one(i: int) -> dict:
                async with limit:
                    return await client.predict_image(image_path="coffee.jpg" if i % 2 else "chelsea.jpg",
                                                      max_new_tokens=tokens)

            tasks = [asyncio.ensure_future(one(i)) for i in range(n)]
            if during is not None:
                await asyncio.to_thread(during)
            return await asyncio.gather(*tasks)

    return asyncio.run(run())


@pytest.fixture()
def router(tmp_path, tiny_model_dir, media_root, request):
    settings = {**FAST_HEALING, **getattr(request, "param", {})}
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, **settings)
    try:
        wait_workers_ready(proc, settings["max_workers"])
        yield proc
    finally:
        proc.stop()


def test_sigkill_under_load_loses_no_request_and_the_pool_heals(router):
    victim = worker(router, "w0")["pid"]

    def kill_when_busy() -> None:
        wait_until(lambda: worker(router, "w0")["in_flight"] > 0, 30, "w0 to be busy", interval=0.01)
        os.kill(victim, signal.SIGKILL)

    events: list = []
    results = stream(router, 40, 64, events, during=kill_when_busy)
    assert len(results) == 40 and all("output" in r for r in results)
    assert not pid_alive(victim)
    wait_workers_ready(router, 2)
    w0 = worker(router, "w0")
    assert w0["restarts"] == 1 and w0["pid"] != victim and w0["state"] == "ready"
    assert "exited with status -9" in w0["last_failure"]


@pytest.mark.parametrize("router", [{"fault_injection": "hang_after=2@w1:once"}], indirect=True)
def test_a_hung_inference_thread_is_detected_and_replaced(router):
    hung_pid = worker(router, "w1")["pid"]
    events: list = []
    results = stream(router, 24, 32, events)
    assert len(results) == 24 and all("output" in r for r in results)  # requests stuck on it were retried
    wait_until(lambda: worker(router, "w1")["restarts"] == 1 and worker(router, "w1")["state"] == "ready", 60,
               "w1 to be replaced", router)
    w1 = worker(router, "w1")
    assert "inference made no progress" in w1["last_failure"] and w1["pid"] != hung_pid
    assert not pid_alive(hung_pid)
    assert "FAULT INJECTION: inference thread hangs" in router.log()


def test_a_frozen_worker_misses_heartbeats_and_is_replaced(router):
    frozen = worker(router, "w1")["pid"]
    os.kill(frozen, signal.SIGSTOP)
    try:
        wait_until(lambda: worker(router, "w1")["restarts"] == 1, 30, "w1 to be replaced", router)
        assert "3 heartbeats in a row failed" in worker(router, "w1")["last_failure"]
        wait_until(lambda: not pid_alive(frozen), 15, "the frozen process to be killed")
        with Client(router.base_url) as client:  # served again (a 503 while the pool settles is retried)
            assert client.predict_image(image_path="coffee.jpg")["output"] is not None
    finally:
        if pid_alive(frozen):
            os.kill(frozen, signal.SIGKILL)
    wait_workers_ready(router, 2)


@pytest.mark.parametrize("router", [{"fault_injection": "oom_after=1@w0:once", "max_workers": 1}], indirect=True)
def test_out_of_memory_ends_the_worker_cleanly_and_it_is_replaced(router):
    before = worker(router, "w0")["pid"]
    status, _, body = http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg"})
    assert status == 502 and body["error"]["code"] == "worker_failed"  # no other worker to retry on
    assert body["error"]["retry_after_sec"] >= 1.0
    wait_until(lambda: worker(router, "w0")["restarts"] == 1 and worker(router, "w0")["state"] == "ready", 60,
               "w0 to be replaced", router)
    w0 = worker(router, "w0")
    assert w0["pid"] != before and "status 4" in w0["last_failure"]
    assert "fatal device error (OutOfMemoryError" in router.log()
    status, _, body = http("POST", router.base_url + "/predict_image", {"image_path": "coffee.jpg"})
    assert status == 200, body


@pytest.mark.parametrize("router", [{"fault_injection": "crash_after=1@w0:once", "max_workers": 1}],
                         indirect=True)
def test_a_video_on_a_dying_worker_gets_502_with_a_retry_hint(router):
    status, headers, body = http("POST", router.base_url + "/summarize_video", {"video_path": "sample.mp4"})
    assert status == 502 and body["error"]["code"] == "worker_failed"
    assert body["error"]["retry_after_sec"] >= 5.0 and headers["retry-after"].isdigit()
    wait_until(lambda: worker(router, "w0")["restarts"] == 1 and worker(router, "w0")["state"] == "ready", 60,
               "w0 to be replaced", router)
    status, _, doc = http("POST", router.base_url + "/summarize_video", {"video_path": "sample.mp4"})
    assert status == 200 and doc["scenes_detected"] == 3


def test_a_crash_looping_worker_is_quarantined_while_the_others_serve(tmp_path, tiny_model_dir, media_root):
    settings = {**FAST_HEALING, "fault_injection": "exit_at_startup@w1", "admin_keys": hash_key(ADMIN_KEY)}
    proc = start_router(tmp_path, tiny_model_dir, media_roots=media_root, **settings)
    try:
        wait_workers_ready(proc, 1)
        wait_until(lambda: worker(proc, "w1")["state"] == "quarantined", 120, "w1 to be quarantined", proc)
        w1 = worker(proc, "w1")
        assert w1["failures_in_window"] == 3 and "exited during start-up with status 1" in w1["reason"]
        assert "FAULT INJECTION: exiting at start-up" in proc.log()  # its last lines were reported
        assert proc.log().count("exited during start-up with status 1; last output") >= 3
        with Client(proc.base_url) as client:  # the healthy worker serves (a 503 while it settles is retried)
            assert client.predict_image(image_path="coffee.jpg")["output"] is not None
        assert worker(proc, "w1")["state"] == "quarantined"  # never respawned on its own

        release = proc.base_url + "/admin/workers/w1/release"
        assert http("POST", release)[2]["error"]["code"] == "unauthorized"
        assert http("POST", release, headers={"X-API-Key": "wrong"})[0] == 401
        assert http("POST", proc.base_url + "/admin/workers/w0/release",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 409
        assert http("POST", proc.base_url + "/admin/workers/w9/release",
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})[0] == 404
        status, _, answer = http("POST", release, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert status == 200 and answer["worker"]["state"] == "starting"
        assert ADMIN_KEY not in proc.log()
        # still broken: it fails again and, with one failure counted, is replaced rather than quarantined
        wait_until(lambda: worker(proc, "w1")["state"] == "restarting", 60, "w1 to fail again", proc)
    finally:
        proc.stop()
