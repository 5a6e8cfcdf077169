"""Pure-ASGI middleware shared by the router and the workers.

``RequestIdMiddleware`` names every request; ``BodyLimitMiddleware`` refuses oversized bodies on
routes that read them whole; ``RequestLifecycle`` runs each request in a task of its own, so a
request can be stopped from outside: when its client disconnects (the work would be for
nobody) or when a drain's grace period ends (the client then gets a JSON 503, not a reset).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ClientClosedRequest, EngineError, HttpError, PayloadTooLarge, ShuttingDown
from ..observability.logs import request_id_var
from .errors import REQUEST_ID_HEADER, error_response, request_id_of

__all__ = ["BodyLimitMiddleware", "InFlight", "RequestIdMiddleware", "RequestLifecycle"]

log = logging.getLogger(__name__)

_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Accept a sane ``X-Request-ID`` or mint one, and echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _VALID_ID.match(incoming) else os.urandom(16).hex()  # as random as uuid4, cheaper
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        token = request_id_var.set(request_id)
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != header[0]]
                message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class BodyLimitMiddleware:
    """Refuse bodies over the route's limit while reading, before they are held in memory.

    A declared Content-Length over the limit is refused before a byte is read (one that is not a
    number is a malformed request, 400); a chunked body is counted as it streams and refused the
    moment it passes the limit.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        error: EngineError | None = None
        if declared is not None and not declared.strip().isdigit():
            error = HttpError("The Content-Length header is not a number.", status=400)
        elif declared is not None and int(declared) > limit:
            error = PayloadTooLarge(f"The body is larger than {limit} bytes.")
        if error is not None:
            response = error_response(error, request_id_of(scope))
            response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(f"The body is larger than {limit} bytes.")
            return message

        await self.app(scope, limited_receive, send)


@dataclass(eq=False)
class _Exchange:
    """One request's progress, seen from outside its task."""

    task: asyncio.Task | None = None
    response_started: bool = False
    response_done: bool = False
    stop_reason: str | None = None  # "client_closed" or "shutting_down", once we stopped it
    disconnected: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"0", b"")):
            return True
    return False


class InFlight:
    """The requests a server is working on, so a drain can wait for them and then stop them."""

    def __init__(self, counted: Callable[[str], bool]) -> None:
        self._counted = counted
        self._exchanges: set[_Exchange] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._exchanges)

    def counts(self, path: str) -> bool:
        return self._counted(path)

    def add(self, exchange: _Exchange) -> None:
        self._exchanges.add(exchange)
        self._idle.clear()

    def discard(self, exchange: _Exchange) -> None:
        self._exchanges.discard(exchange)
        if not self._exchanges:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when every counted request ended within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def cut_off(self) -> int:
        """Stop every request still running (the drain's grace is over); returns how many."""
        stopped = 0
        for exchange in list(self._exchanges):
            if exchange.task is not None and not exchange.task.done():
                exchange.stop_reason = exchange.stop_reason or "shutting_down"
                exchange.task.cancel()
                stopped += 1
        return stopped


class RequestLifecycle:
    """Run each HTTP request in its own task and stop it when nobody will receive its answer.

    After the request body has been read, the connection is watched: a client that disconnects
    before its response is complete cancels the request's task (cancellation reaches the worker,
    the scheduler and the video pipeline through their ``await``), and the access log counts it as
    499 ``client_closed``. ``InFlight.cut_off`` cancels the same way at the end of a drain; the
    client then gets 503 ``shutting_down`` as JSON if its response had not started.
    """

    def __init__(self, app: ASGIApp, in_flight: InFlight) -> None:
        self.app = app
        self.in_flight = in_flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange()
        loop = asyncio.get_running_loop()
        # Exactly one coroutine reads the real ``receive`` at a time: the app while it reads the
        # body, then the watcher. A request without a body is watched from the start, and the
        # watcher hands the app the (empty) body message it read.
        phase = "body" if _has_body(scope) else "first"
        first: asyncio.Future = loop.create_future()
        watcher: asyncio.Task | None = None

        async def watch(hand_over: asyncio.Future | None) -> None:
            message = await receive()
            if hand_over is not None:
                hand_over.set_result(message)
            while message["type"] != "http.disconnect":
                message = await receive()
            exchange.disconnected.set_result(message)
            if not exchange.response_done and exchange.task is not None and not exchange.task.done():
                exchange.stop_reason = exchange.stop_reason or "client_closed"
                exchange.task.cancel()

        async def inner_receive() -> Message:
            nonlocal phase, watcher
            if phase == "body":
                message = await receive()
                if message["type"] == "http.disconnect":
                    phase = "watch"
                    exchange.disconnected.set_result(message)
                elif not message.get("more_body", False):
                    phase = "watch"
                    watcher = loop.create_task(watch(None), name="disconnect-watch")
                return message
            if phase == "first":
                phase = "watch"
                return await asyncio.shield(first)
            return await asyncio.shield(exchange.disconnected)

        async def inner_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.response_started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                exchange.response_done = True
            await send(message)

        counted = self.in_flight.counts(scope.get("path", ""))
        if phase == "first":
            watcher = loop.create_task(watch(first), name="disconnect-watch")
        exchange.task = loop.create_task(self.app(scope, inner_receive, inner_send))
        if counted:
            self.in_flight.add(exchange)
        try:
            await asyncio.wait({exchange.task})
        except asyncio.CancelledError:  # the server itself is cancelling us: pass it on
            exchange.task.cancel()
            raise
        finally:
            if counted:
                self.in_flight.discard(exchange)
            if watcher is not None:
                watcher.cancel()
        if not exchange.task.cancelled():
            exchange.task.result()  # re-raise the app's own errors where the server expects them
            return
        if exchange.stop_reason is None:
            raise asyncio.CancelledError()
        if exchange.response_started:
            if not exchange.response_done:  # end a streamed response cleanly
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        error: EngineError = (ClientClosedRequest() if exchange.stop_reason == "client_closed"
                              else ShuttingDown("The service shut down before this request finished; retry it."))
        if exchange.stop_reason == "client_closed":
            log.info("client closed the connection before the response to %s %s", scope.get("method"),
                     scope.get("path"))
        await error_response(error, request_id_of(scope))(scope, receive, send)
