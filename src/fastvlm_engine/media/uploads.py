"""Base64 uploads: size-checked before decoding, tolerant of data: URLs, line breaks and urlsafe."""

from __future__ import annotations

import binascii
import re
from base64 import b64decode

from ..errors import InvalidRequest, MediaTooLarge

__all__ = ["decode_base64"]

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")
_URLSAFE = str.maketrans("-_", "+/")


def decode_base64(value: str, *, field: str, max_bytes: int) -> bytes:
    """Decode a base64 field, refusing anything that would exceed ``max_bytes`` decoded."""
    text = _WHITESPACE.sub("", _DATA_URL.sub("", value, count=1))
    if len(text) * 3 // 4 > max_bytes + 2:
        raise MediaTooLarge(f"{field} decodes to more than the limit of {max_bytes} bytes.")
    text = text.translate(_URLSAFE)
    text += "=" * (-len(text) % 4)
    try:
        data = b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{field} is not valid base64.", field=field) from None
    if not data:
        raise InvalidRequest(f"{field} is empty.", field=field)
    if len(data) > max_bytes:
        raise MediaTooLarge(f"{field} decodes to {len(data)} bytes; the limit is {max_bytes}.")
    return data
