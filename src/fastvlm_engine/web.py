"""HTTP plumbing shared by the router and the worker apps (no torch, no model).

Every response that is not a success goes through :func:`install_error_handlers`, so unknown
routes, wrong methods, malformed JSON, schema violations, oversized bodies and unexpected
exceptions all answer with the one error schema from :mod:`fastvlm_engine.errors` — never an
HTML page, a stack trace or a server path.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import (
    EngineError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    error_body,
)
from .observability.logs import request_id_var

__all__ = [
    "REQUEST_ID_HEADER",
    "BodyLimitMiddleware",
    "RequestIdMiddleware",
    "json_body_openapi",
    "parse_json_body",
    "parse_json_bytes",
    "error_response",
    "install_error_handlers",
    "request_id_of",
]

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_of(scope_or_request: Scope | Request) -> str | None:
    """The request id the middleware assigned to this request."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id")


class RequestIdMiddleware:
    """Accept a sane ``X-Request-ID`` or mint one, and echo it on the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["request_id_from_client"] = request_id == incoming
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


def error_response(exc: EngineError, request_id: str | None) -> JSONResponse:
    """Render any EngineError with its status, body and headers."""
    headers = exc.headers()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(exc.to_body(request_id), status_code=exc.http_status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_error(exc: RequestValidationError) -> EngineError:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return InvalidJSON()
    if any(err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",) for err in errors):
        return InvalidJSON("The request body is empty; send a JSON object.")
    return _invalid_fields(errors)


def _invalid_fields(errors: list[Any]) -> InvalidRequest:
    fields = []
    for err in errors[:10]:
        message = str(err.get("msg", "invalid value"))
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        fields.append({"field": _field_name(tuple(err.get("loc", ()))), "message": message})
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return InvalidRequest(f"Invalid request: {summary}", fields=fields)


def install_error_handlers(app: FastAPI) -> None:
    """Route every failure through the one error schema."""

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> JSONResponse:
        return error_response(exc, request_id_of(request))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(exc), request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error: EngineError = RouteNotFound(f"No endpoint {request.method} {request.url.path}."[:200])
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.url.path} does not accept {request.method}."[:200])
        elif exc.status_code == 413:
            error = PayloadTooLarge()
        elif exc.status_code == 400:
            error = InvalidJSON("The request body could not be read.")
        else:
            response = JSONResponse(error_body("http_error", str(exc.detail)[:200],
                                               request_id=request_id_of(request)),
                                    status_code=exc.status_code)
            return response
        response = error_response(error, request_id_of(request))
        if exc.headers:
            response.headers.update(exc.headers)  # e.g. Allow on 405
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        response = error_response(EngineError(), request_id_of(request))
        # The server closes the connection after an unhandled error; say so, so that pooled
        # clients (the router's) do not send the next request down a dead connection.
        response.headers["Connection"] = "close"
        return response


M = TypeVar("M", bound=BaseModel)


async def parse_json_body(request: Request, model: type[M]) -> M:
    """Read and validate a JSON object body, whatever Content-Type the client sent.

    Handlers call this after admission, so nothing is read for a request that is turned away.
    """
    return parse_json_bytes(await request.body(), model)


def parse_json_bytes(body: bytes, model: type[M]) -> M:
    """Validate raw bytes as a JSON object of ``model``, raising InvalidJSON or InvalidRequest."""
    if not body.strip():
        raise InvalidJSON("The request body is empty; send a JSON object.")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidJSON() from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.",
                             fields=[{"field": "body", "message": "expected a JSON object"}])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _invalid_fields(exc.errors(include_input=False)) from None


def json_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON request body of a manually parsed route."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


class BodyLimitMiddleware:
    """Refuse bodies over the route's limit while reading, before they are held in memory.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is counted as it streams and refused the moment it passes the limit.
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
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            response = error_response(PayloadTooLarge(f"The body is larger than {limit} bytes."),
                                      request_id_of(scope))
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
