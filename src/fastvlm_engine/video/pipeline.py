"""``summarize_video``: analysis pass, captions, speech, on-screen text, timeline, summary, tags, safety.

Order of work and where it runs:

1. the analysis pass (open, decode once, cuts, keyframes, dedupe, RGB conversion) -- in a
   worker thread via ``asyncio.to_thread``; the event loop never decodes; if the request is
   cancelled, the pass is told to stop at its next frame;
2. then, concurrently:
   * captions for all kept keyframes in ONE ``captioner.caption`` call (the engine batches
     them onto the model);
   * the speech stage (:mod:`.speech`): audio decoded in a thread, voiced windows sent to the
     ``transcriber`` at once (the engine batches them onto Whisper, on its own thread);
   * the on-screen text stage (:mod:`.ocr`): Tesseract, in a thread (its own process);
   * the NSFW classifier on the keyframes, in a thread;
3. the per-scene timeline (:mod:`.timeline`): each scene's captions, speech and text;
4. the summary: ``captioner.complete`` on a bounded, time-ordered prompt built from that
   timeline, or the extractive summary (mode "extractive", or when the model's summary comes
   back empty);
5. vibe tags from captions, speech and on-screen text plus the visual tags, and lexicon safety
   flags over each of the three texts (each flag names its source).

Speech and OCR never fail a request: a missing, silent or broken audio track, no speech model,
no Tesseract, or a stage that breaks leave the field empty and say why in ``stages``.

Timings: ``safety_sec`` is the NSFW scoring time (which overlaps captioning) plus the lexicon
pass; ``asr_sec`` and ``ocr_sec`` overlap captioning too, so the stage times can add up to more
than ``total_sec``.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import io
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar, cast

from PIL import Image

from ..config import Settings
from ..errors import EngineError, InferenceFailed
from ..observability import tracing
from ..schemas import Caption, SafetyFlag, SummarizeVideoResponse, VideoOptions, VideoStages, VideoTiming
from .analysis import AnalysisCancelled, VideoAnalysis, analyze_video
from .lexicon import vibe_tags
from .ocr import OcrOutcome, TextReader, read_on_screen_text
from .safety import SafetyChecker, caption_safety_flags, default_safety_checker
from .source import VideoSource
from .speech import NO_TRANSCRIBER, SpeechOutcome, Transcriber, transcribe_speech
from .summary import build_summary_prompt, extractive_summary, format_timestamp
from .timeline import build_scenes

__all__ = ["Captioner", "VideoOptions", "frame_prompt", "summarize_video"]

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_TEXT_READER = "No OCR engine on this server."
THUMBNAIL_QUALITY = 75


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


def _rewinder(source: VideoSource) -> Callable[[], VideoSource]:
    """A way to hand ``source`` to a second reader from its start (an open file is sought back)."""
    if isinstance(source, (bytes, bytearray, memoryview, str, os.PathLike)):
        return lambda: source
    position = source.tell()

    def rewound() -> VideoSource:
        source.seek(position)
        return source

    return rewound


def _failure(stage: str, exc: BaseException) -> str:
    """A reason for a failed stage that says what broke without leaking internals."""
    if isinstance(exc, EngineError):
        return f"The {stage} failed: {exc.message}"
    log.warning("the %s failed: %s: %s", stage, type(exc).__name__, exc)
    return f"The {stage} failed."


async def _stage(name: str, span: str, *, wanted: bool, missing: str | None, off: Callable[..., T],
                 run: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    """Run an optional stage unless the request switched it off or the server lacks its engine
    (``missing`` says why); a stage that breaks is reported by ``off(reason, status="failed")``."""
    started = time.perf_counter()
    if not wanted:
        outcome = off("Switched off by the request.")
    elif missing is not None:
        outcome = off(missing, status="skipped")
    else:
        with tracing.span(span):
            try:
                outcome = await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the stage broke; the video still gets its summary
                outcome = off(_failure(name, exc), status="failed")
    return outcome, time.perf_counter() - started


def _thumbnail(image: Image.Image, max_side: int) -> str:
    small = image.copy()
    small.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.convert("RGB").save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def summarize_video(source: VideoSource, settings: Settings, captioner: Captioner, *,
                          model_name: str, safety: SafetyChecker | None = None,
                          transcriber: Transcriber | None = None, text_reader: TextReader | None = None,
                          options: VideoOptions | None = None,
                          on_stage: Callable[[str], None] | None = None) -> SummarizeVideoResponse:
    """Describe a video: per-scene timeline, timestamped captions, speech and on-screen text,
    summary, tags, safety flags.

    ``source`` is a path already allowed by the media layer, the uploaded bytes, or an open
    binary file. ``safety`` defaults to the process-wide :func:`default_safety_checker`;
    without a ``transcriber`` or ``text_reader`` those stages are reported as skipped.
    Raises media errors (see :func:`analyze_video`) for bad input, InferenceFailed when the
    captioner returns the wrong number of captions, and whatever the captioner raises.
    """
    started = time.perf_counter()
    options = options or VideoOptions()
    stage = on_stage or (lambda name: None)  # progress for job status: the stage now running
    stage("analysis")
    stop = threading.Event()
    rewind = _rewinder(source)
    analysis_started_ns = time.time_ns()

    def analyse() -> VideoAnalysis:
        try:
            return analyze_video(source, settings, stop=stop, keep_samples=options.ocr and text_reader is not None)
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

    def speech_stage() -> Awaitable[SpeechOutcome]:  # _stage runs it only with a transcriber
        return transcribe_speech(rewind(), settings, cast(Transcriber, transcriber),
                                 video_start_sec=analysis.start_sec, duration_sec=analysis.info.duration_sec)

    def ocr_stage() -> Awaitable[OcrOutcome]:  # ... and this only with a reader
        return asyncio.to_thread(read_on_screen_text, analysis, cast(TextReader, text_reader), settings, stop=stop)

    side_tasks = [
        asyncio.ensure_future(_timed_thread(nsfw_flags)),
        asyncio.ensure_future(_stage("speech stage", "video.speech", wanted=options.speech, off=SpeechOutcome.off,
                                     missing=NO_TRANSCRIBER if transcriber is None else None, run=speech_stage)),
        asyncio.ensure_future(_stage("on-screen text stage", "video.ocr", wanted=options.ocr, off=OcrOutcome.off,
                                     missing=NO_TEXT_READER if text_reader is None else None, run=ocr_stage)),
    ]
    try:
        stage("captioning")
        with tracing.span("video.captioning", frames=len(frames)):
            texts, captioning_sec = await _timed(_caption(analysis, settings, captioner))
        (nsfw_found, nsfw_sec), (speech, asr_sec), (ocr, ocr_sec) = await asyncio.gather(*side_tasks)
    except BaseException:
        stop.set()
        for task in side_tasks:
            task.cancel()
        raise
    thumbnails = ([_thumbnail(k.image, settings.video_thumbnail_max_side) for k in analysis.keyframes]
                  if options.include_thumbnails else [None] * len(analysis.keyframes))
    captions = [Caption(timestamp_sec=k.t, scene=k.scene, caption=text, thumbnail_jpeg_base64=thumb)
                for k, text, thumb in zip(analysis.keyframes, texts, thumbnails, strict=True)]
    timed_captions = [(c.timestamp_sec, c.caption) for c in captions]
    said = [(s.start_sec, s.end_sec, s.text) for s in speech.speech.segments]
    written = [(o.start_sec, o.end_sec, o.text) for o in ocr.texts]
    scenes = build_scenes(analysis.scenes, captions, speech.speech.segments, ocr.texts)

    summary_started = time.perf_counter()
    summary, summary_source = "", "extractive"
    stage("summary")
    with tracing.span("video.summary", mode=settings.video_summary_mode):
        if settings.video_summary_mode == "model" and any(text for _, text in timed_captions):
            prompt = build_summary_prompt(timed_captions, duration=analysis.info.duration_sec,
                                          max_chars=settings.video_summary_context_chars, speech=said,
                                          on_screen=written)
            summary = (await captioner.complete(prompt, settings.video_summary_max_new_tokens)).strip()
            summary_source = "model"
        if not summary:
            summary, summary_source = extractive_summary(timed_captions), "extractive"
    summary_sec = time.perf_counter() - summary_started

    tags_started = time.perf_counter()
    stage("tags")
    with tracing.span("video.tags"):
        vibe = vibe_tags([c.caption for c in captions] + [s[2] for s in said] + [w[2] for w in written],
                         analysis.visual_tags)
    tags_sec = time.perf_counter() - tags_started

    lexicon_started = time.perf_counter()
    with tracing.span("video.safety.lexicon"):
        safety_flags: list[SafetyFlag] = [
            *nsfw_found, *caption_safety_flags(timed_captions),
            *caption_safety_flags([(start, text) for start, _, text in said], source="speech_lexicon"),
            *caption_safety_flags([(start, text) for start, _, text in written], source="on_screen_text_lexicon")]
    safety_sec = nsfw_sec + time.perf_counter() - lexicon_started

    timings = analysis.timings
    return SummarizeVideoResponse(
        video=analysis.info,
        scenes=scenes,
        scenes_detected=len(scenes),
        frames_used=len(captions),
        captions=captions,
        summary=summary,
        summary_source=summary_source,
        safety_flags=safety_flags,
        vibe_tags=vibe,
        visual_tags=list(analysis.visual_tags),
        speech=speech.speech,
        on_screen_text=ocr.texts,
        stages=VideoStages(speech=speech.report, ocr=ocr.report),
        model=model_name,
        timing=VideoTiming(
            stats_sec=_r(timings.stats_sec), scene_detection_sec=_r(timings.scene_detection_sec),
            frame_extraction_sec=_r(timings.frame_extraction_sec), dedupe_sec=_r(timings.dedupe_sec),
            captioning_sec=_r(captioning_sec), summary_sec=_r(summary_sec), tags_sec=_r(tags_sec),
            safety_sec=_r(safety_sec), asr_sec=_r(asr_sec), ocr_sec=_r(ocr_sec),
            total_sec=_r(time.perf_counter() - started),
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
