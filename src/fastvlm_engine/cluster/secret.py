"""The cluster secret (``FASTVLM_CLUSTER_SECRET``): one HMAC-SHA256 key per purpose, derived from it.

Every router, node and worker of a cluster holds the same secret. It is never used directly:
each purpose (signing requests, signing registrations, signing host drains) gets its own key,
``HMAC(secret, "fastvlm-cluster/<purpose>")``, so a signature made for one purpose is never valid
for another (a signed request cannot be replayed as a registration, or the reverse). Signatures
are lower-case hex and compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re

__all__ = ["MIN_SECRET_CHARS", "PURPOSES", "derive_key", "sign", "signature_matches"]

MIN_SECRET_CHARS = 16
"""Shortest secret accepted: a guessable secret would make every signature forgeable."""
PURPOSES = ("request", "registration", "drain")

_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")


def derive_key(secret: bytes, purpose: str) -> bytes:
    """The HMAC key for one purpose; raises ValueError for an empty secret or an unknown purpose."""
    if not secret:
        raise ValueError("the cluster secret is empty")
    if purpose not in PURPOSES:
        raise ValueError(f"unknown signing purpose {purpose!r}; expected one of {', '.join(PURPOSES)}")
    return hmac.new(secret, f"fastvlm-cluster/{purpose}".encode(), hashlib.sha256).digest()


def sign(key: bytes, message: bytes) -> str:
    """HMAC-SHA256 of ``message``, as 64 lower-case hex digits."""
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def signature_matches(key: bytes, message: bytes, signature: object) -> bool:
    """Constant-time check of a presented signature; anything that is not 64 hex digits is simply wrong."""
    if not isinstance(signature, str) or not _HEX_SIGNATURE.fullmatch(signature):
        return False
    return hmac.compare_digest(sign(key, message), signature)
