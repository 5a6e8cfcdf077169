"""Streaming shot-boundary detection on cheap per-frame features.

:class:`CutDetector` works like a PySceneDetect detector: ``push(features)`` returns zero or more
:class:`Cut` events (a dissolve is reported once it has ended, so its event is for an earlier
frame) and ``flush()`` returns what is left at the end of the stream. It keeps only a few
frames of state; :attr:`CutDetector.max_delay_sec` says how late an event can come.

Rules (defaults measured on synthetic and photo videos, see docs/research video.md §2):

* **Hard cut** at frame *i* when the mean absolute luma change from *i-1* is at least
  ``luma_threshold`` or the HSV-histogram distance is at least ``hist_threshold`` -- and that
  change is also ``spike_ratio`` times the median change of the preceding frames, so steady
  fast motion and the frame-to-frame churn inside a dissolve do not count as cuts.
* **Dissolve / fade** when the histogram distance between frame *i* and frame *i-k*
  (``dissolve_window``) reaches ``dissolve_threshold`` without a hard cut in between. The cut is
  placed in the middle of the stretch where that distance stayed high, i.e. inside the blend.
  A stretch longer than ``max_transition_sec`` is continuous motion (a pan), not a transition,
  and yields nothing.
* A shared :class:`MinSceneLength` rule drops any cut closer than ``min_scene_sec`` to the
  previous one (or to the start), like PySceneDetect's FlashFilter.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .features import FrameFeatures, hist_distance

__all__ = ["Cut", "CutDetector", "MinSceneLength", "scenes_from_cuts"]


@dataclass(frozen=True, slots=True)
class Cut:
    """A shot boundary: ``index``/``t`` is the first frame of the new scene."""

    index: int
    t: float
    kind: Literal["hard", "dissolve"]
    score: float
    """The feature value that triggered it (luma or histogram distance)."""


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
        if t - self._last < self.min_sec:
            return False
        self._last = t
        return True


@dataclass(slots=True)
class _Recent:
    index: int
    t: float
    hist: np.ndarray


class CutDetector:
    """Hard-cut and dissolve detector; see the module docstring for the rules.

    Arguments:
        luma_threshold: mean |dY|/255 between consecutive frames for a hard cut (default 0.10).
        hist_threshold: HSV-histogram total-variation distance for a hard cut (default 0.5).
        dissolve_threshold: histogram distance between frames ``dissolve_window`` apart for a
            gradual transition (default 0.35); 1.0 disables dissolve detection.
        min_scene_sec: shortest scene, seconds (default 0.5, >= 0).
        dissolve_window: k, in frames, for the frame i vs i-k comparison (default 8, >= 2).
        spike_ratio: a hard cut's change must also be this many times the median change of the
            previous ``spike_window`` frames (default 2.0, >= 1; 1 disables the check).
        spike_window: frames in that median (default 8, >= 1).
        max_transition_sec: longest stretch of high i vs i-k distance still taken as one
            transition (default 2.0 s, > 0).
    """

    def __init__(self, *, luma_threshold: float = 0.10, hist_threshold: float = 0.5,
                 dissolve_threshold: float = 0.35, min_scene_sec: float = 0.5,
                 dissolve_window: int = 8, spike_ratio: float = 2.0, spike_window: int = 8,
                 max_transition_sec: float = 2.0) -> None:
        for name, value in (("luma_threshold", luma_threshold), ("hist_threshold", hist_threshold),
                            ("dissolve_threshold", dissolve_threshold)):
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
        self.luma_threshold = luma_threshold
        self.hist_threshold = hist_threshold
        self.dissolve_threshold = dissolve_threshold
        self.dissolve_window = dissolve_window
        self.spike_ratio = spike_ratio
        self.max_transition_sec = max_transition_sec
        self._min_scene = MinSceneLength(min_scene_sec)
        self._luma_history: deque[float] = deque(maxlen=spike_window)
        self._hist_history: deque[float] = deque(maxlen=spike_window)
        # Frames since the last hard change, enough to look k back and to place a transition.
        self._recent: deque[_Recent] = deque()
        self._transition: tuple[int, int, float] | None = None  # (first index, last index, peak)
        self._in_motion = False  # a too-long transition is running; wait for it to settle

    @property
    def max_delay_sec(self) -> float:
        """Upper bound on how far before the pushed frame an emitted cut can lie."""
        return self.max_transition_sec

    def push(self, features: FrameFeatures) -> list[Cut]:
        """Feed the next frame; return the cuts decided by it (possibly for earlier frames)."""
        if self._is_hard_cut(features):
            self._transition, self._in_motion = None, False
            self._recent.clear()
            self._recent.append(_Recent(features.index, features.t, features.hist))
            score = max(features.luma_diff, features.hist_diff)
            if self._min_scene.accept(features.t):
                return [Cut(features.index, features.t, "hard", score)]
            return []
        self._remember(features)
        return self._track_transition(features)

    def flush(self) -> list[Cut]:
        """End of stream: emit a transition still in progress."""
        if self._transition is None or self._in_motion:
            return []
        first, last, peak = self._transition
        self._transition = None
        return self._transition_cut(first, last, peak)

    # --- hard cuts ------------------------------------------------------------------------------

    def _is_hard_cut(self, f: FrameFeatures) -> bool:
        luma_base = statistics.median(self._luma_history) if self._luma_history else 0.0
        hist_base = statistics.median(self._hist_history) if self._hist_history else 0.0
        self._luma_history.append(f.luma_diff)
        self._hist_history.append(f.hist_diff)
        if f.index == 0:
            return False
        luma = f.luma_diff >= self.luma_threshold and f.luma_diff >= self.spike_ratio * luma_base
        hist = f.hist_diff >= self.hist_threshold and f.hist_diff >= self.spike_ratio * hist_base
        return luma or hist

    # --- gradual transitions ----------------------------------------------------------------------

    def _remember(self, f: FrameFeatures) -> None:
        self._recent.append(_Recent(f.index, f.t, f.hist))
        # Keep k frames of look-back plus the longest transition we may have to place.
        keep = self.dissolve_window + 1
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
            if f.t - self._time_of(first) > self.max_transition_sec:
                self._transition, self._in_motion = None, True
            else:
                self._transition = (first, f.index, max(peak, distance))
            return []
        self._transition = None
        return self._transition_cut(first, last, peak)

    def _transition_cut(self, first: int, last: int, peak: float) -> list[Cut]:
        # Distance(i, i-k) is high for i in [first, last]; a change between frames a and b makes
        # that range roughly [a, b + k - 1], so the middle of the change is (first + last - k + 1) / 2.
        centre = max(first - self.dissolve_window + 1, (first + last - self.dissolve_window + 1) // 2)
        t = self._time_of(centre)
        if self._min_scene.accept(t):
            return [Cut(centre, t, "dissolve", peak)]
        return []

    def _time_of(self, index: int) -> float:
        for item in self._recent:
            if item.index >= index:
                return item.t
        return self._recent[-1].t


def scenes_from_cuts(cuts: list[Cut], duration: float, *, min_scene_sec: float = 0.0
                     ) -> list[tuple[float, float]]:
    """(start, end) seconds of each scene. A last cut closer than ``min_scene_sec`` to the end
    is dropped, so the final scene also respects the minimum length."""
    starts = [0.0, *sorted(c.t for c in cuts if 0.0 < c.t < duration)]
    while len(starts) > 1 and duration - starts[-1] < min_scene_sec:
        starts.pop()
    ends = [*starts[1:], max(duration, starts[-1])]
    return list(zip(starts, ends, strict=True))
