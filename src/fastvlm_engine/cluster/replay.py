"""A bounded memory of the nonces a worker has accepted, so a signed request is answered once.

A nonce only needs remembering while its timestamp is inside the replay window: older requests
are refused by the timestamp check anyway. So entries are pruned by their request timestamp, and
only requests whose signature already verified are recorded at all: garbage (unsigned or badly
signed requests, however many) never reaches the cache.

A flood of validly signed requests could still exceed ``max_entries`` within one window. The
cache then forgets its oldest entries, but raises a *floor* to the newest timestamp it forgot:
every request at or below the floor is refused from then on. A forgotten nonce therefore cannot
be replayed; the price under such a flood is that a legitimately delayed request may be refused
(the router fails over to another worker), never that a replay gets through.
"""

from __future__ import annotations

import heapq
import threading

__all__ = ["DEFAULT_MAX_NONCES", "NonceCache"]

DEFAULT_MAX_NONCES = 100_000
"""Nonces remembered at most (about 20 MB); a worker accepting more signed requests per replay window than this
refuses the oldest-stamped of them (see the module docstring)."""


class NonceCache:
    """Nonces seen within the window, ordered by their request timestamps. Thread-safe."""

    def __init__(self, window_s: float, max_entries: int = DEFAULT_MAX_NONCES) -> None:
        if window_s <= 0 or max_entries < 1:
            raise ValueError("window_s must be positive and max_entries at least 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: set[str] = set()
        self._by_time: list[tuple[float, str]] = []  # heap of (request timestamp, nonce)
        self._floor = float("-inf")
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, nonce: str, stamp: float, now: float) -> bool:
        """Record ``nonce`` (of a request stamped ``stamp``) and return True, or False when it was
        seen before or its timestamp is at or below the floor of forgotten entries."""
        with self._lock:
            self._prune(now)
            if nonce in self._seen or stamp <= self._floor:
                return False
            self._seen.add(nonce)
            heapq.heappush(self._by_time, (stamp, nonce))
            while len(self._seen) > self.max_entries:
                self._forget_oldest()
            return True

    def _prune(self, now: float) -> None:
        horizon = now - self.window_s
        while self._by_time and self._by_time[0][0] < horizon:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        stamp, nonce = heapq.heappop(self._by_time)
        self._seen.discard(nonce)
        self._floor = max(self._floor, stamp)
