"""Host tags: what a node offers (``FASTVLM_HOST_TAGS``) and what a request requires (``X-FastVLM-Tags``).

A tag set is a small ``key=value`` mapping written ``gpu=h100,zone=eu-1``. Keys and values are
lower-case letters, digits, ``_``, ``.`` and ``-`` only, so a tag set is safe to log, to put in a
header and to compare byte for byte; the bounds keep a hostile header cheap to parse and match.
A request matches a worker when every required tag is offered with the same value; extra offered
tags do not matter, and nothing is matched by prefix or pattern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["MAX_TAGS", "MAX_TAG_KEY_CHARS", "MAX_TAG_VALUE_CHARS", "check_tags", "format_tags", "matches",
           "parse_tags"]

MAX_TAGS = 16
"""Most tags in one set."""
MAX_TAG_KEY_CHARS = 32
MAX_TAG_VALUE_CHARS = 64
MAX_SPEC_CHARS = MAX_TAGS * (MAX_TAG_KEY_CHARS + MAX_TAG_VALUE_CHARS + 2)
"""Longest tag text parsed at all: a longer header is refused before it is split."""

_KEY = re.compile(rf"[a-z0-9_.-]{{1,{MAX_TAG_KEY_CHARS}}}")
_VALUE = re.compile(rf"[a-z0-9_.-]{{1,{MAX_TAG_VALUE_CHARS}}}")
_ALLOWED = "lower-case letters, digits, '_', '.' and '-'"


def _shown(text: str) -> str:
    """The offending part, quoted and cut short (it may come from a client's header)."""
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _check_pair(key: str, value: str) -> None:
    if not _KEY.fullmatch(key):
        raise ValueError(f"tag key {_shown(key)}: expected 1-{MAX_TAG_KEY_CHARS} of {_ALLOWED}")
    if not _VALUE.fullmatch(value):
        raise ValueError(f"tag {key}={_shown(value)}: expected a value of 1-{MAX_TAG_VALUE_CHARS} of {_ALLOWED}")


def parse_tags(spec: str) -> dict[str, str]:
    """``"gpu=h100,zone=eu-1"`` -> ``{"gpu": "h100", "zone": "eu-1"}``; empty text is no tags.

    Raises ValueError naming the bad part: a part without ``=``, a key or value outside the
    alphabet or too long, a key given twice, or more than MAX_TAGS tags.
    """
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"tags: at most {MAX_SPEC_CHARS} characters, got {len(spec)}")
    tags: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep:
            raise ValueError(f"tag {_shown(part)}: expected key=value, like gpu=h100")
        _check_pair(key, value)
        if key in tags:
            raise ValueError(f"tag key {key!r} given twice")
        tags[key] = value
        if len(tags) > MAX_TAGS:
            raise ValueError(f"tags: at most {MAX_TAGS}, got more")
    return tags


def check_tags(tags: Mapping[str, object]) -> dict[str, str]:
    """A mapping (e.g. a TOML table or decoded JSON) checked by the same rules as :func:`parse_tags`."""
    if len(tags) > MAX_TAGS:
        raise ValueError(f"tags: at most {MAX_TAGS}, got {len(tags)}")
    checked: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"tag {_shown(str(key))}: keys and values must be text")
        _check_pair(key, value)
        checked[key] = value
    return checked


def format_tags(tags: Mapping[str, str]) -> str:
    """The inverse of :func:`parse_tags`, keys sorted: ``gpu=h100,zone=eu-1``."""
    return ",".join(f"{key}={tags[key]}" for key in sorted(tags))


def matches(required: Mapping[str, str], offered: Mapping[str, str]) -> bool:
    """True when every required tag is offered with exactly that value (no required tags: always)."""
    return all(offered.get(key) == value for key, value in required.items())
