"""The speech stage: what is said in a video, with timestamps on the video's timeline.

Order of work: decode the audio track (:mod:`.audio`, in a thread), find the voiced stretches
(:mod:`.vad`, unless the gate is off), pack them into windows of at most 30 s, send all windows
to the :class:`Transcriber` at once (the engine batches them onto Whisper), and move each
segment from window time to video time. An audio track that is missing, silent or broken gives
an empty transcript and a reason, never a failed request.

Video time starts at the first video frame; the audio may start earlier or later in the
container, and that offset is applied.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from ..config import Settings
from ..errors import MediaError
from ..observability import tracing
from ..schemas import Speech, SpeechSegment, StageReport
from .audio import AudioTrack, decode_audio
from .source import VideoSource
from .vad import fixed_windows, pack_windows, voiced_regions

__all__ = ["NO_TRANSCRIBER", "SpeechOutcome", "Transcriber", "TranscriptLike", "transcribe_speech"]

log = logging.getLogger(__name__)

NO_TRANSCRIBER = ("No speech model on this server: FASTVLM_MODEL is set but FASTVLM_ASR_MODEL is not (point it "
                  "at a Whisper folder or hub id, e.g. openai/whisper-small).")


class TranscriptLike(Protocol):
    """One window's transcript: (start, end, text) segments in seconds from the window start."""

    @property
    def language(self) -> str | None: ...
    @property
    def segments(self) -> Sequence[tuple[float, float, str]]: ...


class Transcriber(Protocol):
    """What the speech stage needs from the speech engine."""

    @property
    def name(self) -> str: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def window_sec(self) -> float: ...

    async def transcribe(self, windows: Sequence[np.ndarray]) -> Sequence[TranscriptLike]:
        """One transcript per window (mono float32 arrays at ``sample_rate``), in order."""
        ...


@dataclass(frozen=True)
class SpeechOutcome:
    speech: Speech
    report: StageReport

    @classmethod
    def off(cls, reason: str, *, status: Literal["off", "skipped", "failed"] = "off") -> SpeechOutcome:
        """No transcript, and why."""
        return cls(Speech(), StageReport(status=status, reason=reason))


def _empty(reason: str, *, model: str, status: Literal["done", "failed"] = "done", audio_sec: float = 0.0
           ) -> SpeechOutcome:
    return SpeechOutcome(Speech(model=model, audio_sec=audio_sec), StageReport(status=status, reason=reason))


async def transcribe_speech(source: VideoSource, settings: Settings, transcriber: Transcriber, *,
                            video_start_sec: float, duration_sec: float) -> SpeechOutcome:
    """Transcribe ``source``'s audio; segments are clipped to [0, duration_sec] of video time.

    Raises only what the transcriber raises for reasons other than bad audio (the caller
    decides); media problems of the audio track are reported in the outcome.
    """
    with tracing.span("video.speech.decode"):
        try:
            audio = await asyncio.to_thread(decode_audio, source, max_bytes=settings.video_max_bytes,
                                            max_seconds=settings.video_max_seconds,
                                            sample_rate=transcriber.sample_rate)
        except MediaError:
            log.warning("the audio track could not be decoded; no transcript")
            return _empty("The audio track could not be decoded.", status="failed", model=transcriber.name)
    if audio is None:
        return _empty("The video has no audio track.", model=transcriber.name)
    offset = audio.start_sec - video_start_sec
    audio_end = min(audio.duration_sec, duration_sec - offset)  # audio past the last frame is not heard
    spans = _windows(audio, settings, transcriber.window_sec, audio_end)
    voiced = sum(end - start for start, end in spans)
    if not spans:
        return _empty("No speech: the audio track is silent.", model=transcriber.name,
                      audio_sec=round(audio.duration_sec, 3))
    rate = audio.sample_rate
    chunks = [audio.samples[int(start * rate):int(end * rate)] for start, end in spans]
    with tracing.span("video.speech.asr", windows=len(chunks)):
        transcripts = await transcriber.transcribe(chunks)
    if len(transcripts) != len(chunks):
        raise RuntimeError(f"the transcriber returned {len(transcripts)} transcripts for {len(chunks)} windows")
    segments: list[SpeechSegment] = []
    languages: Counter[str] = Counter()
    for (start, end), transcript in zip(spans, transcripts, strict=True):
        if transcript.language:
            languages[transcript.language] += end - start
        for seg_start, seg_end, text in transcript.segments:
            begin = max(0.0, start + seg_start + offset)
            finish = min(end + offset, start + seg_end + offset, duration_sec)
            if text and finish > begin:
                segments.append(SpeechSegment(start_sec=round(begin, 3), end_sec=round(finish, 3), text=text))
    segments.sort(key=lambda s: (s.start_sec, s.end_sec))
    speech = Speech(language=languages.most_common(1)[0][0] if languages else None, segments=segments,
                    model=transcriber.name, windows=len(chunks), audio_sec=round(audio.duration_sec, 3),
                    voiced_sec=round(voiced, 3))
    reason = None if segments else "The speech model heard no words."
    return SpeechOutcome(speech, StageReport(status="done", reason=reason))


def _windows(audio: AudioTrack, settings: Settings, window_sec: float, audio_end: float) -> list[tuple[float, float]]:
    """(start, end) seconds of audio time to transcribe: voiced stretches packed into windows,
    or back-to-back windows over everything when the gate is off."""
    if audio_end <= 0:
        return []
    if not settings.asr_vad:
        return fixed_windows(audio_end, window_sec=window_sec)
    end_sample = int(audio_end * audio.sample_rate)
    regions = voiced_regions(audio.samples[:end_sample], audio.sample_rate, threshold_db=settings.asr_vad_threshold_db)
    return pack_windows(regions, window_sec=window_sec)
