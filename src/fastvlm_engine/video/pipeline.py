"""``summarize_video``: analysis pass, captions, summary, tags and safety for one video.

Order of work and where it runs:

1. the analysis pass (open, decode once, cuts, keyframes, dedupe, RGB conversion) -- in a
   worker thread via ``asyncio.to_thread``; the event loop never decodes; if the request is
   cancelled, the pass is told to stop at its next frame;
2. captions for all kept keyframes in ONE ``captioner.caption`` call (the engine batches them
   onto the model); meanwhile the NSFW classifier scores the same frames in another thread;
3. the summary: ``captioner.complete`` on a bounded, timestamped caption prompt, or the
   extractive summary (mode "extractive", or when the model's summary comes back empty);
4. vibe tags from the captions plus the visual tags, and the caption-lexicon safety flags.

Timings: ``safety_sec`` is the NSFW scoring time (which overlaps captioning) plus the lexicon
pass, so the stage times can add up to more than ``total_sec``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from PIL import Image

from ..config import Settings
from ..errors import InferenceFailed
from ..observability import tracing
from ..schemas import Caption, SafetyFlag, Scene, SummarizeVideoResponse, VideoTiming
from .analysis import AnalysisCancelled, VideoAnalysis, analyze_video
from .lexicon import vibe_tags
from .safety import SafetyChecker, caption_safety_flags, default_safety_checker
from .source import VideoSource
from .summary import build_summary_prompt, extractive_summary, format_timestamp

__all__ = ["Captioner", "frame_prompt", "summarize_video"]

T = TypeVar("T")

log = logging.getLogger(__name__)


class Captioner(Protocol):
    """What the pipeline needs from the model engine."""

    async def caption(self, images: Sequence[Image.Image], prompts: Sequence[str],
                      max_new_tokens: int) -> list[str]:
        """One caption per (image, prompt) pair, in order."""
        ...

    async def complete(self, prompt: str, max_new_tokens: int) -> str:
        """Text-only generation."""
        ...


def frame_prompt(template: str, t: float) -> str:
    """The per-frame prompt: ``template`` with ``{timestamp}`` replaced by e.g. '12.4s'.

    Plain replacement, not str.format, so other braces in a configured prompt are harmless.
    """
    return template.replace("{timestamp}", format_timestamp(t))


async def _timed(awaitable: Awaitable[T]) -> tuple[T, float]:
    started = time.perf_counter()
    result = await awaitable
    return result, time.perf_counter() - started


async def _timed_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    return await _timed(asyncio.to_thread(function, *args, **kwargs))


async def summarize_video(source: VideoSource, settings: Settings, captioner: Captioner, *,
                          model_name: str, safety: SafetyChecker | None = None
                          ) -> SummarizeVideoResponse:
    """Describe a video: scenes, timestamped keyframe captions, summary, tags, safety flags.

    ``source`` is a path already allowed by the media layer, the uploaded bytes, or an open
    binary file. ``safety`` defaults to the process-wide :func:`default_safety_checker`.
    Raises media errors (see :func:`analyze_video`) for bad input, InferenceFailed when the
    captioner returns the wrong number of captions, and whatever the captioner raises.
    """
    started = time.perf_counter()
    stop = threading.Event()
    analysis_started_ns = time.time_ns()
    def analyse() -> VideoAnalysis:
        try:
            return analyze_video(source, settings, stop=stop)
        except AnalysisCancelled:
            log.info("video analysis stopped: its request was cancelled")
            raise

    with tracing.span("video.analysis"):
        context = contextvars.copy_context()
        running = asyncio.get_running_loop().run_in_executor(None, context.run, analyse)
        try:
            analysis = await asyncio.shield(running)
        except asyncio.CancelledError:
            stop.set()  # the decoding thread stops at its next frame; wait for that, so the
            await asyncio.wait({running})  # caller may close the source once we return
            if not running.cancelled():
                running.exception()  # retrieved: it is the AnalysisCancelled we asked for
            raise
        t = analysis.timings
        tracing.record_stage_spans([("video.stats", t.stats_sec), ("video.scene_detection", t.scene_detection_sec),
                                    ("video.frame_extraction", t.frame_extraction_sec),
                                    ("video.dedupe", t.dedupe_sec)], analysis_started_ns)
    checker = safety if safety is not None else default_safety_checker()
    frames = [(k.t, k.image) for k in analysis.keyframes]

    def nsfw_flags() -> list[SafetyFlag]:
        with tracing.span("video.safety.nsfw", frames=len(frames)):
            return checker.nsfw_flags(frames, flag_threshold=settings.video_nsfw_flag_threshold,
                                      review_threshold=settings.video_nsfw_review_threshold)

    nsfw = asyncio.ensure_future(_timed_thread(nsfw_flags))
    try:
        with tracing.span("video.captioning", frames=len(frames)):
            texts, captioning_sec = await _timed(_caption(analysis, settings, captioner))
    except BaseException:
        nsfw.cancel()
        raise
    captions = [Caption(timestamp_sec=k.t, scene=k.scene, caption=text)
                for k, text in zip(analysis.keyframes, texts, strict=True)]
    timed_captions = [(c.timestamp_sec, c.caption) for c in captions]

    summary_started = time.perf_counter()
    summary, summary_source = "", "extractive"
    with tracing.span("video.summary", mode=settings.video_summary_mode):
        if settings.video_summary_mode == "model" and any(text for _, text in timed_captions):
            prompt = build_summary_prompt(timed_captions, duration=analysis.info.duration_sec,
                                          max_chars=settings.video_summary_context_chars)
            summary = (await captioner.complete(prompt, settings.video_summary_max_new_tokens)).strip()
            summary_source = "model"
        if not summary:
            summary, summary_source = extractive_summary(timed_captions), "extractive"
    summary_sec = time.perf_counter() - summary_started

    tags_started = time.perf_counter()
    with tracing.span("video.tags"):
        vibe = vibe_tags([c.caption for c in captions], analysis.visual_tags)
    tags_sec = time.perf_counter() - tags_started

    nsfw_found, nsfw_sec = await nsfw
    lexicon_started = time.perf_counter()
    with tracing.span("video.safety.lexicon"):
        safety_flags: list[SafetyFlag] = nsfw_found + caption_safety_flags(timed_captions)
    safety_sec = nsfw_sec + time.perf_counter() - lexicon_started

    timings = analysis.timings
    return SummarizeVideoResponse(
        video=analysis.info,
        scenes=[Scene(start_sec=round(start, 3), end_sec=round(end, 3)) for start, end in analysis.scenes],
        scenes_detected=len(analysis.scenes),
        frames_used=len(captions),
        captions=captions,
        summary=summary,
        summary_source=summary_source,
        safety_flags=safety_flags,
        vibe_tags=vibe,
        visual_tags=list(analysis.visual_tags),
        model=model_name,
        timing=VideoTiming(
            stats_sec=_r(timings.stats_sec), scene_detection_sec=_r(timings.scene_detection_sec),
            frame_extraction_sec=_r(timings.frame_extraction_sec), dedupe_sec=_r(timings.dedupe_sec),
            captioning_sec=_r(captioning_sec), summary_sec=_r(summary_sec), tags_sec=_r(tags_sec),
            safety_sec=_r(safety_sec), total_sec=_r(time.perf_counter() - started),
        ),
    )


async def _caption(analysis: VideoAnalysis, settings: Settings, captioner: Captioner) -> list[str]:
    keyframes = analysis.keyframes
    if not keyframes:
        return []
    prompts = [frame_prompt(settings.video_caption_prompt, k.t) for k in keyframes]
    texts = await captioner.caption([k.image for k in keyframes], prompts,
                                    settings.video_caption_max_new_tokens)
    if len(texts) != len(keyframes):
        raise InferenceFailed(f"The captioner returned {len(texts)} captions for {len(keyframes)} frames.")
    return [" ".join(str(text).split()) for text in texts]


def _r(seconds: float) -> float:
    return round(seconds, 4)
