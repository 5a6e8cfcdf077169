"""The audio track of a video, decoded with PyAV and resampled to 16 kHz mono for Whisper.

Decoding is a separate, cheap pass over the container (audio packets only; video packets are
demuxed and dropped), run after the video analysis has released the source. Its clock is the
container's: :attr:`AudioTrack.start_sec` is the presentation time of the first sample, so the
speech stage can put words on the video's timeline (which starts at the first video frame).

Packets that fail to decode are skipped (counted); only the first ``max_seconds`` of audio are
decoded, so a long or lying file costs no more than the video limit allows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import av
import av.error
import numpy as np

from .source import VideoSource, media_errors, open_audio

__all__ = ["ASR_SAMPLE_RATE", "AudioTrack", "decode_audio"]

logger = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16_000
"""Whisper's input rate."""


@dataclass(frozen=True)
class AudioTrack:
    """Mono float32 samples in -1..1 and where they sit in the container's time."""

    samples: np.ndarray
    sample_rate: int
    start_sec: float
    """Container time of the first sample (the video's first frame has its own)."""
    decode_errors: int = 0

    @property
    def duration_sec(self) -> float:
        return len(self.samples) / self.sample_rate


def decode_audio(source: VideoSource, *, max_bytes: int, max_seconds: float,
                 sample_rate: int = ASR_SAMPLE_RATE) -> AudioTrack | None:
    """The first ``max_seconds`` of the default audio stream, or None when there is none.

    Raises the media errors of :func:`~.source.open_audio` (InvalidVideo for a container that
    breaks while reading) -- the speech stage reports those instead of failing the request.
    """
    if max_seconds <= 0 or sample_rate < 1:
        raise ValueError("max_seconds and sample_rate must be positive")
    opened = open_audio(source, max_bytes=max_bytes)
    if opened is None:
        return None
    limit = int(max_seconds * sample_rate)
    chunks: list[np.ndarray] = []
    have, errors = 0, 0
    start: float | None = None
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    with opened, media_errors(container_like=True):
        for packet in opened.container.demux(opened.stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                errors += 1
                continue
            for frame in frames:
                if start is None:
                    start = float(frame.time) if frame.time is not None else 0.0
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    have += chunks[-1].size
            if have >= limit:
                break
        else:
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    if errors:
        logger.warning("%d audio packets failed to decode and were skipped", errors)
    samples = np.concatenate(chunks)[:limit].astype(np.float32) if chunks else np.zeros(0, np.float32)
    np.clip(samples, -1.0, 1.0, out=samples)
    return AudioTrack(samples=samples, sample_rate=sample_rate, start_sec=start or 0.0, decode_errors=errors)
