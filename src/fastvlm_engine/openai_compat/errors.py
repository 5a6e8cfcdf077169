"""Our error body in OpenAI's shape: ``{"error": {"message", "type", "param", "code", ...}}``.

The translation is lossless and idempotent: ``code`` stays our stable code, the HTTP status stays
ours, and every other field of our body (``request_id``, ``retry_after_sec``, ``fields``) is kept;
``type`` comes from the status, ``param`` from the field the error names. SDKs read ``message``,
``type``, ``param`` and ``code``; the rest is there for people and for our own client.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

__all__ = ["error_type", "openai_error_body"]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 429: "rate_limit_error"}


def error_type(status: int) -> str:
    """OpenAI's ``type`` for an HTTP status: 5xx are ``server_error``, other 4xx ``invalid_request_error``."""
    if status >= 500:
        return "server_error"
    return _TYPES.get(status, "invalid_request_error")


def _param(error: Mapping[str, Any]) -> str | None:
    for key in ("param", "field"):
        if isinstance(error.get(key), str):
            return error[key]
    fields = error.get("fields")
    if isinstance(fields, list) and fields and isinstance(fields[0], Mapping):
        name = fields[0].get("field")
        return name if isinstance(name, str) else None
    return None


def openai_error_body(body: Any, status: int) -> dict[str, Any]:
    """The OpenAI-shaped body for our error ``body`` (anything else is described by its status alone)."""
    error = body.get("error") if isinstance(body, Mapping) else None
    error = dict(error) if isinstance(error, Mapping) else {}
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    message = error.pop("message", None)
    code = error.pop("code", None)
    param = _param(error)
    error.pop("param", None)
    kind = error.pop("type", None)
    return {"error": {"message": message if isinstance(message, str) and message else phrase,
                      "type": kind if isinstance(kind, str) and kind else error_type(status),
                      "param": param,
                      "code": code if isinstance(code, str) and code else f"http_{status}",
                      **error}}
