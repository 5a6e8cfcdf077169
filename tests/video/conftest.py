"""Session-scoped generated videos (see tests/fixtures/videos.py) shared by the video tests."""

from __future__ import annotations

import pytest

from fastvlm_engine.config import Settings
from fastvlm_engine.video.safety import SafetyChecker
from tests.fixtures import videos


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def cut_video(video_dir) -> videos.VideoFixture:
    return videos.make_cut_video(video_dir)


@pytest.fixture(scope="session")
def single_shot_video(video_dir) -> videos.VideoFixture:
    return videos.make_single_shot_video(video_dir)


@pytest.fixture(scope="session")
def dissolve_video(video_dir) -> videos.VideoFixture:
    return videos.make_dissolve_video(video_dir)


@pytest.fixture(scope="session", params=[90, -90], ids=["ccw90", "cw90"])
def rotated_video(request, video_dir) -> videos.VideoFixture:
    return videos.make_rotated_video(video_dir, rotation=request.param)


@pytest.fixture(scope="session")
def lying_video(video_dir) -> videos.VideoFixture:
    """8 s of video whose MP4 header claims 1 s."""
    return videos.make_long_video(video_dir, seconds=8.0, claimed_seconds=1.0)


@pytest.fixture(scope="session")
def corrupt_video(video_dir) -> videos.VideoFixture:
    return videos.make_corrupt_video(video_dir)


@pytest.fixture(scope="session")
def truncated_partial(video_dir) -> videos.VideoFixture:
    return videos.make_truncated_video(video_dir, keep_fraction=0.7, faststart=True)


@pytest.fixture(scope="session")
def truncated_nothing(video_dir) -> videos.VideoFixture:
    return videos.make_truncated_video(video_dir, keep_fraction=0.5, faststart=False)


@pytest.fixture(scope="session")
def audio_only(video_dir) -> videos.VideoFixture:
    return videos.make_audio_only(video_dir)


@pytest.fixture(scope="session")
def zero_frame_video(video_dir) -> videos.VideoFixture:
    return videos.make_zero_frame_video(video_dir)


@pytest.fixture(scope="session")
def safety_checker() -> SafetyChecker:
    """One real opennsfw session for the whole run."""
    return SafetyChecker()
