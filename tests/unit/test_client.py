"""The client's pure retry/parsing rules, and its behaviour against a real loopback HTTP peer.

The peer is Python's http.server answering from a script (no mocks of httpx or the router);
waits go through an injected sleep and clock, so nothing here really sleeps or measures time.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fastvlm_engine import client as client_module
from fastvlm_engine.client import (
    DEFAULT_RETRY_CODES,
    AsyncClient,
    BusyError,
    Client,
    ClientClosed,
    ClientState,
    ConnectionFailed,
    DeadlineExceeded,
    FastVLMError,
    RequestRejected,
    RequestTimeout,
    RetryEvent,
    RetryPolicy,
    ServiceError,
    WorkerError,
    backoff_delay,
    decide_retry,
    main,
    media_payload,
    parse_error,
    parse_retry_after,
    retry_delay,
)
from fastvlm_engine.errors import InvalidImage, NoReadyWorkers, WorkerFailed, WorkersBusy


class CeilingRandom(random.Random):
    """Always draws the top of the range, so the jitter ceiling itself can be checked exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeTime:
    """A clock that only moves when the client sleeps; records every wait."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


# --- pure delay and decision rules ------------------------------------------------------------------

def test_jitter_ceiling_doubles_per_attempt_until_the_cap():
    ceilings = [backoff_delay(a, base_s=0.25, cap_s=8.0, rng=CeilingRandom()) for a in range(8)]
    assert ceilings == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_full_jitter_stays_within_zero_and_the_ceiling_and_spreads_over_it():
    rng = random.Random(1234)
    samples = [backoff_delay(3, base_s=0.25, cap_s=8.0, rng=rng) for _ in range(2000)]
    assert all(0.0 <= s <= 2.0 for s in samples)
    assert min(samples) < 0.1 and max(samples) > 1.9  # full jitter, not "ceiling minus a little"
    again = random.Random(1234)
    assert samples[:5] == [backoff_delay(3, base_s=0.25, cap_s=8.0, rng=again) for _ in range(5)]


def test_cap_bounds_the_jitter_even_for_absurd_attempt_numbers():
    rng = random.Random(5)
    assert all(backoff_delay(a, base_s=0.25, cap_s=8.0, rng=rng) <= 8.0 for a in (20, 1000, 10**9))
    assert backoff_delay(10**9, base_s=0.25, cap_s=60.0, rng=CeilingRandom()) == 60.0


def test_delay_is_never_below_the_servers_hint_and_the_hint_is_not_capped():
    rng = random.Random(99)
    for attempt in range(6):
        for _ in range(200):
            delay = retry_delay(attempt, 1.5, base_s=0.25, cap_s=8.0, rng=rng)
            assert 1.5 <= delay <= 1.5 + min(8.0, 0.25 * 2**attempt)
    assert retry_delay(0, 30.0, base_s=0.25, cap_s=8.0, rng=CeilingRandom()) == 30.25
    assert retry_delay(9, 30.0, base_s=0.25, cap_s=8.0, rng=CeilingRandom()) == 38.0
    assert retry_delay(2, None, base_s=0.25, cap_s=8.0, rng=CeilingRandom()) == 1.0


def _decide(code: str, *, attempt: int = 0, retry_after: float | None = None, failure_retries: int = 0,
            remaining: float = 1000.0, policy: RetryPolicy | None = None, endpoint: str = "image"):
    return decide_retry(policy or RetryPolicy(), endpoint, attempt=attempt, code=code,
                        retry_after_sec=retry_after, failure_retries=failure_retries,
                        remaining_s=remaining, rng=CeilingRandom())


@pytest.mark.parametrize("code", ["workers_busy", "no_ready_workers", "queue_full", "not_ready", "worker_failed",
                                  "connect_error", "connection_lost", "http_502", "http_503", "rate_limited",
                                  "http_429", "shutting_down", "too_many_connections"])
def test_shed_and_transient_codes_are_retried(code):
    decision = _decide(code, retry_after=2.0)
    assert decision.retry and decision.delay_s == 2.25 and decision.stop_reason is None


@pytest.mark.parametrize("code", ["worker_timeout", "inference_timeout", "http_504", "invalid_image",
                                  "invalid_request", "invalid_json", "path_not_allowed", "media_not_found",
                                  "unauthorized", "payload_too_large", "request_timeout", "http_error",
                                  "internal_error", "inference_failed", "http_500", "timeout",
                                  "deadline_exceeded", "invalid_response"])
def test_other_codes_are_not_retried(code):
    assert _decide(code) == client_module.RetryDecision(False, stop_reason="not_retryable")


def test_attempts_stop_at_max_attempts():
    policy = RetryPolicy(max_attempts=6)
    assert _decide("workers_busy", attempt=4, policy=policy).retry  # 5th try failed; a 6th is allowed
    assert _decide("workers_busy", attempt=5, policy=policy).stop_reason == "max_attempts"
    assert _decide("workers_busy", policy=RetryPolicy(max_attempts=1)).stop_reason == "max_attempts"


def test_failures_that_may_have_run_get_a_small_budget_but_shedding_does_not():
    assert _decide("worker_failed", failure_retries=0).retry
    assert _decide("worker_failed", failure_retries=1).stop_reason == "failure_budget"
    assert _decide("connection_lost", failure_retries=1).stop_reason == "failure_budget"
    assert _decide("workers_busy", failure_retries=5).retry
    opted_in = RetryPolicy(retry_on_codes=DEFAULT_RETRY_CODES | {"worker_timeout"})
    assert _decide("worker_timeout", policy=opted_in).retry
    assert _decide("worker_timeout", policy=opted_in, failure_retries=1).stop_reason == "failure_budget"


def test_a_wait_that_would_pass_the_deadline_is_not_taken():
    assert _decide("workers_busy", retry_after=3.0, remaining=3.26).retry  # 3.0 + 0.25 fits
    assert _decide("workers_busy", retry_after=3.0, remaining=3.25).stop_reason == "deadline"
    assert _decide("workers_busy", retry_after=None, remaining=-1.0).stop_reason == "deadline"


def test_policy_caps_and_deadlines_are_per_endpoint():
    policy = RetryPolicy()
    assert (policy.max_delay_for("image"), policy.max_delay_for("video")) == (8.0, 60.0)
    assert policy.deadline_for("video") > policy.deadline_for("image") >= 120.0
    many = RetryPolicy(max_attempts=20)  # the video cap lets the jitter grow further than the image cap
    assert _decide("workers_busy", attempt=5, endpoint="video", policy=many).delay_s == 8.0
    assert _decide("workers_busy", attempt=7, endpoint="video", policy=many).delay_s == 32.0
    assert _decide("workers_busy", attempt=7, endpoint="image", policy=many).delay_s == 8.0
    assert _decide("workers_busy", attempt=12, endpoint="video", policy=many).delay_s == 60.0


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_delay_s": -1.0}, {"image_max_delay_s": float("nan")},
                                    {"video_deadline_s": 0.0}, {"max_failure_retries": -1},
                                    {"retry_on_codes": "workers_busy"}])
def test_bad_policies_are_rejected(kwargs):
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_policy_accepts_any_set_of_codes_and_stays_hashable():
    policy = RetryPolicy(retry_on_codes={"workers_busy"})
    assert policy.retry_on_codes == frozenset({"workers_busy"})
    assert hash(policy) == hash(RetryPolicy(retry_on_codes=frozenset({"workers_busy"})))


# --- Retry-After and error parsing ----------------------------------------------------------------

@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), (" 7 ", 7.0), ("0", 0.0), ("2.5", 2.5), (None, None),
                                                ("", None), ("soon", None), ("-1", None), ("nan", None),
                                                ("inf", None), ("1e400", None)])
def test_retry_after_header_values(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_http_date_counts_from_now_and_never_goes_negative():
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=120), usegmt=True), now=now) == 120.0
    assert parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True), now=now) == 0.0


def test_service_error_body_is_parsed_and_its_float_hint_beats_the_integer_header():
    server_error = WorkersBusy(retry_after_sec=2.25)
    content = json.dumps(server_error.to_body("rid-1")).encode()
    error = parse_error(503, server_error.headers(), content)
    assert isinstance(error, BusyError)
    assert (error.status, error.code, error.request_id, error.retry_after_sec) == (503, "workers_busy", "rid-1", 2.25)
    assert error.message == WorkersBusy.default_message
    assert error.body == server_error.to_body("rid-1")
    assert server_error.headers() == {"Retry-After": "3"}


@pytest.mark.parametrize("bad_hint", [None, "2", True, -1.0, float("nan")])
def test_the_header_is_the_fallback_when_the_body_has_no_usable_hint(bad_hint):
    detail: dict[str, Any] = {"code": "no_ready_workers", "message": "starting"}
    if bad_hint is not None:
        detail["retry_after_sec"] = bad_hint
    content = json.dumps({"error": detail}, allow_nan=True).encode()
    error = parse_error(503, {"Retry-After": "4"}, content)
    assert error.code == "no_ready_workers" and error.retry_after_sec == 4.0


def test_non_json_error_bodies_get_an_http_code_and_never_crash():
    html = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    error = parse_error(502, {"Content-Type": "text/html", "X-Request-ID": "edge-7"}, html, request_id="mine")
    assert isinstance(error, WorkerError)
    assert error.code == "http_502" and error.status == 502 and error.retry_after_sec is None
    assert "Bad Gateway" in error.message and "nginx" in error.message and "<" not in error.message
    assert error.request_id == "edge-7"
    assert error.body["error"]["code"] == "http_502"

    for content in (b"", b"\xff\xfe\x00garbage", b"[" * 100_000, b"[1, 2]", b'{"error": "flat string"}',
                    b'{"error": {"code": 42}}', b'"just a string"', b"x" * 1_000_000):
        parsed = parse_error(503, {"Retry-After": "1"}, content, request_id="mine")
        assert isinstance(parsed, BusyError)
        assert parsed.code == "http_503" and parsed.retry_after_sec == 1.0 and parsed.request_id == "mine"
        assert len(parsed.message) < 400


def test_a_framework_json_error_without_our_schema_keeps_its_text():
    error = parse_error(404, {}, b'{"detail": "Not Found"}')
    assert isinstance(error, RequestRejected) and error.code == "http_404"
    assert "Not Found" in error.message


@pytest.mark.parametrize(("status", "cls"), [(400, RequestRejected), (401, RequestRejected), (413, RequestRejected),
                                             (422, RequestRejected), (429, RequestRejected), (503, BusyError),
                                             (502, WorkerError), (504, WorkerError), (500, ServiceError)])
def test_status_decides_the_error_class(status, cls):
    error = parse_error(status, {}, json.dumps({"error": {"code": "x", "message": "m"}}).encode())
    assert type(error) is cls and isinstance(error, ServiceError) and isinstance(error, FastVLMError)
    assert str(error) == f"{status} x: m"


def test_request_id_comes_from_the_body_then_the_header_then_what_was_sent():
    body = json.dumps({"error": {"code": "x", "message": "m", "request_id": "body"}}).encode()
    plain = json.dumps({"error": {"code": "x", "message": "m"}}).encode()
    assert parse_error(500, {"x-request-id": "hdr"}, body, request_id="sent").request_id == "body"
    assert parse_error(500, {"x-request-id": "hdr"}, plain, request_id="sent").request_id == "hdr"
    assert parse_error(500, {}, plain, request_id="sent").request_id == "sent"


# --- request building and lifecycle -------------------------------------------------------------

def test_exactly_one_media_source_is_required():
    with pytest.raises(ValueError, match="exactly one"):
        media_payload("image", None, None)
    with pytest.raises(ValueError, match="exactly one"):
        media_payload("video", "a.mp4", "AAAA")
    assert media_payload("image", "a.jpg", None, prompt=None, max_new_tokens=8) == {"image_path": "a.jpg",
                                                                                    "max_new_tokens": 8}
    assert media_payload("video", None, "AAAA") == {"video_base64": "AAAA"}


def test_client_methods_validate_before_sending():
    with Client("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="exactly one"):
            client.predict_image()
        with pytest.raises(ValueError, match="exactly one"):
            client.predict_image(image_path="a.jpg", image_base64="AAAA")
        with pytest.raises(ValueError, match="exactly one"):
            client.summarize_video()
        with pytest.raises(ValueError, match="request_id"):
            client.predict_image(image_path="a.jpg", request_id="has spaces")


@pytest.mark.parametrize("url", ["127.0.0.1:9000", "ftp://host", "http://"])
def test_base_url_must_be_http(url):
    with pytest.raises(ValueError):
        Client(url)


def test_sync_client_lifecycle():
    client = Client("http://127.0.0.1:9")
    assert client.state is ClientState.UNOPENED
    with client:
        assert client.state is ClientState.OPENED
        with pytest.raises(RuntimeError, match="more than once"):
            client.__enter__()
    assert client.state is ClientState.CLOSED
    client.close()  # idempotent
    with pytest.raises(ClientClosed, match="has been closed") as info:
        client.predict_image(image_path="a.jpg")
    assert isinstance(info.value, RuntimeError) and info.value.code == "client_closed"
    with pytest.raises(ClientClosed, match="reopen"):
        client.__enter__()
    with pytest.raises(ClientClosed):
        client.healthz()


def test_async_client_lifecycle():
    async def scenario() -> None:
        client = AsyncClient("http://127.0.0.1:9")
        async with client:
            assert client.state is ClientState.OPENED
        await client.aclose()
        assert client.state is ClientState.CLOSED
        with pytest.raises(ClientClosed):
            await client.summarize_video(video_path="a.mp4")
        with pytest.raises(ClientClosed):
            async with client:
                pass

    asyncio.run(scenario())


# --- against a real HTTP peer on loopback ----------------------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    action: str = "answer"  # or "drop" (close without answering) or "hang" (answer nothing until teardown)


def json_reply(status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(document).encode(), {"Content-Type": "application/json", **(headers or {})})


def busy(seconds: float) -> Reply:
    error = WorkersBusy(retry_after_sec=seconds)
    return json_reply(503, error.to_body(), error.headers())


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Peer:
    """A scripted HTTP/1.0 server: one reply per request, the last one repeated."""

    def __init__(self) -> None:
        self.script: list[Reply] = [Reply()]
        self.seen: list[Seen] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.peer = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def next_reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        peer: Peer = self.server.peer  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = peer.next_reply(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if reply.action == "hang":
            peer.release.wait(30)
        if reply.action != "answer":
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=10)


DOC = {"output": "a cat", "model": "tiny"}


def test_sync_client_retries_busy_twice_with_attempt_headers_and_one_request_id(peer):
    peer.script = [busy(1.5), busy(0.4), json_reply(200, DOC)]
    fake, events = FakeTime(), []
    with Client(peer.url, api_key="k-123", sleep=fake.sleep, clock=fake.clock, rng=random.Random(3),
                on_retry=events.append) as client:
        result = client.predict_image(image_path="cats/1.jpg", prompt="What is it?")
    assert result == DOC
    assert [s.headers["x-retry-attempt"] for s in peer.seen] == ["0", "1", "2"]
    request_ids = {s.headers["x-request-id"] for s in peer.seen}
    assert len(request_ids) == 1 and len(request_ids.pop()) == 32
    assert all(s.headers["authorization"] == "Bearer k-123" for s in peer.seen)
    assert all((s.method, s.path) == ("POST", "/predict_image") for s in peer.seen)
    assert peer.seen[0].json() == {"image_path": "cats/1.jpg", "prompt": "What is it?"}
    assert len(fake.sleeps) == 2
    assert 1.5 <= fake.sleeps[0] <= 1.5 + 0.25 and 0.4 <= fake.sleeps[1] <= 0.4 + 0.5
    assert [(e.attempt, e.reason, e.status, e.retry_after_sec) for e in events] == [
        (1, "workers_busy", 503, 1.5), (2, "workers_busy", 503, 0.4)]
    assert [e.delay_s for e in events] == fake.sleeps
    assert all(isinstance(e, RetryEvent) and e.request_id == peer.seen[0].headers["x-request-id"] for e in events)


def test_async_client_retries_the_same_way(peer):
    peer.script = [busy(2.0), json_reply(503, NoReadyWorkers(retry_after_sec=1.0).to_body()), json_reply(200, DOC)]
    fake = FakeTime()

    async def scenario() -> dict[str, Any]:
        async with AsyncClient(peer.url, sleep=fake.async_sleep, clock=fake.clock, rng=CeilingRandom()) as client:
            return await client.summarize_video(video_path="clips/a.mp4", request_id="trace-42")

    assert asyncio.run(scenario()) == DOC
    assert [s.headers["x-retry-attempt"] for s in peer.seen] == ["0", "1", "2"]
    assert {s.headers["x-request-id"] for s in peer.seen} == {"trace-42"}
    assert "authorization" not in peer.seen[0].headers
    assert peer.seen[0].path == "/summarize_video" and peer.seen[0].json() == {"video_path": "clips/a.mp4"}
    assert fake.sleeps == [2.25, 1.5]


def test_busy_until_attempts_run_out_raises_busy_error_with_attempt_count(peer):
    peer.script = [busy(0.5)]
    fake = FakeTime()
    with Client(peer.url, retry=RetryPolicy(max_attempts=3), sleep=fake.sleep, clock=fake.clock) as client:
        with pytest.raises(BusyError) as info:
            client.predict_image(image_path="a.jpg")
    error = info.value
    assert (error.code, error.status, error.attempts, error.stop_reason) == ("workers_busy", 503, 3, "max_attempts")
    assert error.retry_after_sec == 0.5 and error.request_id == peer.seen[0].headers["x-request-id"]
    assert len(peer.seen) == 3 and len(fake.sleeps) == 2


def test_the_deadline_stops_retries_instead_of_sleeping_past_it(peer):
    peer.script = [busy(2.0)]
    fake = FakeTime()
    policy = RetryPolicy(image_deadline_s=5.0)
    with Client(peer.url, retry=policy, sleep=fake.sleep, clock=fake.clock, rng=CeilingRandom()) as client:
        with pytest.raises(BusyError) as info:
            client.predict_image(image_path="a.jpg")
    assert fake.sleeps == [2.25, 2.5]  # a third wait (2 + 1.0) would end past 5 s
    assert sum(fake.sleeps) < policy.image_deadline_s
    assert (info.value.attempts, info.value.stop_reason) == (3, "deadline")


def test_rejected_requests_are_not_retried(peer):
    error = InvalidImage("The image is corrupt.")
    peer.script = [json_reply(422, error.to_body("srv-1"))]
    fake = FakeTime()
    with Client(peer.url, sleep=fake.sleep, clock=fake.clock) as client:
        with pytest.raises(RequestRejected) as info:
            client.predict_image(image_base64="bm90IGFuIGltYWdl")
    assert (info.value.code, info.value.attempts, info.value.stop_reason) == ("invalid_image", 1, "not_retryable")
    assert info.value.request_id == "srv-1"
    assert len(peer.seen) == 1 and fake.sleeps == []


def test_worker_failures_and_proxy_502s_are_retried_once(peer):
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    peer.script = [json_reply(502, WorkerFailed().to_body()), Reply(502, html, {"Content-Type": "text/html"})]
    fake = FakeTime()
    with Client(peer.url, sleep=fake.sleep, clock=fake.clock) as client:
        with pytest.raises(WorkerError) as info:
            client.predict_image(image_path="a.jpg")
    assert (info.value.code, info.value.attempts, info.value.stop_reason) == ("http_502", 2, "failure_budget")
    assert len(peer.seen) == 2


def test_worker_timeout_is_not_retried_by_default(peer):
    peer.script = [json_reply(504, {"error": {"code": "worker_timeout", "message": "slow"}})]
    with Client(peer.url, sleep=FakeTime().sleep) as client:
        with pytest.raises(WorkerError) as info:
            client.summarize_video(video_path="a.mp4")
    assert (info.value.code, info.value.attempts) == ("worker_timeout", 1)


def test_a_connection_dropped_before_the_response_is_retried_once(peer):
    peer.script = [Reply(action="drop"), Reply(action="drop"), json_reply(200, DOC)]
    fake = FakeTime()
    with Client(peer.url, sleep=fake.sleep, clock=fake.clock) as client:
        with pytest.raises(ConnectionFailed) as info:
            client.predict_image(image_path="a.jpg")
    assert (info.value.code, info.value.attempts, info.value.stop_reason) == ("connection_lost", 2, "failure_budget")
    assert isinstance(info.value.__cause__, Exception)
    with Client(peer.url, sleep=fake.sleep, clock=fake.clock) as client:
        peer.script = [Reply(action="drop"), json_reply(200, DOC)]
        assert client.predict_image(image_path="a.jpg") == DOC


def test_refused_connections_are_retried_then_reported():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fake, events = FakeTime(), []
    with Client(f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=4), sleep=fake.sleep, clock=fake.clock,
                on_retry=events.append) as client:
        with pytest.raises(ConnectionFailed) as info:
            client.predict_image(image_path="a.jpg")
    assert (info.value.code, info.value.attempts, info.value.stop_reason) == ("connect_error", 4, "max_attempts")
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(e.status is None and e.retry_after_sec is None and e.reason == "connect_error" for e in events)
    assert all(0.0 <= s <= 0.25 * 2**i for i, s in enumerate(fake.sleeps))


def test_no_answer_within_the_per_attempt_timeout_is_a_request_timeout(peer):
    peer.script = [Reply(action="hang")]
    with Client(peer.url, timeout=0.2, sleep=FakeTime().sleep) as client:
        with pytest.raises(RequestTimeout) as info:
            client.predict_image(image_path="a.jpg")
    assert type(info.value) is RequestTimeout and isinstance(info.value, TimeoutError)
    assert (info.value.attempts, info.value.stop_reason) == (1, "not_retryable") and len(peer.seen) == 1


def test_no_answer_within_the_deadline_is_deadline_exceeded(peer):
    peer.script = [Reply(action="hang")]
    with Client(peer.url, retry=RetryPolicy(image_deadline_s=0.2), sleep=FakeTime().sleep) as client:
        with pytest.raises(DeadlineExceeded) as info:
            client.predict_image(image_path="a.jpg")
    assert info.value.code == "deadline_exceeded" and info.value.attempts == 1


def test_health_probes_make_one_attempt(peer):
    peer.script = [json_reply(200, {"status": "ok"}), json_reply(503, NoReadyWorkers().to_body())]
    with Client(peer.url, sleep=FakeTime().sleep) as client:
        assert client.healthz() == {"status": "ok"}
        with pytest.raises(BusyError) as info:
            client.readyz()
    assert info.value.code == "no_ready_workers" and info.value.attempts == 1
    assert [(s.method, s.path, s.headers["x-retry-attempt"]) for s in peer.seen] == [
        ("GET", "/healthz", "0"), ("GET", "/readyz", "0")]


def test_a_success_status_without_a_json_object_is_a_service_error(peer):
    peer.script = [Reply(200, b"<html>hello</html>", {"Content-Type": "text/html"})]
    with Client(peer.url) as client:
        with pytest.raises(ServiceError) as info:
            client.healthz()
    assert info.value.code == "invalid_response" and info.value.status == 200


# --- the ``fastvlm client`` command --------------------------------------------------------------

def test_cli_prints_the_document_and_exits_0(peer, capsys):
    peer.script = [json_reply(200, {"status": "ok", "ready_workers": 1})]
    assert main(["--url", peer.url, "health"]) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "ok", "ready_workers": 1}


def test_cli_uploads_a_local_file_as_base64(peer, tmp_path, capsys):
    image = tmp_path / "x.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    peer.script = [json_reply(200, DOC)]
    assert main(["--url", peer.url, "--api-key", "k", "image", str(image), "--base64", "--prompt", "hi"]) == 0
    sent = peer.seen[0].json()
    assert sent == {"image_base64": base64.b64encode(image.read_bytes()).decode(), "prompt": "hi"}
    assert peer.seen[0].headers["authorization"] == "Bearer k"
    assert json.loads(capsys.readouterr().out) == DOC


def test_cli_prints_the_error_document_and_exits_1(peer, capsys):
    body = InvalidImage().to_body("srv-9")
    peer.script = [json_reply(422, body)]
    assert main(["--url", peer.url, "video", "clips/a.mp4"]) == 1
    assert json.loads(capsys.readouterr().out) == body
    assert peer.seen[0].json() == {"video_path": "clips/a.mp4"}


@pytest.mark.parametrize("argv", [[], ["image"], ["--url", "nota-url", "health"], ["video", "x", "--nope"]])
def test_cli_usage_errors_exit_2(argv, capsys):
    assert main(argv) == 2


def test_cli_missing_local_file_is_a_usage_error(tmp_path, capsys):
    assert main(["image", str(tmp_path / "absent.jpg"), "--base64"]) == 2
    assert "cannot read" in capsys.readouterr().err
