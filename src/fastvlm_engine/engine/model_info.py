"""What model a worker serves, in words a client can use: its name, format, dtype and source.

Responses name the model (``FastVLM-0.5B``), not the folder it happens to sit in, so the name is
derived from what the user pointed at: a hub id, an Apple release folder
(``llava-fastvithd_0.5b_stage3``), or failing those the language model's size.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["ModelFormat", "ModelInfo", "derive_model_name", "source_label"]

ModelFormat = Literal["native", "apple-converted", "tiny-random"]

_HUB_NAME = re.compile(r"fastvlm-(\d+(?:\.\d+)?)b", re.IGNORECASE)
_APPLE_RELEASE = re.compile(r"fastvithd_(\d+(?:\.\d+)?)b(?:_(stage\d+))?", re.IGNORECASE)
# Qwen2 hidden sizes of the three FastVLM language models.
_SIZE_BY_HIDDEN = {896: "0.5B", 1536: "1.5B", 3584: "7B"}


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a checkpoint; ``dtype`` is the stored one until loaded, then the one it runs in."""

    name: str
    format: ModelFormat
    dtype: str
    source: str
    source_hash: str | None = None
    image_aspect_ratio: str | None = None

    def with_dtype(self, dtype: str) -> ModelInfo:
        return dataclasses.replace(self, dtype=dtype)

    def public(self) -> dict[str, Any]:
        """The fields health endpoints show; a local source is named by its folder, never its full path."""
        return {"name": self.name, "format": self.format, "dtype": self.dtype,
                "source": source_label(self.source), "source_hash": self.source_hash}


def source_label(source: str) -> str:
    """A hub id as it is; a local folder by its last component."""
    if os.path.isabs(source) or os.path.exists(source):
        return os.path.basename(os.path.normpath(source)) or source
    return source


def derive_model_name(source: str, hidden_size: int | None = None) -> str:
    """``FastVLM-0.5B`` from a hub id, an HF cache path or an Apple release folder; else by LLM size."""
    text = str(source).replace("--", "/")
    release = _APPLE_RELEASE.search(text)
    if release:
        stage = f"-{release.group(2).lower()}" if release.group(2) else ""
        return f"FastVLM-{release.group(1)}B{stage}"
    hub = _HUB_NAME.search(text)
    if hub:
        return f"FastVLM-{hub.group(1)}B"
    if hidden_size in _SIZE_BY_HIDDEN:
        return f"FastVLM-{_SIZE_BY_HIDDEN[hidden_size]}"
    return source_label(str(source))
