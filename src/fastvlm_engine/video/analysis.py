"""The single decoding pass: limits, scene cuts, visual signals and keyframes, in one go.

:func:`analyze_video` opens the video, decodes every frame exactly once (PyAV, frame
threading, a decode-ahead thread), and for each frame: enforces the duration / frame-size /
frame-count limits on the *decoded* data, computes the cheap features, feeds the cut detector
and the signal accumulator, and offers the frame to the bounded keyframe candidate pool. After
the pass it builds the scenes, chooses the keyframes within the frame budget, drops
near-duplicates, and converts the survivors to display-oriented RGB images.

It is synchronous and CPU-bound: call it through ``asyncio.to_thread``.

Duration is measured, never read from the header: decoding stops at the first frame whose
timestamp (from its pts, relative to the first frame) exceeds ``video_max_seconds``, so a
3-hour file costs only the limit's worth of decoding, and a header that lies does not matter.

Truncated or damaged files: packets that fail to decode are skipped, and a container that
becomes unreadable part-way is analysed over the frames decoded before the damage
(``VideoAnalysis.truncated`` is set and a warning logged). With frame-threaded decoding the
last few frames before the damage (at most one per decoder thread) can be lost with it. Only a
file with no decodable frame at all is rejected (InvalidVideo).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

from ..config import Settings
from ..errors import InvalidVideo, MediaTooLarge, VideoTooLong
from ..schemas import VideoInfo
from .dedupe import NearDuplicateFilter
from .features import FeatureExtractor, plane_array
from .keyframes import CANDIDATE_MAX_SIDE, Candidate, CandidatePool, frame_budget, select_keyframes
from .phash import phash
from .reader import FrameReader
from .scenes import Cut, CutDetector, scenes_from_cuts
from .signals import SignalAccumulator, VisualSignals, visual_tags
from .source import VideoSource, media_errors, open_video

__all__ = [
    "DISSOLVE_WINDOW_SEC",
    "MAX_FRAME_RATE",
    "AnalysisCancelled",
    "AnalysisTimings",
    "Keyframe",
    "VideoAnalysis",
    "analyze_video",
    "display_image",
    "display_rotation",
]

logger = logging.getLogger(__name__)

MAX_FRAME_RATE = 240.0
"""Frames per second of the duration limit that may be decoded at most; guards against files
with broken timestamps (all frames at t=0) or absurd frame rates."""
DISSOLVE_WINDOW_SEC = 0.3
"""The dissolve check compares frame i with the frame this long before (k = 0.3 s * fps)."""
_FALLBACK_FPS = 30.0


class AnalysisCancelled(Exception):
    """The caller set the ``stop`` event (e.g. the client went away); nothing to report."""


@dataclass(frozen=True)
class Keyframe:
    """A frame chosen for captioning."""

    t: float
    """Presentation time in seconds from the first frame."""
    index: int
    """Decode-order frame number."""
    scene: int
    """Index into ``VideoAnalysis.scenes``."""
    image: Image.Image
    """RGB, display orientation, long side <= CANDIDATE_MAX_SIDE."""
    phash: int


@dataclass(frozen=True)
class AnalysisTimings:
    """Wall time per stage of the pass, in seconds.

    The pass is one loop, so its time is split by what each frame was doing: waiting for the
    decoder plus computing features and running the detector is ``scene_detection_sec``
    (decoding serves cut detection first; the other stages would need only ~1 % of frames);
    scaling candidate frames, choosing keyframes and converting the kept ones to RGB is
    ``frame_extraction_sec``; hashing and near-duplicate filtering is ``dedupe_sec``.
    """

    stats_sec: float
    scene_detection_sec: float
    frame_extraction_sec: float
    dedupe_sec: float


@dataclass(frozen=True)
class VideoAnalysis:
    """Everything the pass learned about a video."""

    info: VideoInfo
    scenes: list[tuple[float, float]]
    """(start, end) seconds of each scene."""
    cuts: list[Cut]
    keyframes: list[Keyframe]
    """Chosen frames after near-duplicate removal, in time order."""
    selected: int
    """Frames chosen before near-duplicate removal (the frame budget, or fewer)."""
    budget: int
    signals: VisualSignals
    visual_tags: list[str]
    timings: AnalysisTimings
    candidate_peak_bytes: int
    candidate_peak_count: int
    truncated: bool
    decode_errors: int
    start_sec: float = 0.0
    """Container time of the first frame (video time 0), to align the audio track."""
    samples: tuple[Candidate, ...] = ()
    """With ``keep_samples``: every frame the candidate pool still held (stored orientation,
    reduced size, in time order), so later stages can look between the keyframes."""
    quarter_turns: int = 0
    """Counter-clockwise quarter turns from stored to display orientation."""

    def sample_image(self, sample: Candidate) -> Image.Image:
        """One of :attr:`samples` as an upright RGB image."""
        return display_image(sample.frame, self.quarter_turns)


def display_rotation(rotation: float) -> int:
    """Quarter turns counter-clockwise (0-3) for PyAV's ``VideoFrame.rotation`` degrees.

    A degenerate display matrix (e.g. all zeros) makes PyAV report nonsense such as -2**31;
    anything that is not a multiple of 90 within one turn is treated as no rotation.
    """
    if not math.isfinite(rotation) or abs(rotation) > 360 or abs(rotation / 90.0 - round(rotation / 90.0)) > 0.05:
        return 0
    return round(rotation / 90.0) % 4


@dataclass
class _Chosen:
    candidate: Candidate
    scene: int
    phash: int


class _Clock:
    """Accumulates wall time per stage: each lap charges the time since the previous lap."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._now = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - self._now
        self._now = now

    def get(self, stage: str) -> float:
        return self.totals.get(stage, 0.0)


class _Pass:
    """Per-frame work of the decoding pass, and the decoded-data limits."""

    def __init__(self, settings: Settings, stream: av.video.stream.VideoStream, max_side: int,
                 clock: _Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.time_base = stream.time_base
        rate = stream.average_rate
        self.nominal_fps = float(rate) if rate and float(rate) > 0 else _FALLBACK_FPS
        self.extractor = FeatureExtractor()
        self.detector = CutDetector(
            luma_threshold=settings.video_cut_luma_threshold,
            hist_threshold=settings.video_cut_hist_threshold,
            dissolve_threshold=settings.video_dissolve_threshold,
            min_scene_sec=settings.video_min_scene_sec,
            dissolve_window=min(30, max(2, round(self.nominal_fps * DISSOLVE_WINDOW_SEC))),
        )
        self.pool = CandidatePool(max_keyframes=settings.video_max_keyframes, max_side=max_side,
                                  post_cut_delay_sec=min(0.2, settings.video_min_scene_sec / 2))
        self.signals = SignalAccumulator()
        self.cuts: list[Cut] = []
        self.max_frames = math.ceil(settings.video_max_seconds * MAX_FRAME_RATE) + 1
        self.frames = 0
        self.first_pts: int | None = None
        self.first_t = self.last_t = 0.0
        self.frame_seconds = 1.0 / self.nominal_fps
        self.quarter_turns = 0
        self.first_size: tuple[int, int] | None = None
        self._size: tuple[int, int] | None = None

    def push(self, frame: av.VideoFrame) -> None:
        index = self.frames
        t = self._check_limits(frame, index)
        self.clock.lap("scene_detection")  # includes waiting for the decoder

        features = self.extractor.push(frame, index, t)
        new_cuts = self.detector.push(features)
        self.clock.lap("scene_detection")

        self.signals.push(features)
        for cut in new_cuts:
            self.pool.note_cut(cut.t, t)
            if cut.kind == "hard":
                self.signals.discount_cut(cut.luma_diff)
        self.cuts.extend(new_cuts)
        if self.pool.wants(t):
            self.pool.offer(frame, index, t)
        self.frames += 1
        self.clock.lap("frame_extraction")

    def finish(self) -> None:
        for cut in self.detector.flush():
            self.cuts.append(cut)
            if cut.kind == "hard":
                self.signals.discount_cut(cut.luma_diff)
        if self.frames > 1 and self.last_t > self.first_t:
            self.frame_seconds = (self.last_t - self.first_t) / (self.frames - 1)

    @property
    def duration(self) -> float:
        return self.last_t + self.frame_seconds

    @property
    def start_sec(self) -> float:
        """Container time of the first frame."""
        if self.first_pts is None or not self.time_base:
            return 0.0
        return float(self.first_pts * self.time_base)

    @property
    def fps(self) -> float:
        return 1.0 / self.frame_seconds if self.frames > 1 and self.last_t > self.first_t else self.nominal_fps

    def _check_limits(self, frame: av.VideoFrame, index: int) -> float:
        """The frame's time in seconds, after enforcing the duration, count and size limits."""
        settings = self.settings
        if frame.pts is not None and self.first_pts is None:
            self.first_pts = frame.pts
        fallback = self.last_t + self.frame_seconds if index else 0.0
        t = _seconds(frame, self.first_pts, self.time_base, fallback=fallback)
        if t > settings.video_max_seconds:
            raise VideoTooLong(f"The video is longer than the limit of {settings.video_max_seconds:g} seconds.",
                               limit_sec=settings.video_max_seconds, decoded_sec=round(t, 3))
        if index >= self.max_frames:
            raise VideoTooLong(f"The video has more frames than {settings.video_max_seconds:g} seconds at "
                               f"{MAX_FRAME_RATE:g} fps.", limit_sec=settings.video_max_seconds)
        size = (frame.width, frame.height)
        if size != self._size:
            if frame.width * frame.height > settings.video_max_frame_pixels:
                raise MediaTooLarge(f"The video frames are {frame.width}x{frame.height} pixels; the limit "
                                    f"is {settings.video_max_frame_pixels} pixels per frame.")
            if self.first_size is None:
                self.first_size = size
                self.quarter_turns = display_rotation(frame.rotation)
                self.first_t = t
                self.frame_seconds = _frame_seconds(frame, self.time_base, self.frame_seconds)
            self._size = size
        self.last_t = max(self.last_t, t)
        return t


def analyze_video(source: VideoSource, settings: Settings, *, max_side: int = CANDIDATE_MAX_SIDE,
                  stop: threading.Event | None = None, keep_samples: bool = False) -> VideoAnalysis:
    """Decode ``source`` once and return its scenes, keyframes and visual signals.

    ``max_side`` bounds the long side of the keyframe images; ``keep_samples`` keeps the
    candidate frames in :attr:`VideoAnalysis.samples` (bounded like the pool, see
    :mod:`.keyframes`) instead of releasing them; setting ``stop`` from another
    thread ends the pass at the next frame with AnalysisCancelled (threads cannot be cancelled,
    so this is how an abandoned request stops burning CPU).

    Raises MediaTooLarge (bytes, frame pixels), VideoTooLong (decoded timestamps past
    ``settings.video_max_seconds``, or more frames than that at MAX_FRAME_RATE),
    UnsupportedMedia, InvalidVideo or MediaNotFound; never a PyAV exception.
    """
    clock = _Clock()
    video = open_video(source, max_bytes=settings.video_max_bytes,
                       max_frame_pixels=settings.video_max_frame_pixels)
    with video, media_errors(container_like=video.container_like):
        work = _Pass(settings, video.stream, max_side, clock)
        clock.lap("stats")
        with FrameReader(video, fast_decode=settings.video_fast_analysis_decode) as reader:
            for frame in reader:
                if stop is not None and stop.is_set():
                    raise AnalysisCancelled()
                work.push(frame)
        stats = reader.stats
    work.finish()
    clock.lap("scene_detection")

    if work.frames == 0 or work.first_size is None:
        raise InvalidVideo("The video has no decodable frames.")
    if work.duration > settings.video_max_seconds:  # e.g. one frame that claims to last for hours
        raise VideoTooLong(f"The video is longer than the limit of {settings.video_max_seconds:g} seconds.",
                           limit_sec=settings.video_max_seconds, decoded_sec=round(work.duration, 3))
    if stats.truncated:
        logger.warning("video truncated or damaged; analysed the first %d frames (%.2f s)",
                       work.frames, work.last_t)
    duration = work.duration
    scenes = scenes_from_cuts(work.cuts, duration, min_scene_sec=settings.video_min_scene_sec)
    starts = {start for start, _ in scenes[1:]}
    kept_cuts = [c for c in work.cuts if c.t in starts]
    budget = frame_budget(duration, len(scenes), max_keyframes=settings.video_max_keyframes,
                          seconds_per_keyframe=settings.video_seconds_per_keyframe)
    selected = select_keyframes(work.pool.candidates, scenes, budget)
    clock.lap("frame_extraction")

    chosen = [_Chosen(c, scene, phash(plane_array(c.frame.planes[0]))) for c, scene in selected]
    dedupe = NearDuplicateFilter(same_scene_max=settings.video_dedupe_hamming_same_scene,
                                 any_scene_max=settings.video_dedupe_hamming_any)
    kept = dedupe.keep(chosen)
    clock.lap("dedupe")

    turns = work.quarter_turns
    keyframes = [Keyframe(t=round(k.candidate.t, 3), index=k.candidate.index, scene=k.scene,
                          image=display_image(k.candidate.frame, turns), phash=k.phash)
                 for k in kept]
    clock.lap("frame_extraction")

    width, height = work.first_size if turns % 2 == 0 else work.first_size[::-1]
    info = VideoInfo(duration_sec=round(duration, 3), fps=round(work.fps, 3), width=width, height=height,
                     rotation=(4 - turns) % 4 * 90, frames_total=work.frames)
    video_signals = work.signals.result(duration=duration, cuts=len(scenes) - 1)
    return VideoAnalysis(
        info=info, scenes=scenes, cuts=kept_cuts, keyframes=keyframes, selected=len(selected),
        budget=budget, signals=video_signals, visual_tags=visual_tags(video_signals),
        timings=AnalysisTimings(stats_sec=clock.get("stats"),
                                scene_detection_sec=clock.get("scene_detection"),
                                frame_extraction_sec=clock.get("frame_extraction"),
                                dedupe_sec=clock.get("dedupe")),
        candidate_peak_bytes=work.pool.peak_bytes, candidate_peak_count=work.pool.peak_count,
        truncated=stats.truncated, decode_errors=stats.decode_errors,
        start_sec=work.start_sec, samples=tuple(work.pool.candidates) if keep_samples else (), quarter_turns=turns,
    )


def _seconds(frame: av.VideoFrame, first_pts: int | None, time_base: object, *, fallback: float) -> float:
    base = frame.time_base or time_base
    if frame.pts is None or first_pts is None or not base:
        return fallback
    return float((frame.pts - first_pts) * base)


def _frame_seconds(frame: av.VideoFrame, time_base: object, default: float) -> float:
    base = frame.time_base or time_base
    duration = getattr(frame, "duration", None)
    if duration and base:
        return float(duration * base)
    return default


def display_image(frame: av.VideoFrame, quarter_turns: int) -> Image.Image:
    """A decoded frame as an RGB image turned upright (``quarter_turns`` counter-clockwise)."""
    rgb = frame.to_ndarray(format="rgb24")
    if quarter_turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
    return Image.fromarray(rgb, "RGB")

