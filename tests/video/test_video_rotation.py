"""Display rotation: PyAV reports it but does not apply it, so the analysis must."""

from __future__ import annotations

import av
import numpy as np
import pytest

from fastvlm_engine.video.analysis import analyze_video, display_rotation
from tests.fixtures.videos import MARKER_RGB, MARKER_SIZE


def _red_fraction(region: np.ndarray) -> float:
    r, g, b = (region[..., i].astype(int) for i in range(3))
    return float(((r > 150) & (g < 90) & (b < 90)).mean())


def test_fixture_really_carries_the_rotation(rotated_video):
    with av.open(str(rotated_video.path)) as container:
        frame = next(container.decode(video=0))
    assert frame.rotation == rotated_video.rotation
    assert (frame.width, frame.height) == (rotated_video.width, rotated_video.height)


def test_keyframes_are_turned_for_display(rotated_video, settings):
    analysis = analyze_video(rotated_video.path, settings)
    info = analysis.info
    assert (info.width, info.height) == (rotated_video.height, rotated_video.width)
    assert info.rotation == (-rotated_video.rotation) % 360  # reported clockwise, like `rotate`
    image = np.asarray(analysis.keyframes[0].image)
    assert image.shape[:2] == (rotated_video.width, rotated_video.height)  # rows = display height

    m = MARKER_SIZE - 6  # stay clear of chroma bleeding at the marker's edge
    corners = {
        "top_left": image[:m, :m], "top_right": image[:m, -m:],
        "bottom_left": image[-m:, :m], "bottom_right": image[-m:, -m:],
    }
    # Stored top-left marker: 90° counter-clockwise puts it bottom-left, clockwise top-right.
    expected = "bottom_left" if rotated_video.rotation == 90 else "top_right"
    assert MARKER_RGB == (255, 0, 0)
    assert _red_fraction(corners[expected]) > 0.9
    for name, region in corners.items():
        if name != expected:
            assert _red_fraction(region) < 0.05


@pytest.mark.parametrize(("degrees", "turns"), [(0, 0), (90, 1), (-90, 3), (180, 2), (-180, 2), (270, 3), (89, 1)])
def test_display_rotation_quarter_turns(degrees, turns):
    assert display_rotation(degrees) == turns


def test_degenerate_rotation_values_mean_no_rotation():
    from fastvlm_engine.video.analysis import display_rotation

    assert [display_rotation(r) for r in (0, 90, -90, 180, 270, -2147483648, float("nan"), 45)] == \
        [0, 1, 3, 2, 3, 0, 0, 0]
