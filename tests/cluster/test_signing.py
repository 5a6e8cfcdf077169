"""Cluster request signing: what passes, what fails, the bounded replay memory, and the workers' guard
exercised through a real uvicorn on loopback with the router's real client (aiohttp)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Iterator

import aiohttp
import pytest
import uvicorn
from fastapi import FastAPI, Request
from yarl import URL

from fastvlm_engine.auth import INTERNAL_TOKEN_HEADER
from fastvlm_engine.cluster.replay import NonceCache
from fastvlm_engine.cluster.signing import ClusterGuard, ClusterSigner, ClusterVerifier
from fastvlm_engine.headers import (
    CLUSTER_NONCE_HEADER,
    CLUSTER_SIGNATURE_HEADER,
    CLUSTER_TIME_HEADER,
    REQUEST_ID_HEADER,
)
from fastvlm_engine.web import RequestIdMiddleware
from tests.helpers.procs import free_port, wait_until

SECRET = b"cluster-secret-for-tests-0123456789"
WINDOW = 30.0


def signed(method="POST", path="/predict_image", *, body_length=10, request_id="req-1", secret=SECRET,
           clock=time.time) -> dict[str, str]:
    return ClusterSigner(secret, clock=clock).headers(method, path, body_length=body_length, request_id=request_id)


def with_length(headers: dict[str, str], length: int | None) -> dict[str, str]:
    """The headers as the request carries them: its Content-Length, or chunked."""
    extra = {"Content-Length": str(length)} if length is not None else {"Transfer-Encoding": "chunked"}
    return {**headers, **extra}


@pytest.fixture
def verifier() -> ClusterVerifier:
    return ClusterVerifier(SECRET, WINDOW)


def test_a_signed_request_passes_and_carries_its_request_id(verifier):
    headers = signed()
    assert headers[REQUEST_ID_HEADER] == "req-1"
    assert set(headers) == {REQUEST_ID_HEADER, CLUSTER_TIME_HEADER, CLUSTER_NONCE_HEADER, CLUSTER_SIGNATURE_HEADER}
    assert verifier.check("POST", "/predict_image", with_length(headers, 10)) is None


def test_header_names_are_matched_in_any_case(verifier):
    headers = {key.lower(): value for key, value in with_length(signed(), 10).items()}
    assert verifier.check("post", "/predict_image", headers) is None


@pytest.mark.parametrize(("method", "path", "length", "request_id"), [
    ("GET", "/predict_image", 10, "req-1"),            # method
    ("POST", "/summarize_video", 10, "req-1"),         # path
    ("POST", "/predict_image?x=1", 10, "req-1"),       # query added
    ("POST", "/predict_image", 11, "req-1"),           # declared length
    ("POST", "/predict_image", None, "req-1"),         # sent chunked instead
    ("POST", "/predict_image", 10, "req-2"),           # request id
])
def test_any_altered_part_fails(verifier, method, path, length, request_id):
    headers = with_length(signed(), length)
    headers[REQUEST_ID_HEADER] = request_id
    assert verifier.check(method, path, headers) == "bad signature (wrong secret, or the request was altered)"


def test_another_secret_fails(verifier):
    headers = with_length(signed(secret=b"another-secret-of-this-cluster"), 10)
    assert "bad signature" in verifier.check("POST", "/predict_image", headers)


def test_a_tampered_timestamp_or_nonce_fails(verifier):
    headers = with_length(signed(), 10)
    bumped = {**headers, CLUSTER_TIME_HEADER: f"{float(headers[CLUSTER_TIME_HEADER]) + 1:.3f}"}
    assert "bad signature" in verifier.check("POST", "/predict_image", bumped)
    other_nonce = {**headers, CLUSTER_NONCE_HEADER: secrets.token_hex(16)}
    assert "bad signature" in verifier.check("POST", "/predict_image", other_nonce)
    assert verifier.check("POST", "/predict_image", headers) is None  # the failures used up nothing


@pytest.mark.parametrize("offset", [-(WINDOW + 1), WINDOW + 1, -3600.0, 86400.0])
def test_old_and_future_timestamps_fail(verifier, offset):
    headers = with_length(signed(clock=lambda: time.time() + offset), 10)
    assert "outside the replay window" in verifier.check("POST", "/predict_image", headers)


@pytest.mark.parametrize("offset", [-(WINDOW - 2), WINDOW - 2])
def test_timestamps_inside_the_window_pass_in_both_directions(verifier, offset):
    headers = with_length(signed(clock=lambda: time.time() + offset), 10)
    assert verifier.check("POST", "/predict_image", headers) is None


def test_a_replayed_request_fails(verifier):
    headers = with_length(signed(), 10)
    assert verifier.check("POST", "/predict_image", headers) is None
    assert verifier.check("POST", "/predict_image", headers) == "nonce already used (a replayed request)"


@pytest.mark.parametrize("change", [
    {CLUSTER_SIGNATURE_HEADER: None},
    {CLUSTER_NONCE_HEADER: None},
    {CLUSTER_TIME_HEADER: "yesterday"},
    {CLUSTER_TIME_HEADER: "1e10"},
    {CLUSTER_TIME_HEADER: "nan"},
    {CLUSTER_NONCE_HEADER: "x" * 10_000},
    {CLUSTER_SIGNATURE_HEADER: "é" * 64},   # non-ASCII must not reach compare_digest
    {CLUSTER_SIGNATURE_HEADER: "0" * 63},
    {REQUEST_ID_HEADER: None},
    {REQUEST_ID_HEADER: "bad id with spaces"},
    {"Content-Length": "-5"},
])
def test_malformed_headers_fail_without_raising(verifier, change):
    headers = with_length(signed(), 10)
    for key, value in change.items():
        if value is None:
            headers.pop(key)
        else:
            headers[key] = value
    reason = verifier.check("POST", "/predict_image", headers)
    assert reason is not None and SECRET.decode() not in reason


def test_no_headers_at_all_is_its_own_reason(verifier):
    assert verifier.check("GET", "/healthz", {}) == "no cluster signature"


def test_the_signer_refuses_what_it_could_not_send_as_signed():
    signer = ClusterSigner(SECRET)
    for method, path, length, request_id in [("GET", "healthz", 0, "r"), ("GET", "/a b", 0, "r"),
                                             ("GET", "/a\n", 0, "r"), ("G\nET", "/", 0, "r"),
                                             ("GET", "/", -1, "r"), ("GET", "/", 0, ""),
                                             ("GET", "/", 0, "a\r\nX-Evil: 1")]:
        with pytest.raises(ValueError):
            signer.headers(method, path, body_length=length, request_id=request_id)
    with pytest.raises(ValueError):
        ClusterSigner(b"")


def test_the_replay_memory_stays_empty_under_100k_garbage_nonces(verifier):
    now = f"{time.time():.3f}"
    for _ in range(100_000):
        garbage = {CLUSTER_TIME_HEADER: now, CLUSTER_NONCE_HEADER: secrets.token_hex(16),
                   CLUSTER_SIGNATURE_HEADER: secrets.token_hex(32), REQUEST_ID_HEADER: "r", "Content-Length": "0"}
        assert verifier.check("POST", "/predict_image", garbage) is not None
    assert len(verifier.nonces) == 0
    assert verifier.check("POST", "/predict_image", with_length(signed(), 10)) is None
    assert len(verifier.nonces) == 1


def test_the_replay_memory_is_bounded_under_100k_signed_requests_and_still_refuses_every_replay():
    verifier = ClusterVerifier(SECRET, WINDOW, max_nonces=1000)
    signer = ClusterSigner(SECRET)
    first = with_length(signer.headers("GET", "/worker_health", body_length=0, request_id="r0"), 0)
    assert verifier.check("GET", "/worker_health", first) is None
    largest = 0
    for i in range(100_000):
        headers = with_length(signer.headers("GET", "/worker_health", body_length=0, request_id=f"r{i + 1}"), 0)
        verifier.check("GET", "/worker_health", headers)
        largest = max(largest, len(verifier.nonces))
    assert largest <= 1000
    # The first nonce was forgotten long ago, but its timestamp is below the floor: the replay still fails.
    assert verifier.check("GET", "/worker_health", first) is not None
    time.sleep(0.002)  # a fresh timestamp above the floor
    fresh = with_length(signer.headers("GET", "/worker_health", body_length=0, request_id="new"), 0)
    assert verifier.check("GET", "/worker_health", fresh) is None


def test_the_nonce_cache_forgets_entries_once_their_timestamp_leaves_the_window():
    cache = NonceCache(window_s=10, max_entries=100)
    assert cache.admit("a", stamp=100.0, now=100.0)
    assert not cache.admit("a", stamp=100.0, now=105.0)
    assert cache.admit("b", stamp=104.0, now=105.0) and len(cache) == 2
    assert cache.admit("c", stamp=112.0, now=112.0)  # "a" (stamped 100) is now outside the window
    assert len(cache) == 2


# --- the guard, through a real server --------------------------------------------------------------

LOCAL_TOKEN = "local-token-from-the-supervisor"


def tiny_app(*, verifier: ClusterVerifier, local_token: str | None) -> FastAPI:
    """A worker-shaped app: the guard inside the request-id middleware, as the worker app stacks them."""
    app = FastAPI()

    @app.api_route("/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> dict:
        body = await request.body()
        return {"path": request.url.path, "query": request.url.query, "body_bytes": len(body)}

    app.add_middleware(ClusterGuard, verifier=verifier, local_token=local_token)
    app.add_middleware(RequestIdMiddleware)
    return app


class ServerThread:
    """uvicorn (httptools, as the workers run) on a free loopback port, in a thread of this process."""

    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, http="httptools", log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_until(lambda: self.server.started, 20, "the test server")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


@pytest.fixture
def guarded() -> Iterator[ServerThread]:
    with ServerThread(tiny_app(verifier=ClusterVerifier(SECRET, WINDOW), local_token=LOCAL_TOKEN)) as server:
        yield server


def call(server: ServerThread, method: str, target: str, *, headers: dict[str, str] | None = None,
         body: bytes | None = None, stream: bool = False) -> tuple[int, dict, dict]:
    """One request with aiohttp (the router's client), the target sent exactly as signed (yarl would otherwise
    normalise its percent-encoding): (status, JSON body, response headers)."""

    async def run() -> tuple[int, dict, dict]:
        async def chunks():
            yield body[:3]
            yield body[3:]

        data = chunks() if stream else body
        url = URL(server.url + target, encoded=True)
        async with aiohttp.ClientSession() as session:
            async with session.request(method, url, headers=headers or {}, data=data) as response:
                return response.status, await response.json(), dict(response.headers)

    return asyncio.run(run())


def test_the_guard_refuses_a_call_without_credentials_with_401_json(guarded):
    status, body, headers = call(guarded, "GET", "/echo")
    assert status == 401
    assert body["error"]["code"] == "unauthorized" and body["error"]["request_id"] == headers["X-Request-ID"]
    assert SECRET.decode() not in str(body) and LOCAL_TOKEN not in str(body)


def test_the_guard_passes_the_local_token_and_refuses_a_wrong_one(guarded):
    assert call(guarded, "GET", "/echo", headers={INTERNAL_TOKEN_HEADER: LOCAL_TOKEN})[0] == 200
    assert call(guarded, "GET", "/echo", headers={INTERNAL_TOKEN_HEADER: LOCAL_TOKEN + "x"})[0] == 401
    assert call(guarded, "GET", "/echo", headers={INTERNAL_TOKEN_HEADER: ""})[0] == 401


def test_the_guard_passes_a_signed_call_once(guarded):
    body = b"0123456789"
    headers = signed("POST", "/echo?wait=1&x=%2F", body_length=len(body), request_id="abc-1")
    status, answer, response_headers = call(guarded, "POST", "/echo?wait=1&x=%2F", headers=headers, body=body)
    assert status == 200, answer
    assert answer == {"path": "/echo", "query": "wait=1&x=%2F", "body_bytes": 10}
    assert response_headers["X-Request-ID"] == "abc-1"
    assert call(guarded, "POST", "/echo?wait=1&x=%2F", headers=headers, body=body)[0] == 401  # replayed


def test_the_guard_passes_a_signed_streamed_body(guarded):
    body = b"a streamed upload"
    headers = signed("POST", "/echo", body_length=None, request_id="stream-1")
    status, answer, _ = call(guarded, "POST", "/echo", headers=headers, body=body, stream=True)
    assert status == 200 and answer["body_bytes"] == len(body)


def test_the_guard_refuses_a_signature_for_another_method_target_length_or_secret(guarded):
    body = b"0123456789"
    for headers, target in [
        (signed("GET", "/echo", body_length=10), "/echo"),
        (signed("POST", "/other", body_length=10), "/echo"),
        (signed("POST", "/echo?wait=1", body_length=10), "/echo?wait=2"),
        (signed("POST", "/echo", body_length=9), "/echo"),
        (signed("POST", "/echo", body_length=None), "/echo"),
        (signed("POST", "/echo", body_length=10, secret=b"not-the-cluster-secret!"), "/echo"),
    ]:
        assert call(guarded, "POST", target, headers=headers, body=body)[0] == 401


def test_without_a_local_token_only_signatures_pass():
    with ServerThread(tiny_app(verifier=ClusterVerifier(SECRET, WINDOW), local_token=None)) as server:
        assert call(server, "GET", "/echo", headers={INTERNAL_TOKEN_HEADER: "anything"})[0] == 401
        assert call(server, "GET", "/echo", headers={INTERNAL_TOKEN_HEADER: ""})[0] == 401
        assert call(server, "GET", "/echo", headers=signed("GET", "/echo", body_length=0))[0] == 200


def test_refusals_are_logged_at_most_once_per_interval_and_never_with_a_secret(guarded, caplog):
    caplog.set_level(logging.WARNING, logger="fastvlm_engine.cluster.signing")
    for _ in range(20):
        headers = {**signed("GET", "/echo", body_length=0, secret=b"a-guessed-secret-value"),
                   INTERNAL_TOKEN_HEADER: "guess"}
        assert call(guarded, "GET", "/echo", headers=headers)[0] == 401
    refusals = [r for r in caplog.records if r.name == "fastvlm_engine.cluster.signing"]
    assert len(refusals) == 1 and "bad signature" in refusals[0].getMessage()
    assert SECRET.decode() not in caplog.text and LOCAL_TOKEN not in caplog.text
