"""Server-sent events: the one framing every streaming route uses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

__all__ = ["SSE_DONE", "SSE_HEADERS", "SSE_MEDIA_TYPE", "sse_event", "sse_stream"]

SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by nginx-style proxies in front of the router."""
SSE_DONE = b"data: [DONE]\n\n"
"""The OpenAI protocol's last event: the stream is complete."""


def sse_event(data: Any, event: str | None = None) -> bytes:
    """One event: ``event: <name>`` (when given) and ``data: <json>``; JSON never spans lines."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return (head + f"data: {payload}\n\n").encode()


async def sse_stream(events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[bytes]:
    """Frame (event name, data) pairs."""
    async for event, data in events:
        yield sse_event(data, event)
