"""The OpenAI-compatible API on the router: ``POST /v1/chat/completions``, ``GET /v1/models[/{id}]``.

A chat request goes the way a media request goes (router/media.py): shed at once when no slot
could be had, the whole body read and validated before a slot is taken, every image and video
resolved (router/chat_intake.py), then one canonical request to a worker, whose answer — a
``chat.completion`` or a ``chat.completion.chunk`` stream — is passed back unbuffered while the
slot stays taken. A request with a video takes a video slot (its video is analysed first). Errors
on these paths get OpenAI's shape at one boundary (web/openai_errors.py).

``model`` must name the served model (GET /v1/models) or be absent: any other name is 404
``model_not_found``, as OpenAI answers, so a client that meant another server notices at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ..cluster.endpoint import WorkerState
from ..config import CHAT_ENDPOINT, OPENAI_PREFIX, Settings
from ..errors import EngineError, InvalidRequest, ModelNotFound, ShuttingDown
from ..media.fetch import MediaFetcher
from ..media.fetch_policy import FetchPolicy
from ..openai_compat import ChatCompletionRequest, model_card, model_list, parse_request, text_chars
from ..openai_compat.errors import openai_error_body
from ..web.sse import SSE_DONE, sse_event
from ..web.upstream import WorkerUnreachable
from .admission import IMAGE, VIDEO
from .chat_intake import ChatMedia, read_chat_document, to_canonical
from .media import DRAIN_RETRY_AFTER_S, admit_and_forward, required_tags, shed_error
from .respond import respond
from .state import RouterState

__all__ = ["MODELS", "OpenAIState", "build_openai_state", "chat_completions", "get_model", "list_models",
           "served_models"]

MODELS = OPENAI_PREFIX + "models"


@dataclass(frozen=True)
class OpenAIState:
    """What the OpenAI routes keep for the router's lifetime."""

    fetcher: MediaFetcher
    created: int
    """Unix seconds when this router started: the listed models' ``created``."""


def build_openai_state(settings: Settings) -> OpenAIState:
    return OpenAIState(fetcher=MediaFetcher(FetchPolicy.from_settings(settings)), created=int(time.time()))


async def served_models(state: RouterState) -> list[str]:
    """The model names the workers report in their heartbeats, ready workers first, each once; in the
    moment between a worker's readiness and its first heartbeat, the name its /readyz gives."""
    names: list[str] = []
    for worker in sorted(state.endpoints.all(), key=lambda w: w.state is not WorkerState.READY):
        model = worker.health.get("model")
        name = model.get("name") if isinstance(model, dict) else None
        if isinstance(name, str) and name and name not in names:
            names.append(name)
    if names:
        return names
    for worker in state.endpoints.ready():
        try:
            answer = await state.upstream.request("GET", worker.url + "/readyz", timeout_s=2.0,
                                                  headers=worker.auth_headers("GET", "/readyz"))
            name = json.loads(answer.body).get("model") if answer.status == 200 else None
        except (EngineError, WorkerUnreachable, ValueError, AttributeError):
            continue
        if isinstance(name, str) and name:
            return [name]
    return []


def _check(chat: ChatCompletionRequest, settings: Settings, names: list[str]) -> None:
    """What the router can refuse before any media is fetched or a slot is taken."""
    if chat.model and names and chat.model not in names:
        raise ModelNotFound(f"The model {chat.model[:100]!r} does not exist on this server; it serves "
                            f"{', '.join(names)}.", param="model")
    limit = chat.token_limit
    if limit is not None and limit > settings.max_new_tokens_limit:
        raise InvalidRequest(f"{chat.token_limit_param}: at most {settings.max_new_tokens_limit} on this server.",
                             param=chat.token_limit_param)
    if text_chars(chat) > settings.chat_max_text_chars:
        raise InvalidRequest(f"messages: at most {settings.chat_max_text_chars} characters of text in all messages "
                             "(FASTVLM_CHAT_MAX_TEXT_CHARS).", param="messages")


async def chat_completions(request: Request) -> Response:
    """Chat completion with images and videos (OpenAI Chat Completions; server-sent chunks with stream)."""
    state: RouterState = request.app.state.router
    api: OpenAIState = request.app.state.openai
    if state.draining:
        raise ShuttingDown(retry_after_sec=DRAIN_RETRY_AFTER_S)
    settings = state.settings
    image_tags = required_tags(request, settings, IMAGE)
    if not state.admission.available(IMAGE, image_tags):  # shed before reading a byte of the body
        raise shed_error(state, request, IMAGE, image_tags, label=CHAT_ENDPOINT)
    document = await read_chat_document(request, settings)
    with ChatMedia(document) as media:
        chat = parse_request(document)
        _check(chat, settings, await served_models(state))
        await media.resolve(chat, settings, api.fetcher)
        canonical = to_canonical(chat, media.parts)
        endpoint = VIDEO if any(part.type == "video" for part in canonical.media()) else IMAGE
        upstream, lease = await admit_and_forward(state, request, endpoint, media.payload(canonical),
                                                  tags=required_tags(request, settings, endpoint), path=CHAT_ENDPOINT)
    return await respond(state, lease, upstream, stream_failure=_stream_failure)


def _stream_failure(error: EngineError) -> bytes:
    """A stream's failure as OpenAI streams say it: an error object, then the end."""
    return sse_event(openai_error_body(error.to_body(), error.status)) + SSE_DONE


async def list_models(request: Request) -> dict:
    """The served model, in OpenAI's model list."""
    state: RouterState = request.app.state.router
    return model_list(await served_models(state), request.app.state.openai.created)


async def get_model(request: Request, model_id: str) -> dict:
    """One served model (404 model_not_found for any other id)."""
    state: RouterState = request.app.state.router
    if model_id not in await served_models(state):
        raise ModelNotFound(f"The model {model_id[:100]!r} does not exist on this server.", param="model")
    return model_card(model_id, request.app.state.openai.created)
