"""At most one warning per interval for events an outsider can trigger at will.

Refused cluster requests and rejected registry entries are what an attacker produces, as fast as
they like; logging each would let them flood the logs (and the disk). The first one is logged,
then one per interval with the number left out in between.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["LogLimiter", "untrusted"]


class LogLimiter:
    def __init__(self, interval_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._skipped = 0
        self._lock = threading.Lock()

    def allow(self) -> int | None:
        """None when this event should not be logged; else how many events were left out before it."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval_s:
                self._skipped += 1
                return None
            skipped, self._skipped, self._last = self._skipped, 0, now
            return skipped


def untrusted(text: object, limit: int = 64) -> str:
    """A value from an unverified source, made safe to log: printable, and cut to ``limit`` characters."""
    shown = "".join(c if c.isprintable() else "?" for c in str(text)[:limit])
    return shown + ("..." if len(str(text)) > limit else "")
