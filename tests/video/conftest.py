"""Session-scoped generated videos (see tests/fixtures/videos.py) shared by the video tests."""

from __future__ import annotations

import pytest

from fastvlm_engine.config import Settings
from fastvlm_engine.video.safety import SafetyChecker
from tests.fixtures import videos
from tests.fixtures.social import Overlay, SocialFixture, make_social_video
from tests.fixtures.videos import SceneSpec


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


@pytest.fixture(scope="session")
def asr(tiny_asr_dir):
    import torch

    torch.set_num_threads(1)
    from fastvlm_engine.engine.whisper import WhisperASR

    return WhisperASR.load(tiny_asr_dir, device="cpu", max_new_tokens=48)


@pytest.fixture(scope="session")
def speech_video(video_dir) -> SocialFixture:
    """6 s, two shots, speech-like sound at 0.5-2.0 s and 3.2-5.0 s, audio starting 0.3 s late."""
    return make_social_video(video_dir, "speech", [SceneSpec("chelsea", 3.0), SceneSpec("rocket", 3.0)],
                             size=(180, 320), bursts=[(0.5, 2.0), (3.2, 5.0)], audio_delay_sec=0.3)


@pytest.fixture(scope="session")
def titled_video(video_dir) -> SocialFixture:
    """6 s, two shots, a title across the cut and a second line to the end, speech under both."""
    return make_social_video(video_dir, "titled", [SceneSpec("chelsea", 3.0), SceneSpec("rocket", 3.0)],
                             overlays=[Overlay("BIG SALE TODAY", 1.0, 3.5), Overlay("link in bio", 4.0, 6.0, y=0.8)],
                             bursts=[(0.5, 2.0), (3.2, 5.0)])


@pytest.fixture(scope="session")
def silent_video(video_dir) -> SocialFixture:
    """3 s with an audio track of digital silence."""
    return make_social_video(video_dir, "silent", [SceneSpec("coffee", 3.0)], size=(160, 96), bursts=[])
