"""What a worker does, independent of HTTP: load the model, then describe media through the scheduler.

The HTTP app and the in-process CLI (``fastvlm describe``) both call this, so they answer alike.
Media decoding and preprocessing run in threads; only the model's steps run on the inference
thread, where the continuous-batching scheduler lets every request join and leave at any step.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..config import Settings
from ..errors import InvalidRequest, NotReady, WorkersBusy
from ..intake.checks import token_budget
from ..intake.submission import MediaRequest
from ..media import DecodedImage, decode_image, open_media, read_media
from ..observability import tracing
from ..observability.metrics import WorkerMetrics
from ..schemas import (
    ImageInfo,
    ImageOptions,
    ImageTiming,
    PredictImageResponse,
    SummarizeVideoResponse,
    Usage,
    VideoOptions,
)
from ..stats import Ewma
from .faults import FaultInjector

if TYPE_CHECKING:  # torch loads in WorkerService.load, after the HTTP port is already open
    import numpy as np

    from ..engine.batcher import Batcher
    from ..engine.framing import ImageFit
    from ..engine.handle import GenerationResult, RequestHandle
    from ..engine.model import FastVLM, PreparedInput
    from ..engine.model_info import ModelInfo
    from ..engine.sampling import SamplingParams
    from ..engine.scheduler import Scheduler
    from ..engine.whisper import PreparedWindow, WhisperASR, WindowTranscript
    from ..video.source import VideoSource
    from ..video.tesseract import TesseractReader

__all__ = ["EXIT_DEVICE_FAILED", "EngineCaptioner", "EngineTranscriber", "PreparedImage", "Reservation",
           "WorkerService", "WorkerState"]

_LATENCY_PATHS = {"image": "predict_image", "video": "summarize_video"}
"""Latency is reported per endpoint path, as the router measures it."""

EXIT_DEVICE_FAILED = 4
"""Exit status after an out-of-memory or CUDA error: the device state is unknown, so the worker
ends and the router replaces it instead of leaving it half-alive."""

log = logging.getLogger(__name__)


class WorkerState(enum.StrEnum):
    LOADING = "loading"
    WARMING_UP = "warming_up"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass(frozen=True)
class PreparedImage:
    """An image request decoded, templated and tokenised, ready to submit."""

    image: DecodedImage
    item: PreparedInput
    prompt: str
    params: SamplingParams
    started: float  # time.monotonic() when the request reached the service
    decoded_at: float
    deadline: float | None


class WorkerService:
    """One model on one device, fed by one scheduler."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None, incarnation: int = 0,
                 metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.faults = FaultInjector(settings.fault_injection, worker_id, incarnation)
        self.in_flight = 0  # requests holding a slot (sync and pulled jobs), see reserve()
        self.video_in_flight = 0
        self.latency: dict[str, Ewma] = {}  # succeeded requests' durations per kind, for the registry
        self.state = WorkerState.LOADING
        self.state_reason = "loading the model"
        self.vlm: FastVLM | None = None
        self.scheduler: Scheduler | None = None
        self.asr: WhisperASR | None = None
        self.asr_batcher: Batcher[PreparedWindow, WindowTranscript] | None = None
        self.text_reader: TesseractReader | None = None
        self.metrics = metrics
        self._ready = threading.Event()

    # --- start-up ---------------------------------------------------------------------------

    def model_source(self) -> tuple[str, ModelInfo]:
        """(folder or hub id to load, the model's identity): the built-in tiny model when none is
        configured; an Apple-format release is converted into the cache once, then reused."""
        from ..engine.resolve import resolve_model

        return resolve_model(self.settings)

    def load(self) -> None:
        """Load, start the scheduler and warm up; blocking (run it off the event loop)."""
        self.faults.at_startup()
        try:
            import torch

            from ..engine.model import FastVLM
            from ..engine.scheduler import Scheduler

            if self.settings.torch_threads:
                torch.set_num_threads(self.settings.torch_threads)
            source, info = self.model_source()
            if info.format == "tiny-random":
                log.warning("serving the tiny random model %s (FASTVLM_MODEL=%r): its text is meaningless",
                            info.name, self.settings.model)
            self.vlm = FastVLM.load(source, device=self.settings.device, dtype=self.settings.dtype, info=info)
            observers = [self.metrics.step] if self.metrics else []
            self.scheduler = Scheduler.from_settings(self.vlm, self.settings, on_fatal=_exit_on_fatal,
                                                     before_step=self.faults.before_step,
                                                     step_observers=observers).start()
            if self.metrics is not None:
                self.metrics.watch_engine(self.scheduler.stats)
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
        """Whisper on this worker's device, fed by its own batcher (encoder-decoder: static batches)."""
        from ..engine.batcher import Batcher
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
            _fatal_guard(self.asr.transcribe), max_batch_size=settings.asr_max_batch_size,
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
        vlm, scheduler = self.vlm, self.scheduler
        if vlm is None or scheduler is None:
            raise RuntimeError("warm-up before the model was loaded")
        size = vlm.image_size
        image = Image.new("RGB", (size, size), (127, 127, 127))
        item = vlm.prepare(image, "Describe the image.", 2)
        started = time.monotonic()
        scheduler.submit(item).wait(timeout=self.settings.inference_timeout_s)
        log.info("warm-up generation took %.0f ms", (time.monotonic() - started) * 1000)

    def _set_state(self, state: WorkerState, reason: str) -> None:
        self.state, self.state_reason = state, reason
        log.info("worker state %s: %s", state.value, reason)

    def begin_stopping(self) -> None:
        """Take no new requests (they get 503 shutting_down); in-flight ones finish."""
        if self.state is not WorkerState.FAILED:
            self._set_state(WorkerState.STOPPING, "shutting down")

    def stop(self) -> None:
        self._set_state(WorkerState.STOPPING, "shutting down")
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.asr_batcher is not None:
            self.asr_batcher.stop()

    @property
    def ready(self) -> bool:
        return self.state is WorkerState.READY

    def require_ready(self) -> tuple[FastVLM, Scheduler]:
        if not self.ready or self.vlm is None or self.scheduler is None:
            raise NotReady(f"The worker is not ready: {self.state_reason}.")
        return self.vlm, self.scheduler

    # --- slots ------------------------------------------------------------------------------

    def slots(self) -> int:
        """Requests this worker holds at once: its engine's sequences, capped by max_concurrent."""
        capacity = self.capacity()
        sequences = capacity["sequences"] if capacity else 1
        return max(1, min(self.settings.max_concurrent, sequences))

    def has_room(self, kind: str) -> bool:
        if self.in_flight >= self.slots():
            return False
        return kind != "video" or self.video_in_flight < min(self.settings.max_video_concurrent, self.slots())

    def reserve(self, kind: str) -> Reservation:
        """Take a slot for one request, or 503 workers_busy: whoever sends work (a router that cannot
        see pulled jobs, another router) is sent elsewhere instead of overloading this worker."""
        if not self.has_room(kind):
            raise WorkersBusy(f"This worker holds {self.in_flight} of {self.slots()} requests.", retry_after_sec=1.0)
        return Reservation(self, kind)

    # --- health -----------------------------------------------------------------------------

    def capacity(self) -> dict[str, int] | None:
        """Sequences and tokens this worker's engine holds at once (the router sizes its slots from it)."""
        if self.scheduler is None:
            return None
        capacity = self.scheduler.capacity()
        return {"sequences": capacity.sequences, "context_tokens": capacity.context_tokens,
                "tokens": capacity.tokens}

    def health(self) -> dict:
        """Heartbeat payload for the router: read from counters, never from the model.

        Progress is reported as durations (this process's monotonic clock means nothing to the
        router): how long the running model step has taken, and how long since the last step.
        """
        vlm, scheduler = self.vlm, self.scheduler
        stats = scheduler.stats() if scheduler else None
        now = time.monotonic()
        return {
            "state": self.state.value,
            "reason": self.state_reason,
            "in_flight": self.in_flight,
            "video_in_flight": self.video_in_flight,
            "slots": self.slots() if self.scheduler else None,
            "queue_depth": stats.waiting if stats else 0,
            "active_sequences": stats.active if stats else 0,
            "has_work": bool(stats and stats.has_work),
            "inference_thread_alive": bool(stats and stats.alive),
            "steps": stats.steps if stats else 0,
            "step_running_for_s": round(now - stats.step_started_at, 3) if stats and stats.step_started_at else None,
            "since_last_step_s": round(now - stats.last_step_at, 3) if stats and stats.last_step_at else None,
            "completed": stats.completed if stats else 0,
            "cancelled": stats.cancelled if stats else 0,
            "failures": stats.failed if stats else 0,
            "kv_tokens_in_use": stats.kv_tokens_in_use if stats else 0,
            "capacity": self.capacity(),
            "latency_ms": {"/" + _LATENCY_PATHS[kind]: round(ewma.get() * 1000, 1)
                           for kind, ewma in self.latency.items()},
            "device": str(vlm.device) if vlm else None,
            "model": vlm.info.public() if vlm else None,
            "memory": _memory_in_use(vlm),
        }

    # --- request preparation ----------------------------------------------------------------

    def _prompt(self, vlm: FastVLM, prompt: str | None) -> str:
        text = self.settings.default_prompt if prompt is None else prompt
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # HTTP input is checked by the schema; this guards the CLI's argv
            raise InvalidRequest("prompt: contains a lone surrogate (invalid Unicode).", field="prompt") from None
        if len(text) > self.settings.max_prompt_chars:
            raise InvalidRequest(f"prompt: at most {self.settings.max_prompt_chars} characters.",
                                 field="prompt")
        cleaned = vlm.clean_prompt(text)
        if not cleaned:
            raise InvalidRequest("prompt: empty after removing control characters and reserved tokens.",
                                 field="prompt")
        return cleaned

    def sampling(self, options: ImageOptions, budget: int) -> SamplingParams:
        """The request's sampling settings, validated (422 naming the field when one is wrong)."""
        from ..engine.sampling import SamplingParams

        params = SamplingParams(max_new_tokens=budget, temperature=options.temperature or 0.0,
                                top_p=1.0 if options.top_p is None else options.top_p, top_k=options.top_k or 0,
                                seed=options.seed, stop=options.stop_strings(),
                                repetition_penalty=1.0 if options.repetition_penalty is None
                                else options.repetition_penalty)
        try:
            return params.validate(self.settings.max_new_tokens_limit)
        except ValueError as exc:
            field = str(exc).split(":", 1)[0]
            raise InvalidRequest(f"Invalid request: {exc}", field=field,
                                 fields=[{"field": field, "message": str(exc).split(":", 1)[-1].strip()}]) from None

    def _read_image(self, media: MediaRequest) -> bytes:
        if media.upload is not None:
            return media.upload.read_bytes()  # its size was limited while it was received
        return read_media(media.path or "", self.settings.media_roots, self.settings.max_image_bytes)

    def _decode(self, vlm: FastVLM, data: bytes, prompt: str, budget: int) -> tuple[DecodedImage, PreparedInput]:
        image = decode_image(data, max_bytes=self.settings.max_image_bytes,
                             max_pixels=self.settings.max_image_pixels)
        return image, vlm.prepare(image.image, prompt, budget, image_fit=self.settings.image_fit)

    async def prepare_image(self, media: MediaRequest, *, deadline: float | None = None) -> PreparedImage:
        """Validate, read, decode and tokenise one /predict_image request (off the event loop)."""
        started = time.monotonic()
        vlm, _ = self.require_ready()
        options: ImageOptions = media.options
        budget = token_budget(options.max_new_tokens, self.settings)
        prompt = self._prompt(vlm, options.prompt)
        params = self.sampling(options, budget)

        def load() -> tuple[DecodedImage, PreparedInput]:
            with tracing.span("media.decode", **{"fastvlm.source": media.source}):
                return self._decode(vlm, self._read_image(media), prompt, budget)

        image, item = await asyncio.to_thread(load)
        return PreparedImage(image=image, item=item, prompt=prompt, params=params, started=started,
                             decoded_at=time.monotonic(), deadline=deadline)

    # --- running ----------------------------------------------------------------------------

    def _submit(self, prepared: PreparedImage) -> RequestHandle:
        _, scheduler = self.require_ready()
        self.faults.on_request()
        try:
            return scheduler.submit(prepared.item, prepared.params, deadline=prepared.deadline)
        except ValueError as exc:  # a sampling value the engine refuses: the client's to fix, never a 500
            field = str(exc).split(":", 1)[0]
            raise InvalidRequest(f"Invalid request: {exc}", field=field) from None

    async def predict_image(self, media: MediaRequest, *, deadline: float | None = None) -> PredictImageResponse:
        """Answer one /predict_image request (a path under the media roots, or an upload)."""
        prepared = await self.prepare_image(media, deadline=deadline)
        return await self.run_prepared(prepared)

    async def run_prepared(self, prepared: PreparedImage) -> PredictImageResponse:
        with tracing.span("inference", **{"fastvlm.prompt_tokens": prepared.item.prompt_tokens}) as span:
            handle = self._submit(prepared)
            try:
                result = await handle.result()
            except asyncio.CancelledError:
                handle.cancel()
                raise
            _describe(span, result)
        return self._response(prepared, result)

    async def stream_prepared(self, prepared: PreparedImage) -> AsyncIterator[tuple[str, Any]]:
        """("delta", text) events as tokens are generated, then ("done", the response document).

        Leaving early (the client went away) cancels the request: its KV slot is freed at the next
        step.
        """
        with tracing.span("inference", **{"fastvlm.prompt_tokens": prepared.item.prompt_tokens,
                                          "fastvlm.stream": True}) as span:
            handle = self._submit(prepared)
            async for delta in handle.stream():
                yield "delta", delta
            result = await handle.result()
            _describe(span, result)
        yield "done", self._response(prepared, result)

    def _response(self, prepared: PreparedImage, result: GenerationResult) -> PredictImageResponse:
        vlm, _ = self.require_ready()
        if self.metrics is not None:
            self.metrics.request(result)
        return PredictImageResponse(
            output=result.text, prompt=prepared.prompt, model=vlm.name,
            image=ImageInfo(width=prepared.image.width, height=prepared.image.height),
            finish_reason=result.finish_reason,
            usage=Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens),
            batch_size=round(result.batch_size, 3),
            timing=ImageTiming(decode_ms=_ms(prepared.decoded_at - prepared.started), queue_ms=_ms(result.queue_s),
                               ttft_ms=_ms(result.ttft_s), inference_ms=_ms(result.inference_s),
                               total_ms=_ms(time.monotonic() - prepared.started)))

    async def describe_bytes(self, data: bytes, prompt: str | None = None,
                             max_new_tokens: int | None = None) -> PredictImageResponse:
        """Describe an image the caller already read (the CLI's path: no media roots apply)."""
        started = time.monotonic()
        vlm, _ = self.require_ready()
        budget = token_budget(max_new_tokens, self.settings)
        text = self._prompt(vlm, prompt)
        image, item = await asyncio.to_thread(self._decode, vlm, data, text, budget)
        prepared = PreparedImage(image=image, item=item, prompt=text, params=self.sampling(ImageOptions(), budget),
                                 started=started, decoded_at=time.monotonic(), deadline=None)
        return await self.run_prepared(prepared)

    async def summarize_video(self, media: MediaRequest, *, deadline: float | None = None,
                              on_stage: Callable[[str], None] | None = None) -> SummarizeVideoResponse:
        """Answer one /summarize_video request (a path under the media roots, or an upload)."""
        self.require_ready()
        self.faults.on_request()
        if media.upload is not None:
            handle = await asyncio.to_thread(media.upload.open)
        else:
            handle = await asyncio.to_thread(open_media, media.path or "", self.settings.media_roots,
                                             self.settings.video_max_bytes)
        try:
            result = await self._summarize(handle, media.options, deadline, on_stage)
        finally:
            handle.close()
        if self.metrics is not None:
            self.metrics.video(result.timing.model_dump())
        return result

    async def _summarize(self, source: VideoSource, options: VideoOptions | None, deadline: float | None = None,
                         on_stage: Callable[[str], None] | None = None) -> SummarizeVideoResponse:
        from ..video import summarize_video

        vlm, scheduler = self.require_ready()
        captioner = EngineCaptioner(vlm, scheduler, deadline=deadline, on_result=self._observe,
                                    image_fit=self.settings.image_fit)
        return await summarize_video(source, self.settings, captioner, model_name=vlm.name,
                                     transcriber=self.transcriber(), text_reader=self.text_reader, options=options,
                                     on_stage=on_stage)

    def _observe(self, result: GenerationResult) -> None:
        if self.metrics is not None:
            self.metrics.request(result)

    async def summarize_file(self, path: str) -> SummarizeVideoResponse:
        """Summarize a local video the caller chose (the CLI's path: no media roots apply)."""
        return await self._summarize(path, None)


class Reservation:
    """One held slot on this worker; release it exactly once (extra calls do nothing)."""

    def __init__(self, service: WorkerService, kind: str) -> None:
        self._service = service
        self.kind = kind
        self.released = False
        self._started = time.monotonic()
        service.in_flight += 1
        if kind == "video":
            service.video_in_flight += 1

    def release(self, *, succeeded: bool = False) -> None:
        """Free the slot; a success feeds this worker's latency for its kind (nodes publish it)."""
        if self.released:
            return
        self.released = True
        self._service.in_flight -= 1
        if self.kind == "video":
            self._service.video_in_flight -= 1
        if succeeded:
            self._service.latency.setdefault(self.kind, Ewma(prior=0.0)).update(time.monotonic() - self._started)


class EngineCaptioner:
    """The video pipeline's view of the model: every frame goes through the shared scheduler, so a
    video's frames decode together, and with concurrent image requests, step by step."""

    def __init__(self, vlm: FastVLM, scheduler: Scheduler, *, deadline: float | None = None,
                 on_result: Callable[[GenerationResult], None] | None = None, image_fit: ImageFit = "pad") -> None:
        self.vlm = vlm
        self.scheduler = scheduler
        self.deadline = deadline
        self.image_fit = image_fit
        self._on_result = on_result or (lambda result: None)

    async def caption(self, images: Sequence[Image.Image], prompts: Sequence[str],
                      max_new_tokens: int) -> list[str]:
        items = await asyncio.to_thread(
            lambda: [self.vlm.prepare(image, prompt, max_new_tokens, image_fit=self.image_fit)
                     for image, prompt in zip(images, prompts, strict=True)])
        with tracing.span("inference", **{"fastvlm.frames": len(items)}):
            results = await self.scheduler.generate_many(items, deadline=self.deadline)
        for result in results:
            self._on_result(result)
        return [result.text for result in results]

    async def complete(self, prompt: str, max_new_tokens: int) -> str:
        item = await asyncio.to_thread(self.vlm.prepare, None, prompt, max_new_tokens)
        with tracing.span("inference", **{"fastvlm.prompt_tokens": item.prompt_tokens}) as span:
            result = await self.scheduler.generate(item, deadline=self.deadline)
            _describe(span, result)
        self._on_result(result)
        return result.text


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


def _describe(span: Any, result: GenerationResult) -> None:
    """What the engine did for one request, on its inference span (continuous batching has no
    batch to link requests to: each request's span carries how many it shared its steps with)."""
    span.set_attribute("fastvlm.queue_ms", _ms(result.queue_s))
    span.set_attribute("fastvlm.ttft_ms", _ms(result.ttft_s))
    span.set_attribute("fastvlm.batch_size", round(result.batch_size, 3))
    span.set_attribute("fastvlm.steps", result.steps)
    span.set_attribute("fastvlm.completion_tokens", result.completion_tokens)


def _exit_on_fatal(exc: BaseException) -> None:
    """End the process on out-of-memory or CUDA errors, with one clear log line."""
    log.critical("fatal device error (%s: %s); exiting with status %d so the router replaces this worker",
                 type(exc).__name__, exc, EXIT_DEVICE_FAILED)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_DEVICE_FAILED)


def _fatal_guard(run_batch: Callable[[Sequence[Any]], list[Any]]) -> Callable[[Sequence[Any]], list[Any]]:
    """A batch function that ends the process on out-of-memory or CUDA errors (see _exit_on_fatal)."""
    from ..engine.model import is_fatal_device_error

    def guarded(batch: Sequence[Any]) -> list[Any]:
        try:
            return run_batch(batch)
        except Exception as exc:
            if is_fatal_device_error(exc):
                _exit_on_fatal(exc)
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
