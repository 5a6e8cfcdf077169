"""Keyframe budget, per-scene coverage, and the bounded candidate pool."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest
from PIL import Image

from fastvlm_engine.config import Settings
from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.keyframes import (
    Candidate,
    CandidatePool,
    candidate_size,
    frame_budget,
    select_keyframes,
)


def _frame(width: int = 64, height: int = 36) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8), format="rgb24")


@pytest.mark.parametrize(("duration", "scenes", "expected"), [
    (6.5, 5, 5),      # one frame per scene beats ceil(6.5 / 2) = 4
    (30.0, 3, 15),    # one per 2 s beats the scene count
    (180.0, 1, 24),   # capped at video_max_keyframes
    (0.04, 1, 1),     # a single frame still gets a keyframe
    (10.0, 40, 24),   # more scenes than the cap
])
def test_frame_budget(duration, scenes, expected):
    assert frame_budget(duration, scenes, max_keyframes=24, seconds_per_keyframe=2.0) == expected


def test_every_scene_gets_a_keyframe_within_the_budget(cut_video, settings):
    analysis = analyze_video(cut_video.path, settings)
    assert analysis.selected <= analysis.budget
    assert len(analysis.keyframes) <= analysis.selected
    assert {k.scene for k in analysis.keyframes} == set(range(len(analysis.scenes)))
    times = [k.t for k in analysis.keyframes]
    assert times == sorted(times)
    for k in analysis.keyframes:
        start, end = analysis.scenes[k.scene]
        assert start <= k.t < end
        assert isinstance(k.image, Image.Image) and k.image.mode == "RGB"
        assert k.image.size == (cut_video.width, cut_video.height)


def test_long_single_shot_is_filled_with_spread_frames(lying_video):
    analysis = analyze_video(lying_video.path, Settings(video_dedupe_hamming_same_scene=0,
                                                        video_dedupe_hamming_any=0))
    assert analysis.budget == 4  # ceil(8 s / 2 s)
    # Midpoints of four equal segments, not bunched at the start.
    assert [k.t for k in analysis.keyframes] == pytest.approx([1.0, 3.0, 5.0, 7.0], abs=0.26)


def test_small_budget_keeps_the_longest_scenes(cut_video):
    analysis = analyze_video(cut_video.path, Settings(video_max_keyframes=2))
    assert len(analysis.keyframes) <= 2
    lengths = [end - start for start, end in analysis.scenes]
    longest = sorted(sorted(range(len(lengths)), key=lambda s: (-lengths[s], s))[:2])
    assert sorted(k.scene for k in analysis.keyframes) == longest


def test_large_frames_are_reduced_to_the_candidate_size():
    assert candidate_size(1080, 1920) == (576, 1024)
    assert candidate_size(3840, 2160) == (1024, 576)
    assert candidate_size(640, 360) == (640, 360)
    assert candidate_size(641, 361, max_side=320) == (320, 180)


def test_pool_grid_stays_bounded_and_even_over_a_long_stream():
    pool = CandidatePool(max_keyframes=4, grid_start_sec=0.25)
    frame = _frame()
    fps = 10
    for i in range(180 * fps):  # three minutes
        t = i / fps
        if pool.wants(t):
            pool.offer(frame, i, t)
    grid = [c for c in pool.candidates if c.slot is not None]
    assert 4 <= len(grid) <= pool.grid_capacity == 8
    assert pool.peak_count <= pool.grid_capacity + 1
    gaps = np.diff([c.t for c in grid])
    assert np.allclose(gaps, pool.spacing)


def test_pool_keeps_a_frame_after_every_cut_but_a_bounded_number():
    pool = CandidatePool(max_keyframes=3, grid_start_sec=100.0, post_cut_delay_sec=0.2)
    frame = _frame()
    fps = 10
    cut_times = [1.0, 2.0, 4.5, 5.0, 8.0, 9.0, 15.0]
    for i in range(200):
        t = i / fps
        if any(math.isclose(t, c) for c in cut_times):
            pool.note_cut(t, t)
        if pool.wants(t):
            pool.offer(frame, i, t)
    post_cut = [c for c in pool.candidates if c.scene_start is not None]
    assert len(post_cut) <= pool.cut_capacity == 4
    for c in post_cut:
        assert c.t == pytest.approx(c.scene_start + 0.2)
    # The shortest finished scenes (4.5-5.0 and 8.0-9.0 / 1.0-2.0 ties) were released first.
    assert 5.0 in [c.scene_start for c in post_cut] and 15.0 in [c.scene_start for c in post_cut]
    assert 4.5 not in [c.scene_start for c in post_cut]


def test_selection_spreads_frames_in_proportion_to_scene_length():
    frame = _frame()
    candidates = [Candidate(t=i * 0.5, index=i, frame=frame) for i in range(40)]  # 0 .. 19.5 s
    scenes = [(0.0, 4.0), (4.0, 20.0)]
    chosen = select_keyframes(candidates, scenes, budget=5)
    per_scene = [sum(1 for _, s in chosen if s == scene) for scene in range(2)]
    assert per_scene == [1, 4]
    assert [c.t for c, s in chosen if s == 1] == [6.0, 10.0, 14.0, 18.0]
    assert [c.t for c, s in chosen if s == 0] == [2.0]


def test_selection_never_exceeds_candidates_or_budget():
    frame = _frame()
    candidates = [Candidate(t=0.0, index=0, frame=frame), Candidate(t=3.0, index=90, frame=frame)]
    chosen = select_keyframes(candidates, [(0.0, 2.0), (2.0, 4.0)], budget=10)
    assert [(c.index, s) for c, s in chosen] == [(0, 0), (90, 1)]
    assert select_keyframes([], [(0.0, 1.0)], budget=3) == []


@pytest.mark.parametrize("kwargs", [
    {"max_keyframes": 0}, {"max_keyframes": 2, "max_side": 8}, {"max_keyframes": 2, "grid_start_sec": 0},
    {"max_keyframes": 2, "post_cut_delay_sec": -1},
])
def test_pool_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        CandidatePool(**kwargs)
