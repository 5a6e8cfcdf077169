"""The OpenAI Chat Completions protocol, with no framework code: request models and what is
supported, the canonical router → worker form, response and chunk builders, error translation.

Like LitServe's ``specs/openai.py`` this keeps the wire format out of the model code; the HTTP
routes live in ``router.openai_routes`` and ``worker.chat``. Named ``openai_compat`` so that it is
never confused with the ``openai`` SDK package the tests drive it with.
"""

from .canonical import REQUEST_PART, CanonicalChat, CanonicalMessage, CanonicalPart, file_field, file_fields
from .errors import error_type, openai_error_body
from .request import ChatCompletionRequest, MediaPart, media_parts, parse_request, text_chars
from .responses import ChunkStream, completion, model_card, model_list

__all__ = [
    "REQUEST_PART",
    "CanonicalChat",
    "CanonicalMessage",
    "CanonicalPart",
    "ChatCompletionRequest",
    "ChunkStream",
    "MediaPart",
    "completion",
    "error_type",
    "file_field",
    "file_fields",
    "media_parts",
    "model_card",
    "model_list",
    "openai_error_body",
    "parse_request",
    "text_chars",
]
