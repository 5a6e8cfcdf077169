"""A chat request's body and media on the router: read, parsed, every image and video resolved.

The body is received within the body deadlines into a spool and parsed in a thread by
``intake.jsonstream.parse_json``, which spools each inline ``data:image/...;base64,`` (or
``data:video/...``) URL as it reads it, so a request carrying images never holds them as text.
Each media URL then becomes something a worker can read without going anywhere:

- an inline data URL: already spooled;
- ``http(s)://``: fetched by the SSRF-safe :class:`~fastvlm_engine.media.fetch.MediaFetcher` into a
  spool, refused unless ``FASTVLM_FETCH_URL_HOSTS`` allows the host (all fetches of a request run
  together, before it takes a worker slot, like reading a body);
- ``file:///path`` or a plain path: left as a path, which the worker reads under its media roots
  exactly as it reads ``image_path``;
- anything else (another scheme, a data URL that is not base64 image or video): refused.

The worker gets one canonical multipart body: the ``request`` part (a
:class:`~fastvlm_engine.openai_compat.canonical.CanonicalChat`) and a file part per spool.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from starlette.requests import Request

from ..config import CHAT_TEXT_SLACK, Settings
from ..errors import EngineError, InvalidRequest, MediaTooLarge, PayloadTooLarge, UnsupportedMedia, UrlNotAllowed
from ..intake.body import declared_length, receive_body
from ..intake.jsonstream import JsonLimits, MediaPolicy, MediaRef, collect_media, parse_json
from ..intake.request import body_rules
from ..intake.spool import Spool
from ..media.fetch import MediaFetcher
from ..openai_compat import (
    REQUEST_PART,
    CanonicalChat,
    CanonicalMessage,
    CanonicalPart,
    ChatCompletionRequest,
    MediaPart,
    file_field,
    media_parts,
)
from ..openai_compat.request import AssistantMessage, ImagePart, SystemMessage, TextPart, VideoPart
from .forward import Payload

__all__ = ["ChatMedia", "read_chat_document", "to_canonical"]

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
MAX_PATH_CHARS = 4096
"""Longest media path, as for image_path."""

MediaKind = Literal["image", "video"]


def _media_spool(settings: Settings, max_bytes: int) -> Spool:
    return Spool(max_bytes=max_bytes, directory=str(settings.spool_dir) if settings.spool_dir else None,
                 too_large=lambda limit: MediaTooLarge(f"The media is larger than the limit of {limit} bytes."))


async def read_chat_document(request: Request, settings: Settings) -> Any:
    """The request body, received within the body deadlines and parsed in a thread, with every
    inline media data URL spooled (the caller owns the spools: see :class:`ChatMedia`)."""
    body = Spool(max_bytes=settings.chat_body_limit(),
                 directory=str(settings.spool_dir) if settings.spool_dir else None,
                 too_large=lambda limit: PayloadTooLarge(f"The body is larger than the limit of {limit} bytes."))
    policy = MediaPolicy(max_bytes={"image": settings.max_image_bytes, "video": settings.video_max_bytes},
                         data_urls=True, max_items=settings.chat_max_images + 1,
                         open_sink=lambda info: _media_spool(settings, info.max_bytes))
    with body:
        await receive_body(request.receive, body, body_rules(settings),
                           declared=declared_length(request.scope["headers"]))

        def parse() -> Any:
            with body.open() as reader:
                return parse_json(reader, media=policy, limits=JsonLimits(max_text_chars=CHAT_TEXT_SLACK))

        return await asyncio.to_thread(parse)


@dataclass(frozen=True)
class Upload:
    """A spooled image or video that travels to the worker as the file part ``field``."""

    field: str
    spool: Spool
    content_type: str | None


class ChatMedia:
    """The media of one request: every spool it owns (inline data URLs, fetched URLs), released on close."""

    def __init__(self, document: Any) -> None:
        self._refs = collect_media(document)
        self._fetched: list[Spool] = []
        self.uploads: list[Upload] = []
        self.parts: dict[tuple[int, int], CanonicalPart] = {}
        """The canonical part for each media part, by (message, part) index."""

    async def resolve(self, request: ChatCompletionRequest, settings: Settings, fetcher: MediaFetcher) -> None:
        """Turn every image and video URL of ``request`` into an upload or a path (fetching in parallel)."""
        found = list(media_parts(request))
        images = sum(part.kind == "image" for part in found)
        if images > settings.chat_max_images:
            raise InvalidRequest(f"The request carries {images} images; this server takes at most "
                                 f"{settings.chat_max_images} per request (FASTVLM_CHAT_MAX_IMAGES).", param="messages")
        if len(found) - images > 1:
            raise InvalidRequest("The request carries more than one video; send one video per request.",
                                 param="messages")
        fetches = []
        for part in found:
            if isinstance(part.url, MediaRef):
                self._inline(part, part.url)
            elif _is_http(part.url):
                fetches.append(part)
            else:
                self.parts[(part.message, part.part)] = CanonicalPart(type=part.kind, path=_local_path(part))
        await self._fetch_all(fetches, settings, fetcher)

    def _upload(self, part: MediaPart, spool: Spool, content_type: str | None) -> None:
        field = file_field(part.kind, sum(upload.field.startswith(part.kind) for upload in self.uploads))
        self.uploads.append(Upload(field, spool, content_type))
        self.parts[(part.message, part.part)] = CanonicalPart(type=part.kind, file=field)

    def _inline(self, part: MediaPart, ref: MediaRef) -> None:
        if ref.kind != part.kind:
            raise UnsupportedMedia(f"{part.param} holds {ref.mime or ref.kind} data; a {part.kind}_url part takes "
                                   f"data:{part.kind}/...;base64, URLs.", param=part.param)
        if not isinstance(ref.sink, Spool):
            raise TypeError("inline media must be spooled")
        self._upload(part, ref.sink, ref.mime)

    async def _fetch_all(self, parts: list[MediaPart], settings: Settings, fetcher: MediaFetcher) -> None:
        async def fetch(part: MediaPart) -> tuple[MediaPart, Spool, str | None]:
            limit = settings.media_limit(part.kind)
            spool = _media_spool(settings, limit)
            self._fetched.append(spool)
            try:
                fetched = await fetcher.fetch(str(part.url), kind=part.kind, max_bytes=limit, sink=spool)
            except EngineError as exc:
                exc.details.setdefault("param", part.param)
                raise
            return part, spool.finish(), fetched.content_type

        tasks = [asyncio.ensure_future(fetch(part)) for part in parts]
        try:
            done = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            raise
        for part, spool, content_type in done:
            self._upload(part, spool, content_type)

    def payload(self, chat: CanonicalChat) -> Payload:
        """The canonical multipart body, built afresh for every attempt (each re-reads the spools)."""

        def build() -> tuple[Any, dict[str, str]]:
            writer = aiohttp.MultipartWriter("form-data")
            part = writer.append_json(chat.model_dump(exclude_none=True))
            part.set_content_disposition("form-data", name=REQUEST_PART)
            for upload in self.uploads:
                media = writer.append(upload.spool.open(),
                                      {"Content-Type": upload.content_type or "application/octet-stream"})
                media.set_content_disposition("form-data", name=upload.field, filename=upload.field)
            return writer, {}

        return build

    def close(self) -> None:
        for ref in self._refs:
            ref.sink.close()
        for spool in self._fetched:
            spool.close()

    def __enter__(self) -> ChatMedia:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_http(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


def _local_path(part: MediaPart) -> str:
    """The media-roots path a ``file://`` URL or a plain path names; UrlNotAllowed for other URLs."""
    url = str(part.url)
    if url[:5].lower() == "data:":
        raise UnsupportedMedia(f"{part.param}: only base64 data URLs of {part.kind}s are accepted "
                               f"(data:{part.kind}/<type>;base64,...).", param=part.param)
    if url[:7].lower() == "file://":
        split = urllib.parse.urlsplit(url)
        if split.netloc not in ("", "localhost"):
            raise UrlNotAllowed(f"{part.param}: file URLs must name a local path (file:///path).", param=part.param)
        path = urllib.parse.unquote(split.path)
    elif _SCHEME.match(url):
        raise UrlNotAllowed(f"{part.param}: the URL scheme is not supported; send a data: URL, an http(s) URL "
                            "(when the server allows its host), or a path under the media roots (file:///path).",
                            param=part.param)
    else:
        path = url
    if not path.strip() or len(path) > MAX_PATH_CHARS:
        raise InvalidRequest(f"{part.param}: the path must be 1 to {MAX_PATH_CHARS} characters.", param=part.param)
    return path


def _texts(content: str | list[TextPart] | None) -> list[CanonicalPart]:
    if content is None:
        return []
    if isinstance(content, str):
        return [CanonicalPart(type="text", text=content)]
    return [CanonicalPart(type="text", text=part.text) for part in content]


def to_canonical(request: ChatCompletionRequest, parts: dict[tuple[int, int], CanonicalPart]) -> CanonicalChat:
    """The request as the worker takes it, with every media part replaced by its resolved reference."""
    messages = []
    for i, message in enumerate(request.messages):
        if isinstance(message, SystemMessage):
            messages.append(CanonicalMessage(role="system", content=_texts(message.content)))
        elif isinstance(message, AssistantMessage):
            messages.append(CanonicalMessage(role="assistant", content=_texts(message.content)))
        elif isinstance(message.content, str):
            messages.append(CanonicalMessage(role="user", content=_texts(message.content)))
        else:
            content = [parts[(i, j)] if isinstance(part, ImagePart | VideoPart)
                       else CanonicalPart(type="text", text=part.text) for j, part in enumerate(message.content)]
            messages.append(CanonicalMessage(role="user", content=content))
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    return CanonicalChat(messages=messages, max_new_tokens=request.token_limit, temperature=request.temperature,
                         top_p=request.top_p, top_k=request.top_k, seed=request.seed, stop=stop,
                         repetition_penalty=request.repetition_penalty, stream=bool(request.stream),
                         include_usage=include_usage)
