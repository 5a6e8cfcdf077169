"""The worker's ``/v1/chat/completions``: the router's canonical chat request, answered in OpenAI's shape.

The body is the router's canonical multipart form (``request`` JSON part plus one file part per
uploaded image or video), read whole and parsed in a thread like every media request. Each image
is decoded with the usual limits (a path is read under the media roots, as ``image_path`` is);
a video goes through the /summarize_video pipeline and its timeline, as text
(:func:`~fastvlm_engine.video.context.video_context`), stands where the video was. The turns are
templated by :meth:`~fastvlm_engine.engine.model.FastVLM.prepare_chat` and run on the scheduler
with the request's sampling parameters, so ``usage`` counts exactly what /predict_image counts
for the same image and prompt.

Streaming: the request is submitted before the response starts, so a request that cannot run
(context too long, queue full) gets its HTTP error; after that an error becomes the stream's last
event (``data: {"error": ...}`` then ``[DONE]``), which the SDK raises as an APIError. A client that
leaves cancels the request and frees its KV slot at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request

from ..config import Settings
from ..errors import EngineError, InvalidRequest, MediaTooLarge, PayloadTooLarge, UnsupportedMedia
from ..intake.body import declared_length, receive_body
from ..intake.multipart import FilePart, MultipartLimits, parse_multipart
from ..intake.request import body_rules
from ..intake.spool import Spool
from ..intake.submission import MediaRequest, body_kind
from ..media import decode_image, read_media
from ..observability import tracing
from ..openai_compat import CanonicalChat, CanonicalPart, ChunkStream, completion, file_fields, openai_error_body
from ..openai_compat.canonical import request_part_bytes
from ..schemas import VideoOptions
from ..web.errors import invalid_fields
from ..web.sse import SSE_DONE, sse_event

if TYPE_CHECKING:
    from PIL import Image

    from ..engine.handle import GenerationResult, RequestHandle
    from ..engine.model import PreparedInput
    from ..engine.sampling import SamplingParams
    from .service import WorkerService

__all__ = ["ChatUpload", "PreparedChat", "complete_chat", "prepare_chat", "read_chat_request", "started_stream",
           "stream_chat"]


@dataclass(eq=False)
class ChatUpload:
    """A canonical chat request and its uploaded file parts; close it to release them."""

    chat: CanonicalChat
    files: dict[str, FilePart] = field(default_factory=dict)

    @property
    def has_video(self) -> bool:
        """Whether a turn carries a video (the request then runs the video pipeline, and holds a video slot)."""
        return any(part.type == "video" for message in self.chat.messages for part in message.content)

    def close(self) -> None:
        for part in self.files.values():
            part.sink.close()

    def __enter__(self) -> ChatUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spool(settings: Settings, max_bytes: int, *, body: bool = False) -> Spool:
    error = PayloadTooLarge if body else MediaTooLarge
    what = "body" if body else "media"
    return Spool(max_bytes=max_bytes, directory=str(settings.spool_dir) if settings.spool_dir else None,
                 too_large=lambda limit: error(f"The {what} is larger than the limit of {limit} bytes."))


async def read_chat_request(request: Request, settings: Settings) -> ChatUpload:
    """Receive the canonical multipart body within the body deadlines and parse it in a thread."""
    content_type = request.headers.get("content-type", "")
    if body_kind(content_type) != "multipart":
        raise UnsupportedMedia("This endpoint takes the router's canonical multipart form; clients call the "
                               "router's /v1/chat/completions.")
    part_bytes = request_part_bytes(settings.chat_max_text_chars)
    limits = MultipartLimits(max_text_bytes=part_bytes, max_text_total_bytes=part_bytes)
    fields = file_fields(settings.chat_max_images, settings.max_image_bytes, settings.video_max_bytes)
    with _spool(settings, settings.chat_body_limit(), body=True) as body:
        await receive_body(request.receive, body, body_rules(settings),
                           declared=declared_length(request.scope["headers"]))

        def parse() -> ChatUpload:
            with body.open() as reader:
                form = parse_multipart(reader, content_type, file_fields=fields, limits=limits,
                                       open_sink=lambda info: _spool(settings, info.max_bytes))
            try:
                if form.fields or form.json is None:
                    raise InvalidRequest("The form must carry exactly the request part and the media files.",
                                         field="body")
                try:
                    chat = CanonicalChat.model_validate(form.json)
                except ValidationError as exc:
                    raise invalid_fields(exc.errors(include_input=False)) from None
                return ChatUpload(chat=chat, files=dict(form.files))
            except BaseException:
                form.close()
                raise

        return await asyncio.to_thread(parse)


@dataclass(frozen=True)
class PreparedChat:
    """A chat request templated and tokenised, ready to submit."""

    item: PreparedInput
    params: SamplingParams
    stream: bool
    include_usage: bool
    deadline: float | None


async def prepare_chat(service: WorkerService, upload: ChatUpload, *, deadline: float | None) -> PreparedChat:
    """Validate the sampling parameters, decode the images, analyse the video, template the turns."""
    from ..engine.chat import ChatTurn

    vlm, _ = service.require_ready()
    chat, settings = upload.chat, service.settings
    budget = chat.max_new_tokens if chat.max_new_tokens is not None else settings.max_new_tokens
    try:
        options = chat.options()
    except ValidationError as exc:
        raise invalid_fields(exc.errors(include_input=False)) from None
    params = service.sampling(options, budget)
    turns: list[ChatTurn] = []
    images: list[Image.Image] = []
    used: set[str] = set()
    for i, message in enumerate(chat.messages):
        texts: list[str] = []
        shown = 0
        for j, part in enumerate(message.content):
            if part.type == "text":
                texts.append(part.text or "")
                continue
            where = f"messages[{i}].content[{j}].{part.type}_url.url"
            try:
                source = _source(upload, part, used)
                if part.type == "image":
                    images.append(await asyncio.to_thread(_decode, settings, source, part.path))
                    shown += 1
                else:
                    texts.append(await _video_text(service, source, part.path, deadline))
            except EngineError as exc:
                exc.details.setdefault("param", where)
                raise
        turns.append(ChatTurn(message.role, tuple(texts), images=shown))
    if set(upload.files) - used:
        raise InvalidRequest("The form carries files no message refers to.", field="body")
    try:
        item = await asyncio.to_thread(vlm.prepare_chat, turns, images, budget, image_fit=settings.image_fit)
    except ValueError as exc:  # a turn that is not a user turn showing an image
        raise InvalidRequest(f"Invalid request: {exc}", field="messages") from None
    return PreparedChat(item=item, params=params, stream=chat.stream, include_usage=chat.include_usage,
                        deadline=deadline)


def _source(upload: ChatUpload, part: CanonicalPart, used: set[str]) -> Spool | None:
    """The uploaded spool a media part names (each at most once), or None for a path."""
    if part.file is None:
        return None
    if part.file in used or part.file not in upload.files or not part.file.startswith(part.type):
        raise InvalidRequest(f"The {part.type} part names a file part {part.file!r} the form does not carry.",
                             field="body")
    used.add(part.file)
    sink = upload.files[part.file].sink
    if not isinstance(sink, Spool):
        raise TypeError("chat uploads are spooled")
    return sink


def _decode(settings: Settings, source: Spool | None, path: str | None) -> Image.Image:
    with tracing.span("media.decode", **{"fastvlm.source": "path" if source is None else "upload"}):
        data = source.read_bytes() if source is not None else read_media(path or "", settings.media_roots,
                                                                           settings.max_image_bytes)
        return decode_image(data, max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels).image


async def _video_text(service: WorkerService, source: Spool | None, path: str | None, deadline: float | None) -> str:
    """The video analysed by the /summarize_video pipeline, as bounded text context."""
    from ..video.context import video_context

    media = MediaRequest(kind="video", options=VideoOptions(), path=path, upload=source)
    document = await service.summarize_video(media, deadline=deadline)  # the upload is closed with the request
    return video_context(document, service.settings.video_summary_context_chars)


def _submit(service: WorkerService, prepared: PreparedChat) -> RequestHandle:
    _, scheduler = service.require_ready()
    service.faults.on_request()
    return scheduler.submit(prepared.item, prepared.params, deadline=prepared.deadline)


def _observe(service: WorkerService, result: GenerationResult) -> None:
    if service.metrics is not None:
        service.metrics.request(result)


async def complete_chat(service: WorkerService, prepared: PreparedChat) -> tuple[dict[str, Any], GenerationResult]:
    """The whole ``chat.completion`` document (and the engine's result, for timings)."""
    vlm, _ = service.require_ready()
    with tracing.span("inference", **{"fastvlm.prompt_tokens": prepared.item.prompt_tokens}):
        handle = _submit(service, prepared)
        try:
            result = await handle.result()
        except asyncio.CancelledError:
            handle.cancel()
            raise
    _observe(service, result)
    return completion(model=vlm.name, text=result.text, finish_reason=result.finish_reason,
                      prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens), result


async def stream_chat(service: WorkerService, prepared: PreparedChat, request_id: str | None) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events, then ``[DONE]``; started (submitted) by its caller before the
    response goes out — see :func:`started_stream`."""
    vlm, _ = service.require_ready()
    chunks = ChunkStream(vlm.name, include_usage=prepared.include_usage)
    handle: RequestHandle | None = None
    try:
        with tracing.span("inference", **{"fastvlm.prompt_tokens": prepared.item.prompt_tokens,
                                          "fastvlm.stream": True}):
            handle = _submit(service, prepared)
            yield sse_event(chunks.role())
            try:
                async for delta in handle.stream():
                    yield sse_event(chunks.text(delta))
                result = await handle.result()
            except EngineError as exc:
                yield sse_event(openai_error_body(exc.to_body(request_id), exc.status))
                yield SSE_DONE
                return
        _observe(service, result)
        yield sse_event(chunks.finish(result.finish_reason))
        if prepared.include_usage:
            yield sse_event(chunks.usage(result.prompt_tokens, result.completion_tokens))
        yield SSE_DONE
    finally:
        if handle is not None:
            handle.cancel()  # nothing when it finished; frees the slot when the stream was left early


async def started_stream(events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Run ``events`` up to its first event now (so a request that cannot be submitted fails with its
    HTTP status), and return a stream that sends that event and the rest; closing it closes ``events``."""
    first = await anext(events)

    async def chained() -> AsyncIterator[bytes]:
        try:
            yield first
            async for event in events:
                yield event
        finally:
            await events.aclose()

    return chained()
