"""The Chat Completions request as this server takes it: what is supported, what is refused.

The wire format is OpenAI's, plus vLLM's ``video_url`` content part. Parameters that would
change the answer and that this server does not implement are refused with 400
``unsupported_parameter`` naming the parameter (:func:`refuse_unsupported`), never ignored: a
client asking for ``n=2`` or tools must not get an answer that silently differs. Fields this
server does not know at all are ignored, as OpenAI ignores them.

Validation runs on the document ``intake.jsonstream.parse_json`` returned, in which each inline
``data:image/...;base64,`` URL is already a :class:`~fastvlm_engine.intake.jsonstream.MediaRef`
(its bytes spooled, never held as text), so an image or video ``url`` is that reference or a string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError, WithJsonSchema

from ..errors import InvalidRequest, UnsupportedParameter
from ..intake.jsonstream import JsonPath, MediaRef, format_path
from ..schemas import Text

__all__ = ["MAX_MESSAGES", "MAX_SEED", "AssistantMessage", "ChatCompletionRequest", "ImagePart", "MediaPart",
           "SystemMessage", "TextPart", "UserMessage", "VideoPart", "media_parts", "parse_request",
           "refuse_unsupported", "text_chars"]

MAX_MESSAGES = 256
"""Most messages one request may carry (the text and token limits usually bind first)."""
MAX_SEED = 2**63 - 1
"""Seeds are non-negative 64-bit signed integers, as on /predict_image."""


def _is(value: Any, *accepted: Any) -> bool:
    """``value`` equals one of ``accepted`` with the same type (so ``True`` is not ``1``)."""
    return any(type(value) is type(a) and value == a for a in accepted)


_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: _is(v, 1),
    "tools": lambda v: _is(v, []),
    "tool_choice": lambda v: _is(v, "none"),
    "functions": lambda v: _is(v, []),
    "function_call": lambda v: _is(v, "none"),
    "logprobs": lambda v: _is(v, False),
    "top_logprobs": lambda v: _is(v, 0),
    "response_format": lambda v: isinstance(v, dict) and v.get("type") == "text",
    "frequency_penalty": lambda v: _is(v, 0, 0.0),
    "presence_penalty": lambda v: _is(v, 0, 0.0),
    "logit_bias": lambda v: _is(v, {}),
    "modalities": lambda v: _is(v, ["text"]),
    "audio": lambda v: False,
    "prediction": lambda v: False,
}
"""Parameters this server does not implement, each accepted only absent, null or at its neutral value."""

_WHY = {
    "n": "only one choice (n=1) is generated",
    "tools": "tool calling is not supported", "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported", "function_call": "function calling is not supported",
    "logprobs": "log probabilities are not returned", "top_logprobs": "log probabilities are not returned",
    "response_format": "only the text response format is supported",
    "frequency_penalty": "use repetition_penalty instead", "presence_penalty": "use repetition_penalty instead",
    "logit_bias": "logit bias is not supported", "modalities": "the only output modality is text",
    "audio": "the only output modality is text", "prediction": "predicted outputs are not supported",
}
_TOOL_ROLES = ("tool", "function")
_UNSUPPORTED_PARTS = {"input_audio": "audio input is not supported", "file": "file inputs are not supported",
                      "refusal": "refusal parts are not supported"}


def refuse_unsupported(document: Any) -> None:
    """Raise UnsupportedParameter for the first parameter, role or content part this server does not
    implement. Runs on the raw document, before schema validation, so the answer is the 400 that names
    it rather than a schema error about its type."""
    if not isinstance(document, dict):
        return
    for name, neutral in _NEUTRAL.items():
        value = document.get(name)
        if value is not None and not neutral(value):
            raise UnsupportedParameter(f"{name} is not supported by this server: {_WHY[name]}.", param=name)
    messages = document.get("messages")
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role in _TOOL_ROLES:
            raise UnsupportedParameter(f"messages[{i}].role {role!r} is not supported: tool calling is not "
                                       f"supported (only system, developer, user and assistant messages are).",
                                       param=f"messages[{i}].role")
        for key in ("tool_calls", "function_call"):
            if message.get(key):
                raise UnsupportedParameter(f"messages[{i}].{key} is not supported: tool calling is not supported.",
                                           param=f"messages[{i}].{key}")
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind in _UNSUPPORTED_PARTS:
                raise UnsupportedParameter(f"messages[{i}].content[{j}] of type {kind!r}: {_UNSUPPORTED_PARTS[kind]}.",
                                           param=f"messages[{i}].content[{j}].type")


class _Lenient(BaseModel):
    """Unknown fields are ignored, as OpenAI ignores them."""

    model_config = ConfigDict(extra="ignore", strict=True)


_TEXT: TypeAdapter[str] = TypeAdapter(Text)


def _media_url(value: Any) -> MediaRef | str:
    if isinstance(value, MediaRef):
        return value
    if isinstance(value, str):
        return _TEXT.validate_python(value)
    raise ValueError("expected a URL string")


MediaUrl = Annotated[
    MediaRef | str,
    PlainValidator(_media_url),
    WithJsonSchema({"type": "string", "description":
                    "data:image/...;base64,... (or data:video/...) inline; http(s):// when the server allows the "
                    "host (FASTVLM_FETCH_URL_HOSTS); file:///path or a plain path under the media roots."}),
]
"""An ``image_url``/``video_url`` URL: a spooled inline data URL, or the URL text."""


class TextPart(_Lenient):
    type: Literal["text"]
    text: Text


class ImageURL(_Lenient):
    url: MediaUrl
    detail: Literal["auto", "low", "high"] | None = Field(
        None, description="Accepted and ignored: the model sees every image at its one input resolution.")


class ImagePart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL


class VideoURL(_Lenient):
    url: MediaUrl


class VideoPart(_Lenient):
    """vLLM's extension: the video is analysed (/summarize_video) and its timeline becomes context."""

    type: Literal["video_url"]
    video_url: VideoURL


UserPart = Annotated[TextPart | ImagePart | VideoPart, Field(discriminator="type")]


class SystemMessage(_Lenient):
    role: Literal["system", "developer"] = Field(description="developer is OpenAI's newer name for system.")
    content: Text | list[TextPart]


class UserMessage(_Lenient):
    role: Literal["user"]
    content: Text | list[UserPart]


class AssistantMessage(_Lenient):
    role: Literal["assistant"]
    content: Text | list[TextPart] | None = None


Message = Annotated[SystemMessage | UserMessage | AssistantMessage, Field(discriminator="role")]


class StreamOptions(_Lenient):
    include_usage: bool | None = Field(None, description="Send a last chunk with the usage before [DONE].")


class ChatCompletionRequest(_Lenient):
    """A chat completion request. Refused with 400 unsupported_parameter unless absent or neutral: n (1),
    tools, tool_choice ("none"), functions, function_call, logprobs (false), top_logprobs (0),
    response_format ({"type": "text"}), frequency_penalty and presence_penalty (0), logit_bias ({}),
    modalities (["text"]), audio, prediction. Other unknown fields are ignored."""

    model: Text | None = Field(None, description="The served model's id (GET /v1/models), or absent.")
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, description="Most tokens to generate; wins over "
                                              "max_tokens when both are given.")
    max_tokens: int | None = Field(None, ge=1, description="Older name of max_completion_tokens.")
    temperature: float | None = Field(None, ge=0, le=2, description="0 or absent: greedy (deterministic), "
                                      "unlike OpenAI's default of 1.")
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Same seed, input and settings: same output.")
    stop: Text | list[Text] | None = Field(None, description="Up to 8 strings; generation ends before the first.")
    stream: bool | None = Field(None, description="Answer chat.completion.chunk server-sent events, then "
                                "data: [DONE].")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="Accepted; never logged or stored.")
    top_k: int | None = Field(None, ge=0, description="Extension (as in vLLM): sample among the k most likely "
                              "tokens (0: all).")
    repetition_penalty: float | None = Field(None, gt=0, le=10, description="Extension (as in vLLM): above 1 "
                                             "discourages repeating tokens.")

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"


def parse_request(document: Any) -> ChatCompletionRequest:
    """Refuse what is unsupported (400), then validate the rest (422 naming each bad field)."""
    refuse_unsupported(document)
    if not isinstance(document, dict):
        raise InvalidRequest("The request body must be a JSON object.",
                             fields=[{"field": "body", "message": "expected a JSON object"}], param="body")
    try:
        return ChatCompletionRequest.model_validate(document)
    except ValidationError as exc:
        raise _invalid(document, exc) from None


def _document_path(document: Any, error: Mapping[str, Any]) -> JsonPath:
    """Where in the client's document an error is: pydantic's location without the union labels it adds
    (``user``, ``list[...]``, ``function-after[...]``), which match no key of the document."""
    loc = tuple(error.get("loc", ()))
    path: list[str | int] = []
    node = document
    for n, key in enumerate(loc):
        if isinstance(node, dict) and isinstance(key, str) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        elif error.get("type") == "missing" and n == len(loc) - 1 and isinstance(key, str):
            node = None
        else:
            continue
        path.append(key)
    return tuple(path)


def _invalid(document: Any, exc: ValidationError) -> InvalidRequest:
    """422 naming each bad parameter as OpenAI would (``messages[0].content[1].image_url.url``).

    An error about a value is dropped when another names something inside it: for ``content``
    given as a list, "should be a valid string" (the other form) says nothing useful.
    """
    found: dict[JsonPath, str] = {}
    for error in exc.errors(include_input=False):
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        found.setdefault(_document_path(document, error), message)
    deepest = [path for path in found if not any(len(other) > len(path) and other[:len(path)] == path
                                                    for other in found)]
    fields = [{"field": format_path(path), "message": found[path]} for path in deepest[:10]]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return InvalidRequest(f"Invalid request: {summary}", fields=fields, param=fields[0]["field"] if fields else None)


@dataclass(frozen=True)
class MediaPart:
    """One image or video a request names, and where: ``param`` as error messages name it."""

    message: int
    part: int
    kind: Literal["image", "video"]
    url: MediaRef | str

    @property
    def param(self) -> str:
        field = "image_url" if self.kind == "image" else "video_url"
        return f"messages[{self.message}].content[{self.part}].{field}.url"


def media_parts(request: ChatCompletionRequest) -> Iterator[MediaPart]:
    """Every image and video of the request, in message order."""
    for i, message in enumerate(request.messages):
        if not isinstance(message, UserMessage) or isinstance(message.content, str):
            continue
        for j, part in enumerate(message.content):
            if isinstance(part, ImagePart):
                yield MediaPart(i, j, "image", part.image_url.url)
            elif isinstance(part, VideoPart):
                yield MediaPart(i, j, "video", part.video_url.url)


def text_chars(request: ChatCompletionRequest) -> int:
    """Characters of text in all messages."""
    total = 0
    for message in request.messages:
        content = message.content
        if isinstance(content, str):
            total += len(content)
        elif content is not None:
            total += sum(len(part.text) for part in content if isinstance(part, TextPart))
    return total

