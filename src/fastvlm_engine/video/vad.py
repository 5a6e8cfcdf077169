"""Where the audio is loud enough to hold speech, and how to cut it into Whisper's 30 s windows.

An energy gate, not a speech classifier: 30 ms frames whose RMS level reaches the threshold
(dBFS) are voiced; voiced runs shorter than a click are dropped, gaps shorter than a breath are
bridged, and each region is padded so word onsets are not clipped. Music and noise above the
gate pass too -- the point is to skip silence, which costs Whisper as much as speech (every
window is padded to 30 s) and is where it hallucinates.

Windows are packed greedily from the voiced regions: a window starts at a region and takes the
following regions while they end within ``window_sec`` of its start; a region longer than that
is split. Silence between windows is never transcribed.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FRAME_SEC",
    "fixed_windows",
    "frame_levels_db",
    "pack_windows",
    "voiced_regions",
]

FRAME_SEC = 0.03
MIN_VOICED_SEC = 0.1
"""Voiced runs shorter than this are clicks."""
MAX_GAP_SEC = 0.3
"""Quieter gaps shorter than this stay inside one region."""
PAD_SEC = 0.2
"""Added before and after each region."""
_FLOOR_DB = -120.0

Span = tuple[float, float]


def frame_levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level (dBFS, full scale = 1.0) of each whole FRAME_SEC frame."""
    size = max(1, round(FRAME_SEC * sample_rate))
    count = len(samples) // size
    if count == 0:
        return np.zeros(0, np.float32)
    frames = samples[:count * size].astype(np.float64).reshape(count, size)
    rms = np.sqrt((frames * frames).mean(axis=1))
    return np.maximum(20.0 * np.log10(np.maximum(rms, 1e-12)), _FLOOR_DB).astype(np.float32)


def voiced_regions(samples: np.ndarray, sample_rate: int, *, threshold_db: float) -> list[Span]:
    """(start, end) seconds of the stretches at or above ``threshold_db``, merged and padded."""
    levels = frame_levels_db(samples, sample_rate)
    duration = len(samples) / sample_rate
    voiced = np.flatnonzero(levels >= threshold_db)
    if voiced.size == 0:
        return []
    runs: list[list[float]] = []
    run_start = previous = int(voiced[0])
    for index in voiced[1:].tolist() + [None]:
        if index is not None and index == previous + 1:
            previous = index
            continue
        runs.append([run_start * FRAME_SEC, (previous + 1) * FRAME_SEC])
        if index is not None:
            run_start = previous = index
    merged: list[list[float]] = []
    for start, end in runs:
        if merged and start - merged[-1][1] < MAX_GAP_SEC:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    regions: list[Span] = []
    for start, end in merged:
        if end - start < MIN_VOICED_SEC:
            continue
        start, end = max(0.0, start - PAD_SEC), min(duration, end + PAD_SEC)
        if regions and start <= regions[-1][1]:
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((start, end))
    return regions


def pack_windows(regions: list[Span], *, window_sec: float) -> list[Span]:
    """Windows of at most ``window_sec`` covering the regions (see the module docstring)."""
    if window_sec <= 0:
        raise ValueError(f"window_sec must be > 0, got {window_sec}")
    windows: list[Span] = []
    for start, end in sorted(regions):
        if windows and end - windows[-1][0] <= window_sec:
            windows[-1] = (windows[-1][0], end)
            continue
        while end - start > window_sec:
            windows.append((start, start + window_sec))
            start += window_sec
        windows.append((start, end))
    return windows


def fixed_windows(duration: float, *, window_sec: float) -> list[Span]:
    """Back-to-back windows over the whole audio (no voice-activity gate)."""
    if window_sec <= 0:
        raise ValueError(f"window_sec must be > 0, got {window_sec}")
    windows, start = [], 0.0
    while start < duration - 1e-9:
        windows.append((start, min(duration, start + window_sec)))
        start += window_sec
    return windows
