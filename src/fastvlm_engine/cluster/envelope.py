"""The signed wrapper around every value the cluster keeps in Redis.

Stored text: ``{"v": 1, "entry": "<canonical JSON>", "sig": "<hex HMAC of entry>" | null}``. The
entry is kept as a string so that exactly the signed bytes are verified, with no re-encoding. A
process with the cluster secret accepts only entries signed with its key for that purpose; one
without the secret (loopback-only development) accepts only unsigned ones, since it can check
nothing else, and says so instead of silently ignoring a signature it cannot verify.
"""

from __future__ import annotations

import json

from .secret import sign, signature_matches

__all__ = ["MAX_ENVELOPE_BYTES", "BadEnvelope", "open_envelope", "seal"]

VERSION = 1
MAX_ENVELOPE_BYTES = 64 * 1024
"""Larger values are refused before parsing (a registration is well under 2 KiB)."""


class BadEnvelope(ValueError):
    """A stored value that must not be used; the message is a short reason for the log."""


def seal(key: bytes | None, entry: str) -> bytes:
    """Wrap ``entry``, signed with ``key`` (unsigned when None)."""
    signature = sign(key, entry.encode()) if key is not None else None
    return json.dumps({"v": VERSION, "entry": entry, "sig": signature}, separators=(",", ":")).encode()


def open_envelope(key: bytes | None, data: bytes) -> str:
    """The entry text, once its signature (or, without a key, its lack of one) checks out."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise BadEnvelope("too large")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadEnvelope("not a signed entry (not JSON)") from None
    if not isinstance(document, dict) or document.get("v") != VERSION or not isinstance(document.get("entry"), str):
        raise BadEnvelope("not a signed entry (unknown layout)")
    entry, signature = document["entry"], document.get("sig")
    if key is None:
        if signature is not None:
            raise BadEnvelope("signed, but this process has no cluster secret to check it")
        return entry
    if signature is None:
        raise BadEnvelope("unsigned")
    if not signature_matches(key, entry.encode("utf-8", "surrogatepass"), signature):
        raise BadEnvelope("bad signature (another secret, or altered)")
    return entry
