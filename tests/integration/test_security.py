"""API keys, rate limits, IP allowlist with trusted proxies, and router-only workers — on a real router."""

from __future__ import annotations

import math

import pytest

from fastvlm_engine.auth import hash_key
from tests.helpers.procs import http, start_router, wait_workers_ready

pytestmark = pytest.mark.integration

KEY, OTHER_KEY, LIMITED_KEY = "fvk_test_main_key_123", "fvk_test_other_key_456", "fvk_test_limited_key_789"
ALLOWED = {"X-Forwarded-For": "203.0.113.5"}  # the router trusts 127.0.0.1 as its proxy
DENIED = {"X-Forwarded-For": "198.51.100.7"}


@pytest.fixture(scope="module")
def router(tmp_path_factory, tiny_model_dir, media_root):
    tmp = tmp_path_factory.mktemp("security")
    keys_file = tmp / "keys.txt"
    keys_file.write_text(f"# one key per line\n{hash_key(LIMITED_KEY)} 1   # one request per minute\n")
    proc = start_router(tmp, tiny_model_dir, media_roots=media_root, max_workers=1,
                        api_keys=f"{hash_key(KEY)},{hash_key(OTHER_KEY)}", api_keys_file=keys_file,
                        ip_allowlist="127.0.0.1/32,203.0.113.0/24,2001:db8::/32", trusted_proxies="127.0.0.1/32")
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


def predict(router, headers, body=None):
    return http("POST", router.base_url + "/predict_image", body or {"image_path": "coffee.jpg", "max_new_tokens": 2},
                headers=headers)


def test_health_stays_open_but_everything_else_needs_an_allowed_address(router):
    assert http("GET", router.base_url + "/healthz", headers=DENIED)[0] == 200
    assert http("GET", router.base_url + "/readyz", headers=DENIED)[0] == 200
    for path in ("/metrics", "/openapi.json", "/nope"):
        status, _, body = http("GET", router.base_url + path, headers=DENIED)
        assert (status, body["error"]["code"]) == (403, "forbidden_ip")
    assert http("GET", router.base_url + "/metrics", headers=ALLOWED)[0] == 200  # no key needed for metrics
    status, _, body = predict(router, {**DENIED, "Authorization": f"Bearer {KEY}"})  # a key does not bypass it
    assert (status, body["error"]["code"]) == (403, "forbidden_ip")


@pytest.mark.parametrize(("forwarded", "status"), [
    ("203.0.113.5", 200),
    ("2001:db8::7", 200),
    ("198.51.100.7", 403),
    ("203.0.113.5, 198.51.100.7", 403),  # the right-most hop is the one our proxy saw
    ("198.51.100.7, 203.0.113.5", 200),  # hops left of the proxy's are the client's to forge
    ("not-an-ip", 403),
])
def test_x_forwarded_for_is_believed_only_from_the_trusted_proxy(router, forwarded, status):
    got, _, body = predict(router, {"X-Forwarded-For": forwarded, "X-API-Key": KEY})
    assert got == status, body


def test_requests_without_a_valid_key_are_refused(router):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}, {"Authorization": f"Basic {KEY}"},
                    {"Authorization": "Bearer"}):
        status, response_headers, body = predict(router, {**ALLOWED, **headers})
        assert (status, body["error"]["code"]) == (401, "unauthorized"), headers
        assert response_headers["www-authenticate"].startswith("Bearer")
        assert body["error"]["request_id"]
        video = http("POST", router.base_url + "/summarize_video", {"video_path": "sample.mp4"},
                     headers={**ALLOWED, **headers})
        assert video[0] == 401


def test_valid_keys_by_bearer_or_x_api_key(router):
    assert predict(router, {**ALLOWED, "Authorization": f"Bearer {KEY}"})[0] == 200
    assert predict(router, {**ALLOWED, "X-API-Key": OTHER_KEY})[0] == 200
    status, _, doc = http("POST", router.base_url + "/summarize_video", {"video_path": "sample.mp4"},
                          headers={**ALLOWED, "X-API-Key": KEY})
    assert status == 200 and doc["scenes_detected"] == 3


def test_per_key_rate_limit(router):
    assert predict(router, {**ALLOWED, "X-API-Key": LIMITED_KEY})[0] == 200
    status, headers, body = predict(router, {**ALLOWED, "X-API-Key": LIMITED_KEY})
    assert (status, body["error"]["code"]) == (429, "rate_limited")
    assert int(headers["retry-after"]) == math.ceil(body["error"]["retry_after_sec"])
    assert body["error"]["retry_after_sec"] > 1
    assert predict(router, {**ALLOWED, "X-API-Key": KEY})[0] == 200  # other keys are not affected


def test_keys_never_appear_in_logs_or_errors_but_their_ids_do(router):
    predict(router, {**ALLOWED, "X-API-Key": KEY})
    predict(router, {**ALLOWED, "X-API-Key": "wrong-key-value"})
    log = router.log()
    for secret in (KEY, OTHER_KEY, LIMITED_KEY, "wrong-key-value"):
        assert secret not in log
    assert hash_key(KEY)[:12] in log  # the access log names the key by its id


def test_the_client_sends_its_api_key(router):
    from fastvlm_engine.client import Client, RequestRejected

    with Client(router.base_url, api_key=KEY) as client:  # from 127.0.0.1, which the allowlist admits
        assert client.predict_image(image_path="coffee.jpg", max_new_tokens=2)["output"] is not None
    with Client(router.base_url) as client:
        with pytest.raises(RequestRejected) as info:
            client.predict_image(image_path="coffee.jpg")
    assert info.value.code == "unauthorized" and info.value.status == 401


def test_openapi_lists_every_error_code(router):
    from fastvlm_engine.errors import ERROR_CODES

    status, _, spec = http("GET", router.base_url + "/openapi.json", headers=ALLOWED)
    assert status == 200
    detail = spec["components"]["schemas"]["ErrorDetail"]["properties"]["code"]
    assert set(detail["enum"]) == set(ERROR_CODES)
    responses = spec["paths"]["/predict_image"]["post"]["responses"]
    assert {"401", "403", "429", "503"} <= set(responses)
    assert "workers_busy" in responses["503"]["description"]
