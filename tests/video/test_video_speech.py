"""The speech stage: audio decoding, the voice gate, 30 s windows, batching, and video-time stamps.

The transcriber is the real engine (tiny random Whisper behind the production speech batcher),
wrapped only to record which windows it was given. Whisper's words are meaningless here, so the
tests check where audio was sent, how it was batched and where the segments land -- never
what they say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from fastvlm_engine.config import Settings
from fastvlm_engine.engine.batcher import Batcher
from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.audio import ASR_SAMPLE_RATE, decode_audio
from fastvlm_engine.video.speech import transcribe_speech
from fastvlm_engine.video.vad import PAD_SEC, fixed_windows, frame_levels_db, pack_windows, voiced_regions
from fastvlm_engine.worker.service import EngineTranscriber
from tests.fixtures.social import make_social_video, speech_like
from tests.fixtures.videos import SceneSpec

RATE = ASR_SAMPLE_RATE


class Recording:
    """The real engine transcriber; records the windows (and calls) it gets."""

    def __init__(self, engine: EngineTranscriber) -> None:
        self.engine = engine
        self.name, self.sample_rate, self.window_sec = engine.name, engine.sample_rate, engine.window_sec
        self.calls: list[list[np.ndarray]] = []

    async def transcribe(self, windows: Sequence[np.ndarray]):
        self.calls.append(list(windows))
        return await self.engine.transcribe(windows)


@pytest.fixture(scope="module")
def engine(asr):
    sizes: list[int] = []

    def run(batch):
        sizes.append(len(batch))
        return asr.transcribe(batch)

    batcher = Batcher(run, max_batch_size=8, max_batch_wait_s=0.2, name="asr").start()
    try:
        transcriber = EngineTranscriber(asr, batcher)
        transcriber.batch_sizes = sizes  # type: ignore[attr-defined]
        yield transcriber
    finally:
        batcher.stop()


def _speech(fixture, settings: Settings, transcriber):
    analysis = analyze_video(fixture.path, settings)
    outcome = asyncio.run(transcribe_speech(fixture.path, settings, transcriber, video_start_sec=analysis.start_sec,
                                            duration_sec=analysis.info.duration_sec))
    return analysis, outcome


# --- the voice gate and the windows ----------------------------------------------------------

def _place(audio: np.ndarray, start: float, end: float, seed: int = 0) -> None:
    a, b = int(start * RATE), int(end * RATE)
    audio[a:b] = speech_like((b - a) / RATE + 0.01, RATE, seed=seed)[: b - a]


def test_gate_finds_the_bursts_and_skips_the_silence():
    audio = np.zeros(RATE * 10, np.float32)
    for start, end in ((1.0, 2.5), (6.0, 6.8)):
        _place(audio, start, end)
    regions = voiced_regions(audio, RATE, threshold_db=-45)
    assert len(regions) == 2
    for (start, end), (found_start, found_end) in zip(((1.0, 2.5), (6.0, 6.8)), regions, strict=True):
        assert found_start == pytest.approx(start - PAD_SEC, abs=0.05)
        assert found_end == pytest.approx(end + PAD_SEC, abs=0.05)
    assert voiced_regions(np.zeros(RATE * 3, np.float32), RATE, threshold_db=-45) == []
    assert voiced_regions(audio, RATE, threshold_db=-5) == []  # nothing that loud


def test_clicks_are_ignored_and_short_gaps_bridged():
    audio = np.zeros(RATE * 4, np.float32)
    audio[RATE // 2:RATE // 2 + 480] = 0.5  # a 30 ms click
    _place(audio, 2.0, 2.6)
    _place(audio, 2.8, 3.4, seed=1)  # 0.2 s later: one region
    regions = voiced_regions(audio, RATE, threshold_db=-45)
    assert len(regions) == 1 and regions[0][0] > 1.5
    assert frame_levels_db(np.zeros(100, np.float32), RATE).size == 0


def test_windows_are_at_most_30_s_and_cover_every_region():
    regions = [(0.5, 4.0), (12.0, 20.0), (29.0, 31.0), (40.0, 105.0)]
    windows = pack_windows(regions, window_sec=30.0)
    assert windows == [(0.5, 20.0), (29.0, 31.0), (40.0, 70.0), (70.0, 100.0), (100.0, 105.0)]
    assert all(end - start <= 30.0 + 1e-9 for start, end in windows)
    assert fixed_windows(75.0, window_sec=30.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 75.0)]
    with pytest.raises(ValueError):
        pack_windows(regions, window_sec=0)


# --- decoding --------------------------------------------------------------------------------

def test_audio_is_decoded_to_16k_mono_with_its_start_time(speech_video):
    audio = decode_audio(speech_video.path, max_bytes=10**9, max_seconds=60)
    assert audio is not None and audio.sample_rate == RATE and audio.samples.dtype == np.float32
    assert audio.start_sec == pytest.approx(speech_video.audio_delay_sec, abs=0.03)  # less the AAC priming
    assert audio.start_sec + audio.duration_sec == pytest.approx(speech_video.duration, abs=0.1)
    limited = decode_audio(speech_video.path, max_bytes=10**9, max_seconds=1.0)
    assert limited is not None and limited.duration_sec == pytest.approx(1.0, abs=1e-3)


def test_no_audio_track_and_no_stream(cut_video):
    assert decode_audio(cut_video.path, max_bytes=10**9, max_seconds=60) is None


# --- the stage --------------------------------------------------------------------------------

def test_speech_lands_on_the_video_timeline(speech_video, settings, engine):
    recording = Recording(engine)
    analysis, outcome = _speech(speech_video, settings, recording)
    speech, report = outcome.speech, outcome.report
    assert report.status == "done"
    assert len(recording.calls) == 1 and len(recording.calls[0]) == speech.windows == 1  # both bursts, one window
    (window,) = recording.calls[0]
    # The first burst (0.5 s) starts within the padding of the audio's start (0.3 s), so the window
    # runs from the audio's start to the end of the last burst (5.0 s) plus the padding.
    assert analysis.start_sec == 0.0
    assert window.size / RATE == pytest.approx(5.0 + PAD_SEC - speech_video.audio_delay_sec, abs=0.05)
    assert speech.voiced_sec == pytest.approx(window.size / RATE, abs=0.05)
    assert speech.audio_sec == pytest.approx(speech_video.duration - speech_video.audio_delay_sec, abs=0.1)
    assert speech.model == engine.name and speech.language is not None
    # Segments (meaningless words) lie inside that window, in video time, sorted.
    window_start = speech_video.audio_delay_sec
    for segment in speech.segments:
        assert window_start - 0.05 <= segment.start_sec <= segment.end_sec <= 5.0 + PAD_SEC + 0.05
        assert segment.text
    assert [s.start_sec for s in speech.segments] == sorted(s.start_sec for s in speech.segments)


def test_a_video_without_audio_has_an_empty_transcript(cut_video, settings, engine):
    recording = Recording(engine)
    _, outcome = _speech(cut_video, settings, recording)
    assert outcome.report.status == "done" and "no audio track" in (outcome.report.reason or "")
    assert outcome.speech.segments == [] and recording.calls == []


def test_silence_is_skipped_by_the_gate_and_sent_without_it(silent_video, settings, engine):
    recording = Recording(engine)
    _, outcome = _speech(silent_video, settings, recording)
    assert recording.calls == [] and outcome.speech.windows == 0
    assert outcome.report.status == "done" and "silent" in (outcome.report.reason or "")
    recording = Recording(engine)
    _, ungated = _speech(silent_video, Settings(asr_vad=False), recording)
    assert len(recording.calls) == 1 and ungated.speech.windows == 1
    assert ungated.speech.voiced_sec == pytest.approx(silent_video.duration, abs=0.1)


def test_long_audio_is_windowed_batched_and_gated(video_dir, settings, engine):
    clip = make_social_video(video_dir, "long_speech", [SceneSpec("coffee", 75.0)], size=(64, 36), fps=8,
                             bursts=[(1.0, 4.0), (50.0, 53.0)], noise_floor_db=-70)
    recording = Recording(engine)
    before = len(engine.batch_sizes)
    _, gated = _speech(clip, settings, recording)
    assert gated.speech.windows == 2 and [w.size / RATE for w in recording.calls[0]] == [
        pytest.approx(3.0 + 2 * PAD_SEC, abs=0.1), pytest.approx(3.0 + 2 * PAD_SEC, abs=0.1)]
    assert engine.batch_sizes[before:] == [2]  # one generate call for both windows
    recording = Recording(engine)
    before = len(engine.batch_sizes)
    _, ungated = _speech(clip, Settings(asr_vad=False), recording)
    assert ungated.speech.windows == 3 and [round(w.size / RATE) for w in recording.calls[0]] == [30, 30, 15]
    assert engine.batch_sizes[before:] == [3]
    for outcome, windows in ((gated, [(0.8, 4.2), (49.8, 53.2)]), (ungated, [(0, 30), (30, 60), (60, 75)])):
        for segment in outcome.speech.segments:
            assert any(a - 0.05 <= segment.start_sec and segment.end_sec <= b + 0.05 for a, b in windows)


def test_an_unreadable_audio_track_is_reported_not_raised(video_dir, settings, engine):
    clip = make_social_video(video_dir, "broken_audio", [SceneSpec("coffee", 2.0)], size=(64, 36),
                             bursts=[(0.2, 1.8)])
    damaged = video_dir / "broken_audio_damaged.mp4"
    damaged.write_bytes(clip.path.read_bytes()[:-4096])  # the index (moov) is at the end: gone
    recording = Recording(engine)
    outcome = asyncio.run(transcribe_speech(damaged, settings, recording, video_start_sec=0.0, duration_sec=2.0))
    assert outcome.report.status == "failed" and "audio track could not be decoded" in (outcome.report.reason or "")
    assert outcome.speech.segments == [] and recording.calls == []
