"""What the OpenAI API answers: completions, streamed chunks, usage and the model list.

Streaming follows what OpenAI itself sends, which the SDK's stream helpers expect: a first chunk
with ``delta.role`` (and empty content), one chunk per text delta, a last choice chunk with an empty
``delta`` and the ``finish_reason`` (text is streamed as it is generated, so the last text delta
cannot know it is the last one), then — with ``stream_options.include_usage`` — a chunk with no
choices and the ``usage`` (every earlier chunk then carries ``"usage": null``), then ``[DONE]``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = ["OWNED_BY", "ChatCompletion", "ChatCompletionChunk", "ChunkStream", "ModelCard", "ModelList",
           "UsageInfo", "completion", "completion_id", "model_card", "model_list"]

OWNED_BY = "fastvlm-engine"
"""``owned_by`` of every model this server lists."""

FinishReason = Literal["stop", "length"]


class UsageInfo(BaseModel):
    prompt_tokens: int = Field(description="Tokens of the templated prompt, image tokens included (as on "
                               "/predict_image).")
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: None = None


class Choice(BaseModel):
    index: int = 0
    message: ChatMessage
    finish_reason: FinishReason
    logprobs: None = None


class _Envelope(BaseModel):
    """What a completion and each of its chunks carry alike."""

    id: str
    created: int
    model: str
    system_fingerprint: None = None


class ChatCompletion(_Envelope):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: UsageInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: FinishReason | None = None
    logprobs: None = None


class ChatCompletionChunk(_Envelope):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="When this router started serving the model (Unix seconds).")
    owned_by: str = OWNED_BY


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return "chatcmpl-" + uuid.uuid4().hex


def _usage(prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


def completion(*, model: str, text: str, finish_reason: FinishReason, prompt_tokens: int,
               completion_tokens: int) -> dict[str, Any]:
    """A whole ``chat.completion`` document."""
    return ChatCompletion(id=completion_id(), created=int(time.time()), model=model,
                          choices=[Choice(message=ChatMessage(content=text), finish_reason=finish_reason)],
                          usage=_usage(prompt_tokens, completion_tokens)).model_dump()


class ChunkStream:
    """The chunks of one streamed completion: they share an id, a creation time and the model."""

    def __init__(self, model: str, *, include_usage: bool) -> None:
        self.id = completion_id()
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _chunk(self, choices: list[ChunkChoice], usage: UsageInfo | None = None) -> dict[str, Any]:
        document = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices,
                                       usage=usage).model_dump()
        for choice, model in zip(document["choices"], choices, strict=True):
            choice["delta"] = model.delta.model_dump(exclude_none=True)  # only what this delta carries
        if not self.include_usage:
            del document["usage"]
        return document

    def role(self) -> dict[str, Any]:
        """The first chunk: the assistant's role and empty content."""
        return self._chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])

    def text(self, delta: str) -> dict[str, Any]:
        return self._chunk([ChunkChoice(delta=Delta(content=delta))])

    def finish(self, reason: FinishReason) -> dict[str, Any]:
        """The choice's last chunk: an empty delta and why generation stopped."""
        return self._chunk([ChunkChoice(delta=Delta(), finish_reason=reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """The usage chunk (only with include_usage): no choices."""
        return self._chunk([], _usage(prompt_tokens, completion_tokens))


def model_card(name: str, created: int) -> dict[str, Any]:
    return ModelCard(id=name, created=created).model_dump()


def model_list(names: list[str], created: int) -> dict[str, Any]:
    return ModelList(data=[ModelCard(id=name, created=created) for name in names]).model_dump()
