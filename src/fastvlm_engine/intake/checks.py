"""Limits a request's options must respect on this server, checked without the model.

The router checks them before it queues a job, so a bad request gets its 4xx at once in queue
mode as in sync mode; the worker checks them again (it is the last word, also for the CLI).
Anything that needs the tokenizer (reserved tokens in a prompt) stays with the worker.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from ..errors import InvalidRequest

__all__ = ["check_options", "token_budget"]


def token_budget(requested: int | None, settings: Settings) -> int:
    """The generation length a request gets: its own (up to the server's limit) or the default."""
    if requested is None:
        return settings.max_new_tokens
    if requested > settings.max_new_tokens_limit:
        raise InvalidRequest(f"max_new_tokens: at most {settings.max_new_tokens_limit} on this server.",
                             field="max_new_tokens")
    return requested


def check_options(kind: str, options: Any, settings: Settings) -> None:
    """Raise InvalidRequest naming the field when an option is past this server's limits."""
    if kind != "image":
        return
    token_budget(options.max_new_tokens, settings)
    if options.prompt is not None and len(options.prompt) > settings.max_prompt_chars:
        raise InvalidRequest(f"prompt: at most {settings.max_prompt_chars} characters.", field="prompt")
