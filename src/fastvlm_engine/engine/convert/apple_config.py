"""Read and check the ``config.json`` of an Apple FastVLM release (``llava_qwen2``).

Apple's config is a Qwen2 config with LLaVA's ``mm_*`` fields added (``LlavaConfig(Qwen2Config)``
in ml-fastvlm's ``llava_qwen.py``). Only the variant FastVLM ships converts to the native
classes: a MobileCLIP (FastViTHD) tower, the ``mlp2x_gelu`` projector, flat patch merging, no
image start/end tokens. Anything else is refused with the reason, before a byte is written.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..native_format import PATCH_SIZE
from .errors import ConversionError

__all__ = ["APPLE_ARCHITECTURE", "APPLE_MODEL_TYPE", "AppleSpec", "is_apple_config", "read_apple_spec"]

APPLE_MODEL_TYPE = "llava_qwen2"
APPLE_ARCHITECTURE = "LlavaQwen2ForCausalLM"

# Qwen2Config fields that describe the checkpoint itself, not this run of transformers.
_NOT_TEXT_FIELDS = frozenset({"transformers_version", "architectures", "output_hidden_states", "return_dict",
                              "dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id",
                              "problem_type", "vocab_size"})
# Older spellings transformers still maps (rope_theta -> rope_parameters).
_LEGACY_TEXT_FIELDS = frozenset({"rope_theta", "rope_scaling"})


@dataclass(frozen=True)
class AppleSpec:
    """What the conversion needs from Apple's config, checked."""

    config: dict[str, Any]
    text_fields: dict[str, Any]
    vocab_size: int
    image_size: int
    mm_hidden_size: int
    image_aspect_ratio: str | None
    tokenizer_max_length: int | None
    dtype: str | None


def is_apple_config(config: dict[str, Any]) -> bool:
    """True for the config of Apple's own FastVLM release format."""
    return config.get("model_type") == APPLE_MODEL_TYPE or APPLE_ARCHITECTURE in (config.get("architectures") or [])


def _qwen2_field_names() -> frozenset[str]:
    from transformers import Qwen2Config

    return frozenset(field.name for field in dataclasses.fields(Qwen2Config)) - _NOT_TEXT_FIELDS


def read_apple_spec(folder: str | Path) -> AppleSpec:
    """Parse ``folder/config.json`` and refuse variants the native classes cannot express."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read config.json: {exc}") from None
    if not isinstance(config, dict) or not is_apple_config(config):
        raise ConversionError(f"config.json is not an Apple FastVLM config (model_type {APPLE_MODEL_TYPE!r})")

    problems: list[str] = []
    tower = str(config.get("mm_vision_tower") or "")
    image_size = 0
    if "mobileclip" not in tower.lower():
        problems.append(f"mm_vision_tower {tower!r}: only MobileCLIP (FastViTHD) towers convert")
    else:
        suffix = tower.rsplit("_", 1)[-1]  # Apple reads the input size from the name: mobileclip_l_1024
        image_size = int(suffix) if suffix.isdigit() else 0
        if not image_size or image_size % PATCH_SIZE:
            problems.append(f"mm_vision_tower {tower!r}: the name must end in an image size divisible by "
                            f"{PATCH_SIZE}, e.g. mobileclip_l_1024")
    if config.get("mm_projector_type") != "mlp2x_gelu":
        problems.append(f"mm_projector_type {config.get('mm_projector_type')!r}: only 'mlp2x_gelu' matches the "
                        "native projector (linear, GELU, linear)")
    if config.get("mm_patch_merge_type", "flat") not in (None, "flat"):
        problems.append(f"mm_patch_merge_type {config.get('mm_patch_merge_type')!r}: only 'flat' is supported")
    aspect = config.get("image_aspect_ratio")
    if aspect not in (None, "pad", "square"):
        problems.append(f"image_aspect_ratio {aspect!r}: only 'pad' or 'square' preprocessing converts")
    if config.get("mm_use_im_start_end"):
        problems.append("mm_use_im_start_end: image start/end tokens are not part of the native format")
    mm_hidden = config.get("mm_hidden_size")
    if not isinstance(mm_hidden, int) or mm_hidden <= 0:
        problems.append(f"mm_hidden_size {mm_hidden!r}: expected a positive integer")
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int) or vocab <= 0:
        problems.append(f"vocab_size {vocab!r}: expected a positive integer")
    if problems:
        raise ConversionError("this Apple checkpoint uses options the native fast_vlm format cannot express",
                              {"unsupported config": problems})

    names = _qwen2_field_names() | _LEGACY_TEXT_FIELDS
    text_fields = {key: value for key, value in config.items() if key in names}
    max_length = config.get("tokenizer_model_max_length")
    return AppleSpec(config=config, text_fields=text_fields, vocab_size=int(vocab), image_size=image_size,
                     mm_hidden_size=int(mm_hidden), image_aspect_ratio=aspect,
                     tokenizer_max_length=int(max_length) if isinstance(max_length, int) else None,
                     dtype=config.get("torch_dtype") or config.get("dtype"))
