"""Request and response bodies shared by router, worker and client (no torch here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from .errors import ERROR_CODES

__all__ = [
    "MEDIA_KINDS",
    "Caption",
    "OnScreenText",
    "SceneCaption",
    "Speech",
    "SpeechSegment",
    "StageReport",
    "VideoStages",
    "ErrorBody",
    "ErrorDetail",
    "ImageInfo",
    "ImageOptions",
    "ImageTiming",
    "PredictImageRequest",
    "PredictImageResponse",
    "SafetyFlag",
    "Scene",
    "SummarizeVideoRequest",
    "SummarizeVideoResponse",
    "Usage",
    "VideoInfo",
    "VideoOptions",
    "VideoTiming",
    "Text",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _no_surrogates(text: str) -> str:
    """Lone UTF-16 surrogates (JSON's "\\ud800") cannot be encoded, tokenised or used as paths."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (invalid Unicode)") from None
    return text


Text = Annotated[str, AfterValidator(_no_surrogates)]
"""A client-supplied string that must be valid Unicode."""

MAX_STOP_STRINGS = 8
"""Most stop strings one request may give."""
MAX_STOP_CHARS = 256
"""Longest stop string, in characters."""
MAX_SEED = 2**63 - 1
"""Seeds are non-negative 64-bit signed integers (what torch.Generator.manual_seed takes everywhere)."""

MEDIA_KINDS = ("image", "video")
"""Each media endpoint takes one item of its kind: ``<kind>_path``, ``<kind>_base64``, a multipart
file field named ``<kind>``, or a raw body of that media type."""


def _exactly_one(model: BaseModel, a: str, b: str) -> None:
    given = [name for name in (a, b) if getattr(model, name) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {a!r} or {b!r}")


class ImageOptions(_Strict):
    """Everything /predict_image takes besides the image itself."""

    prompt: Text | None = Field(None, description="Question or instruction; default 'Describe the image.'")
    max_new_tokens: int | None = Field(None, ge=1, description="Generation length, up to the server's limit.")
    stream: bool = Field(False, description="Answer text/event-stream: 'delta' events with text as it is "
                         "generated, then one 'done' event with the full response document.")
    temperature: float | None = Field(None, ge=0, le=100, description="0 or absent: greedy (deterministic); "
                                      "higher: more random sampling.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling: keep the most likely tokens "
                                "whose probabilities add up to top_p.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens (0: all).")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed: the same seed, input and "
                             "settings give the same output, also when batched with other requests.")
    stop: list[Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)]] | \
        Annotated[Text, Field(min_length=1, max_length=MAX_STOP_CHARS)] | None = Field(
            None, description=f"Up to {MAX_STOP_STRINGS} strings of 1-{MAX_STOP_CHARS} characters; generation "
            "ends before the first one (finish_reason 'stop').")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Above 1 discourages repeating "
                                             "tokens already in the prompt or output.")

    @model_validator(mode="after")
    def _stop_count(self) -> ImageOptions:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        """``stop`` as a tuple, whichever form it was given in."""
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class PredictImageRequest(ImageOptions):
    """Caption or answer a prompt about one image (the JSON form; uploads may also come as a
    multipart file field ``image`` or as a raw image body)."""

    image_path: Text | None = Field(None, min_length=1, max_length=4096,
                                    description="File under one of the server's media roots.")
    image_base64: str | None = Field(None, min_length=1, description="The image bytes, base64 "
                                     "(a data: URL prefix is accepted).")

    @model_validator(mode="after")
    def _one_source(self) -> PredictImageRequest:
        _exactly_one(self, "image_path", "image_base64")
        return self


class ImageInfo(BaseModel):
    width: int
    height: int


class ImageTiming(BaseModel):
    decode_ms: float = Field(description="Reading, validating and preprocessing the image.")
    queue_ms: float = Field(description="From submission to the model until the request's first step.")
    ttft_ms: float = Field(description="From submission to the model until the first generated token.")
    inference_ms: float = Field(description="From the request's first model step to its last.")
    total_ms: float = Field(description="Whole request inside the worker.")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class PredictImageResponse(BaseModel):
    output: str
    prompt: str
    model: str
    image: ImageInfo
    finish_reason: Literal["stop", "length"]
    usage: Usage
    batch_size: float = Field(description="Mean number of requests the model worked on together during the "
                              "steps this request ran in (continuous batching: fractional).")
    timing: ImageTiming


class VideoOptions(_Strict):
    """Everything /summarize_video takes besides the video itself."""

    speech: bool = Field(True, description="Transcribe the audio track (false: skip the speech stage).")
    ocr: bool = Field(True, description="Read the text shown on screen (false: skip the OCR stage).")
    include_thumbnails: bool = Field(False, description="Add a small JPEG (base64) of every keyframe to "
                                     "its caption, for UIs.")


class SummarizeVideoRequest(VideoOptions):
    """Describe a short video: scenes, keyframe captions, summary, safety flags and tags (the JSON
    form; uploads may also come as a multipart file field ``video`` or as a raw video body)."""

    video_path: Text | None = Field(None, min_length=1, max_length=4096,
                                    description="File under one of the server's media roots.")
    video_base64: str | None = Field(None, min_length=1, description="The video bytes, base64.")

    @model_validator(mode="after")
    def _one_source(self) -> SummarizeVideoRequest:
        _exactly_one(self, "video_path", "video_base64")
        return self


class VideoInfo(BaseModel):
    duration_sec: float = Field(description="Measured on the decoded stream.")
    fps: float
    width: int = Field(description="Display width, after rotation.")
    height: int = Field(description="Display height, after rotation.")
    rotation: int = Field(description="Clockwise degrees (0/90/180/270) applied to the stored frames for display.")
    frames_total: int = Field(description="Frames decoded.")


class SpeechSegment(BaseModel):
    start_sec: float = Field(description="Video time (s) the words start.")
    end_sec: float
    text: str


class OnScreenText(BaseModel):
    text: str = Field(description="A line of text shown on screen, as read (best reading across frames).")
    start_sec: float = Field(description="When it appears (video time, to within half the frames' spacing).")
    end_sec: float = Field(description="When it disappears.")
    confidence: float = Field(description="Mean OCR word confidence over the frames it was read in, 0..1.")


class SceneCaption(BaseModel):
    timestamp_sec: float
    caption: str


class Scene(BaseModel):
    start_sec: float
    end_sec: float
    captions: list[SceneCaption] = Field(default_factory=list, description="Its keyframes' captions.")
    speech: list[SpeechSegment] = Field(default_factory=list, description="Speech segments overlapping it.")
    on_screen_text: list[OnScreenText] = Field(default_factory=list, description="On-screen text overlapping it.")


class Caption(BaseModel):
    timestamp_sec: float
    scene: int = Field(description="Index into scenes.")
    caption: str
    thumbnail_jpeg_base64: str | None = Field(None, description="The keyframe as a small JPEG, base64 "
                                              "(only with include_thumbnails).")


class Speech(BaseModel):
    language: str | None = Field(None, description="Spoken language (code) as detected, or as configured.")
    segments: list[SpeechSegment] = Field(default_factory=list, description="Timestamped transcript, in time order.")
    model: str | None = Field(None, description="The speech model.")
    windows: int = Field(0, description="Audio windows (at most 30 s each) sent to the speech model.")
    audio_sec: float = Field(0.0, description="Length of the decoded audio track.")
    voiced_sec: float = Field(0.0, description="Audio loud enough to transcribe (all of it without the gate).")


class StageReport(BaseModel):
    status: Literal["done", "off", "skipped", "unavailable", "failed"] = Field(
        description="done: ran (its result may be empty, see reason); off: the request switched it off; "
        "skipped: not configured on this server; unavailable: a tool it needs is missing; failed: it broke.")
    reason: str | None = Field(None, description="Why it did not run, or why its result is empty.")


class VideoStages(BaseModel):
    speech: StageReport = Field(default_factory=lambda: StageReport(status="off"))
    ocr: StageReport = Field(default_factory=lambda: StageReport(status="off"))


class SafetyFlag(BaseModel):
    category: str = Field(description="e.g. nsfw, violence, weapons, drugs, self_harm.")
    level: Literal["flag", "review"]
    source: str = Field(description="What raised it: 'opennsfw', or a lexicon over 'caption_lexicon', "
                        "'speech_lexicon' or 'on_screen_text_lexicon'.")
    score: float
    frames: list[float] = Field(description="Timestamps (s) of the frames, speech segments or on-screen "
                                "texts involved.")
    evidence: list[str] = Field(default_factory=list, description="Matched words, for lexicon flags.")


class VideoTiming(BaseModel):
    stats_sec: float
    scene_detection_sec: float
    frame_extraction_sec: float
    dedupe_sec: float
    captioning_sec: float
    summary_sec: float
    tags_sec: float
    safety_sec: float
    asr_sec: float = Field(0.0, description="Speech stage: audio decoding, voice gate and Whisper "
                           "(overlaps captioning).")
    ocr_sec: float = Field(0.0, description="On-screen text stage (overlaps captioning).")
    total_sec: float


class SummarizeVideoResponse(BaseModel):
    video: VideoInfo
    scenes: list[Scene]
    scenes_detected: int
    frames_used: int
    captions: list[Caption]
    summary: str
    summary_source: Literal["model", "extractive"]
    safety_flags: list[SafetyFlag]
    vibe_tags: list[str]
    visual_tags: list[str]
    speech: Speech = Field(default_factory=Speech)
    on_screen_text: list[OnScreenText] = Field(default_factory=list, description="Text shown on screen, "
                                               "deduplicated across frames, in time order.")
    stages: VideoStages = Field(default_factory=VideoStages, description="Whether speech and OCR ran, and why not.")
    model: str
    timing: VideoTiming


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(description="Stable machine code: " + "; ".join(
        f"{code} ({cls.http_status})" for code, cls in ERROR_CODES.items()),
        json_schema_extra={"enum": list(ERROR_CODES)})
    message: str = Field(description="Human-readable; never a stack trace or a server path.")
    request_id: str | None = Field(None, description="The request's X-Request-ID.")
    retry_after_sec: float | None = Field(None, description="How long to wait before retrying (503, 429, 502).")


class ErrorBody(BaseModel):
    """What every error response looks like."""

    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries: the error body and the codes each status can carry."""
    entries: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        codes = [code for code, cls in ERROR_CODES.items() if cls.http_status == status]
        entries[status] = {"model": ErrorBody, "description": "Error codes: " + ", ".join(codes)}
    return entries
