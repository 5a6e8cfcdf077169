"""A rolling window of the router's request outcomes and latencies, for the console's live charts.

The console must show request rate, error rate and p50/p99 latency over the last minutes without a
Prometheus server, so the router keeps them itself: one finished API request is one
:meth:`LiveStats.observe` call (TelemetryMiddleware's observer hook), and ``GET /status`` reads
:meth:`LiveStats.snapshot`.

Memory is fixed whatever the load: per endpoint, ``WINDOW_S / BUCKET_S`` time buckets, each holding
outcome counts and a sparse histogram of the latencies of successful requests on a geometric grid
(each bin ``RATIO`` times wider than the last). A percentile read from the histogram is the
geometric middle of the bin that holds the exact nearest-rank value, clamped to the slowest and
fastest request seen, so it is within ``sqrt(RATIO) - 1`` (4.9 %) of the exact value.

Everything runs on the router's event loop (the middleware and the route), so there is no lock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..observability.http import RequestOutcome

__all__ = ["BUCKET_S", "RATIO", "WINDOW_S", "LiveStats", "percentile"]

BUCKET_S = 10.0
"""Width of one point of the console's charts."""
WINDOW_S = 600.0
"""How far back the charts reach."""
RATIO = 1.1
"""Latency histogram grid: each bin is this much wider than the one below it."""
_FLOOR_MS = 0.1  # everything at or below this falls into bin 0
_LOG_RATIO = math.log(RATIO)


def _bin(ms: float) -> int:
    if ms <= _FLOOR_MS:
        return 0
    return max(0, math.ceil(math.log(ms / _FLOOR_MS) / _LOG_RATIO - 1e-9))


def _bin_middle(index: int) -> float:
    return _FLOOR_MS * RATIO ** (index - 0.5)


@dataclass
class _Latencies:
    """A sparse histogram (bin -> count) plus the extremes, so percentiles can be clamped."""

    bins: dict[int, int] = field(default_factory=dict)
    fastest_ms: float = math.inf
    slowest_ms: float = 0.0

    def add(self, ms: float) -> None:
        index = _bin(ms)
        self.bins[index] = self.bins.get(index, 0) + 1
        self.fastest_ms = min(self.fastest_ms, ms)
        self.slowest_ms = max(self.slowest_ms, ms)

    def merge(self, other: _Latencies) -> None:
        for index, count in other.bins.items():
            self.bins[index] = self.bins.get(index, 0) + count
        self.fastest_ms = min(self.fastest_ms, other.fastest_ms)
        self.slowest_ms = max(self.slowest_ms, other.slowest_ms)

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1) in ms, None without samples."""
        total = sum(self.bins.values())
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index in sorted(self.bins):
            seen += self.bins[index]
            if seen >= rank:
                return round(min(self.slowest_ms, max(self.fastest_ms, _bin_middle(index))), 2)
        return round(self.slowest_ms, 2)  # unreachable: the counts add up to total


def percentile(latencies_ms: Iterable[float], q: float) -> float | None:
    """The histogram's estimate of the ``q`` quantile of these latencies (for tests and benches)."""
    histogram = _Latencies()
    for ms in latencies_ms:
        histogram.add(ms)
    return histogram.percentile(q)


@dataclass
class _Bucket:
    requests: int = 0
    client_errors: int = 0  # 4xx: refused requests (bad input, keys, rate limits, closed by the client)
    errors: int = 0  # 5xx: the service failed or shed the request
    latencies: _Latencies = field(default_factory=_Latencies)  # of successful requests only

    def add(self, outcome: RequestOutcome) -> None:
        self.requests += 1
        if outcome.status >= 500:
            self.errors += 1
        elif outcome.status >= 400:
            self.client_errors += 1
        else:
            self.latencies.add(outcome.seconds * 1000)

    def document(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "client_errors": self.client_errors,
                "p50_ms": self.latencies.percentile(0.5), "p99_ms": self.latencies.percentile(0.99)}


class LiveStats:
    """Outcomes and latencies of the last ``window_s`` seconds per endpoint, in ``bucket_s`` steps."""

    def __init__(self, endpoints: Iterable[str], *, bucket_s: float = BUCKET_S, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.time) -> None:
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError("bucket_s must be > 0 and window_s at least one bucket")
        self.bucket_s = bucket_s
        self.window_s = window_s
        self._clock = clock
        self._buckets_kept = math.ceil(window_s / bucket_s)
        self._started = self._index(clock())
        self._series: dict[str, dict[int, _Bucket]] = {endpoint: {} for endpoint in endpoints}

    def _index(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def _prune(self, series: dict[int, _Bucket], current: int) -> None:
        for index in [i for i in series if i <= current - self._buckets_kept]:
            del series[index]

    def observe(self, outcome: RequestOutcome) -> None:
        """Count one finished request (other endpoints than the tracked ones are ignored)."""
        series = self._series.get(outcome.endpoint)
        if series is None:
            return
        current = self._index(self._clock())
        series.setdefault(current, _Bucket()).add(outcome)
        self._prune(series, current)

    def snapshot(self) -> dict[str, Any]:
        """Every tracked endpoint's totals over the window and its series, oldest bucket first.

        Each point covers ``seconds`` of time starting at ``t`` (Unix seconds): ``bucket_s``, or
        less for the bucket in progress, so ``requests / seconds`` is a rate. The series starts at
        the window's start or when the router started, whichever is later.
        """
        now = self._clock()
        current = self._index(now)
        first = max(self._started, current - self._buckets_kept + 1)
        endpoints = {}
        for endpoint, series in self._series.items():
            self._prune(series, current)
            points, total = [], _Bucket()
            for index in range(first, current + 1):
                bucket = series.get(index, _Bucket())
                start = index * self.bucket_s
                seconds = min(self.bucket_s, max(0.0, now - start))
                points.append({"t": round(start, 3), "seconds": round(seconds, 3), **bucket.document()})
                total.requests += bucket.requests
                total.errors += bucket.errors
                total.client_errors += bucket.client_errors
                total.latencies.merge(bucket.latencies)
            endpoints[endpoint] = {**total.document(), "series": points}
        return {"bucket_s": self.bucket_s, "window_s": self.window_s, "now": round(now, 3), "endpoints": endpoints}
