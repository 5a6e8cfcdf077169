"""One media request, whichever way it was sent, as options plus one image or video.

Four equivalent forms reach ``/predict_image`` and ``/summarize_video``:

- JSON with ``<kind>_path`` (a file under the media roots) or ``<kind>_base64``;
- ``multipart/form-data`` with a file field named ``<kind>`` (``curl -F image=@photo.jpg``) and the
  options as fields (or as one JSON part named ``request``);
- a raw body with the media's own content type (``--data-binary @clip.mp4 -H 'Content-Type:
  video/mp4'``) and the options in the query string.

:func:`parse_submission` turns a spooled body into a :class:`MediaRequest` — validated options,
and either the path or an upload :class:`Spool` holding the media bytes (base64 decoded while
streaming). It is synchronous and CPU-bound over large bodies: run it in a thread.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest, MediaTooLarge, PayloadTooLarge, UnsupportedMedia
from ..schemas import ImageOptions, VideoOptions
from ..web.errors import invalid_fields
from .jsonstream import MediaPolicy, MediaRef, collect_media, parse_json
from .multipart import parse_multipart
from .sinks import SinkInfo
from .spool import Spool

__all__ = ["OPTIONS", "IntakeLimits", "MediaKind", "MediaRequest", "body_kind", "parse_submission"]

MediaKind = Literal["image", "video"]
OPTIONS: dict[str, type[BaseModel]] = {"image": ImageOptions, "video": VideoOptions}
_RAW_TYPES = ("image/", "video/", "application/octet-stream")
_JSON_SLACK = 64 * 1024
_FORM_SLACK = 256 * 1024


@dataclass(frozen=True)
class IntakeLimits:
    """Sizes one endpoint accepts, and where large uploads are spooled."""

    media_bytes: int
    spool_dir: str | None = None

    def body_bytes(self, form: str) -> int:
        """Largest body of a form: the media itself, plus multipart framing, or as base64 in JSON."""
        if form == "raw":
            return self.media_bytes
        if form == "multipart":
            return self.media_bytes + _FORM_SLACK
        return self.media_bytes * 4 // 3 + _JSON_SLACK

    def media_spool(self, kind: str) -> Spool:
        return Spool(max_bytes=self.media_bytes, directory=self.spool_dir,
                     too_large=lambda limit: MediaTooLarge(f"The {kind} is larger than the limit of {limit} bytes."))

    def open_sink(self, info: SinkInfo) -> Spool:
        """A parser's sink for one media value: a Spool (the parsers meter the size themselves)."""
        return self.media_spool(info.kind)

    def body_spool(self, form: str) -> Spool:
        return Spool(max_bytes=self.body_bytes(form), directory=self.spool_dir,
                     too_large=lambda limit: PayloadTooLarge(f"The body is larger than the limit of {limit} bytes."))


def body_kind(content_type: str) -> str:
    """'raw', 'multipart' or 'json' for a Content-Type (JSON is the default, as curl -d sends
    application/x-www-form-urlencoded for what is really JSON)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        return "multipart"
    if media_type.startswith(_RAW_TYPES):
        return "raw"
    return "json"


@dataclass(eq=False)
class MediaRequest:
    """Validated options plus exactly one media source. Close it to delete a spooled upload."""

    kind: MediaKind
    options: Any  # ImageOptions or VideoOptions
    path: str | None = None
    upload: Spool | None = None
    content_type: str | None = None
    filename: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return "path" if self.path is not None else "upload"

    def close(self) -> None:
        if self.upload is not None:
            self.upload.close()

    def __enter__(self) -> MediaRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_submission(kind: MediaKind, body: Spool, content_type: str, query: str,
                     limits: IntakeLimits) -> MediaRequest:
    """Turn a spooled body into a MediaRequest, or raise a RequestError naming what is wrong.

    ``body`` is consumed: for a raw upload it becomes the upload itself, otherwise it is closed.
    """
    form = body_kind(content_type)
    if form != "raw" and query:
        body.close()
        raise InvalidRequest("Options go in the body; query parameters are only for raw media bodies.",
                             fields=[{"field": "query", "message": "not allowed with this Content-Type"}])
    if form == "raw":
        return _from_raw(kind, body, content_type, query)
    try:
        if form == "multipart":
            return _from_multipart(kind, body, content_type, limits)
        return _from_json(kind, body, limits)
    finally:
        body.close()


def _from_raw(kind: MediaKind, body: Spool, content_type: str, query: str) -> MediaRequest:
    media_type = content_type.split(";", 1)[0].strip().lower()
    other = "video" if kind == "image" else "image"
    if media_type.startswith(other + "/"):
        body.close()
        raise UnsupportedMedia(f"This endpoint takes an {kind}, not {media_type}.")
    if body.size == 0:
        body.close()
        raise InvalidRequest(f"The {kind} body is empty.", fields=[{"field": "body", "message": "empty"}])
    try:
        fields = _query_fields(query)
        options = _validate(kind, fields)
    except BaseException:
        body.close()
        raise
    return MediaRequest(kind=kind, options=options, upload=body, content_type=media_type)


def _query_fields(query: str) -> dict[str, Any]:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                                       errors="strict", max_num_fields=64)
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("The query string is malformed.", fields=[{"field": "query", "message": "malformed"}]) \
            from None
    fields: dict[str, Any] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    return {name: values[0] if len(values) == 1 else values for name, values in fields.items()}


def _from_json(kind: MediaKind, body: Spool, limits: IntakeLimits) -> MediaRequest:
    media_field = f"{kind}_base64"
    policy = MediaPolicy(max_bytes={kind: limits.media_bytes}, fields={media_field: kind}, data_urls=False,
                         max_items=1, open_sink=limits.open_sink)
    with body.open() as reader:
        document = parse_json(reader, media=policy)
    refs = collect_media(document)  # the parse's sinks, now ours to close if anything below fails
    try:
        if not isinstance(document, dict):
            raise InvalidRequest("The request body must be a JSON object.",
                                 fields=[{"field": "body", "message": "expected a JSON object"}])
        uploaded = document.pop(media_field, None)
        if uploaded is not None and not isinstance(uploaded, MediaRef):
            raise InvalidRequest(f"{media_field} must be a base64 string.",
                                 fields=[{"field": media_field, "message": "expected a base64 string"}])
        request = _assemble(kind, document, uploaded=uploaded.sink if uploaded else None)
        request.content_type = uploaded.mime if uploaded else None
        return request
    except BaseException:
        for ref in refs:
            ref.sink.close()
        raise


def _from_multipart(kind: MediaKind, body: Spool, content_type: str, limits: IntakeLimits) -> MediaRequest:
    with body.open() as reader:
        form = parse_multipart(reader, content_type, file_fields={kind: limits.media_bytes},
                               open_sink=limits.open_sink)
    try:
        fields: dict[str, Any] = dict(form.json or {})
        for name, values in form.fields.items():
            if name in fields:
                raise InvalidRequest(f"{name} is given twice (as a field and in the request part).",
                                     fields=[{"field": name, "message": "given twice"}])
            fields[name] = values[0] if len(values) == 1 else list(values)
        upload = form.files.get(kind)
        request = _assemble(kind, fields, uploaded=upload.sink if upload else None)
        if upload is not None:
            request.content_type, request.filename = upload.content_type, upload.filename
        return request
    except BaseException:
        form.close()
        raise


def _assemble(kind: MediaKind, fields: dict[str, Any], *, uploaded: Any) -> MediaRequest:
    """Exactly one media source, then the options validated on their own."""
    path_field, base64_field = f"{kind}_path", f"{kind}_base64"
    path = fields.pop(path_field, None)
    if base64_field in fields:  # base64 as a multipart text field (JSON bodies never get here with it)
        raise InvalidRequest(f"Send the {kind} as a file field named {kind!r}, not as {base64_field} text.",
                             fields=[{"field": base64_field, "message": "use a file field"}])
    given = [name for name, value in ((path_field, path), ("upload", uploaded)) if value is not None]
    if len(given) != 1:
        raise InvalidRequest(
            f"Invalid request: give exactly one {kind}: {path_field}, {base64_field}, a multipart file field "
            f"{kind!r} or a raw {kind} body.", fields=[{"field": "body", "message": f"exactly one {kind} needed"}])
    if path is not None:
        path = _validate_path(kind, path)
    return MediaRequest(kind=kind, options=_validate(kind, fields), path=path, upload=uploaded)


def _validate_path(kind: str, path: Any) -> str:
    from ..schemas import PredictImageRequest, SummarizeVideoRequest

    model = PredictImageRequest if kind == "image" else SummarizeVideoRequest
    try:
        model.model_validate({f"{kind}_path": path})
    except ValidationError as exc:
        raise invalid_fields(exc.errors(include_input=False)) from None
    return path


def _validate(kind: str, fields: Mapping[str, Any]) -> Any:
    try:
        return OPTIONS[kind].model_validate(dict(fields))
    except ValidationError as exc:
        raise invalid_fields(exc.errors(include_input=False)) from None
