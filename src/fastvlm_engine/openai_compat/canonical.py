"""The one form a chat request takes from the router to a worker, whatever the client sent.

The router resolves every image and video before a worker sees the request: an inline data URL
or a fetched http(s) URL becomes a file part of the multipart body (named by :func:`file_field`),
a ``file://`` URL or plain path stays a path the worker reads under its media roots (as
``image_path`` does). The ``request`` part is a :class:`CanonicalChat`: the turns, with each media
part replaced by that reference, and the sampling parameters in the native endpoint's terms.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..schemas import ImageOptions

__all__ = ["REQUEST_PART", "CanonicalChat", "CanonicalMessage", "CanonicalPart", "file_field", "file_fields",
           "request_part_bytes"]

REQUEST_PART = "request"
"""The multipart part holding the CanonicalChat JSON (the intake's JSON part)."""

MediaKind = Literal["image", "video"]


def file_field(kind: MediaKind, index: int) -> str:
    """The multipart field of the ``index``-th uploaded image or video: ``image0``, ``video0`` ..."""
    return f"{kind}{index}"


def file_fields(max_images: int, image_bytes: int, video_bytes: int) -> dict[str, int]:
    """Every file field a canonical body may carry, with its size limit (one video at most)."""
    return {**{file_field("image", i): image_bytes for i in range(max_images)}, file_field("video", 0): video_bytes}


def request_part_bytes(max_text_chars: int) -> int:
    """Largest ``request`` part: every character of text escaped (``\\uXXXX``, six bytes), plus room for
    the structure and the paths."""
    return 6 * max_text_chars + 256 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CanonicalPart(_Strict):
    """Text, or one image or video given as an uploaded file part or a path under the media roots."""

    type: Literal["text", "image", "video"]
    text: str | None = None
    file: str | None = Field(None, max_length=32)
    path: str | None = Field(None, min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _one_source(self) -> CanonicalPart:
        if self.type == "text":
            if self.text is None or self.file is not None or self.path is not None:
                raise ValueError("a text part carries text only")
        elif self.text is not None or (self.file is None) == (self.path is None):
            raise ValueError(f"an {self.type} part carries exactly one of file or path")
        return self


class CanonicalMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: list[CanonicalPart]

    @model_validator(mode="after")
    def _media_in_user_turns(self) -> CanonicalMessage:
        if self.role != "user" and any(part.type != "text" for part in self.content):
            raise ValueError("only user messages carry images and videos")
        return self


class CanonicalChat(_Strict):
    """A validated chat request, ready for the model (the worker validates it again)."""

    messages: list[CanonicalMessage] = Field(min_length=1)
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    repetition_penalty: float | None = None
    stream: bool = False
    include_usage: bool = False

    def options(self) -> ImageOptions:
        """The sampling parameters in /predict_image's terms (validated there like any other)."""
        return ImageOptions(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                            top_k=self.top_k, seed=self.seed, stop=self.stop,
                            repetition_penalty=self.repetition_penalty)

    def media(self) -> list[CanonicalPart]:
        """Every image and video part, in order."""
        return [part for message in self.messages for part in message.content if part.type != "text"]
