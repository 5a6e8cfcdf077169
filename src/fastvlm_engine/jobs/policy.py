"""The limits a job store applies, taken from the settings once (they carry the defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["JobPolicy", "resolve_state_dir"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class JobPolicy:
    """Every process that opens the same store must use the same policy (the settings' job queue block)."""

    ttl_s: float
    """Finished jobs (and their media) are removed this long after they finish."""
    max_queued_s: float
    """A job still queued this long after it entered the queue ends as expired."""
    max_attempts: int
    """Leases a job may get; when the last one ends without a result the job fails."""
    video_aging_s: float
    """A video queued this long is leased before images."""
    max_media_bytes: int
    """Largest upload the Redis backend stores (SQLite keeps uploads on disk, bounded by the intake limits)."""
    timeout_s: float
    """Longest wait for the backend (Redis connect/command, SQLite lock)."""
    key_prefix: str
    """Namespace of every Redis key."""

    def __post_init__(self) -> None:
        for name in ("ttl_s", "max_queued_s", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.video_aging_s < 0:
            raise ValueError(f"video_aging_s must not be negative, got {self.video_aging_s}")
        if self.max_attempts < 1 or self.max_media_bytes < 1:
            raise ValueError("max_attempts and max_media_bytes must be at least 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> JobPolicy:
        return cls(ttl_s=settings.job_ttl_s, max_queued_s=settings.job_max_queued_s,
                   max_attempts=settings.job_max_attempts, video_aging_s=settings.job_video_aging_s,
                   max_media_bytes=settings.job_max_media_mib * MiB, timeout_s=settings.queue_timeout_s,
                   key_prefix=settings.queue_key_prefix)


def resolve_state_dir(settings: Settings) -> Path:
    """``state_dir``, or ``$XDG_STATE_HOME/fastvlm-engine`` (``~/.local/state/fastvlm-engine``)."""
    if settings.state_dir is not None:
        return settings.state_dir
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fastvlm-engine"
