"""A conversation as the chat template takes it: system, user and assistant turns, images in user turns.

Every text is cleaned like a /predict_image prompt (reserved tokens such as ``<image>`` and ChatML
markers removed, repeatedly, and control characters), so no turn can add an image slot or forge
a turn of its own. A user turn lists its images first and then its texts, the way FastVLM was
trained (and the way :meth:`FastVLM.prepare` builds its one turn), so a one-turn chat templates to
exactly the prompt /predict_image would build; system and assistant turns are plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ChatTurn", "template_messages"]

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatTurn:
    """One message: its texts in order, and how many images it shows (user turns only)."""

    role: Role
    texts: tuple[str, ...] = ()
    images: int = 0

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"role must be system, user or assistant, not {self.role!r}")
        if self.images < 0 or (self.images and self.role != "user"):
            raise ValueError("only user turns show images")


def template_messages(turns: Sequence[ChatTurn], clean: Callable[[str], str]) -> list[dict[str, Any]]:
    """The messages for ``apply_chat_template``, every text passed through ``clean``; texts that are
    empty once cleaned are dropped."""
    messages: list[dict[str, Any]] = []
    for turn in turns:
        texts = [text for text in map(clean, turn.texts) if text]
        if turn.role == "user":
            content: Any = [{"type": "image"} for _ in range(turn.images)]
            content += [{"type": "text", "text": text} for text in texts]
        else:
            content = "\n".join(texts)
        messages.append({"role": turn.role, "content": content})
    return messages
