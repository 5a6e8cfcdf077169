"""Per-frame features and the visual signals/tags derived from them."""

from __future__ import annotations

import numpy as np
import pytest

from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.features import (
    FeatureExtractor,
    _hsv_bins,
    colourfulness,
    hist_distance,
    hsv_histogram,
    yuv_to_rgb,
)
from fastvlm_engine.video.signals import VisualSignals, visual_tags
from tests.fixtures.videos import photo


def _planes(name: str = "coffee"):
    """A photo as limited-range BT.601 Y/U/V planes, subsampled to a small grid."""
    rgb = photo(name)[::5, ::5].astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (0.299 * r + 0.587 * g + 0.114 * b) * 219 / 255
    u = 128 + (-0.168736 * r - 0.331264 * g + 0.5 * b) * 224 / 255
    v = 128 + (0.5 * r - 0.418688 * g - 0.081312 * b) * 224 / 255
    return tuple(np.clip(np.round(p), 0, 255).astype(np.uint8) for p in (y, u, v))


def test_lookup_histogram_matches_per_pixel_hsv_on_table_points():
    rng = np.random.default_rng(0)
    y = (rng.integers(4, 60, (40, 60)) * 4).astype(np.uint8)
    u = (rng.integers(8, 25, (40, 60)) * 8).astype(np.uint8)
    v = (rng.integers(8, 25, (40, 60)) * 8).astype(np.uint8)
    exact = np.bincount(_hsv_bins(yuv_to_rgb(y, u, v, full_range=False)).ravel(), minlength=256) / y.size
    assert hist_distance(exact.astype(np.float32), hsv_histogram(y, u, v)) < 1e-6
    assert hsv_histogram(y, u, v).sum() == pytest.approx(1.0)


def test_histogram_ignores_chroma_noise_on_greys_but_separates_photos():
    y, u, v = _planes("camera")  # a grey photo
    rng = np.random.default_rng(1)
    noisy_u = np.clip(u.astype(int) + rng.integers(-3, 4, u.shape), 0, 255).astype(np.uint8)
    noisy_v = np.clip(v.astype(int) + rng.integers(-3, 4, v.shape), 0, 255).astype(np.uint8)
    assert hist_distance(hsv_histogram(y, u, v), hsv_histogram(y, noisy_u, noisy_v)) < 0.05
    hists = {name: hsv_histogram(*_planes(name)) for name in ("coffee", "astronaut", "rocket", "chelsea")}
    for a in hists:
        for b in hists:
            if a < b:
                assert hist_distance(hists[a], hists[b]) > 0.4, (a, b)


def test_colourfulness_from_chroma_matches_rgb_formula():
    y, u, v = _planes("rocket")
    rgb = yuv_to_rgb(y, u, v, full_range=False)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    expected = np.sqrt(rg.var() + yb.var()) + 0.3 * np.sqrt(rg.mean() ** 2 + yb.mean() ** 2)
    assert colourfulness(u, v) == pytest.approx(expected, rel=0.1)
    grey = np.full((8, 8), 128, np.uint8)
    assert colourfulness(grey, grey) == pytest.approx(0.0, abs=1e-6)


def test_extractor_diffs_against_the_previous_frame():
    extractor = FeatureExtractor()
    y, u, v = _planes("astronaut")
    first = extractor.push_planes(y, u, v, index=0, t=0.0)
    same = extractor.push_planes(y, u, v, index=1, t=0.04)
    other = extractor.push_planes(*_planes("camera"), index=2, t=0.08)
    assert first.luma_diff == first.hist_diff == 0.0
    assert same.luma_diff == 0.0 and same.hist_diff == 0.0
    assert other.luma_diff > 0.2 and other.hist_diff > 0.3
    with pytest.raises(ValueError):
        FeatureExtractor(grid_short_side=4)


@pytest.mark.parametrize(("signals", "expected"), [
    (VisualSignals(0.1, 5.0, 0.001, 0.0), ["dark", "muted", "calm", "static"]),
    (VisualSignals(0.8, 70.0, 0.08, 30.0), ["bright", "vibrant", "fast-paced", "high-motion"]),
    (VisualSignals(0.5, 30.0, 0.03, 10.0), []),
])
def test_visual_tags(signals, expected):
    assert visual_tags(signals) == expected


def test_signals_of_the_cut_video(cut_video, settings):
    analysis = analyze_video(cut_video.path, settings)
    s = analysis.signals
    assert 0.2 < s.brightness < 0.7
    assert s.cut_rate == pytest.approx(len(cut_video.cuts) * 60 / cut_video.duration, rel=0.01)
    assert 0 < s.motion < 0.05  # cut frames excluded
    assert "fast-paced" in analysis.visual_tags
