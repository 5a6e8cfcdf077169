"""Cut detection: exact hard cuts, no false cuts, dissolves, and the streaming detector's rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.features import HIST_BINS, FeatureExtractor, FrameFeatures
from fastvlm_engine.video.scenes import Cut, CutDetector, MinSceneLength, scenes_from_cuts
from tests.fixtures.videos import photo

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


def _yuv(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A photo as limited-range BT.601 planes on a 72 x 128 grid (a vertical frame's grid)."""
    image = Image.fromarray(photo(name)).resize((144, 256), Image.Resampling.BILINEAR)
    rgb = np.asarray(image, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (0.299 * r + 0.587 * g + 0.114 * b) * 219 / 255
    u = 128 + (-0.168736 * r - 0.331264 * g + 0.5 * b) * 224 / 255
    v = 128 + (0.5 * r - 0.418688 * g - 0.081312 * b) * 224 / 255
    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, u, v))


def _view(planes, dx: int = 0, dy: int = 0, gain: float = 1.0, box: tuple[int, int] | None = None):
    """A 72 x 128 window of the 144 x 256 planes, moved by (dx, dy); ``gain`` scales luma towards
    black (< 1) or white (> 1); ``box`` = (top, bottom) rows painted white (an overlay)."""
    y, u, v = (p[64 + dy:192 + dy, 36 + dx:108 + dx] for p in planes)
    y = y.astype(np.float64)
    y = 16 + (y - 16) * gain if gain <= 1 else y + (235 - y) * (gain - 1)
    y = np.clip(np.round(y), 0, 255).astype(np.uint8)
    if box is not None:
        y = y.copy()
        y[box[0]:box[1], 6:66] = 235
    return y, u, v


def _detect(views, fps: float = FPS, **options) -> list[Cut]:
    extractor, detector = FeatureExtractor(), CutDetector(**options)
    cuts: list[Cut] = []
    for i, (y, u, v) in enumerate(views):
        cuts.extend(detector.push(extractor.push_planes(y, u, v, index=i, t=i / fps)))
    return cuts + detector.flush()


def test_a_hard_cut_is_reported_once_the_look_ahead_has_passed():
    a, b = _yuv("astronaut"), _yuv("coffee")
    extractor, detector = FeatureExtractor(), CutDetector(min_scene_sec=0.15)
    events = []
    for i in range(40):
        y, u, v = _view(a if i < 30 else b, dx=i % 3)
        events.append(detector.push(extractor.push_planes(y, u, v, index=i, t=i / FPS)))
    found = [(i, cut.index, cut.kind) for i, cuts in enumerate(events) for cut in cuts]
    assert found == [(34, 30, "hard")]  # decided when 0.15 s (4 frames at 24 fps) had passed
    assert detector.max_delay_sec >= 0.15


def test_flashes_are_not_cuts():
    a = _yuv("chelsea")
    one = [_view(a, gain=1.7) if i == 30 else _view(a) for i in range(60)]
    two = [_view(a, gain=1.8 if i == 30 else 1.4) if i in (30, 31) else _view(a) for i in range(60)]
    dark_then_bright = [_view(a, gain=0.6) if i == 30 else _view(a, gain=1.8) if i == 31 else _view(a)
                        for i in range(60)]
    white_out = [_view(a, gain=2.0) if i in (30, 31) else _view(a) for i in range(60)]  # blown-out frames
    for views in (one, two, dark_then_bright, white_out):
        assert _detect(views) == []
    # The blown-out frames are no re-lit picture; only the "the picture comes back" rule saves them.
    assert [c.index for c in _detect(white_out, min_scene_sec=0.0)] == [30, 32]


def test_a_cut_away_and_back_is_two_cuts_only_when_the_insert_is_a_scene():
    a, b = _yuv("astronaut"), _yuv("rocket")
    long_insert = [_view(b) if 30 <= i < 34 else _view(a) for i in range(60)]  # 4 frames = 0.167 s
    assert [c.index for c in _detect(long_insert)] == [30, 34]
    short_insert = [_view(b) if 30 <= i < 32 else _view(a) for i in range(60)]  # 2 frames < 0.15 s
    assert _detect(short_insert) == []


def test_no_cut_closer_than_min_scene_to_the_start():
    a, b = _yuv("astronaut"), _yuv("coffee")
    views = [_view(a)] * 2 + [_view(b)] * 30
    assert _detect(views, min_scene_sec=0.5) == []
    assert [c.index for c in _detect(views, min_scene_sec=0.05)] == [2]


def test_fast_pans_and_camera_shake_are_not_cuts():
    a = _yuv("coffee")
    pan = [_view(a, dx=-30 + 2 * i) for i in range(31)]  # ~3 % of the width per frame, steadily
    rng = np.random.default_rng(3)
    shake = [_view(a, *(int(x) for x in rng.integers(-6, 7, 2))) for _ in range(60)]
    assert _detect(pan) == []
    assert _detect(shake) == []


def test_a_title_popping_in_is_not_a_cut():
    a = _yuv("camera")
    views = [_view(a, box=(10, 30)) if 20 <= i < 40 else _view(a) for i in range(60)]
    assert _detect(views) == []


def test_a_dip_through_black_is_one_cut_and_fades_at_the_ends_are_none():
    a, b = _yuv("astronaut"), _yuv("rocket")
    views = [_view(a, gain=min(1.0, i / 8)) for i in range(30)]  # fade in from black
    views += [_view(a, gain=1 - (k + 1) / 7) for k in range(6)]  # dip: a fades out ...
    views += [_view(b, gain=(k + 1) / 7) for k in range(6)]  # ... and b fades in
    views += [_view(b)] * 30
    views += [_view(b, gain=1 - (k + 1) / 8) for k in range(8)]  # fade out to black
    cuts = _detect(views, dissolve_window=7)
    assert [c.kind for c in cuts] == ["dissolve"]
    assert 30 <= cuts[0].index < 42


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
    {"max_transition_sec": 0}, {"min_changed_area": 1.5}, {"min_coherence": 0}, {"blank_spread": 1},
])
def test_detector_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        CutDetector(**kwargs)
