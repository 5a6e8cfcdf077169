"""Shedding on a real router: cheap (no body read, no per-request log line) but after the access checks.

The router's workers exit at start-up (``exit_at_startup``), so no slot is ever free and every
synchronous media request is shed, which is exactly the path under test.
"""

from __future__ import annotations

import json
import time
from http.client import HTTPConnection

import pytest

from fastvlm_engine.auth import hash_key
from tests.helpers.procs import http, raw_exchange, start_router, wait_until

pytestmark = pytest.mark.integration

KEY = "fvk_shedding_key_1234567890"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"image_path": "coffee.jpg", "max_new_tokens": 3}


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    tmp = tmp_path_factory.mktemp("shedding")
    proc = start_router(tmp, tiny_model_dir, media_roots=media_root, max_workers=1, api_keys=hash_key(KEY),
                        fault_injection="exit_at_startup", log_format="json", log_level="INFO")
    try:
        wait_until(lambda: http("GET", proc.base_url + "/healthz", timeout=5)[0] == 200, 60, "the router", proc)
        yield proc
    finally:
        proc.stop()


def busy_rejections(router) -> float:
    _, _, text = http("GET", router.base_url + "/metrics", headers=AUTH)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith('fastvlm_busy_rejections_total{endpoint="/predict_image"}'))


def test_the_access_checks_come_before_shedding(router):
    assert http("POST", router.base_url + "/predict_image", BODY)[0] == 401
    assert http("POST", router.base_url + "/predict_image", BODY, headers={"Authorization": "Bearer nope"})[0] == 401
    status, headers, body = http("POST", router.base_url + "/predict_image", BODY,
                                 headers={**AUTH, "X-Request-ID": "shed-check-1"})
    assert status == 503 and body["error"]["code"] == "no_ready_workers"
    assert headers["retry-after"].isdigit() and body["error"]["retry_after_sec"] > 0
    assert headers["x-request-id"] == "shed-check-1" == body["error"]["request_id"]


def test_a_shed_request_is_answered_without_its_body_being_read(router):
    head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 20000000\r\n\r\n")
    status, headers, body = raw_exchange(router.base_url, head, timeout=10)  # the 20 MB are never sent
    assert status == 503 and body["error"]["code"] == "no_ready_workers"


def test_shed_requests_keep_their_connection_and_are_counted(router):
    before = busy_rejections(router)
    host, port = router.base_url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=10)
    try:
        for _ in range(5):  # one connection: the unread bodies must not break keep-alive
            connection.request("POST", "/predict_image", json.dumps(BODY), {**AUTH, "Content-Type": "application/json"})
            response = connection.getresponse()
            assert response.status == 503 and json.loads(response.read())["error"]["code"] == "no_ready_workers"
    finally:
        connection.close()
    assert busy_rejections(router) - before == 5


def test_a_request_that_asks_for_a_job_is_not_shed(router):
    status, headers, body = http("POST", router.base_url + "/predict_image", BODY,
                                 headers={**AUTH, "Prefer": "respond-async"})
    assert status == 202 and body["status"] == "queued" and headers["location"] == f"/job/{body['job_id']}"


def test_shed_requests_write_no_access_log_line_at_info(router):
    """Under overload they come by the thousand per second; the metrics count them instead."""
    for index in range(3):
        assert http("POST", router.base_url + "/predict_image", BODY,
                    headers={**AUTH, "X-Request-ID": f"quiet-shed-{index}"})[0] == 503
    assert http("POST", router.base_url + "/predict_image", BODY, headers={"X-Request-ID": "loud-401"})[0] == 401
    time.sleep(0.5)
    documents = [json.loads(line) for line in router.log().splitlines() if line.startswith("{")]
    ids = {d.get("request_id") for d in documents if d.get("logger") == "fastvlm_engine.access"}
    assert "loud-401" in ids  # other refusals are still logged
    assert not any(str(i).startswith("quiet-shed-") for i in ids)
