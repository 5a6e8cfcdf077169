"""Keyframe candidates kept during the decoding pass, and the choice among them afterwards.

Frames for the model must come from the single decoding pass (an exact seek costs about as
much as decoding a whole GOP), but the scenes and the duration are only known once the pass
ends. So :class:`CandidatePool` keeps a *bounded* set of reduced-resolution frames while
decoding, and :func:`select_keyframes` chooses among them afterwards:

* a **uniform grid**: the first frame, then one every ``spacing`` seconds (initially 0.25 s);
  whenever the grid holds more than ``2 * max_keyframes`` frames the spacing doubles and every
  other grid frame is released, so any duration ends with between ``max_keyframes`` and
  ``2 * max_keyframes`` evenly spaced frames;
* a **post-cut frame** shortly (0.2 s, at most half the minimum scene length) after every cut,
  so short scenes that fall between grid points still have a frame. At most
  ``max_keyframes + 1`` are kept; beyond that the frame of the shortest finished scene is
  released (selection prefers long scenes when there are more scenes than the budget).

Candidates are stored as yuv420p with the long side at most :data:`CANDIDATE_MAX_SIDE`
(1.5 bytes per pixel; converted to RGB only if chosen). At most ``3 * max_keyframes + 2`` frames
are held at any moment (grid ``2k`` + post-cut ``k + 1``, plus the one just taken before thinning),
so with the default 24 keyframes and a 1080x1920 source (candidates 576x1024, 0.88 MB each) the
pool never exceeds 74 x 0.88 MB = 65 MB, however long the video. The 30 s benchmark clip peaks
at 52 frames / 46 MB.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import av

__all__ = [
    "CANDIDATE_MAX_SIDE",
    "GRID_START_SEC",
    "POST_CUT_DELAY_SEC",
    "Candidate",
    "CandidatePool",
    "candidate_size",
    "frame_budget",
    "select_keyframes",
]

CANDIDATE_MAX_SIDE = 1024
"""Longest side, in pixels, of kept candidate frames (and so of the frames sent to the model)."""
GRID_START_SEC = 0.25
"""Initial spacing of the candidate grid; it doubles as the grid fills up."""
POST_CUT_DELAY_SEC = 0.2
"""How long after a cut the post-cut candidate is taken (skips blended or blurred frames)."""


def candidate_size(width: int, height: int, max_side: int = CANDIDATE_MAX_SIDE) -> tuple[int, int]:
    """(width, height) after scaling the long side down to ``max_side``; even, for yuv420p."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


@dataclass(eq=False, slots=True)
class Candidate:
    """A frame kept during the pass (stored orientation, yuv420p, reduced size)."""

    t: float
    index: int
    frame: av.VideoFrame
    slot: int | None = None
    """Grid slot at the current grid spacing, or None when not (or no longer) a grid frame."""
    scene_start: float | None = None
    """Start of the scene this was captured after, for post-cut frames."""

    @property
    def nbytes(self) -> int:
        return self.frame.width * self.frame.height * 3 // 2


class CandidatePool:
    """Collects keyframe candidates during the decoding pass; see the module docstring.

    Arguments:
        max_keyframes: the most frames that will be chosen (>= 1); sizes the grid and the
            post-cut store.
        max_side: long side of stored frames in pixels (default 1024, >= 16).
        grid_start_sec: initial grid spacing (default 0.25 s, > 0).
        post_cut_delay_sec: how long after a cut to take its frame (default 0.2 s, >= 0).
    """

    def __init__(self, *, max_keyframes: int, max_side: int = CANDIDATE_MAX_SIDE,
                 grid_start_sec: float = GRID_START_SEC,
                 post_cut_delay_sec: float = POST_CUT_DELAY_SEC) -> None:
        if max_keyframes < 1:
            raise ValueError(f"max_keyframes must be at least 1, got {max_keyframes}")
        if max_side < 16:
            raise ValueError(f"max_side must be at least 16 pixels, got {max_side}")
        if grid_start_sec <= 0:
            raise ValueError(f"grid_start_sec must be > 0, got {grid_start_sec}")
        if post_cut_delay_sec < 0:
            raise ValueError(f"post_cut_delay_sec must be >= 0, got {post_cut_delay_sec}")
        self.max_side = max_side
        self.grid_capacity = max(2, 2 * max_keyframes)
        self.cut_capacity = max_keyframes + 1
        self.post_cut_delay_sec = post_cut_delay_sec
        self._spacing = grid_start_sec
        self._next_grid_t = 0.0
        self._pending_cut: tuple[float, float] | None = None  # (scene start, capture at)
        self._cut_times: list[float] = []
        self._items: list[Candidate] = []
        self.peak_bytes = 0
        self.peak_count = 0
        self.conversions = 0

    @property
    def spacing(self) -> float:
        """Current grid spacing in seconds."""
        return self._spacing

    @property
    def candidates(self) -> list[Candidate]:
        """Kept candidates in time order."""
        return sorted(self._items, key=lambda c: (c.t, c.index))

    def note_cut(self, cut_t: float, now_t: float) -> None:
        """A scene starts at ``cut_t`` (reported at stream time ``now_t``); schedule its frame."""
        self._cut_times.append(cut_t)
        self._pending_cut = (cut_t, max(cut_t + self.post_cut_delay_sec, now_t))

    def wants(self, t: float) -> bool:
        """Whether the frame at ``t`` should be offered (so callers skip work otherwise)."""
        return t >= self._next_grid_t or (self._pending_cut is not None and t >= self._pending_cut[1])

    def offer(self, frame: av.VideoFrame, index: int, t: float) -> None:
        """Keep ``frame`` if the grid or a pending post-cut capture wants it."""
        grid = t >= self._next_grid_t
        cut = self._pending_cut is not None and t >= self._pending_cut[1]
        if not (grid or cut):
            return
        candidate = Candidate(t=t, index=index, frame=self._shrink(frame))
        if grid:
            candidate.slot = math.floor(t / self._spacing + 1e-9)
            self._next_grid_t = (candidate.slot + 1) * self._spacing
        if cut and self._pending_cut is not None:
            candidate.scene_start = self._pending_cut[0]
            self._pending_cut = None
        self._items.append(candidate)
        if grid and sum(c.slot is not None for c in self._items) > self.grid_capacity:
            self._thin_grid(t)
        if cut and sum(c.scene_start is not None for c in self._items) > self.cut_capacity:
            self._evict_post_cut()
        self.peak_count = max(self.peak_count, len(self._items))
        self.peak_bytes = max(self.peak_bytes, sum(c.nbytes for c in self._items))

    def _shrink(self, frame: av.VideoFrame) -> av.VideoFrame:
        self.conversions += 1
        width, height = candidate_size(frame.width, frame.height, self.max_side)
        return frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA")

    def _thin_grid(self, now_t: float) -> None:
        self._spacing *= 2
        for c in self._items:
            if c.slot is not None:
                c.slot = c.slot // 2 if c.slot % 2 == 0 else None
        self._items = [c for c in self._items if c.slot is not None or c.scene_start is not None]
        self._next_grid_t = (math.floor(now_t / self._spacing + 1e-9) + 1) * self._spacing

    def _evict_post_cut(self) -> None:
        starts = self._cut_times

        def scene_length(c: Candidate) -> float:
            i = bisect.bisect_right(starts, c.scene_start)  # type: ignore[arg-type]
            return starts[i] - c.scene_start if i < len(starts) else math.inf  # type: ignore[operator]

        finished = [c for c in self._items if c.scene_start is not None and scene_length(c) < math.inf]
        if not finished:
            return
        victim = min(finished, key=lambda c: (scene_length(c), -c.t))
        victim.scene_start = None
        if victim.slot is None:
            self._items.remove(victim)


def frame_budget(duration: float, scene_count: int, *, max_keyframes: int,
                 seconds_per_keyframe: float) -> int:
    """How many frames to caption: one per scene, or one per ``seconds_per_keyframe`` when
    that is more, capped at ``max_keyframes`` and never below 1.

    ``min(max_keyframes, max(scenes, ceil(duration / seconds_per_keyframe)))``
    """
    if max_keyframes < 1 or seconds_per_keyframe <= 0:
        raise ValueError("max_keyframes must be >= 1 and seconds_per_keyframe > 0")
    by_time = math.ceil(max(0.0, duration) / seconds_per_keyframe - 1e-9)
    return max(1, min(max_keyframes, max(scene_count, by_time)))


def select_keyframes(candidates: Sequence[Candidate], scenes: Sequence[tuple[float, float]],
                     budget: int) -> list[tuple[Candidate, int]]:
    """Choose up to ``budget`` candidates as (candidate, scene index), in time order.

    1. Every scene that has a candidate gets one frame; when there are more such scenes than
       the budget, the longest scenes win (ties: the earlier one).
    2. Remaining frames go to scenes in proportion to their length (D'Hondt: repeatedly to the
       scene with the most seconds per frame), limited by the candidates each scene has.
    3. Within a scene given n frames, the candidates nearest to the midpoints of n equal
       segments are taken (the midpoint of the scene for n = 1).
    """
    if budget < 1 or not scenes or not candidates:
        return []
    starts = [start for start, _ in scenes]
    by_scene: dict[int, list[Candidate]] = {}
    for c in candidates:
        scene = max(0, bisect.bisect_right(starts, c.t) - 1)
        by_scene.setdefault(scene, []).append(c)

    def length(scene: int) -> float:
        start, end = scenes[scene]
        return max(end - start, 1e-6)

    covered = sorted(by_scene)
    if len(covered) > budget:
        covered = sorted(sorted(covered, key=lambda s: (-length(s), s))[:budget])
    slots = {s: 1 for s in covered}
    for _ in range(budget - len(covered)):
        open_scenes = [s for s in covered if slots[s] < len(by_scene[s])]
        if not open_scenes:
            break
        best = max(open_scenes, key=lambda s: (length(s) / (slots[s] + 1), -s))
        slots[best] += 1

    chosen: list[tuple[Candidate, int]] = []
    for scene in covered:
        start, end = scenes[scene]
        pool = list(by_scene[scene])
        n = slots[scene]
        for j in range(n):
            target = start + (j + 0.5) * (end - start) / n
            pick = min(pool, key=lambda c: (abs(c.t - target), c.t))
            pool.remove(pick)
            chosen.append((pick, scene))
    chosen.sort(key=lambda item: (item[0].t, item[0].index))
    return chosen
