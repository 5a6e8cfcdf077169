"""The per-scene timeline: what each scene shows, what is said in it and what is written in it.

A speech segment or an on-screen text belongs to every scene it overlaps (a sentence spoken
across a cut is in both scenes); a zero-length one belongs to the scene containing its time.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..schemas import Caption, OnScreenText, Scene, SceneCaption, SpeechSegment

__all__ = ["build_scenes", "overlaps"]


def overlaps(start: float, end: float, scene_start: float, scene_end: float) -> bool:
    """Whether [start, end] shares time with the scene [scene_start, scene_end)."""
    if end <= start:
        return scene_start <= start < scene_end
    return start < scene_end and end > scene_start


def build_scenes(scenes: Sequence[tuple[float, float]], captions: Sequence[Caption],
                 speech: Sequence[SpeechSegment], on_screen: Sequence[OnScreenText]) -> list[Scene]:
    """Scenes with their keyframe captions, overlapping speech segments and on-screen texts."""
    result = []
    for index, (start, end) in enumerate(scenes):
        last = index == len(scenes) - 1
        stop = end + 1e-6 if last else end  # the last scene owns the video's final instant
        result.append(Scene(
            start_sec=round(start, 3), end_sec=round(end, 3),
            captions=[SceneCaption(timestamp_sec=c.timestamp_sec, caption=c.caption) for c in captions
                      if c.scene == index],
            speech=[s for s in speech if overlaps(s.start_sec, s.end_sec, start, stop)],
            on_screen_text=[t for t in on_screen if overlaps(t.start_sec, t.end_sec, start, stop)],
        ))
    return result
