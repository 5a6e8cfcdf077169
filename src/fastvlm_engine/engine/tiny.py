"""Build a randomly initialised FastVLM that loads exactly like a real checkpoint.

The tiny model (own byte-level BPE tokenizer, ChatML template, native ``fast_vlm`` config,
``LlavaProcessor`` + ``CLIPImageProcessor``) exercises the production loader, batching and
decoding offline; its text is meaningless. ``shape="0.5b"`` keeps FastVLM-0.5B's real
dimensions (vision tower fastvit_mci3 + Qwen2-0.5B) for performance work on a GPU.

Default initialisation makes the random vision tower collapse to ~1e-22 for every image, so
weights are re-initialised (kaiming for the tower, a wide normal for the LLM) under a fixed seed:
different images then give different, deterministic outputs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from .build_once import build_once

__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "TINY_MODEL_NAME", "build_tiny_model", "ensure_tiny_model"]

TINY_MODEL_NAME = "fastvlm-tiny-random"
IMAGE_TOKEN = "<image>"
_IM_START, _IM_END, _EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# ChatML as in the FastVLM conversion script: a default system turn, images first in a user
# turn (each as <image>), then each text part prefixed by a newline.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "a the red blue green small large dog cat person street car tree sky water house room table "
    "light dark man woman child bird food plate cup phone screen sign road field beach mountain "
    "city night day window door wall floor shirt hat bag ball game video frame scene shows is are "
    "with on in of and near under above next to holding walking sitting standing running smiling"
).split()


def _corpus(n: int = 600, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
    lines.append("0123456789 .,:;!?'\"-()[]{}<>/\\@#$%^&*_+=|~`")
    return lines


def _build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[_EOT], show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    # Qwen2Tokenizer wants merges as tuples; the serialised BPE may store them either way.
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges, eos_token=_IM_END, pad_token=_EOT, unk_token=None)
    tok.add_special_tokens({"additional_special_tokens": [_IM_START, _IM_END]})
    tok.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def _configs(shape: str, tok, image_size: int) -> dict:
    if shape == "tiny":
        vision = {"hidden_size": 256, "model_args": {"inference_mode": True, "layers": [1, 1, 1, 1, 1],
                                                      "embed_dims": [8, 16, 32, 64, 128]}}
        text = {"vocab_size": -(-len(tok) // 64) * 64, "hidden_size": 64, "intermediate_size": 128,
                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 4096}
    else:  # FastVLM-0.5B: real fastvit_mci3 tower + Qwen2-0.5B language model
        vision = {"hidden_size": 3072, "model_args": {"inference_mode": True}}
        text = {"vocab_size": 152000, "hidden_size": 896, "intermediate_size": 4864,
                "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0}
    vision = {"model_type": "timm_wrapper", "architecture": "fastvit_mci3", "do_pooling": True,
              "global_pool": "avg", "num_labels": 0, **vision}
    text = {"model_type": "qwen2", "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
            "eos_token_id": tok.convert_tokens_to_ids(_IM_END),
            "pad_token_id": tok.convert_tokens_to_ids(_EOT), **text}
    return {"vision_config": vision, "text_config": text,
            "image_token_id": tok.convert_tokens_to_ids(IMAGE_TOKEN),
            "image_seq_length": (image_size // 64) ** 2,
            "vision_feature_select_strategy": "full", "vision_feature_layer": -1,
            "projector_hidden_act": "gelu", "multimodal_projector_bias": True}


def _reinitialise(model, seed: int, llm_std: float) -> None:
    """Make random features image-dependent and greedy text varied (see module docstring)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
                continue
            if "vision_tower" in name:
                fan_in = weight[0].numel()
                weight.copy_(torch.randn(weight.shape, generator=generator) / fan_in ** 0.5)
            else:
                weight.copy_(torch.randn(weight.shape, generator=generator) * llm_std)
        for name, param in model.named_parameters():
            if "vision_tower" in name and "layer_scale" in name:
                param.fill_(0.1)


def build_tiny_model(out_dir: str | Path, *, image_size: int = 256,
                     shape: Literal["tiny", "0.5b"] = "tiny", seed: int = 0,
                     dtype: str = "float32") -> Path:
    """Write a loadable random FastVLM into ``out_dir`` and return the folder."""
    if image_size % 64 or not 64 <= image_size <= 2048:
        raise ValueError("image_size must be a multiple of 64 between 64 and 2048")
    if shape not in ("tiny", "0.5b"):
        raise ValueError("shape must be 'tiny' or '0.5b'")
    import torch
    from transformers import (
        CLIPImageProcessor,
        FastVlmConfig,
        FastVlmForConditionalGeneration,
        GenerationConfig,
        LlavaProcessor,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer()
    config = FastVlmConfig(**_configs(shape, tok, image_size))
    torch.manual_seed(seed)
    model = FastVlmForConditionalGeneration(config)
    _reinitialise(model, seed, llm_std=0.3 if shape == "tiny" else 0.02)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.convert_tokens_to_ids(_IM_END), tok.convert_tokens_to_ids(_EOT)],
        pad_token_id=tok.convert_tokens_to_ids(_EOT), do_sample=False)
    model.to(getattr(torch, dtype)).save_pretrained(out)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
            image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], do_center_crop=True),
        tokenizer=tok, patch_size=64, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    (out / "FASTVLM_TINY_MODEL.txt").write_text(
        f"{TINY_MODEL_NAME}: randomly initialised (shape={shape}, image_size={image_size}, seed={seed}).\n"
        "Its text is meaningless. Point FASTVLM_MODEL at real FastVLM weights for real captions.\n")
    return out


def ensure_tiny_model(out_dir: str | Path, *, image_size: int = 256) -> Path:
    """Build the tiny model into ``out_dir`` once; safe when several processes race for it."""
    return build_once(out_dir, "FASTVLM_TINY_MODEL.txt",
                      lambda staging: build_tiny_model(staging, image_size=image_size))
