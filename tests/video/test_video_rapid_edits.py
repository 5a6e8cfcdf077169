"""Rapid edits: every boundary of generated fast-cut clips, and nothing else.

The clips (tests/fixtures/rapid_edits.py) join photos and grey textures with hard cuts (shots
down to 0.15 s), cross-dissolves and dips to black, around camera flashes, fades at both ends,
fast zooms, handheld shake, whip pans and a title popping in. These two seeds are decided exactly
by the default detector; bench/video_cuts.py reports precision and recall over many more (the
misses it shows are cuts between low-contrast grey pictures).
"""

from __future__ import annotations

import pytest

from fastvlm_engine.video.analysis import analyze_video
from tests.fixtures.rapid_edits import make_rapid_edit_video


@pytest.fixture(scope="module", params=[(0, 30), (3, 25)], ids=["seed0-30fps", "seed3-25fps"])
def clip(request, video_dir):
    seed, fps = request.param
    return make_rapid_edit_video(video_dir, seed=seed, fps=fps)


def test_hard_cuts_exact_and_one_boundary_per_gradual_transition(clip, settings):
    analysis = analyze_video(clip.path, settings)
    hard = [c.index for c in analysis.cuts if c.kind == "hard"]
    gradual = [c.index for c in analysis.cuts if c.kind == "dissolve"]
    assert hard == list(clip.cuts)
    assert len(gradual) == len(clip.dissolves)
    for found, (start, end) in zip(gradual, clip.dissolves, strict=True):
        assert start - 1 <= found < end
    assert len(analysis.scenes) == 1 + len(clip.cuts) + len(clip.dissolves)


def test_shortest_shots_survive_as_scenes(clip, settings):
    analysis = analyze_video(clip.path, settings)
    shortest = min(end - start for start, end in analysis.scenes)
    assert shortest <= 0.2 + 1e-6  # 0.15 s shots: 5 frames at 30 fps, 4 at 25 fps
    assert shortest >= settings.video_min_scene_sec - 1e-6


def test_distractors_raise_no_boundary(clip, settings):
    analysis = analyze_video(clip.path, settings)
    kinds = {kind for kind, _, _ in clip.events}
    assert {"flash", "fade_in", "fade_out", "zoom", "shake", "whip", "overlay"} <= kinds
    for kind, first, end in clip.events:
        inside = [c.index for c in analysis.cuts if first < c.index < end]
        assert inside == [], (kind, first, end, inside)
