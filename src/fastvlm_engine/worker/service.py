"""What a worker does, independent of HTTP: load the model, then describe media through the batcher.

The HTTP app and the in-process CLI (``fastvlm describe``) both call this, so they answer alike.
Media decoding and preprocessing run in threads; only ``generate`` runs on the inference thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from PIL import Image

from ..config import Settings
from ..engine.batcher import Batcher, BatchResult
from ..errors import InvalidRequest, NotReady
from ..media import DecodedImage, decode_base64, decode_image, open_media, read_media
from ..observability import tracing
from ..observability.metrics import WorkerMetrics
from ..schemas import (
    ImageInfo,
    ImageTiming,
    PredictImageRequest,
    PredictImageResponse,
    SummarizeVideoRequest,
    SummarizeVideoResponse,
    Usage,
)
from .faults import FaultInjector

if TYPE_CHECKING:  # torch loads in WorkerService.load, after the HTTP port is already open
    import numpy as np

    from ..engine.framing import ImageFit
    from ..engine.model import FastVLM, Generation, PreparedInput
    from ..engine.whisper import PreparedWindow, WhisperASR, WindowTranscript
    from ..video.pipeline import VideoOptions
    from ..video.source import VideoSource
    from ..video.tesseract import TesseractReader

__all__ = ["EXIT_DEVICE_FAILED", "EngineCaptioner", "EngineTranscriber", "WorkerService", "WorkerState"]

EXIT_DEVICE_FAILED = 4
"""Exit status after an out-of-memory or CUDA error: the device state is unknown, so the worker
ends and the router replaces it instead of leaving it half-alive."""

In = TypeVar("In")
Out = TypeVar("Out")

log = logging.getLogger(__name__)


class WorkerState(enum.StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class _Prepared:
    image: DecodedImage
    item: PreparedInput
    prompt: str


class WorkerService:
    """One model on one device, fed by one batcher."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None, incarnation: int = 0,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.faults = FaultInjector(settings.fault_injection, worker_id, incarnation)
        self.in_flight = 0
        self.state = WorkerState.LOADING
        self.state_reason = "loading the model"
        self.vlm: FastVLM | None = None
        self.batcher: Batcher[PreparedInput, Generation] | None = None
        self.asr: WhisperASR | None = None
        self.asr_batcher: Batcher[PreparedWindow, WindowTranscript] | None = None
        self.text_reader: TesseractReader | None = None
        self.metrics = metrics
        self._ready = threading.Event()

    # --- start-up ---------------------------------------------------------------------------

    def model_source(self) -> tuple[str, str | None]:
        """(folder or hub id, display name); the built-in tiny model when none is configured."""
        from ..engine.tiny import TINY_MODEL_NAME, ensure_tiny_model

        if self.settings.model:
            return self.settings.model, None
        path = ensure_tiny_model(self.settings.tiny_model_path)
        return str(path), TINY_MODEL_NAME

    def load(self) -> None:
        """Load, start the batcher and warm up; blocking (run it off the event loop)."""
        self.faults.at_startup()
        try:
            import torch

            from ..engine.model import FastVLM

            if self.settings.torch_threads:
                torch.set_num_threads(self.settings.torch_threads)
            source, name = self.model_source()
            if name is not None:
                log.warning("no FASTVLM_MODEL configured: serving the built-in tiny random model; "
                            "its text is meaningless")
            self.vlm = FastVLM.load(source, device=self.settings.device, dtype=self.settings.dtype, name=name)
            self.batcher = Batcher(
                _exit_on_fatal(self.faults.wrap_batch(self.vlm.generate)), max_batch_size=self.settings.max_batch_size,
                max_batch_wait_s=self.settings.max_batch_wait_ms / 1000,
                max_queue_size=self.settings.max_queue_size, timeout_s=self.settings.inference_timeout_s,
                observers=[self.metrics.batch] if self.metrics else [],
                batch_context=tracing.batch_span).start()
            self._load_asr()
            from ..video.tesseract import TesseractReader

            self.text_reader = TesseractReader(self.settings.ocr_tesseract_cmd, language=self.settings.ocr_language,
                                               timeout_s=self.settings.ocr_timeout_s)
            self.text_reader.unavailable_reason()  # warns once, at start-up, when Tesseract is missing
            if self.settings.warmup:
                self._set_state(WorkerState.WARMING_UP, "running a warm-up generation")
                self._warm_up()
                from ..video import default_safety_checker

                default_safety_checker().load()  # the first video should not pay for it
            self.faults.arm()
            self._set_state(WorkerState.READY, "model loaded and warmed up")
            self._ready.set()
        except Exception as exc:
            self._set_state(WorkerState.FAILED, f"start-up failed: {type(exc).__name__}: {exc}")
            raise

    def asr_source(self) -> tuple[str, str | None] | None:
        """(folder or hub id, display name) of the speech model, or None for no speech stage.

        FASTVLM_ASR_MODEL wins; without it the built-in tiny FastVLM comes with the built-in tiny
        Whisper (so the demo runs every stage), while real FastVLM weights come with none.
        """
        from ..engine.tiny_whisper import TINY_ASR_NAME, ensure_tiny_whisper

        if self.settings.asr_model:
            return self.settings.asr_model, None
        if self.settings.model:
            return None
        return str(ensure_tiny_whisper(self.settings.tiny_asr_model_path)), TINY_ASR_NAME

    def _load_asr(self) -> None:
        from ..engine.whisper import WhisperASR

        source = self.asr_source()
        if source is None:
            log.info("no speech model configured: videos get no transcript")
            return
        path, name = source
        if name is not None:
            log.warning("no FASTVLM_ASR_MODEL configured: the speech stage uses the built-in tiny random "
                        "Whisper; its transcripts are meaningless")
        settings = self.settings
        self.asr = WhisperASR.load(path, device=settings.device, dtype=settings.dtype, name=name,
                                   language=settings.asr_language, max_new_tokens=settings.asr_max_new_tokens)
        self.asr_batcher = Batcher(
            _exit_on_fatal(self.asr.transcribe), max_batch_size=settings.asr_max_batch_size,
            max_batch_wait_s=settings.max_batch_wait_ms / 1000, max_queue_size=settings.max_queue_size,
            timeout_s=settings.inference_timeout_s, name="asr").start()
        if settings.warmup:
            import numpy as np

            silence = self.asr.prepare(np.zeros(self.asr.sample_rate, np.float32))
            self.asr_batcher.submit(silence).result(timeout=settings.inference_timeout_s)

    def transcriber(self) -> EngineTranscriber | None:
        """The speech stage's engine, or None when this worker has no speech model."""
        if self.asr is None or self.asr_batcher is None:
            return None
        return EngineTranscriber(self.asr, self.asr_batcher)

    def _warm_up(self) -> None:
        vlm, batcher = self.vlm, self.batcher
        if vlm is None or batcher is None:
            raise RuntimeError("warm-up before the model was loaded")
        size = vlm.image_size
        image = Image.new("RGB", (size, size), (127, 127, 127))
        item = vlm.prepare(image, "Describe the image.", 2)
        started = time.monotonic()
        batcher.submit(item).result(timeout=self.settings.inference_timeout_s)
        log.info("warm-up generation took %.0f ms", (time.monotonic() - started) * 1000)

    def _set_state(self, state: WorkerState, reason: str) -> None:
        self.state, self.state_reason = state, reason
        log.info("worker state %s: %s", state.value, reason)

    def stop(self) -> None:
        self._set_state(WorkerState.STOPPING, "shutting down")
        for batcher in (self.batcher, self.asr_batcher):
            if batcher is not None:
                batcher.stop()

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def require_ready(self) -> tuple[FastVLM, Batcher[PreparedInput, Generation]]:
        if not self.ready or self.vlm is None or self.batcher is None:
            raise NotReady(f"The worker is not ready: {self.state_reason}.")
        return self.vlm, self.batcher

    # --- requests ---------------------------------------------------------------------------

    def health(self) -> dict:
        """Heartbeat payload for the router: read from counters, never from the model."""
        vlm, batcher = self.vlm, self.batcher
        stats = batcher.stats if batcher else None
        busy_since = stats.busy_since if stats else None
        return {
            "state": self.state.value,
            "reason": self.state_reason,
            "in_flight": self.in_flight,
            "queue_depth": batcher.queue_depth if batcher else 0,
            "inference_thread_alive": bool(batcher and batcher.alive),
            "batch_running_for_s": round(time.monotonic() - busy_since, 3) if busy_since is not None else None,
            "batches": stats.batches if stats else 0,
            "items": stats.items if stats else 0,
            "failures": stats.failures if stats else 0,
            "last_success_at": stats.last_success_at if stats else None,
            "device": str(vlm.device) if vlm else None,
            "memory": _memory_in_use(vlm),
        }

    def _token_budget(self, requested: int | None) -> int:
        limit = self.settings.max_new_tokens_limit
        if requested is None:
            return self.settings.max_new_tokens
        if requested > limit:
            raise InvalidRequest(f"max_new_tokens: at most {limit} on this server.", field="max_new_tokens")
        return requested

    def _prompt(self, vlm: FastVLM, prompt: str | None) -> str:
        text = self.settings.default_prompt if prompt is None else prompt
        if len(text) > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt: at most {self.settings.max_prompt_chars} characters.",
                                 field="prompt")
        cleaned = vlm.clean_prompt(text)
        if not cleaned:
            raise InvalidRequest("prompt: empty after removing control characters and reserved tokens.",
                                 field="prompt")
        return cleaned

    def _read_image(self, request: PredictImageRequest) -> bytes:
        limit = self.settings.max_image_bytes
        if request.image_base64 is not None:
            return decode_base64(request.image_base64, field="image_base64", max_bytes=limit)
        return read_media(request.image_path or "", self.settings.media_roots, limit)

    def _decode_and_prepare(self, vlm: FastVLM, data: bytes, prompt: str, max_new_tokens: int) -> _Prepared:
        image = decode_image(data, max_bytes=self.settings.max_image_bytes,
                             max_pixels=self.settings.max_image_pixels)
        item = vlm.prepare(image.image, prompt, max_new_tokens, image_fit=self.settings.image_fit)
        return _Prepared(image=image, item=item, prompt=prompt)

    async def predict_image(self, request: PredictImageRequest) -> PredictImageResponse:
        """Answer one /predict_image request (media from a path under the roots or base64)."""
        started = time.monotonic()
        vlm, _ = self.require_ready()
        self.faults.on_request()
        self.in_flight += 1
        try:
            budget = self._token_budget(request.max_new_tokens)
            prompt = self._prompt(vlm, request.prompt)

            def load() -> _Prepared:
                source = "path" if request.image_path else "base64"
                with tracing.span("media.decode", **{"fastvlm.source": source}):
                    return self._decode_and_prepare(vlm, self._read_image(request), prompt, budget)

            prepared = await asyncio.to_thread(load)
            return await self._run(prepared, started)
        finally:
            self.in_flight -= 1

    async def describe_bytes(self, data: bytes, prompt: str | None = None,
                             max_new_tokens: int | None = None) -> PredictImageResponse:
        """Describe an image the caller already read (the CLI's path: no media roots apply)."""
        started = time.monotonic()
        vlm, _ = self.require_ready()
        budget = self._token_budget(max_new_tokens)
        text = self._prompt(vlm, prompt)
        prepared = await asyncio.to_thread(self._decode_and_prepare, vlm, data, text, budget)
        return await self._run(prepared, started)

    async def summarize_video(self, request: SummarizeVideoRequest) -> SummarizeVideoResponse:
        """Answer one /summarize_video request (a path under the roots or base64)."""
        from ..video.pipeline import VideoOptions

        self.require_ready()
        self.faults.on_request()
        limit = self.settings.video_max_bytes
        options = VideoOptions(speech=request.speech, ocr=request.ocr, include_thumbnails=request.include_thumbnails)
        self.in_flight += 1
        try:
            if request.video_base64 is not None:
                data = await asyncio.to_thread(decode_base64, request.video_base64, field="video_base64",
                                               max_bytes=limit)
                result = await self._summarize(data, options)
            else:
                handle = await asyncio.to_thread(open_media, request.video_path or "", self.settings.media_roots,
                                                 limit)
                try:
                    result = await self._summarize(handle, options)
                finally:
                    handle.close()
        finally:
            self.in_flight -= 1
        if self.metrics is not None:
            self.metrics.video(result.timing.model_dump())
        return result

    def _observe_queue(self, result: BatchResult[Generation]) -> None:
        if self.metrics is not None:
            self.metrics.queue_wait.observe(result.queue_s)

    async def summarize_file(self, path: str) -> SummarizeVideoResponse:
        """Summarize a local video the caller chose (the CLI's path: no media roots apply)."""
        return await self._summarize(path, None)

    async def _summarize(self, source: VideoSource, options: VideoOptions | None) -> SummarizeVideoResponse:
        from ..video.pipeline import VideoOptions, summarize_video

        vlm, batcher = self.require_ready()
        captioner = EngineCaptioner(vlm, batcher, self._observe_queue, image_fit=self.settings.image_fit)
        return await summarize_video(source, self.settings, captioner, model_name=vlm.name,
                                     transcriber=self.transcriber(), text_reader=self.text_reader,
                                     options=options or VideoOptions())

    async def _run(self, prepared: _Prepared, started: float) -> PredictImageResponse:
        vlm, batcher = self.require_ready()
        decoded_at = time.monotonic()
        result: BatchResult[Generation] = await batcher.run(prepared.item)
        self._observe_queue(result)
        generation = result.output
        return PredictImageResponse(
            output=generation.text, prompt=prepared.prompt, model=vlm.name,
            image=ImageInfo(width=prepared.image.width, height=prepared.image.height),
            finish_reason=generation.finish_reason,
            usage=Usage(prompt_tokens=generation.prompt_tokens, completion_tokens=len(generation.token_ids)),
            batch_size=result.batch_size,
            timing=ImageTiming(decode_ms=_ms(decoded_at - started), queue_ms=_ms(result.queue_s),
                               inference_ms=_ms(result.inference_s),
                               total_ms=_ms(time.monotonic() - started)))


class EngineCaptioner:
    """The video pipeline's view of the model: every frame goes through the shared batcher, so
    one video's frames share batches with each other and with concurrent image requests."""

    def __init__(self, vlm: FastVLM, batcher: Batcher[PreparedInput, Generation],
                 on_result: Callable[[BatchResult[Generation]], None] | None = None, *,
                 image_fit: ImageFit = "pad") -> None:
        self.vlm = vlm
        self.batcher = batcher
        self.image_fit = image_fit
        self._on_result = on_result or (lambda result: None)

    async def caption(self, images: Sequence[Image.Image], prompts: Sequence[str],
                      max_new_tokens: int) -> list[str]:
        items = await asyncio.to_thread(
            lambda: [self.vlm.prepare(image, prompt, max_new_tokens, image_fit=self.image_fit)
                     for image, prompt in zip(images, prompts, strict=True)])
        results = await self.batcher.run_many(items)
        for result in results:
            self._on_result(result)
        return [result.output.text for result in results]

    async def complete(self, prompt: str, max_new_tokens: int) -> str:
        item = await asyncio.to_thread(self.vlm.prepare, None, prompt, max_new_tokens)
        result = await self.batcher.run(item)
        self._on_result(result)
        return result.output.text


class EngineTranscriber:
    """The speech stage's view of Whisper: every window goes through the speech batcher, so the
    windows of one video (and of concurrent videos) share generate calls."""

    def __init__(self, asr: WhisperASR, batcher: Batcher[PreparedWindow, WindowTranscript]) -> None:
        self.asr = asr
        self.batcher = batcher
        self.name = asr.name
        self.sample_rate = asr.sample_rate
        self.window_sec = asr.window_sec

    async def transcribe(self, windows: Sequence[np.ndarray]) -> list[WindowTranscript]:
        items = await asyncio.to_thread(lambda: [self.asr.prepare(window) for window in windows])
        return [result.output for result in await self.batcher.run_many(items)]


def _exit_on_fatal(run_batch: Callable[[Sequence[In]], list[Out]]) -> Callable[[Sequence[In]], list[Out]]:
    """End the process on out-of-memory or CUDA errors, with one clear log line."""
    from ..engine.model import is_fatal_device_error

    def guarded(batch: Sequence[In]) -> list[Out]:
        try:
            return run_batch(batch)
        except Exception as exc:
            if is_fatal_device_error(exc):
                log.critical("fatal device error (%s: %s); exiting with status %d so the router replaces "
                             "this worker", type(exc).__name__, exc, EXIT_DEVICE_FAILED)
                logging.shutdown()
                sys.stderr.flush()
                os._exit(EXIT_DEVICE_FAILED)
            raise

    return guarded


def _memory_in_use(vlm: FastVLM | None) -> dict[str, int]:
    """Device memory on a GPU (allocated/reserved by torch), else this process's resident memory."""
    if vlm is not None and vlm.device.type == "cuda":
        import torch

        return {"device_allocated_bytes": int(torch.cuda.memory_allocated(vlm.device)),
                "device_reserved_bytes": int(torch.cuda.memory_reserved(vlm.device))}
    import psutil

    return {"host_rss_bytes": int(psutil.Process().memory_info().rss)}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
