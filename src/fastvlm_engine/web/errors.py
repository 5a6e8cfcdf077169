"""Every failure answered in the one error schema, never an HTML page, a trace or a path.

Unknown routes, wrong methods, malformed JSON, schema violations, oversized bodies and unexpected
exceptions all go through :func:`install_error_handlers` and :func:`error_response`.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ..errors import (
    EngineError,
    HttpError,
    InvalidJSON,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
)
from ..headers import REQUEST_ID_HEADER

__all__ = [
    "REQUEST_ID_HEADER",
    "error_response",
    "install_error_handlers",
    "invalid_fields",
    "request_id_of",
]

log = logging.getLogger(__name__)



def request_id_of(scope_or_request: Scope | Request) -> str | None:
    """The request id the middleware assigned to this request."""
    scope = scope_or_request.scope if isinstance(scope_or_request, Request) else scope_or_request
    return scope.get("state", {}).get("request_id")


def error_response(exc: EngineError, request_id: str | None) -> JSONResponse:
    """Render any EngineError with its status, body and headers."""
    headers = exc.headers()
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(exc.to_body(request_id), status_code=exc.status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _validation_error(exc: RequestValidationError) -> EngineError:
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        return InvalidJSON()
    if any(err.get("type") == "missing" and tuple(err.get("loc", ())) == ("body",) for err in errors):
        return InvalidJSON("The request body is empty; send a JSON object.")
    return invalid_fields(errors)


def invalid_fields(errors: list[Any]) -> InvalidRequest:
    """422 naming each bad field (at most ten), from pydantic's error list."""
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
            error = HttpError(str(exc.detail)[:200], status=exc.status_code)
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

