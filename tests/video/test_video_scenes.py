"""Cut detection: exact hard cuts, no false cuts, dissolves, and the streaming detector's rules."""

from __future__ import annotations

import numpy as np
import pytest

from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.features import HIST_BINS, FrameFeatures
from fastvlm_engine.video.scenes import Cut, CutDetector, MinSceneLength, scenes_from_cuts

FPS = 24.0


def _features(index: int, *, luma_diff: float = 0.005, hist: np.ndarray | None = None,
              hist_diff: float = 0.01) -> FrameFeatures:
    if hist is None:
        hist = np.full(HIST_BINS, 1.0 / HIST_BINS, np.float32)
    return FrameFeatures(index=index, t=index / FPS, luma_mean=0.5, luma_diff=luma_diff, hist=hist,
                         hist_diff=hist_diff, colourfulness=10.0)


def _run(detector: CutDetector, frames: list[FrameFeatures]) -> list[Cut]:
    cuts: list[Cut] = []
    for f in frames:
        cuts.extend(detector.push(f))
    return cuts + detector.flush()


def test_every_hard_cut_found_exactly_and_no_false_cuts(cut_video, settings):
    analysis = analyze_video(cut_video.path, settings)
    found = [c.index for c in analysis.cuts]
    assert len(found) == len(cut_video.cuts)
    for truth, got in zip(cut_video.cuts, found, strict=True):
        assert abs(truth - got) <= 1
    assert all(c.kind == "hard" for c in analysis.cuts)
    assert len(analysis.scenes) == cut_video.scene_count
    for (start, _), truth in zip(analysis.scenes[1:], cut_video.cut_times, strict=True):
        assert start == pytest.approx(truth, abs=1.01 / cut_video.fps)


def test_single_shot_with_zoom_pan_and_noise_is_one_scene(single_shot_video, settings):
    analysis = analyze_video(single_shot_video.path, settings)
    assert analysis.cuts == []
    assert analysis.scenes == [(0.0, pytest.approx(single_shot_video.duration, abs=0.05))]


def test_dissolve_reported_once_inside_the_blend(dissolve_video, settings):
    analysis = analyze_video(dissolve_video.path, settings)
    ((start, end),) = dissolve_video.dissolves
    assert len(analysis.cuts) == 1
    cut = analysis.cuts[0]
    assert cut.kind == "dissolve"
    assert start - 1 <= cut.index <= end
    assert len(analysis.scenes) == 2


def test_hard_cut_event_on_the_frame_that_changes():
    detector = CutDetector()
    frames = [_features(i) for i in range(30)] + [_features(30, luma_diff=0.3, hist_diff=0.8)]
    events = [detector.push(f) for f in frames]
    assert events[-1] == [Cut(30, 30 / FPS, "hard", 0.8)]
    assert not any(events[:-1])


def test_min_scene_length_suppresses_a_flash():
    detector = CutDetector(min_scene_sec=0.5)
    frames = [_features(i) for i in range(30)]
    frames += [_features(30, luma_diff=0.4), _features(31, luma_diff=0.4)]  # flash on, flash off
    frames += [_features(i) for i in range(32, 60)]
    assert [c.index for c in _run(detector, frames)] == [30]


def test_no_cut_closer_than_min_scene_to_the_start():
    detector = CutDetector(min_scene_sec=0.5)
    frames = [_features(0), _features(1), _features(2, luma_diff=0.4)] + [_features(i) for i in range(3, 30)]
    assert _run(detector, frames) == []


def test_steady_fast_motion_is_not_a_cut():
    """Every frame changes a lot (a fast pan): the spike rule keeps it one scene."""
    detector = CutDetector()
    frames = [_features(0)] + [_features(i, luma_diff=0.15, hist_diff=0.2) for i in range(1, 120)]
    assert _run(detector, frames) == []


def _sliding_hist(position: float, width: int = 8) -> np.ndarray:
    hist = np.zeros(HIST_BINS, np.float32)
    start = int(position)
    hist[start:start + width] = 1.0 / width
    return hist


def test_long_continuous_colour_drift_is_not_a_dissolve():
    """i vs i-k stays high for 5 s (a pan across changing colours): no transition is reported."""
    detector = CutDetector(max_transition_sec=2.0)
    frames, previous = [], _sliding_hist(0)
    for i in range(120):
        hist = _sliding_hist(i / 2)
        frames.append(_features(i, hist=hist, hist_diff=0.5 * float(np.abs(hist - previous).sum())))
        previous = hist
    assert _run(detector, frames) == []


def test_short_blend_is_a_dissolve_in_its_middle():
    detector = CutDetector(dissolve_window=8)
    a, b = _sliding_hist(0), _sliding_hist(100)
    frames, previous = [], a
    for i in range(72):
        w = min(1.0, max(0.0, (i - 30) / 12))  # blend over frames 31..42
        hist = ((1 - w) * a + w * b).astype(np.float32)
        frames.append(_features(i, hist=hist, hist_diff=0.5 * float(np.abs(hist - previous).sum())))
        previous = hist
    (cut,) = _run(detector, frames)
    assert cut.kind == "dissolve"
    assert 31 <= cut.index <= 42


def test_min_scene_length_rule():
    rule = MinSceneLength(0.5)
    assert not rule.accept(0.3)
    assert rule.accept(0.5)
    assert not rule.accept(0.9)
    assert rule.accept(1.0)
    with pytest.raises(ValueError):
        MinSceneLength(-1)


def test_scenes_from_cuts_drops_a_tiny_last_scene():
    cuts = [Cut(24, 1.0, "hard", 0.3), Cut(90, 3.8, "hard", 0.3)]
    assert scenes_from_cuts(cuts, 4.0, min_scene_sec=0.5) == [(0.0, 1.0), (1.0, 4.0)]
    assert scenes_from_cuts(cuts, 4.0) == [(0.0, 1.0), (1.0, 3.8), (3.8, 4.0)]
    assert scenes_from_cuts([], 2.5) == [(0.0, 2.5)]


@pytest.mark.parametrize("kwargs", [
    {"luma_threshold": 0}, {"hist_threshold": 1.5}, {"dissolve_threshold": -0.1},
    {"min_scene_sec": -1}, {"dissolve_window": 1}, {"spike_ratio": 0.5}, {"spike_window": 0},
    {"max_transition_sec": 0},
])
def test_detector_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        CutDetector(**kwargs)
