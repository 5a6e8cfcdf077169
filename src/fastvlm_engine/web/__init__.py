"""HTTP plumbing shared by the router and the worker apps (no torch, no model): the error schema,
pure-ASGI middleware, and serving with connection hygiene and a graceful drain."""

from .errors import (
    REQUEST_ID_HEADER,
    error_response,
    install_error_handlers,
    invalid_fields,
    request_id_of,
)
from .middleware import BodyLimitMiddleware, InFlight, RequestIdMiddleware, RequestLifecycle
from .openapi import media_body_openapi

__all__ = [
    "REQUEST_ID_HEADER",
    "BodyLimitMiddleware",
    "InFlight",
    "RequestIdMiddleware",
    "RequestLifecycle",
    "error_response",
    "install_error_handlers",
    "invalid_fields",
    "media_body_openapi",
    "request_id_of",
]
