"""Reading one media request off the wire: the whole body first, then parsing in a thread."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from ..config import Settings
from .body import BodyRules, declared_length, receive_body
from .submission import IntakeLimits, MediaKind, MediaRequest, body_kind, parse_submission

__all__ = ["body_rules", "intake_limits", "read_media_request"]


def body_rules(settings: Settings) -> BodyRules:
    return BodyRules(deadline_s=settings.request_body_timeout_s, idle_s=settings.request_body_idle_s,
                     min_rate_bps=settings.request_body_min_rate_kib_s * 1024)


def intake_limits(settings: Settings, kind: MediaKind) -> IntakeLimits:
    return IntakeLimits(media_bytes=settings.media_limit(kind),
                        spool_dir=str(settings.spool_dir) if settings.spool_dir else None)


async def read_media_request(request: Request, kind: MediaKind, limits: IntakeLimits,
                             rules: BodyRules) -> MediaRequest:
    """Receive the complete body within ``rules`` and turn it into a MediaRequest.

    Nothing is decoded or parsed on the event loop: the body goes to a spool as it arrives and
    is parsed (JSON, multipart, base64) in a worker thread once complete.
    """
    content_type = request.headers.get("content-type", "")
    body = limits.body_spool(body_kind(content_type))
    try:
        await receive_body(request.receive, body, rules, declared=declared_length(request.scope["headers"]))
    except BaseException:
        body.close()
        raise
    query = request.scope.get("query_string", b"").decode("latin-1")
    return await asyncio.to_thread(parse_submission, kind, body, content_type, query, limits)
