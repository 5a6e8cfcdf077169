"""API and admin keys: stored only as SHA-256 hashes, compared in constant time, rate limited.

A key is accepted as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Logs and errors
only ever see a key's id (the first 12 hex digits of its hash), never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["INTERNAL_TOKEN_HEADER", "KeyRing", "RateLimiter", "hash_key", "key_id", "load_key_file", "new_key",
           "presented_key"]

INTERNAL_TOKEN_HEADER = "X-FastVLM-Internal-Token"
"""Router → worker calls carry the per-process token the router gave the worker in this header."""

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in configuration."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_id(digest: str) -> str:
    """A short, non-secret name for a key in logs."""
    return digest[:12]


def new_key() -> tuple[str, str]:
    """A fresh random key and its hash."""
    key = "fvk_" + secrets.token_urlsafe(32)
    return key, hash_key(key)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries, from ``Authorization: Bearer`` or ``X-API-Key``."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    api_key = headers.get("x-api-key", "").strip()
    return api_key or None


def load_key_file(path: str | Path) -> dict[str, float | None]:
    """``<sha256> [requests per minute]`` per line, ``#`` comments; raises ValueError naming the line."""
    keys: dict[str, float | None] = {}
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        digest = parts[0].lower()
        if not _DIGEST.match(digest) or len(parts) > 2:
            raise ValueError(f"{path}:{number}: expected '<sha256 hex> [requests per minute]'")
        try:
            rate = float(parts[1]) if len(parts) == 2 else None
        except ValueError:
            raise ValueError(f"{path}:{number}: the rate must be a number of requests per minute") from None
        if rate is not None and rate < 0:
            raise ValueError(f"{path}:{number}: the rate must not be negative")
        keys[digest] = rate
    return keys


class KeyRing:
    """Accepted key hashes, each with an optional per-minute rate of its own."""

    def __init__(self, digests: Iterable[str] | Mapping[str, float | None]) -> None:
        entries = digests.items() if isinstance(digests, Mapping) else ((d, None) for d in digests)
        self._rates = {digest.lower(): rate for digest, rate in entries}

    def __bool__(self) -> bool:
        return bool(self._rates)

    def verify(self, key: str | None) -> str | None:
        """The matching key's id, or None. Every stored hash is compared, in constant time."""
        if not key:
            return None
        presented = hash_key(key)
        match = None
        for digest in self._rates:
            if hmac.compare_digest(presented, digest):
                match = digest
        return key_id(match) if match else None

    def rate_for(self, identity: str, default: float) -> float:
        """Requests per minute allowed for the key with this id (0 = unlimited)."""
        for digest, rate in self._rates.items():
            if key_id(digest) == identity:
                return default if rate is None else rate
        return default


class RateLimiter:
    """A token bucket per key: ``rate`` requests per minute, bursting up to one minute's worth."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last refill)
        self._lock = threading.Lock()

    def take(self, identity: str, rate_per_minute: float) -> float:
        """0 if the request may go ahead (a token is taken), else seconds until one is available."""
        if rate_per_minute <= 0:
            return 0.0
        capacity = max(1.0, rate_per_minute)
        per_second = rate_per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(identity, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * per_second)
            if tokens >= 1.0:
                self._buckets[identity] = (tokens - 1.0, now)
                return 0.0
            self._buckets[identity] = (tokens, now)
            return (1.0 - tokens) / per_second
