"""Opening and decoding: limits on decoded data, and exact error classes for bad files."""

from __future__ import annotations

import re

import av
import numpy as np
import pytest

from fastvlm_engine.config import Settings
from fastvlm_engine.errors import (
    EngineError,
    InvalidVideo,
    MediaNotFound,
    MediaTooLarge,
    UnsupportedMedia,
    VideoTooLong,
)
from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.source import looks_like_video_container
from tests.fixtures import videos


def _assert_clean_message(error: EngineError, *paths) -> None:
    """Fixed, client-safe text: no server path (absolute or not), no traceback."""
    assert error.message
    assert "Traceback" not in error.message and "File \"" not in error.message
    for path in paths:
        assert str(path.parent) not in error.message
        assert path.name not in error.message
    assert not re.search(r"/\w+/", error.message)


@pytest.mark.parametrize(("fixture", "error", "code"), [
    ("corrupt_video", InvalidVideo, "invalid_video"),
    ("truncated_nothing", InvalidVideo, "invalid_video"),
    ("zero_frame_video", InvalidVideo, "invalid_video"),
    ("audio_only", UnsupportedMedia, "unsupported_media"),
])
@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_bad_files_raise_their_exact_error(request, settings, fixture, error, code, as_bytes):
    video = request.getfixturevalue(fixture)
    source = video.path.read_bytes() if as_bytes else video.path
    with pytest.raises(EngineError) as info:
        analyze_video(source, settings)
    assert type(info.value) is error
    assert info.value.code == code
    _assert_clean_message(info.value, video.path)


@pytest.mark.parametrize("kind", ["random", "jpeg", "png", "text"])
def test_not_a_video_is_unsupported(settings, kind, tmp_path):
    data = videos.not_video_payloads()[kind]
    path = tmp_path / f"upload.{kind}"
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(UnsupportedMedia) as info:
            analyze_video(source, settings)
        assert info.value.http_status == 415
        _assert_clean_message(info.value, path)


def test_empty_and_header_only_inputs_are_invalid_videos(settings, cut_video):
    with pytest.raises(InvalidVideo):
        analyze_video(b"", settings)
    with pytest.raises(InvalidVideo):
        analyze_video(cut_video.path.read_bytes()[:48], settings)


def test_missing_path_is_not_found_without_revealing_it(settings, tmp_path):
    missing = tmp_path / "gone.mp4"
    with pytest.raises(MediaNotFound) as info:
        analyze_video(missing, settings)
    _assert_clean_message(info.value, missing)


def test_byte_limit_applies_to_bytes_and_paths(cut_video):
    limited = Settings(video_max_bytes=1000)
    with pytest.raises(MediaTooLarge):
        analyze_video(cut_video.path.read_bytes(), limited)
    with pytest.raises(MediaTooLarge):
        analyze_video(cut_video.path, limited)


def test_frame_pixel_limit(cut_video):
    with pytest.raises(MediaTooLarge) as info:
        analyze_video(cut_video.path, Settings(video_max_frame_pixels=320 * 180))
    assert info.value.http_status == 413


def test_decoding_stops_at_the_duration_limit(cut_video):
    with pytest.raises(VideoTooLong) as info:
        analyze_video(cut_video.path, Settings(video_max_seconds=3.0))
    assert info.value.code == "video_too_long"
    assert info.value.details["limit_sec"] == 3.0
    # Stopped on the first frame past the limit, not after decoding the 6.5 s file.
    assert 3.0 < info.value.details["decoded_sec"] <= 3.0 + 1.01 / cut_video.fps


def test_duration_is_measured_not_read_from_a_lying_header(lying_video):
    with av.open(str(lying_video.path)) as container:  # the header claims 1 s ...
        assert container.duration / av.time_base == pytest.approx(lying_video.claimed_seconds, abs=0.05)
    with pytest.raises(VideoTooLong):  # ... but 8 s decode, over a 3 s limit
        analyze_video(lying_video.path, Settings(video_max_seconds=3.0))
    analysis = analyze_video(lying_video.path, Settings(video_max_seconds=10.0))
    assert analysis.info.duration_sec == pytest.approx(lying_video.duration, abs=0.05)
    assert analysis.info.frames_total == lying_video.frames


def test_truncated_file_is_analysed_over_the_frames_that_decode(truncated_partial, settings):
    analysis = analyze_video(truncated_partial.path, settings)
    assert 0 < analysis.info.frames_total < truncated_partial.frames
    assert analysis.info.duration_sec < truncated_partial.duration
    assert analysis.keyframes


def test_open_binary_file_is_accepted_and_left_open(cut_video, settings):
    with open(cut_video.path, "rb") as handle:
        analysis = analyze_video(handle, settings)
        assert not handle.closed
    assert analysis.info.frames_total == cut_video.frames


def test_video_info_is_measured(cut_video, settings):
    info = analyze_video(cut_video.path, settings).info
    assert info.frames_total == cut_video.frames
    assert info.fps == pytest.approx(cut_video.fps, rel=1e-3)
    assert info.duration_sec == pytest.approx(cut_video.duration, abs=1e-3)
    assert (info.width, info.height, info.rotation) == (cut_video.width, cut_video.height, 0)


def test_damaged_variants_never_leak_other_exceptions(cut_video, settings):
    """Truncations and byte corruption anywhere give a result or an EngineError, nothing else."""
    data = cut_video.path.read_bytes()
    rng = np.random.default_rng(7)
    variants = [data[:n] for n in (8, 64, 200, 1000, len(data) // 3, len(data) - 10)]
    for _ in range(8):
        damaged = bytearray(data)
        start = int(rng.integers(0, len(data) - 512))
        damaged[start:start + 512] = rng.bytes(512)
        variants.append(bytes(damaged))
    for variant in variants:
        try:
            analyze_video(variant, settings)
        except EngineError as exc:
            assert isinstance(exc, (InvalidVideo, UnsupportedMedia))


def test_container_sniffing():
    assert looks_like_video_container(b"\x00\x00\x00\x20ftypisom" + b"\x00" * 20)
    assert looks_like_video_container(b"\x1a\x45\xdf\xa3" + b"\x00" * 20)
    assert looks_like_video_container(b"RIFF\x00\x00\x00\x00AVI LIST")
    assert not looks_like_video_container(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    assert not looks_like_video_container(b"hello world, plain text")
