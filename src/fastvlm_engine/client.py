"""Python client for the FastVLM Descriptor Engine router, with retries that respect load shedding.

    with Client("http://127.0.0.1:9000") as client:
        doc = client.predict_image(image_path="photos/cat.jpg", prompt="What animal is this?")

    async with AsyncClient("http://127.0.0.1:9000") as client:
        doc = await client.summarize_video(video_path="clips/beach.mp4")

    for delta in (stream := client.stream_predict_image(image_path="photos/cat.jpg")):
        print(delta, end="")            # tokens as they are generated; stream.document at the end

    job = client.submit_video(video_path="clips/beach.mp4")    # 202 at once, workers pull it
    doc = job.wait(timeout=600)         # long-polls GET /job/<id>?wait=

Request building, retry decisions and delays are pure functions shared by both clients, which
differ only in the I/O call and the sleep. Everything this module raises on a failed call:

    FastVLMError                 anything a call raises (``code``, ``message``, ``request_id``, ``attempts``)
    ├── ClientClosed             the client was used after close() (also a RuntimeError)
    ├── TransportError           no HTTP response came back
    │   ├── ConnectionFailed     refused, reset or dropped, still so after any retries
    │   └── RequestTimeout       no answer within the per-attempt ``timeout`` (also a TimeoutError)
    │       └── DeadlineExceeded no answer within what was left of the call's deadline
    ├── ServiceError             the service answered with an error status (``status``, ``retry_after_sec``, ``body``)
    │   ├── RequestRejected      4xx: the request itself is wrong or unauthorised; not retried
    │   ├── BusyError            503: still shed (workers_busy, queue_full, ...) when retrying stopped
    │   ├── WorkerError          502/504: a worker failed or timed out
    │   └── JobFailed            a job ended failed, expired or cancelled (``job``: its document)
    └── JobPending               a job's wait timed out while it is still queued or running (``job``)

There is no separate "retries exhausted" error: when retrying stops, the last attempt's own error
is raised with ``attempts`` and ``stop_reason`` ("not_retryable", "max_attempts", "failure_budget"
or "deadline") set, so ``except BusyError`` catches a busy service however long we tried.

Retries (see :class:`RetryPolicy`): the server reports state (``retry_after_sec``), the client
owns growth and jitter. Each wait is the server's hint plus full jitter,
``retry_after_sec + uniform(0, min(cap, base * 2**attempt))``, so it is never shorter than the
hint and clients shed together do not come back in the same instant. A wait that would pass the
call's deadline is not taken; the call fails at once instead.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import enum
import json
import math
import random
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

import httpx

from . import __version__
from .errors import ERROR_CODES, error_body
from .headers import REQUEST_ID_HEADER

__all__ = [
    "CONNECTION_LOST",
    "CONNECT_ERROR",
    "DEFAULT_RETRY",
    "DEFAULT_RETRY_CODES",
    "DEFAULT_URL",
    "FAILURE_CODES",
    "AsyncClient",
    "BusyError",
    "Client",
    "ClientClosed",
    "ClientState",
    "ConnectionFailed",
    "DeadlineExceeded",
    "FastVLMError",
    "ImageStream",
    "JobFailed",
    "JobHandle",
    "AsyncJobHandle",
    "AsyncImageStream",
    "JobPending",
    "RequestRejected",
    "RequestTimeout",
    "RetryDecision",
    "RetryEvent",
    "RetryPolicy",
    "ServiceError",
    "TransportError",
    "WorkerError",
    "backoff_delay",
    "decide_retry",
    "main",
    "media_payload",
    "parse_error",
    "parse_retry_after",
    "retry_delay",
]

DEFAULT_URL: Final = "http://127.0.0.1:9000"

ATTEMPT_HEADER: Final = "X-Retry-Attempt"
HEALTH_TIMEOUT_S: Final = 10.0
"""Health probes make one attempt: a probe should report the state now, not wait it out."""

CONNECT_ERROR: Final = "connect_error"
"""Code for a connection that could not be opened: the request never left, so retrying is free."""
CONNECTION_LOST: Final = "connection_lost"
"""Code for a connection reset or closed before the response: the server may have seen the request."""

SHED_CODES: Final = frozenset(
    {code for code, cls in ERROR_CODES.items() if cls.retryable and not cls.may_have_run} | {"http_503", "http_429"})
"""Turned away before any work was done (capacity, rate limits); retrying only costs the wait."""
FAILURE_CODES: Final = frozenset(
    {code for code, cls in ERROR_CODES.items() if cls.may_have_run} | {CONNECTION_LOST, "http_502", "http_504"})
"""The request may have run (or crashed a worker); retries of these are limited by max_failure_retries."""
DEFAULT_RETRY_CODES: Final = frozenset(
    {code for code, cls in ERROR_CODES.items() if cls.retryable}
    | {CONNECT_ERROR, CONNECTION_LOST, "http_502", "http_503", "http_429"})
"""Every code errors.py marks retryable, plus transport failures; 504s are left out on purpose: see RetryPolicy."""

Endpoint = Literal["image", "video"]
_PATHS: Final[dict[Endpoint, str]] = {"image": "/predict_image", "video": "/summarize_video"}
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what the router accepts (web.py)
_MAX_EXPONENT = 64  # 2**64 * base is past any cap; stops float overflow for absurd attempt numbers


# --- errors ---------------------------------------------------------------------------------------

class FastVLMError(Exception):
    """Base of everything a call raises."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.request_id = request_id
        self.attempts = 0
        """Attempts the call made (1 when it was not retried); 0 when none was sent."""
        self.stop_reason: str | None = None
        """Why retrying stopped: not_retryable, max_attempts, failure_budget or deadline."""
        super().__init__(message)

    def to_body(self) -> dict[str, Any]:
        """This error as the service's JSON error document."""
        return error_body(self.code, self.message, request_id=self.request_id)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, attempts={self.attempts})"


class ClientClosed(FastVLMError, RuntimeError):
    """The client was used after close(); a closed client cannot be reopened."""

    def __init__(self, message: str) -> None:
        super().__init__("client_closed", message)


class TransportError(FastVLMError):
    """No HTTP response came back."""


class ConnectionFailed(TransportError):
    """The connection was refused, reset or dropped (still so after any retries)."""


class RequestTimeout(TransportError, TimeoutError):
    """No answer within the per-attempt timeout; not retried, since a slow service is not helped by more load."""


class DeadlineExceeded(RequestTimeout):
    """No answer within what was left of the call's deadline."""


class ServiceError(FastVLMError):
    """The service answered with an error status and (usually) a JSON error document."""

    def __init__(self, status: int, code: str, message: str, *, request_id: str | None = None,
                 retry_after_sec: float | None = None, body: dict[str, Any] | None = None) -> None:
        super().__init__(code, message, request_id=request_id)
        self.status = status
        self.retry_after_sec = retry_after_sec
        self.body = body if body is not None else error_body(code, message, request_id=request_id,
                                                             retry_after_sec=retry_after_sec)
        """The server's error document, or one built in the same shape when it sent something else."""

    def to_body(self) -> dict[str, Any]:
        return self.body

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class RequestRejected(ServiceError):
    """4xx: invalid input, unknown path, unauthorised or rate limited; sending it again changes nothing."""


class BusyError(ServiceError):
    """503: the service shed the request (workers_busy, no_ready_workers, ...) and retrying stopped."""


class WorkerError(ServiceError):
    """502/504: the worker handling the request failed or did not answer in time."""


class JobFailed(ServiceError):
    """A job ended without a result: failed (its error), expired or cancelled."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") if isinstance(job.get("error"), dict) else {}
        status = job.get("status")
        code = error.get("code") or f"job_{status}"
        message = error.get("message") or f"The job was {status}."
        http_status = ERROR_CODES[code].http_status if code in ERROR_CODES else 500
        super().__init__(http_status, code, message, request_id=error.get("request_id"),
                         body={"error": error} if error else None)
        self.job = job


class JobPending(FastVLMError, TimeoutError):
    """The wait ended while the job is still queued or running; wait again or cancel it."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__("job_pending", f"Job {job.get('job_id')} is still {job.get('status')}.")
        self.job = job


def job_outcome(job: dict[str, Any]) -> dict[str, Any] | None:
    """The result of a finished job, None while it runs; raises JobFailed for a job that ended without one."""
    status = job.get("status")
    if status == "succeeded":
        result = job.get("result")
        return result if isinstance(result, dict) else {}
    if status in ("failed", "cancelled", "expired"):
        raise JobFailed(job)
    return None


def parse_sse(lines: Sequence[str]) -> tuple[str, Any] | None:
    """One server-sent event from its lines: (event name, JSON data), or None for a comment-only block."""
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if not data:
        return None
    text = "\n".join(data)
    return event, _json_value(text.encode()) if text != "[DONE]" else text


class _StreamState:
    """What a streamed image request has produced so far; shared by the sync and async iterators."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.document: dict[str, Any] | None = None
        self.text = ""
        self._lines: list[str] = []

    def feed_line(self, line: str) -> list[str]:
        """Deltas completed by this line (an SSE block ends with an empty line)."""
        if line:
            self._lines.append(line)
            return []
        block, self._lines = self._lines, []
        parsed = parse_sse(block)
        if parsed is None:
            return []
        event, data = parsed
        if event == "delta" and isinstance(data, dict) and isinstance(data.get("text"), str):
            self.text += data["text"]
            return [data["text"]]
        if event == "done" and isinstance(data, dict):
            self.document = data
        elif event == "error":
            raise parse_error(500, {}, json.dumps(data).encode(), request_id=self.request_id)
        return []

    def finish(self) -> None:
        if self.document is None:
            raise ConnectionFailed(CONNECTION_LOST, "The stream ended before its final event.",
                                   request_id=self.request_id)


def _error_class(status: int) -> type[ServiceError]:
    if 400 <= status < 500:
        return RequestRejected
    if status == 503:
        return BusyError
    if status in (502, 504):
        return WorkerError
    return ServiceError


# --- parsing --------------------------------------------------------------------------------------

def _json_value(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _seconds(value: Any) -> float | None:
    """A usable non-negative number of seconds, or None for anything else (bools, NaN, strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).

    Decimals are accepted too (older servers sent "3.0"); anything unusable gives None.
    """
    if value is None:
        return None
    text = value.strip()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _excerpt(content: bytes, limit: int = 200) -> str:
    text = re.sub(r"<[^>]*>", " ", content[:4096].decode("utf-8", errors="replace"))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def parse_error(status: int, headers: Mapping[str, str], content: bytes, *,
                request_id: str | None = None, now: datetime | None = None) -> ServiceError:
    """The typed error for an error response; never fails, whatever the body holds.

    A body in the service's schema gives its code, message and ``retry_after_sec`` (more precise
    than the integer header, so it wins). Anything else, such as a proxy's HTML 502, gets code
    ``http_<status>`` and the ``Retry-After`` header if there is one.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    document = _json_value(content)
    detail = document.get("error") if isinstance(document, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("code"), str) and detail["code"]:
        code: str = detail["code"]
        message = detail.get("message")
        if not isinstance(message, str):
            message = _reason(status)
        body_request_id = detail.get("request_id")
        retry_after = _seconds(detail.get("retry_after_sec"))
        body: dict[str, Any] | None = document
    else:
        code = f"http_{status}"
        excerpt = _excerpt(content)
        message = f"HTTP {status} {_reason(status)} without a FastVLM error body" + (f": {excerpt}" if excerpt else "")
        body_request_id = None
        retry_after = None
        body = None
    if retry_after is None:
        retry_after = parse_retry_after(lowered.get("retry-after"), now=now)
    if not isinstance(body_request_id, str) or not body_request_id:
        body_request_id = lowered.get(REQUEST_ID_HEADER.lower()) or request_id
    if body is None:
        body = error_body(code, message, request_id=body_request_id, retry_after_sec=retry_after)
    return _error_class(status)(status, code, message, request_id=body_request_id,
                                retry_after_sec=retry_after, body=body)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown Status"


def media_payload(kind: Endpoint, path: str | None, data_base64: str | None,
                  **options: Any) -> dict[str, Any]:
    """The JSON body for one media request; exactly one source, options only when given."""
    if (path is None) == (data_base64 is None):
        raise ValueError(f"give exactly one of {kind}_path or {kind}_base64")
    payload: dict[str, Any] = {f"{kind}_path": path} if path is not None else {f"{kind}_base64": data_base64}
    payload.update({name: value for name, value in options.items() if value is not None})
    return payload


def _check_request_id(request_id: str | None) -> str:
    if request_id is None:
        return uuid.uuid4().hex
    if not _VALID_REQUEST_ID.match(request_id):
        # The router would silently replace it, breaking the correlation the caller asked for.
        raise ValueError("request_id must be 1-128 characters from A-Z a-z 0-9 . _ : -")
    return request_id


# --- retry policy and decisions -------------------------------------------------------------------

@dataclass(frozen=True)
class RetryPolicy:
    """How a call retries: attempts, delays and deadline per endpoint, and which failures qualify.

    Defaults: 6 tries in all; full-jitter backoff from 0.25 s, its jitter capped at 8 s (images) or
    60 s (videos); a deadline over all attempts of 150 s (images) or 960 s (videos), just above
    the router's own worker timeouts (120 s, 900 s), so its 504 arrives before the client gives up.

    Retried by default: connection failures, every code errors.py marks ``retryable`` (the 503
    shed codes, ``rate_limited``, ``worker_failed``) and a proxy's 502/503/429. Failures where the
    request may already have run (``FAILURE_CODES``: a worker crash, a connection dropped
    mid-request, opted-in 504s) get at most ``max_failure_retries`` retries
    per call: an input that crashes workers must not take down one worker per attempt (the router
    already retries an image once on another worker).

    504 ``worker_timeout``/``inference_timeout`` are not retried: the request already spent the
    router's whole timeout, about the whole deadline, and the abandoned work may still be
    running, so a retry would add a second copy of the slowest work while the service is slowest.
    Add the code to ``retry_on_codes`` to opt in; it then counts against ``max_failure_retries``.

        RetryPolicy(max_attempts=1)                                  # never retry
        RetryPolicy(retry_on_codes=DEFAULT_RETRY_CODES - {"rate_limited"})   # fail fast on 429
    """

    max_attempts: int = 6
    base_delay_s: float = 0.25
    image_max_delay_s: float = 8.0
    video_max_delay_s: float = 60.0
    image_deadline_s: float = 150.0
    video_deadline_s: float = 960.0
    retry_on_codes: frozenset[str] = DEFAULT_RETRY_CODES
    max_failure_retries: int = 1

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_failure_retries < 0:
            raise ValueError("max_failure_retries must be at least 0")
        for name in ("base_delay_s", "image_max_delay_s", "video_max_delay_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0")
        for name in ("image_deadline_s", "video_deadline_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0")
        if isinstance(self.retry_on_codes, str):
            raise ValueError("retry_on_codes must be a set of codes, not one string")
        object.__setattr__(self, "retry_on_codes", frozenset(self.retry_on_codes))

    def max_delay_for(self, endpoint: Endpoint) -> float:
        """Cap of the jitter term for this endpoint."""
        return self.video_max_delay_s if endpoint == "video" else self.image_max_delay_s

    def deadline_for(self, endpoint: Endpoint) -> float:
        """Longest a call may take, all attempts and waits included."""
        return self.video_deadline_s if endpoint == "video" else self.image_deadline_s


DEFAULT_RETRY: Final = RetryPolicy()


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full jitter (AWS): ``uniform(0, min(cap, base * 2**attempt))`` after 0-based attempt ``attempt``."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    return rng.uniform(0.0, ceiling)


def retry_delay(attempt: int, retry_after_sec: float | None, *, base_s: float, cap_s: float,
                rng: random.Random) -> float:
    """The server's hint plus capped full jitter: never shorter than the hint, the hint never capped."""
    return (retry_after_sec or 0.0) + backoff_delay(attempt, base_s=base_s, cap_s=cap_s, rng=rng)


@dataclass(frozen=True)
class RetryDecision:
    """Whether to try again, after how long, or why not."""

    retry: bool
    delay_s: float = 0.0
    stop_reason: str | None = None


def decide_retry(policy: RetryPolicy, endpoint: Endpoint, *, attempt: int, code: str,
                 retry_after_sec: float | None, failure_retries: int, remaining_s: float,
                 rng: random.Random) -> RetryDecision:
    """Decide after 0-based attempt ``attempt`` failed with ``code``, ``remaining_s`` before the deadline.

    ``failure_retries`` is how many FAILURE_CODES retries the call has already made.
    """
    if code not in policy.retry_on_codes:
        return RetryDecision(False, stop_reason="not_retryable")
    if attempt + 1 >= policy.max_attempts:
        return RetryDecision(False, stop_reason="max_attempts")
    if code in FAILURE_CODES and failure_retries >= policy.max_failure_retries:
        return RetryDecision(False, stop_reason="failure_budget")
    delay = retry_delay(attempt, retry_after_sec, base_s=policy.base_delay_s,
                        cap_s=policy.max_delay_for(endpoint), rng=rng)
    if delay >= remaining_s:
        return RetryDecision(False, stop_reason="deadline")
    return RetryDecision(True, delay_s=delay)


@dataclass(frozen=True)
class RetryEvent:
    """One retry about to happen, for ``on_retry`` observers (logging, metrics, tests)."""

    attempt: int
    """The ``X-Retry-Attempt`` the retry will send: 1 for the first retry."""
    delay_s: float
    reason: str
    """The failed attempt's code, e.g. workers_busy or connect_error."""
    retry_after_sec: float | None
    status: int | None
    """The failed attempt's HTTP status; None when no response came back."""
    request_id: str


RetryHook = Callable[[RetryEvent], None]


def _inject_trace_context(headers: dict[str, str]) -> None:
    """Continue the caller's OpenTelemetry trace (W3C traceparent) if OpenTelemetry is installed."""
    try:
        from opentelemetry.propagate import inject
    except ImportError:
        return
    inject(headers)


# --- one logical call -----------------------------------------------------------------------------

class _Call:
    """The state of one logical call across its attempts; built per call, never shared."""

    def __init__(self, client: _BaseClient, method: str, path: str, endpoint: Endpoint,
                 payload: dict[str, Any] | None, request_id: str, policy: RetryPolicy,
                 deadline_s: float, headers: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.headers = dict(headers or {})
        self.method = method
        self.path = path
        self.endpoint = endpoint
        self.payload = payload
        self.request_id = request_id
        self.policy = policy
        self.deadline_at = client._clock() + deadline_s
        self.attempt = 0
        self.sent = 0
        self.failure_retries = 0
        self._deadline_bound = True

    def next_request(self, http: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        """The next attempt's request, its timeouts cut to what is left of the deadline."""
        remaining = self.deadline_at - self.client._clock()
        if remaining <= 0:
            raise self._annotate(DeadlineExceeded("deadline_exceeded", "The call's deadline passed before "
                                                  "the next attempt.", request_id=self.request_id), "deadline")
        per_attempt = self.client.timeout
        self._deadline_bound = per_attempt is None or remaining <= per_attempt
        read = remaining if per_attempt is None else min(per_attempt, remaining)
        timeout = httpx.Timeout(read, connect=min(self.client.connect_timeout, remaining))
        headers = {**self.headers, REQUEST_ID_HEADER: self.request_id, ATTEMPT_HEADER: str(self.attempt)}
        _inject_trace_context(headers)
        self.sent += 1
        return http.build_request(self.method, self.path, json=self.payload, headers=headers, timeout=timeout)

    def result(self, response: httpx.Response) -> dict[str, Any]:
        """The response document, or the typed error for this response."""
        if 200 <= response.status_code < 300:
            document = _json_value(response.content)
            if isinstance(document, dict):
                return document
            raise ServiceError(response.status_code, "invalid_response",
                               f"HTTP {response.status_code} without a JSON object: {_excerpt(response.content)}",
                               request_id=response.headers.get(REQUEST_ID_HEADER) or self.request_id)
        raise parse_error(response.status_code, response.headers, response.content, request_id=self.request_id)

    def transport_error(self, exc: httpx.HTTPError) -> FastVLMError:
        """httpx's exception as ours; the only place httpx exception types are looked at."""
        rid = self.request_id
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return ConnectionFailed(CONNECT_ERROR, f"Could not connect to {self.client.base_url}: {exc}",
                                    request_id=rid)
        if isinstance(exc, httpx.TimeoutException):
            if self._deadline_bound:
                return DeadlineExceeded("deadline_exceeded", f"No answer before the call's deadline ({exc}).",
                                        request_id=rid)
            return RequestTimeout("timeout", f"No answer within {self.client.timeout} s ({exc}).", request_id=rid)
        if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
            return ConnectionFailed(CONNECTION_LOST, f"The connection closed before the response: {exc}",
                                    request_id=rid)
        return ConnectionFailed("transport_error", f"{type(exc).__name__}: {exc}", request_id=rid)

    def plan_retry(self, error: FastVLMError) -> float | None:
        """Seconds to wait before the next attempt, or None (with ``error`` annotated) to give up."""
        retry_after = error.retry_after_sec if isinstance(error, ServiceError) else None
        decision = decide_retry(self.policy, self.endpoint, attempt=self.attempt, code=error.code,
                                retry_after_sec=retry_after, failure_retries=self.failure_retries,
                                remaining_s=self.deadline_at - self.client._clock(), rng=self.client._rng)
        if not decision.retry:
            self._annotate(error, decision.stop_reason)
            return None
        if error.code in FAILURE_CODES:
            self.failure_retries += 1
        self.attempt += 1
        if self.client.on_retry is not None:
            self.client.on_retry(RetryEvent(
                attempt=self.attempt, delay_s=decision.delay_s, reason=error.code, retry_after_sec=retry_after,
                status=error.status if isinstance(error, ServiceError) else None, request_id=self.request_id))
        return decision.delay_s

    def _annotate(self, error: FastVLMError, stop_reason: str | None) -> FastVLMError:
        error.attempts = self.sent
        error.stop_reason = stop_reason
        error.request_id = error.request_id or self.request_id
        return error


# --- clients --------------------------------------------------------------------------------------

class ClientState(enum.Enum):
    """UNOPENED until first used or entered, OPENED, then CLOSED for good (as in httpx)."""

    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class _BaseClient:
    """Configuration, lifecycle and request building shared by Client and AsyncClient."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float | None, connect_timeout: float,
                 retry: RetryPolicy, on_retry: RetryHook | None, rng: random.Random | None,
                 clock: Callable[[], float]) -> None:
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"base_url {base_url!r} is not a valid URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"base_url must be an http(s) URL with a host, not {base_url!r}")
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be > 0 seconds or None")
        if not connect_timeout > 0:
            raise ValueError("connect_timeout must be > 0 seconds")
        if api_key is not None and not api_key:
            raise ValueError("api_key must be non-empty or None")
        self.base_url = str(url).rstrip("/")
        self.timeout = timeout
        """Per-attempt limit on waiting for an answer; None: bounded only by the call's deadline."""
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.on_retry = on_retry
        """Called before each retry's wait; an exception it raises aborts the call."""
        self._rng = rng or random.Random()
        self._clock = clock
        self._state = ClientState.UNOPENED
        self._headers = {"User-Agent": f"fastvlm-engine-client/{__version__}", "Accept": "application/json"}
        if api_key is not None:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def state(self) -> ClientState:
        return self._state

    def _enter(self) -> None:
        if self._state is ClientState.CLOSED:
            raise ClientClosed("Cannot reopen a client once it has been closed.")
        if self._state is ClientState.OPENED:
            raise RuntimeError("Cannot open a client instance more than once.")
        self._state = ClientState.OPENED

    def _check_usable(self) -> None:
        if self._state is ClientState.CLOSED:
            raise ClientClosed("Cannot send a request, as the client has been closed.")
        self._state = ClientState.OPENED

    def _media_call(self, endpoint: Endpoint, payload: dict[str, Any], request_id: str | None) -> _Call:
        return _Call(self, "POST", _PATHS[endpoint], endpoint, payload, _check_request_id(request_id),
                     self.retry, self.retry.deadline_for(endpoint))

    def _submit_call(self, endpoint: Endpoint, payload: dict[str, Any], request_id: str | None,
                     idempotency_key: str | None) -> _Call:
        headers = {"Prefer": "respond-async"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return _Call(self, "POST", _PATHS[endpoint], endpoint, payload, _check_request_id(request_id),
                     self.retry, self.retry.deadline_for(endpoint), headers=headers)

    def _job_call(self, method: str, job_id: str, wait_s: float = 0.0) -> _Call:
        path = f"/job/{job_id}" + (f"?wait={wait_s:g}" if wait_s > 0 else "")
        return _Call(self, method, path, "image", None, uuid.uuid4().hex, self.retry,
                     wait_s + (self.timeout or HEALTH_TIMEOUT_S))

    def _health_call(self, path: str) -> _Call:
        return _Call(self, "GET", path, "image", None, uuid.uuid4().hex, RetryPolicy(max_attempts=1),
                     self.timeout or HEALTH_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r}, state={self._state.name})"


class Client(_BaseClient):
    """Synchronous client; thread-safe, reuses connections. Use as a context manager or call close()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float | None = None,
                 connect_timeout: float = 5.0, retry: RetryPolicy = DEFAULT_RETRY,
                 on_retry: RetryHook | None = None, rng: random.Random | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout, retry=retry,
                         on_retry=on_retry, rng=rng, clock=clock)
        self._sleep = sleep
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, transport=transport)

    def predict_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                      prompt: str | None = None, max_new_tokens: int | None = None,
                      request_id: str | None = None) -> dict[str, Any]:
        """Caption an image (or answer ``prompt`` about it); the server's JSON document."""
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens)
        return self._run(self._media_call("image", payload, request_id))

    def summarize_video(self, *, video_path: str | None = None, video_base64: str | None = None,
                        request_id: str | None = None) -> dict[str, Any]:
        """Describe a short video; the server's JSON document."""
        return self._run(self._media_call("video", media_payload("video", video_path, video_base64), request_id))

    def stream_predict_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                             prompt: str | None = None, max_new_tokens: int | None = None,
                             request_id: str | None = None, **sampling: Any) -> ImageStream:
        """Caption an image, yielding text as it is generated; ``.document`` holds the final response.

        Shed attempts are retried as usual before the stream starts; once tokens flow, a broken
        stream raises ConnectionFailed (the partial text stays in ``.text``).
        """
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens,
                                stream=True, **sampling)
        return ImageStream(self, self._media_call("image", payload, request_id))

    def submit_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                     prompt: str | None = None, max_new_tokens: int | None = None, request_id: str | None = None,
                     idempotency_key: str | None = None) -> JobHandle:
        """Queue an image request as a job (202 at once); wait on the handle for the result."""
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens)
        return self._submitted(self._run(self._submit_call("image", payload, request_id, idempotency_key)))

    def submit_video(self, *, video_path: str | None = None, video_base64: str | None = None,
                     request_id: str | None = None, idempotency_key: str | None = None) -> JobHandle:
        """Queue a video request as a job (202 at once); wait on the handle for the result."""
        payload = media_payload("video", video_path, video_base64)
        return self._submitted(self._run(self._submit_call("video", payload, request_id, idempotency_key)))

    def _submitted(self, answer: dict[str, Any]) -> JobHandle:
        if "job_id" not in answer:  # a server without the job queue answered in sync mode
            return JobHandle(self, "", done={"status": "succeeded", "result": answer})
        return JobHandle(self, answer["job_id"])

    def healthz(self) -> dict[str, Any]:
        """The router's liveness document (one attempt)."""
        return self._run(self._health_call("/healthz"))

    def readyz(self) -> dict[str, Any]:
        """The readiness document; BusyError (503) when no worker is ready (one attempt)."""
        return self._run(self._health_call("/readyz"))

    def _open_stream(self, call: _Call) -> httpx.Response:
        """Send until a stream opens (retrying like any call before the first byte); the caller closes it."""
        while True:
            self._check_usable()
            request = call.next_request(self._http)
            try:
                try:
                    response = self._http.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise call.transport_error(exc) from exc
                if response.status_code == 200:
                    return response
                response.read()
                response.close()
                call.result(response)  # raises the typed error
                raise ServiceError(response.status_code, "invalid_response", "Expected an event stream.")
            except FastVLMError as error:
                delay = call.plan_retry(error)
                if delay is None:
                    raise
            self._sleep(delay)

    def _run(self, call: _Call) -> dict[str, Any]:
        while True:
            self._check_usable()
            request = call.next_request(self._http)
            try:
                try:
                    response = self._http.send(request)
                except httpx.HTTPError as exc:
                    raise call.transport_error(exc) from exc
                return call.result(response)
            except FastVLMError as error:
                delay = call.plan_retry(error)
                if delay is None:
                    raise
            self._sleep(delay)

    def close(self) -> None:
        """Close pooled connections; later calls raise ClientClosed. Safe to call twice."""
        if self._state is not ClientState.CLOSED:
            self._state = ClientState.CLOSED
            self._http.close()

    def __enter__(self) -> Self:
        self._enter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_BaseClient):
    """Asyncio client with the same calls as Client; use ``async with`` or await aclose()."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float | None = None,
                 connect_timeout: float = 5.0, retry: RetryPolicy = DEFAULT_RETRY,
                 on_retry: RetryHook | None = None, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, connect_timeout=connect_timeout, retry=retry,
                         on_retry=on_retry, rng=rng, clock=clock)
        self._sleep = sleep
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, transport=transport)

    async def predict_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                            prompt: str | None = None, max_new_tokens: int | None = None,
                            request_id: str | None = None) -> dict[str, Any]:
        """Caption an image (or answer ``prompt`` about it); the server's JSON document."""
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens)
        return await self._run(self._media_call("image", payload, request_id))

    async def summarize_video(self, *, video_path: str | None = None, video_base64: str | None = None,
                              request_id: str | None = None) -> dict[str, Any]:
        """Describe a short video; the server's JSON document."""
        return await self._run(self._media_call("video", media_payload("video", video_path, video_base64),
                                                request_id))

    def stream_predict_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                             prompt: str | None = None, max_new_tokens: int | None = None,
                             request_id: str | None = None, **sampling: Any) -> AsyncImageStream:
        """Caption an image, yielding text as it is generated (``async for``); ``.document`` at the end."""
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens,
                                stream=True, **sampling)
        return AsyncImageStream(self, self._media_call("image", payload, request_id))

    async def submit_image(self, *, image_path: str | None = None, image_base64: str | None = None,
                           prompt: str | None = None, max_new_tokens: int | None = None,
                           request_id: str | None = None, idempotency_key: str | None = None) -> AsyncJobHandle:
        """Queue an image request as a job (202 at once); await the handle's wait() for the result."""
        payload = media_payload("image", image_path, image_base64, prompt=prompt, max_new_tokens=max_new_tokens)
        return self._submitted(await self._run(self._submit_call("image", payload, request_id, idempotency_key)))

    async def submit_video(self, *, video_path: str | None = None, video_base64: str | None = None,
                           request_id: str | None = None, idempotency_key: str | None = None) -> AsyncJobHandle:
        """Queue a video request as a job (202 at once); await the handle's wait() for the result."""
        payload = media_payload("video", video_path, video_base64)
        return self._submitted(await self._run(self._submit_call("video", payload, request_id, idempotency_key)))

    def _submitted(self, answer: dict[str, Any]) -> AsyncJobHandle:
        if "job_id" not in answer:
            return AsyncJobHandle(self, "", done={"status": "succeeded", "result": answer})
        return AsyncJobHandle(self, answer["job_id"])

    async def healthz(self) -> dict[str, Any]:
        """The router's liveness document (one attempt)."""
        return await self._run(self._health_call("/healthz"))

    async def readyz(self) -> dict[str, Any]:
        """The readiness document; BusyError (503) when no worker is ready (one attempt)."""
        return await self._run(self._health_call("/readyz"))

    async def _open_stream(self, call: _Call) -> httpx.Response:
        """Send until a stream opens (retrying like any call before the first byte); the caller closes it."""
        while True:
            self._check_usable()
            request = call.next_request(self._http)
            try:
                try:
                    response = await self._http.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise call.transport_error(exc) from exc
                if response.status_code == 200:
                    return response
                await response.aread()
                await response.aclose()
                call.result(response)
                raise ServiceError(response.status_code, "invalid_response", "Expected an event stream.")
            except FastVLMError as error:
                delay = call.plan_retry(error)
                if delay is None:
                    raise
            await self._sleep(delay)

    async def _run(self, call: _Call) -> dict[str, Any]:
        while True:
            self._check_usable()
            request = call.next_request(self._http)
            try:
                try:
                    response = await self._http.send(request)
                except httpx.HTTPError as exc:
                    raise call.transport_error(exc) from exc
                return call.result(response)
            except FastVLMError as error:
                delay = call.plan_retry(error)
                if delay is None:
                    raise
            await self._sleep(delay)

    async def aclose(self) -> None:
        """Close pooled connections; later calls raise ClientClosed. Safe to call twice."""
        if self._state is not ClientState.CLOSED:
            self._state = ClientState.CLOSED
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        self._enter()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


# --- jobs and streams -----------------------------------------------------------------------------

JOB_WAIT_STEP_S: Final = 30.0
"""Longest single ``?wait=`` a handle asks for; it keeps asking until its own timeout."""


class JobHandle:
    """A submitted job: ``wait()`` for its result, ``status()``, ``cancel()``."""

    def __init__(self, client: Client, job_id: str, *, done: dict[str, Any] | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self.last: dict[str, Any] | None = done
        """The job document as last seen."""

    def status(self) -> dict[str, Any]:
        """The job document now (status, progress, attempts, result once it ended)."""
        if self.job_id:
            self.last = self._client._run(self._client._job_call("GET", self.job_id))
        return self.last or {}

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """The result document; JobFailed if the job ended without one, JobPending after ``timeout``."""
        deadline = None if timeout is None else self._client._clock() + timeout
        while True:
            job = self.last if not self.job_id else None
            if job is None:
                left = JOB_WAIT_STEP_S if deadline is None else max(0.0, deadline - self._client._clock())
                job = self.last = self._client._run(self._client._job_call("GET", self.job_id,
                                                                           min(JOB_WAIT_STEP_S, left)))
            result = job_outcome(job)
            if result is not None:
                return result
            if deadline is not None and self._client._clock() >= deadline:
                raise JobPending(job)

    def cancel(self) -> dict[str, Any]:
        """Cancel it (a queued job at once, a running one at its worker's next check)."""
        if self.job_id:
            self.last = self._client._run(self._client._job_call("DELETE", self.job_id))
        return self.last or {}

    def __repr__(self) -> str:
        return f"JobHandle({self.job_id!r}, status={(self.last or {}).get('status', 'queued')!r})"


class AsyncJobHandle:
    """AsyncClient's job handle: the same calls, awaited."""

    def __init__(self, client: AsyncClient, job_id: str, *, done: dict[str, Any] | None = None) -> None:
        self._client = client
        self.job_id = job_id
        self.last: dict[str, Any] | None = done

    async def status(self) -> dict[str, Any]:
        if self.job_id:
            self.last = await self._client._run(self._client._job_call("GET", self.job_id))
        return self.last or {}

    async def wait(self, timeout: float | None = None) -> dict[str, Any]:
        deadline = None if timeout is None else self._client._clock() + timeout
        while True:
            job = self.last if not self.job_id else None
            if job is None:
                left = JOB_WAIT_STEP_S if deadline is None else max(0.0, deadline - self._client._clock())
                job = self.last = await self._client._run(self._client._job_call("GET", self.job_id,
                                                                                 min(JOB_WAIT_STEP_S, left)))
            result = job_outcome(job)
            if result is not None:
                return result
            if deadline is not None and self._client._clock() >= deadline:
                raise JobPending(job)

    async def cancel(self) -> dict[str, Any]:
        if self.job_id:
            self.last = await self._client._run(self._client._job_call("DELETE", self.job_id))
        return self.last or {}


class _StreamView:
    """What both stream classes show while and after they are read."""

    def __init__(self, client: Any, call: _Call) -> None:
        self._client = client
        self._call = call
        self._state = _StreamState(call.request_id)

    @property
    def document(self) -> dict[str, Any] | None:
        return self._state.document

    @property
    def text(self) -> str:
        return self._state.text


class ImageStream(_StreamView):
    """Text deltas of a streamed /predict_image; ``document`` is the final response once it ended."""

    _client: Client

    def __iter__(self) -> Iterator[str]:
        response = self._client._open_stream(self._call)
        try:
            try:
                for line in response.iter_lines():
                    yield from self._state.feed_line(line)
            except httpx.HTTPError as exc:
                raise self._call.transport_error(exc) from exc
            self._state.finish()
        finally:
            response.close()


class AsyncImageStream(_StreamView):
    """AsyncClient's streamed /predict_image: ``async for delta in stream``."""

    _client: AsyncClient

    async def __aiter__(self) -> AsyncIterator[str]:
        response = await self._client._open_stream(self._call)
        try:
            try:
                async for line in response.aiter_lines():
                    for delta in self._state.feed_line(line):
                        yield delta
            except httpx.HTTPError as exc:
                raise self._call.transport_error(exc) from exc
            self._state.finish()
        finally:
            await response.aclose()


# --- the ``fastvlm client`` command ---------------------------------------------------------------

def build_parser(prog: str = "fastvlm client") -> argparse.ArgumentParser:
    """Arguments of ``fastvlm client``."""
    parser = argparse.ArgumentParser(prog=prog, description="Call a running FastVLM router and print the JSON.")
    parser.add_argument("--url", default=DEFAULT_URL, help=f"router base URL (default {DEFAULT_URL})")
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="caption an image (POST /predict_image)")
    image.add_argument("path", help="path under the server's media roots, or a local file with --base64")
    image.add_argument("--prompt", default=None)
    image.add_argument("--max-new-tokens", type=int, default=None)
    image.add_argument("--base64", action="store_true", help="read the local file and upload it")
    image.add_argument("--async", dest="as_job", action="store_true",
                       help="submit it as a job (202), then wait for the job's result")
    video = sub.add_parser("video", help="summarize a video (POST /summarize_video)")
    video.add_argument("path", help="path under the server's media roots, or a local file with --base64")
    video.add_argument("--base64", action="store_true", help="read the local file and upload it")
    video.add_argument("--async", dest="as_job", action="store_true",
                       help="submit it as a job (202), then wait for the job's result")
    sub.add_parser("health", help="router and worker state (GET /healthz)")
    sub.add_parser("ready", help="readiness (GET /readyz); exit 1 when no worker is ready")
    return parser


def _call_from_args(client: Client, args: argparse.Namespace, data: str | None) -> dict[str, Any]:
    path = None if data else getattr(args, "path", None)
    if args.command == "image":
        options = dict(image_path=path, image_base64=data, prompt=args.prompt, max_new_tokens=args.max_new_tokens)
        return client.submit_image(**options).wait() if args.as_job else client.predict_image(**options)
    if args.command == "video":
        if args.as_job:
            return client.submit_video(video_path=path, video_base64=data).wait()
        return client.summarize_video(video_path=path, video_base64=data)
    return client.healthz() if args.command == "health" else client.readyz()


def main(argv: Sequence[str] | None = None) -> int:
    """``fastvlm client``: 0 on success, 1 when the call failed (error JSON on stdout), 2 on usage errors."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help exits 0, bad usage 2; return instead of leaving the caller
        return exc.code if isinstance(exc.code, int) else 2
    data = None
    if getattr(args, "base64", False):
        try:
            data = base64.b64encode(Path(args.path).read_bytes()).decode("ascii")
        except OSError as exc:
            print(f"fastvlm client: cannot read {args.path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    try:
        client = Client(args.url, api_key=args.api_key)
    except ValueError as exc:
        print(f"fastvlm client: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            result = _call_from_args(client, args, data)
        except FastVLMError as exc:
            print(json.dumps(exc.to_body(), indent=2, ensure_ascii=False))
            if exc.attempts > 1:
                print(f"fastvlm client: gave up after {exc.attempts} attempts ({exc.stop_reason})", file=sys.stderr)
            return 1
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0
