"""One pure-ASGI middleware for per-request telemetry, shared by router and workers.

For the API endpoints it continues the caller's W3C trace in a server span (when tracing is
on), and when the response is done it records the request metrics and writes one access-log
line: request id, trace id, endpoint, worker, status, error code, queue wait, latency, retry
attempt and API key id (never the key). Health, readiness and metrics probes are left out of
both, so they do not drown the signal; requests shed for capacity (``SHED_CODES``) are logged at
DEBUG only, since under overload they come by the thousand per second and the metrics already
count them. Per-request state lives in locals: the instance never changes after __init__.

Anything else that wants to know how requests end (the router's rolling window for the console)
passes an observer: it gets one :class:`RequestOutcome` per recorded request. An observer that
raises is logged and skipped, so telemetry never breaks a request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import NoReadyWorkers, QueueFull, WorkersBusy
from ..headers import QUEUE_HEADER, WORKER_HEADER
from . import tracing
from .metrics import HttpMetrics

__all__ = ["Observer", "RequestOutcome", "TelemetryMiddleware"]

_QUEUE = QUEUE_HEADER.lower()
_WORKER = WORKER_HEADER.lower()
_ERROR_BODY_LIMIT = 16 * 1024
SHED_CODES = frozenset({WorkersBusy.code, NoReadyWorkers.code, QueueFull.code})
"""Turned away for capacity: their access-log lines are DEBUG."""
access_log = logging.getLogger("fastvlm_engine.access")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestOutcome:
    """How one request ended, as the middleware's observers see it."""

    endpoint: str
    status: int
    code: str  # "ok" or the error code of the body
    seconds: float  # until the last byte of the response (the end of a stream)


Observer = Callable[[RequestOutcome], None]


def _error_code(status: int, body: bytes) -> str:
    if status < 400:
        return "ok"
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"http_{status}"


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, *, metrics: HttpMetrics, endpoints: frozenset[str],
                 prefixes: Mapping[str, str] | None = None, observers: Sequence[Observer] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints
        self.prefixes = {"/admin/": "/admin", **(prefixes or {})}
        """Paths under a prefix are recorded under one endpoint label (``/v1/models/<id>`` as ``/v1/models``)."""
        self.observers = tuple(observers)

    def _endpoint(self, path: str) -> str | None:
        if path in self.endpoints:
            return path
        return next((label for prefix, label in self.prefixes.items() if path.startswith(prefix)), None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self._endpoint(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        started = time.perf_counter()
        response: dict[str, Any] = {"status": 500, "headers": {}, "body": b""}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["status"] = message["status"]
                response["headers"] = {k.decode("latin-1").lower(): v.decode("latin-1")
                                       for k, v in message.get("headers", [])}
            elif message["type"] == "http.response.body" and response["status"] >= 400:
                if len(response["body"]) < _ERROR_BODY_LIMIT:
                    response["body"] += message.get("body", b"")
            await send(message)

        # Tracing off and no caller's trace to pass on (logs, workers): no context or span to make.
        traced = tracing.recording() or "traceparent" in headers
        token = otel_context.attach(tracing.extract(headers)) if traced else None
        server_span = (tracing.tracer.start_as_current_span(
            f"{scope['method']} {endpoint}", kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]})
            if traced else nullcontext(trace.INVALID_SPAN))
        try:
            with server_span as span:
                try:
                    await self.app(scope, receive, capture)
                finally:
                    status = response["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(trace.Status(trace.StatusCode.ERROR))
                    self._record(scope, headers, endpoint, response, time.perf_counter() - started, span)
        finally:
            if token is not None:
                otel_context.detach(token)

    def _record(self, scope: Scope, headers: dict[str, str], endpoint: str, response: dict[str, Any],
                seconds: float, span: trace.Span) -> None:
        status = response["status"]
        code = _error_code(status, response["body"])
        self.metrics.observe(endpoint, code, seconds)
        outcome = RequestOutcome(endpoint=endpoint, status=status, code=code, seconds=seconds)
        for observer in self.observers:
            try:
                observer(outcome)
            except Exception:
                log.exception("a request observer failed; the request is not affected")
        level = logging.DEBUG if code in SHED_CODES else logging.INFO
        if not access_log.isEnabledFor(level):
            return
        context = span.get_span_context()
        state = scope.get("state", {})
        attempt = headers.get("x-retry-attempt", "")
        queue_ms = response["headers"].get(_QUEUE)
        access_log.log(
            level, "%s %s %d %s %.1fms", scope["method"], endpoint, status, code, seconds * 1000,
            extra={"request_id": state.get("request_id"),
                   "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
                   "endpoint": endpoint, "method": scope["method"], "status": status,
                   "error_code": None if code == "ok" else code,
                   "worker": response["headers"].get(_WORKER),
                   "queue_wait_ms": float(queue_ms) if queue_ms and queue_ms.replace(".", "", 1).isdigit()
                   else None,
                   "latency_ms": round(seconds * 1000, 2),
                   "retry_attempt": int(attempt) if attempt.isdigit() and len(attempt) < 6 else None,
                   "api_key_id": state.get("api_key_id")})
