"""Errors on the OpenAI API's paths in OpenAI's shape, whoever produced them.

One pure-ASGI boundary (like Starlette's gzip middleware: per-request state in locals) rewrites
the body of every error response under the prefix — from a route, the framework (404, 405, 413),
the access guard (401, 403, 429), the request lifecycle (499, 503) or a worker's answer passed
through — with :func:`~fastvlm_engine.openai_compat.errors.openai_error_body`. Status and headers
(``Retry-After``, ``WWW-Authenticate``, ``X-Request-ID``) are kept. Successful responses, streams
included, pass through untouched and unbuffered; only error bodies, which are small, are held.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..openai_compat.errors import openai_error_body
from .errors import request_id_of

__all__ = ["OpenAIErrorShape"]

MAX_ERROR_BODY = 64 * 1024
"""An error body larger than this is passed on as it is (ours are a few hundred bytes)."""
_REPLACED = {b"content-length", b"content-type"}


class OpenAIErrorShape:
    def __init__(self, app: ASGIApp, *, prefix: str) -> None:
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError("prefix must start and end with '/'")
        self.app = app
        self.prefix = prefix

    def _applies(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        return scope["type"] == "http" and (path.startswith(self.prefix) or path == self.prefix.rstrip("/"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {"start": None, "body": bytearray()}

        async def shaped(message: Message) -> None:
            if message["type"] == "http.response.start":
                if message["status"] >= 400:
                    held["start"] = message
                    return
            elif message["type"] == "http.response.body" and held["start"] is not None:
                held["body"] += message.get("body", b"")
                if len(held["body"]) > MAX_ERROR_BODY:  # not one of ours: pass it on unchanged
                    start, body = held["start"], bytes(held["body"])
                    held["start"] = None
                    await send(start)
                    await send({**message, "body": body})
                    return
                if not message.get("more_body", False):
                    await self._send_shaped(scope, held["start"], bytes(held["body"]), send)
                    held["start"] = None
                return
            await send(message)

        await self.app(scope, receive, shaped)

    @staticmethod
    async def _send_shaped(scope: Scope, start: Message, body: bytes, send: Send) -> None:
        status = start["status"]
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        shaped = openai_error_body(parsed, status)
        request_id = request_id_of(scope)
        if request_id and "request_id" not in shaped["error"]:
            shaped["error"]["request_id"] = request_id
        payload = json.dumps(shaped, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in _REPLACED]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({**start, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})
