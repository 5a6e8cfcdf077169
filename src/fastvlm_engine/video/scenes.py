"""Streaming shot-boundary detection on cheap per-frame features, down to 0.15 s shots.

:class:`CutDetector` works like a PySceneDetect detector: ``push(features)`` returns zero or more
:class:`Cut` events for earlier frames and ``flush()`` returns what is left at the end of the
stream. Every frame is decided once the stream has run ``min_scene_sec`` past it (plus one
frame), so a decision can look a short way into the future; :attr:`CutDetector.max_delay_sec`
bounds how late an event comes. Memory is a few frames' worth of small luma grids.

Rules (defaults calibrated on generated rapid-edit clips, see ``bench/video_cuts.py``):

* **Hard cut** at frame *i* when the change from *i-1* is large -- the HSV-histogram distance at
  least ``hist_threshold``, or the luma change at least ``luma_threshold`` over at least
  ``min_changed_area`` of the picture and still after motion compensation -- and it is a
  *spike*: ``spike_ratio`` times the median change of the preceding frames **and** of the next
  frame. Steady fast motion, zooms and whip pans change every frame, so they are no spike; a
  shaking camera's change vanishes once the frames are aligned; a title popping in changes a
  band, not the picture.
* **Flashes and glitches**: a change whose picture comes back -- a frame within ``min_scene_sec``
  after it looks like the frame before it, or it looks like a frame shortly before -- is a
  transient, not a cut; its frames are also kept out of the dissolve check.
* **Dissolve / fade** when the histogram distance between frame *i* and frame *i-k*
  (``dissolve_window``) reaches ``dissolve_threshold`` without a hard cut in between. The cut is
  placed in the middle of the stretch where that distance stayed high, inside the blend. It is
  dropped when the stretch is really something else: longer than ``max_transition_sec``
  (continuous motion), made of changes that do not repeat from frame to frame
  (``min_coherence``: a blend adds the same difference image every frame, while a pan, a whip
  or a single step below the cut thresholds does not), or starting or ending on a blank frame
  (a fade in from black at the start or out to black at the end).
* A shared :class:`MinSceneLength` rule drops any cut closer than ``min_scene_sec`` to the
  previous one (or to the start), like PySceneDetect's FlashFilter.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .features import FrameFeatures, hist_distance
from .motion import aligned_mad, blend_coherence, changed_area, luma_spread, motion_share, structure_correlation

__all__ = ["Cut", "CutDetector", "MinSceneLength", "scenes_from_cuts"]


@dataclass(frozen=True, slots=True)
class Cut:
    """A shot boundary: ``index``/``t`` is the first frame of the new scene."""

    index: int
    t: float
    kind: Literal["hard", "dissolve"]
    score: float
    """The feature value that triggered it (luma or histogram distance)."""
    luma_diff: float = 0.0
    """The luma change of the first frame (a hard cut's jump is not camera motion)."""


class MinSceneLength:
    """Accept a cut only if it is at least ``min_sec`` after the previous accepted one.

    The stream start counts as a boundary, so no scene (including the first) is shorter.
    """

    def __init__(self, min_sec: float, *, start: float = 0.0) -> None:
        if min_sec < 0:
            raise ValueError(f"min_sec must be >= 0, got {min_sec}")
        self.min_sec = min_sec
        self._last = start

    def accept(self, t: float) -> bool:
        if t - self._last < self.min_sec - 1e-9:
            return False
        self._last = t
        return True


MAX_BLEND_MOTION = 0.5
"""A dissolve's frame changes cannot be explained by moving the picture; at most this share can."""
SAME_PICTURE_CORRELATION = 0.8
"""Luma grids correlating at least this well show one picture (whatever its brightness)."""


@dataclass(slots=True)
class _Recent:
    index: int
    t: float
    hist: np.ndarray
    grid: np.ndarray | None
    spread: float


class CutDetector:
    """Hard-cut, flash and dissolve detector; see the module docstring for the rules.

    Arguments:
        luma_threshold: mean |dY|/255 between consecutive frames for a hard cut (default 0.10).
        hist_threshold: HSV-histogram total-variation distance for a hard cut (default 0.5).
        dissolve_threshold: histogram distance between frames ``dissolve_window`` apart for a
            gradual transition (default 0.35); 1.0 disables dissolve detection.
        min_scene_sec: shortest scene, seconds (default 0.15, >= 0); also the longest a flash
            or glitch may last.
        dissolve_window: k, in frames, for the frame i vs i-k comparison (default 8, >= 2).
        spike_ratio: a hard cut's change must be this many times the median change of the
            previous ``spike_window`` frames and the change of the next frame (default 2.0, >= 1).
        spike_window: frames in that median (default 8, >= 1).
        max_transition_sec: longest stretch of high i vs i-k distance still taken as one
            transition (default 2.0 s, > 0).
        min_changed_area: share of the picture a luma-only cut must change (default 0.6, 0..1).
        min_coherence: how alike the frame-to-frame changes inside a dissolve or fade must be
            (default 0.35, in (0, 1]; see :func:`~.motion.blend_coherence`); below it the stretch
            is motion or a single step.
        blank_spread: luma standard deviation (0..1) below which a frame is blank (default 0.03).
    """

    def __init__(self, *, luma_threshold: float = 0.10, hist_threshold: float = 0.5,
                 dissolve_threshold: float = 0.35, min_scene_sec: float = 0.15,
                 dissolve_window: int = 8, spike_ratio: float = 2.0, spike_window: int = 8,
                 max_transition_sec: float = 2.0, min_changed_area: float = 0.6,
                 min_coherence: float = 0.35, blank_spread: float = 0.03) -> None:
        for name, value in (("luma_threshold", luma_threshold), ("hist_threshold", hist_threshold),
                            ("dissolve_threshold", dissolve_threshold), ("min_coherence", min_coherence)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if dissolve_window < 2:
            raise ValueError(f"dissolve_window must be at least 2 frames, got {dissolve_window}")
        if spike_ratio < 1:
            raise ValueError(f"spike_ratio must be >= 1, got {spike_ratio}")
        if spike_window < 1:
            raise ValueError(f"spike_window must be at least 1 frame, got {spike_window}")
        if max_transition_sec <= 0:
            raise ValueError(f"max_transition_sec must be > 0, got {max_transition_sec}")
        if not 0 <= min_changed_area <= 1 or not 0 <= blank_spread < 1:
            raise ValueError("min_changed_area must be in [0, 1] and blank_spread in [0, 1)")
        self.luma_threshold = luma_threshold
        self.hist_threshold = hist_threshold
        self.dissolve_threshold = dissolve_threshold
        self.dissolve_window = dissolve_window
        self.spike_ratio = spike_ratio
        self.max_transition_sec = max_transition_sec
        self.min_changed_area = min_changed_area
        self.min_coherence = min_coherence
        self.blank_spread = blank_spread
        self.min_scene_sec = min_scene_sec
        self._min_scene = MinSceneLength(min_scene_sec)
        self._luma_history: deque[float] = deque(maxlen=spike_window)
        self._hist_history: deque[float] = deque(maxlen=spike_window)
        # Recent frames, decided ones first; the last ``_undecided`` of them await a decision.
        self._frames: deque[FrameFeatures] = deque()
        self._undecided = 0
        self._transient: set[int] = set()
        # Frames since the last hard change, enough to look k back and to place a transition.
        self._recent: deque[_Recent] = deque()
        self._transition: tuple[int, int, float] | None = None  # (first index, last index, peak)
        self._in_motion = False  # a too-long transition is running; wait for it to settle

    @property
    def max_delay_sec(self) -> float:
        """Upper bound on how far before the pushed frame an emitted cut can lie."""
        return self.max_transition_sec + self.min_scene_sec

    def push(self, features: FrameFeatures) -> list[Cut]:
        """Feed the next frame; return the cuts decided by it (for earlier frames)."""
        self._frames.append(features)
        self._undecided += 1
        cuts: list[Cut] = []
        while self._undecided:
            pending = self._frames[len(self._frames) - self._undecided]
            if features.index <= pending.index or features.t - pending.t < self.min_scene_sec:
                break
            cuts.extend(self._decide())
        self._trim()
        return cuts

    def flush(self) -> list[Cut]:
        """End of stream: decide the frames still waiting, and emit a transition in progress."""
        cuts: list[Cut] = []
        while self._undecided:
            cuts.extend(self._decide())
        cuts.extend(self._end_transition())
        return cuts

    def _end_transition(self) -> list[Cut]:
        """Place the transition being tracked, if any (at a hard cut or the end of the stream)."""
        transition, self._transition = self._transition, None
        if transition is None or self._in_motion or not self._recent:
            return []
        first, last, peak = transition
        return self._transition_cut(first, last, peak, after=self._recent[-1])

    def _trim(self) -> None:
        """Keep the undecided frames plus the decided past that a revisit check may look at."""
        decided = len(self._frames) - self._undecided
        if not decided:
            return
        horizon = self._frames[decided - 1].t - self.min_scene_sec - 1e-9
        while decided > 2 and self._frames[1].t < horizon:
            self._frames.popleft()
            decided -= 1

    def _decide(self) -> list[Cut]:
        position = len(self._frames) - self._undecided
        self._undecided -= 1
        frames = self._frames
        f = frames[position]
        past = [frames[i] for i in range(position)]
        future = [frames[i] for i in range(position + 1, len(frames))]
        if f.index in self._transient:  # inside a flash: neither a cut nor part of a dissolve
            self._transient.discard(f.index)
            self._remember_history(f)
            return []
        hard = self._is_hard_cut(f, past, future)
        self._remember_history(f)
        if hard:
            cuts = self._end_transition()  # one that ended just before this cut
            self._in_motion = False
            self._recent.clear()
            self._recent.append(self._recent_entry(f))
            score = max(f.luma_diff, f.hist_diff)
            if self._min_scene.accept(f.t):
                cuts.append(Cut(f.index, f.t, "hard", score, f.luma_diff))
            return cuts
        self._remember(f)
        return self._track_transition(f)

    # --- hard cuts ------------------------------------------------------------------------------

    def _remember_history(self, f: FrameFeatures) -> None:
        self._luma_history.append(f.luma_diff)
        self._hist_history.append(f.hist_diff)

    def _is_hard_cut(self, f: FrameFeatures, past: Sequence[FrameFeatures],
                     future: Sequence[FrameFeatures]) -> bool:
        previous = past[-1] if past and past[-1].index == f.index - 1 else None
        if f.index == 0 or previous is None:
            return False
        ratio = self.spike_ratio
        luma_base = statistics.median(self._luma_history) if self._luma_history else 0.0
        hist_base = statistics.median(self._hist_history) if self._hist_history else 0.0
        hist_spike = f.hist_diff >= self.hist_threshold and f.hist_diff >= ratio * hist_base
        luma_spike = f.luma_diff >= self.luma_threshold and f.luma_diff >= ratio * luma_base
        if (hist_spike or luma_spike) and self._returns(f, previous, future):
            return False  # a flash: the picture comes back
        following = future[0] if future and future[0].index == f.index + 1 else None
        by_hist = hist_spike and (following is None or f.hist_diff >= ratio * following.hist_diff)
        by_luma = (not by_hist and f.luma_diff >= self.luma_threshold
                   and (following is None or f.luma_diff >= ratio * following.luma_diff)
                   and self._luma_change_is_a_cut(previous, f, past, spiked=luma_spike))
        if not (by_hist or by_luma) or self._same_picture(previous, f):
            return False  # the picture keeps changing (motion), or it is one picture re-lit (a fade step)
        return not self._revisits(f, past)

    def _luma_change_is_a_cut(self, previous: FrameFeatures, f: FrameFeatures, past: Sequence[FrameFeatures],
                              *, spiked: bool) -> bool:
        """The change covers most of the picture and survives motion compensation; a change that
        did not spike above the frames before it must spike once their motion is compensated too
        (a cut right out of a fast zoom or pan)."""
        if previous.grid is None or f.grid is None or previous.grid.shape != f.grid.shape:
            return spiked
        if changed_area(previous.grid, f.grid, self.luma_threshold / 2) < self.min_changed_area:
            return False
        change = aligned_mad(previous.grid, f.grid)
        if change < self.luma_threshold:
            return False
        if spiked:
            return True
        before = [aligned_mad(a.grid, b.grid) for a, b in zip(past[-3:-1], past[-2:], strict=False)
                  if a.grid is not None and b.grid is not None and b.index == a.index + 1
                  and a.grid.shape == b.grid.shape]
        return bool(before) and change >= self.spike_ratio * max(before)

    def _same_picture(self, a: FrameFeatures, b: FrameFeatures) -> bool:
        if a.grid is None or b.grid is None or a.grid.shape != b.grid.shape:
            return False
        return structure_correlation(a.grid, b.grid) >= SAME_PICTURE_CORRELATION

    def _similar(self, a: FrameFeatures, b: FrameFeatures) -> bool:
        """No cut between ``a`` and ``b`` by this detector's thresholds (motion allowed)."""
        if hist_distance(a.hist, b.hist) >= self.hist_threshold:
            return False
        if a.grid is None or b.grid is None or a.grid.shape != b.grid.shape:
            return abs(a.luma_mean - b.luma_mean) < self.luma_threshold
        return aligned_mad(a.grid, b.grid) < self.luma_threshold

    def _returns(self, f: FrameFeatures, previous: FrameFeatures, future: Sequence[FrameFeatures]) -> bool:
        """A flash: the picture before the change is back within min_scene_sec. Marks its frames."""
        for g in future:
            if g.t - f.t >= self.min_scene_sec:
                break
            if self._similar(g, previous):
                self._transient.update(range(f.index, g.index))
                return True
        return False

    def _revisits(self, f: FrameFeatures, past: Sequence[FrameFeatures]) -> bool:
        """The end of a flash: the new picture was on screen just before a short interruption."""
        for j in range(len(past) - 2, -1, -1):
            if f.t - past[j + 1].t >= self.min_scene_sec:
                break
            if self._similar(f, past[j]):
                return True
        return False

    # --- gradual transitions ----------------------------------------------------------------------

    def _recent_entry(self, f: FrameFeatures) -> _Recent:
        spread = luma_spread(f.grid) if f.grid is not None else 1.0
        return _Recent(f.index, f.t, f.hist, f.grid, spread)

    def _remember(self, f: FrameFeatures) -> None:
        self._recent.append(self._recent_entry(f))
        # Keep k frames of look-back plus the longest transition we may have to place.
        keep = self.dissolve_window + 2
        if self._transition is not None:
            keep += f.index - self._transition[0] + self.dissolve_window
        while len(self._recent) > keep:
            self._recent.popleft()

    def _track_transition(self, f: FrameFeatures) -> list[Cut]:
        k = self.dissolve_window
        if len(self._recent) <= k or self._recent[-1 - k].index != f.index - k:
            return []
        distance = hist_distance(f.hist, self._recent[-1 - k].hist)
        high = distance >= self.dissolve_threshold
        if self._in_motion:
            self._in_motion = high
            return []
        if self._transition is None:
            if high:
                self._transition = (f.index, f.index, distance)
            return []
        first, last, peak = self._transition
        if high:
            if f.t - self._entry(first).t > self.max_transition_sec:
                self._transition, self._in_motion = None, True
            else:
                self._transition = (first, f.index, max(peak, distance))
            return []
        if f.index - last <= k // 2:
            return []  # a brief dip (mid-grey halfway through a fade of grey pictures): wait
        self._transition = None
        return self._transition_cut(first, last, peak, after=self._recent[-1])

    def _transition_cut(self, first: int, last: int, peak: float, *, after: _Recent) -> list[Cut]:
        # Distance(i, i-k) is high for i in [first, last]; a change between frames a and b makes
        # that range roughly [a, b + k - 1], so the middle of the change is (first + last - k + 1) / 2.
        k = self.dissolve_window
        stretch = [r for r in self._recent if first - k <= r.index <= last]
        grids = [r.grid for r in stretch]
        if blend_coherence(grids) < self.min_coherence or motion_share(grids) > MAX_BLEND_MOTION:
            return []  # a pan, a swing or a single step, not a blend
        before = self._entry(first - k)
        if min(before.spread, after.spread) < self.blank_spread:
            return []  # a fade in from black (or out to black): no second picture
        centre = max(first - k + 1, (first + last - k + 1) // 2)
        t = self._entry(centre).t
        if self._min_scene.accept(t):
            return [Cut(centre, t, "dissolve", peak)]
        return []

    def _entry(self, index: int) -> _Recent:
        for item in self._recent:
            if item.index >= index:
                return item
        return self._recent[-1]


def scenes_from_cuts(cuts: list[Cut], duration: float, *, min_scene_sec: float = 0.0
                     ) -> list[tuple[float, float]]:
    """(start, end) seconds of each scene. A last cut closer than ``min_scene_sec`` to the end
    is dropped, so the final scene also respects the minimum length."""
    starts = [0.0, *sorted(c.t for c in cuts if 0.0 < c.t < duration)]
    while len(starts) > 1 and duration - starts[-1] < min_scene_sec:
        starts.pop()
    ends = [*starts[1:], max(duration, starts[-1])]
    return list(zip(starts, ends, strict=True))
