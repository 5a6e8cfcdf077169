"""Which queued jobs a worker takes when it asks for more: images first, aged videos before them.

Images are short and interactive, so they go first. That alone would starve videos while images
keep arriving, so a video that has waited ``video_aging_s`` or longer jumps ahead of every image.
The choice is a pure function of a few counts, so both backends share it and it is tested
without a store.
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import JobKind

__all__ = ["LeasePlan", "plan_lease"]


@dataclass(frozen=True)
class LeasePlan:
    """How many jobs of each kind to take, in the order to take them (FIFO within a kind)."""

    takes: tuple[tuple[JobKind, int], ...]

    def count(self, kind: JobKind) -> int:
        return sum(n for k, n in self.takes if k == kind)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.takes)


def plan_lease(*, images: int, videos: int, limit: int | None, queued_images: int, queued_videos: int,
               aged_videos: int) -> LeasePlan:
    """Split a worker's free capacity between the queued images and videos.

    ``images``/``videos``: the most of each kind the worker can take; ``limit``: the most in all
    (its free slots shared by both kinds; None = no shared limit). ``queued_*``: how many of each
    kind are queued; ``aged_videos``: how many of the oldest queued videos have waited at least the
    aging threshold. Order: aged videos, then images, then the other videos.
    """
    for name, value in (("images", images), ("videos", videos), ("queued_images", queued_images),
                        ("queued_videos", queued_videos), ("aged_videos", aged_videos)):
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    video_room = min(videos, queued_videos)
    budget = video_room + min(images, queued_images) if limit is None else limit
    aged = min(aged_videos, video_room, budget)
    budget -= aged
    fresh_images = min(images, queued_images, budget)
    budget -= fresh_images
    other_videos = min(video_room - aged, budget)
    takes = tuple((kind, n) for kind, n in (("video", aged), ("image", fresh_images), ("video", other_videos))
                  if n > 0)
    return LeasePlan(takes)
