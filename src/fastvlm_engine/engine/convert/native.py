"""The native ``fast_vlm`` side of a conversion: config, tokenizer, processor, generation settings.

The text config is the checkpoint's own Qwen2 fields (never a stock Qwen2 download), the vision
config is timm ``fastvit_mci3`` with the widths read from the weights, and the tokenizer is the
checkpoint's tokenizer with ``<image>`` added, as in the native checkpoints. The embedding
matrix grows to hold the new token and is padded to a multiple of 64, as they do
(FastVLM-0.5B/1.5B: 151936 -> 152000 rows, 7B: 152064 -> 152128).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..native_format import CHAT_TEMPLATE, IMAGE_TOKEN, image_seq_length
from .apple_config import AppleSpec
from .errors import ConversionError
from .vision_layout import VisionLayout

__all__ = ["VOCAB_MULTIPLE", "expected_shapes", "generation_config", "load_tokenizer", "native_config",
           "padded_vocab_size"]

VOCAB_MULTIPLE = 64


def padded_vocab_size(rows: int, image_token_id: int) -> int:
    """Rows after adding ``<image>``: one more than the larger of the old rows and the new id, padded."""
    needed = max(rows, image_token_id) + 1
    return -(-needed // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def load_tokenizer(folder: Path, max_length: int | None):
    """The checkpoint's Qwen2 tokenizer with ``<image>`` (special, not normalised) and ChatML."""
    from transformers import AddedToken, Qwen2Tokenizer

    try:
        tokenizer = Qwen2Tokenizer.from_pretrained(str(folder))
    except Exception as exc:  # missing or corrupt vocab/merges/tokenizer.json: each raises its own type
        raise ConversionError(f"cannot load the Qwen2 tokenizer files: {type(exc).__name__}: {exc}") from None
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tokenizer.chat_template = CHAT_TEMPLATE
    if max_length:
        tokenizer.model_max_length = max_length  # Apple truncates prompts to tokenizer_model_max_length
    return tokenizer


def native_config(spec: AppleSpec, layout: VisionLayout, *, image_token_id: int, vocab_size: int,
                  tie_word_embeddings: bool, dtype: str):
    """The ``FastVlmConfig`` of the converted checkpoint."""
    from transformers import FastVlmConfig, Qwen2Config

    fields = {**spec.text_fields, "vocab_size": vocab_size, "tie_word_embeddings": tie_word_embeddings}
    try:
        text = Qwen2Config(**fields).to_dict()
    except (TypeError, ValueError) as exc:  # strict dataclass validation of a field's type or value
        raise ConversionError(f"the checkpoint's Qwen2 fields are not a valid Qwen2 config: {exc}") from None
    vision = {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "do_pooling": True,
              "global_pool": "avg", "num_labels": 0, "hidden_size": layout.hidden_size,
              "model_args": layout.model_args()}
    config = FastVlmConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                           image_seq_length=image_seq_length(spec.image_size),
                           vision_feature_select_strategy="full", vision_feature_layer=-1,
                           projector_hidden_act="gelu", multimodal_projector_bias=True,
                           tie_word_embeddings=tie_word_embeddings)
    config.dtype = dtype
    return config


def expected_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor the native model loads, with its shape (built on the meta device: no memory)."""
    import torch
    from transformers import FastVlmForConditionalGeneration

    with torch.device("meta"):
        model = FastVlmForConditionalGeneration(config)
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    if model.lm_head.weight is model.get_input_embeddings().weight:
        shapes.pop("lm_head.weight", None)  # tied: saved once, as the embeddings
    return shapes


def generation_config(folder: Path, tokenizer, text_eos: Any):
    """Apple's generation settings, with every end-of-turn token the chat template can produce."""
    from transformers import GenerationConfig

    try:
        generation = GenerationConfig.from_pretrained(str(folder)) if (folder / "generation_config.json").is_file() \
            else GenerationConfig()
    except (OSError, ValueError) as exc:
        raise ConversionError(f"generation_config.json is not valid: {exc}") from None
    eos: list[int] = []
    for value in (generation.eos_token_id, text_eos, tokenizer.convert_tokens_to_ids("<|im_end|>"),
                  tokenizer.convert_tokens_to_ids("<|endoftext|>")):
        for token in value if isinstance(value, list) else [value]:
            if isinstance(token, int) and token >= 0 and token not in eos and token != tokenizer.unk_token_id:
                eos.append(token)
    generation.eos_token_id = eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else generation.pad_token_id
    generation.pad_token_id = pad if pad is not None else (eos[-1] if eos else None)
    return generation
