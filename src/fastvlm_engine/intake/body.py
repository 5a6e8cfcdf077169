"""Receiving a request body completely, within limits, before any capacity is spent on it.

A body must arrive within ``deadline_s`` in all, with no gap between chunks longer than
``idle_s``, and — after its first ``idle_s`` — at an average of at least ``min_rate_bps`` bytes
per second. A client too slow for any of these gets 408 ``request_timeout`` and its connection
is closed; one that passes the size limit gets 413 at that moment; one that disconnects is
counted as 499 ``client_closed``. Nothing here decodes or parses: the bytes go to a
:class:`~fastvlm_engine.intake.spool.Spool`, and writes that reach the disk run in a thread so a
slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.types import Receive

from ..errors import ClientClosedRequest, HttpError, PayloadTooLarge, RequestTimeout
from .spool import Spool

__all__ = ["BodyRules", "declared_length", "receive_body"]

_FLUSH_BYTES = 1 << 20


@dataclass(frozen=True)
class BodyRules:
    """How long a body may take to arrive, and how slowly."""

    deadline_s: float
    idle_s: float
    min_rate_bps: float

    def __post_init__(self) -> None:
        if self.deadline_s <= 0 or self.idle_s <= 0 or self.min_rate_bps < 0:
            raise ValueError("deadline_s and idle_s must be positive and min_rate_bps not negative")


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length a request declares; 400 when it is not a number (or is given twice, differently)."""
    values = {value.strip() for name, value in headers if name == b"content-length"}
    if not values:
        return None
    if len(values) > 1 or not next(iter(values)).isdigit():
        raise HttpError("The Content-Length header is not a number.", status=400)
    return int(next(iter(values)))


async def receive_body(receive: Receive, spool: Spool, rules: BodyRules, *,
                       declared: int | None = None, clock=time.monotonic) -> Spool:
    """Read the whole body into ``spool`` (which enforces the size limit); returns it finished."""
    if declared is not None and declared > spool.max_bytes:
        raise PayloadTooLarge(f"The body is {declared} bytes; the limit is {spool.max_bytes}.")
    started = clock()
    pending = bytearray()
    received = 0
    while True:
        now = clock()
        floor_at = started + rules.idle_s + (received / rules.min_rate_bps if rules.min_rate_bps else float("inf"))
        wait = min(rules.idle_s, started + rules.deadline_s - now, floor_at - now)
        if wait <= 0:
            raise _too_slow(received, now - started)
        try:
            async with asyncio.timeout(wait):
                message = await receive()
        except TimeoutError:
            raise _too_slow(received, clock() - started) from None
        if message["type"] == "http.disconnect":
            raise ClientClosedRequest()
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > spool.max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit of {spool.max_bytes} bytes.")
        pending += chunk
        more = message.get("more_body", False)
        if len(pending) >= _FLUSH_BYTES or not more:
            await _flush(spool, pending)
        if not more:
            return spool.finish()


async def _flush(spool: Spool, pending: bytearray) -> None:
    data = bytes(pending)
    pending.clear()
    if spool.will_spill(len(data)):
        await asyncio.to_thread(spool.write, data)
    else:
        spool.write(data)


def _too_slow(received: int, elapsed: float) -> RequestTimeout:
    return RequestTimeout(f"The request body arrived too slowly ({received} bytes in {elapsed:.1f}s); "
                          "send it faster or in a smaller request.")
