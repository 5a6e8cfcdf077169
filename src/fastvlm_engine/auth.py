"""API and admin keys: stored only as SHA-256 hashes, compared in constant time.

A key is accepted as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Logs and errors
only ever see a key's id (the first 12 hex digits of its hash), never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

__all__ = ["KeyRing", "hash_key", "key_id", "new_key", "presented_key"]


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


class KeyRing:
    """A set of accepted key hashes."""

    def __init__(self, digests: Iterable[str]) -> None:
        self._digests = tuple(d.lower() for d in digests)

    def __bool__(self) -> bool:
        return bool(self._digests)

    def verify(self, key: str | None) -> str | None:
        """The matching key's id, or None. Every stored hash is compared, in constant time."""
        if not key:
            return None
        presented = hash_key(key)
        match = None
        for digest in self._digests:
            if hmac.compare_digest(presented, digest):
                match = digest
        return key_id(match) if match else None
