"""Turning user text into a safe chat prompt.

A user prompt is data, never markup: ``<image>`` or ChatML markers typed by a client would add
image slots (a crash in the original service) or forge turns. They are removed until none is
left, so overlapping tricks like ``<ima<image>ge>`` cannot rebuild one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["strip_controls", "sanitize_prompt"]

# C0/C1 control characters other than tab and newline carry no meaning in a prompt.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_controls(text: str) -> str:
    """Remove control characters other than tab and newline (from prompts and model output)."""
    return _CONTROL.sub("", text)


def sanitize_prompt(text: str, reserved: Iterable[str]) -> str:
    """Remove every reserved token string (repeatedly) and control characters; trim whitespace."""
    tokens = sorted({t for t in reserved if t}, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in tokens)) if tokens else None
    text = strip_controls(text)
    while pattern is not None:
        cleaned = pattern.sub("", text)
        if cleaned == text:
            break
        text = cleaned
    return text.strip()
