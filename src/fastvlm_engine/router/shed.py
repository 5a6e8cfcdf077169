"""Turning a media request away cheaply when no worker slot is free and none can be waited for.

Under overload most requests are shed, so a shed must cost the router as little as possible:
the per-request tasks, the body limit, routing, dependency solving and exception handling that an
admitted request goes through would otherwise cost more than the 503 itself. This pure-ASGI
middleware sits just inside the access guard (keys, allowlist and rate limits still decide first,
and the request still gets its id, metrics and trace outside it) and answers 503 before the
body is read. What it answers is what the endpoint would: ``media.shed_error``.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import InvalidTags
from ..web import error_response, request_id_of
from .admission import IMAGE, VIDEO
from .jobs import wants_job
from .media import required_tags, shed_error
from .state import RouterState

__all__ = ["ShedMiddleware"]

_MEDIA = frozenset({IMAGE, VIDEO})


class ShedMiddleware:
    def __init__(self, app: ASGIApp, *, state: RouterState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in _MEDIA:
            state, endpoint = self.state, scope["path"]
            request = Request(scope)
            if not state.draining and not wants_job(request, state.settings.mode):
                try:
                    tags = required_tags(request, state.settings, endpoint)
                except InvalidTags:
                    tags = None  # the endpoint answers it
                if tags is not None and not state.admission.available(endpoint, tags):
                    error = shed_error(state, request, endpoint, tags)
                    await error_response(error, request_id_of(scope))(scope, receive, send)
                    return
        await self.app(scope, receive, send)
