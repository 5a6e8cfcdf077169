"""Whole-video visual statistics from the analysis pass, and the tags derived from them.

All four signals come for free from the per-frame features (no extra decoding or conversion):
brightness (mean luma), colourfulness (Hasler-Suesstrunk M), motion (mean absolute luma change
between consecutive frames, cut frames excluded) and cut rate (cuts per minute). The tag
thresholds below are documented constants; they were set on the generated test videos and
the scales of the underlying measures, and should be recalibrated on real clips.
"""

from __future__ import annotations

from dataclasses import dataclass

from .features import FrameFeatures

__all__ = [
    "BRIGHT_MIN",
    "CALM_MAX_CUTS_PER_MIN",
    "CALM_MAX_MOTION",
    "DARK_MAX",
    "FAST_PACED_MIN_CUTS_PER_MIN",
    "HIGH_MOTION_MIN",
    "MUTED_MAX",
    "STATIC_MAX_MOTION",
    "VIBRANT_MIN",
    "SignalAccumulator",
    "VisualSignals",
    "visual_tags",
]

DARK_MAX = 0.25
"""Mean luma (0..1) at or below which a video is 'dark'."""
BRIGHT_MIN = 0.70
"""Mean luma at or above which a video is 'bright'."""
VIBRANT_MIN = 59.0
"""Colourfulness at or above which a video is 'vibrant' (Hasler-Suesstrunk: 59 = 'quite colourful')."""
MUTED_MAX = 15.0
"""Colourfulness at or below which a video is 'muted' (15 = 'slightly colourful')."""
FAST_PACED_MIN_CUTS_PER_MIN = 20.0
"""A cut every 3 s or more often is 'fast-paced'."""
CALM_MAX_CUTS_PER_MIN = 6.0
"""At most one cut per 10 s ..."""
CALM_MAX_MOTION = 0.02
"""... and little motion is 'calm'."""
STATIC_MAX_MOTION = 0.004
"""Mean |dY|/255 per frame below which nothing moves ('static'; encoder/sensor noise ~0.002-0.01)."""
HIGH_MOTION_MIN = 0.05
"""Mean |dY|/255 per frame at or above which a video is 'high-motion' (fast pans, action)."""


@dataclass(frozen=True)
class VisualSignals:
    """Per-video visual statistics."""

    brightness: float
    """Mean luma, 0 (black) .. 1 (white)."""
    colourfulness: float
    """Mean Hasler-Suesstrunk colourfulness M (0 grey; ~33 moderate, ~59 quite, ~82 highly)."""
    motion: float
    """Mean absolute luma change between consecutive frames, 0..1, cuts excluded."""
    cut_rate: float
    """Cuts per minute."""


class SignalAccumulator:
    """Running sums of the per-frame features; O(1) memory."""

    def __init__(self) -> None:
        self._frames = 0
        self._luma = 0.0
        self._colour = 0.0
        self._motion = 0.0
        self._motion_frames = 0

    def push(self, features: FrameFeatures) -> None:
        """Add one frame."""
        self._frames += 1
        self._luma += features.luma_mean
        self._colour += features.colourfulness
        if features.index > 0:
            self._motion += features.luma_diff
            self._motion_frames += 1

    def discount_cut(self, luma_diff: float) -> None:
        """Take a hard cut's frame back out of the motion mean (cuts are decided a few frames
        after they are pushed; a cut's jump is not camera motion)."""
        if self._motion_frames:
            self._motion -= luma_diff
            self._motion_frames -= 1

    def result(self, *, duration: float, cuts: int) -> VisualSignals:
        frames = max(1, self._frames)
        return VisualSignals(
            brightness=self._luma / frames,
            colourfulness=self._colour / frames,
            motion=self._motion / self._motion_frames if self._motion_frames else 0.0,
            cut_rate=cuts * 60.0 / duration if duration > 0 else 0.0,
        )


def visual_tags(signals: VisualSignals) -> list[str]:
    """Tags in a fixed order: brightness, colour, pace, motion."""
    tags: list[str] = []
    if signals.brightness <= DARK_MAX:
        tags.append("dark")
    elif signals.brightness >= BRIGHT_MIN:
        tags.append("bright")
    if signals.colourfulness >= VIBRANT_MIN:
        tags.append("vibrant")
    elif signals.colourfulness <= MUTED_MAX:
        tags.append("muted")
    if signals.cut_rate >= FAST_PACED_MIN_CUTS_PER_MIN:
        tags.append("fast-paced")
    elif signals.cut_rate <= CALM_MAX_CUTS_PER_MIN and signals.motion < CALM_MAX_MOTION:
        tags.append("calm")
    if signals.motion < STATIC_MAX_MOTION:
        tags.append("static")
    elif signals.motion >= HIGH_MOTION_MIN:
        tags.append("high-motion")
    return tags
