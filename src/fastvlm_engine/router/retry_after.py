"""How long a shed client should wait: measured state, not constants.

Little's law gives the wait for a free slot: roughly (work ahead of you) x (service time) /
(slots). Work ahead is what is in flight plus the clients recently turned away (they are about
to come back); service time is an EWMA of measured durations per endpoint. ``X-Retry-Attempt``
raises the estimate so clients that keep colliding spread out, and the result is clamped per
endpoint. Clients still add their own jitter and backoff on top (see client.py).

Turned-away clients are counted once each (by API key, else address: a request id is the
client's to choose), so one client retrying in a tight loop cannot push everyone's hint to the cap.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from ..stats import Ewma

__all__ = ["MAX_ATTEMPT", "Ewma", "RetryAfterEstimator", "parse_attempt"]


MAX_ATTEMPT = 10
"""Attempts above this count as this; the header is client-controlled and must stay harmless."""


def parse_attempt(value: str | None) -> int:
    """``X-Retry-Attempt`` as a small non-negative int; anything malformed counts as 0."""
    if not value:
        return 0
    text = value.strip()
    if len(text) > 12:  # huge numbers: cap instead of parsing 10k digits
        return MAX_ATTEMPT if text.isdigit() else 0
    try:
        number = float(text)
    except ValueError:
        return 0
    if not math.isfinite(number) or number <= 0:
        return 0
    return min(MAX_ATTEMPT, int(number))


@dataclass(frozen=True)
class Bounds:
    low: float
    high: float

    def clamp(self, value: float) -> float:
        return min(self.high, max(self.low, value))


class RetryAfterEstimator:
    """Per-endpoint service-time EWMAs and recent rejections, turned into a bounded wait."""

    def __init__(self, bounds: dict[str, tuple[float, float]], priors: dict[str, float],
                 attempt_growth: float = 0.5, alpha: float = 0.2) -> None:
        for endpoint, (low, high) in bounds.items():
            if not 0 < low <= high:
                raise ValueError(f"bounds for {endpoint} must satisfy 0 < low <= high")
        self.bounds = {endpoint: Bounds(low, high) for endpoint, (low, high) in bounds.items()}
        self.service = {endpoint: Ewma(priors[endpoint], alpha) for endpoint in bounds}
        self.attempt_growth = attempt_growth
        self._rejections: dict[str, OrderedDict[str, float]] = {endpoint: OrderedDict() for endpoint in bounds}
        self._anonymous = 0

    def observe(self, endpoint: str, seconds: float) -> None:
        """Record the duration of a completed request."""
        self.service[endpoint].update(seconds)

    def rejected(self, endpoint: str, client: str | None = None, now: float | None = None) -> None:
        """Record a turned-away client; it counts as waiting for about one service time."""
        if client is None:
            self._anonymous += 1
            client = f"anonymous-{self._anonymous}"
        rejections = self._rejections[endpoint]
        rejections.pop(client, None)
        rejections[client] = time.monotonic() if now is None else now
        while len(rejections) > 10_000:
            rejections.popitem(last=False)

    def waiting(self, endpoint: str, now: float | None = None) -> int:
        """Distinct clients turned away within the last service time (they are about to retry)."""
        now = time.monotonic() if now is None else now
        horizon = now - max(1.0, self.service[endpoint].get())
        rejections = self._rejections[endpoint]
        while rejections and next(iter(rejections.values())) < horizon:
            rejections.popitem(last=False)
        return len(rejections)

    def estimate(self, endpoint: str, *, in_flight: int, capacity: int, attempt: int = 0,
                 now: float | None = None) -> float:
        """Seconds until a retry is likely to find a free slot, clamped to the endpoint's bounds."""
        service = self.service[endpoint].get()
        ahead = max(0, in_flight) + self.waiting(endpoint, now) + 1
        wait = service * ahead / max(1, capacity)
        wait *= 1.0 + self.attempt_growth * min(MAX_ATTEMPT, max(0, attempt))
        return round(self.bounds[endpoint].clamp(wait), 3)
