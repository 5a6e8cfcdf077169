"""Near-duplicate suppression among selected keyframes, by pHash Hamming distance.

Two thresholds because a pHash distance means different things in and across shots: frames of
one shot that hash alike show the same thing (drop up to ~18 bits), while different shots may
legitimately look alike (a shot/reverse-shot pair), so across shots only near-identical frames
(up to ~10 bits) are duplicates. A scene never loses its only selected frame: the first frame
kept for a scene is never dropped, whatever it resembles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

from .phash import HASH_BITS, hamming

__all__ = ["HashedFrame", "NearDuplicateFilter"]


class HashedFrame(Protocol):
    @property
    def phash(self) -> int: ...
    @property
    def scene(self) -> int: ...


T = TypeVar("T", bound=HashedFrame)


class NearDuplicateFilter:
    """Keep the first of each group of near-duplicate frames, in the order given.

    Arguments:
        same_scene_max: frames of one scene at Hamming distance <= this are duplicates
            (default 18; the effective value is never below ``any_scene_max``).
        any_scene_max: frames of different scenes at distance <= this are duplicates (default 10).
    """

    def __init__(self, *, same_scene_max: int = 18, any_scene_max: int = 10) -> None:
        for name, value in (("same_scene_max", same_scene_max), ("any_scene_max", any_scene_max)):
            if not 0 <= value <= HASH_BITS:
                raise ValueError(f"{name} must be between 0 and {HASH_BITS}, got {value}")
        self.any_scene_max = any_scene_max
        self.same_scene_max = max(same_scene_max, any_scene_max)

    def keep(self, frames: Sequence[T]) -> list[T]:
        """The frames that are not near-duplicates of an earlier kept frame."""
        kept: list[T] = []
        scenes_with_frame: set[int] = set()
        for frame in frames:
            if frame.scene in scenes_with_frame and self._duplicates_any(frame, kept):
                continue
            kept.append(frame)
            scenes_with_frame.add(frame.scene)
        return kept

    def _duplicates_any(self, frame: HashedFrame, kept: Sequence[HashedFrame]) -> bool:
        for other in kept:
            limit = self.same_scene_max if other.scene == frame.scene else self.any_scene_max
            if hamming(frame.phash, other.phash) <= limit:
                return True
        return False
