"""The one error a conversion raises, carrying every offending key so the user sees them all at once."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["ConversionError"]

_SHOWN_PER_LIST = 40


class ConversionError(ValueError):
    """An Apple-format checkpoint cannot be converted; nothing was written to the destination.

    ``problems`` maps a heading ("missing keys", "unknown keys", ...) to the keys concerned; the
    message lists them (the first few dozen of each, then a count).
    """

    def __init__(self, message: str, problems: Mapping[str, Sequence[str]] | None = None) -> None:
        self.problems = {heading: list(keys) for heading, keys in (problems or {}).items() if keys}
        lines = [message]
        for heading, keys in self.problems.items():
            lines.append(f"{heading} ({len(keys)}):")
            lines.extend(f"  {key}" for key in keys[:_SHOWN_PER_LIST])
            if len(keys) > _SHOWN_PER_LIST:
                lines.append(f"  ... and {len(keys) - _SHOWN_PER_LIST} more")
        super().__init__("\n".join(lines))
