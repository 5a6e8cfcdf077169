"""Build a randomly initialised Whisper that loads exactly like a real checkpoint.

Like the tiny FastVLM (:mod:`.tiny`), this exercises the production speech path offline: its
own small byte-level BPE tokenizer with Whisper's special tokens (start of transcript, a few
languages, tasks, ``<|notimestamps|>`` and the 1501 timestamp tokens ``<|0.00|>``..``<|30.00|>``
in Whisper's order), a native ``WhisperConfig``, a ``WhisperProcessor`` (80-bin log-mel
feature extractor + tokenizer) and a ``GenerationConfig`` carrying the language/task/timestamp
ids Whisper's ``generate`` needs, all written with ``save_pretrained``. Its transcripts are
meaningless.

``shape="base"`` and ``shape="small"`` keep whisper-base / whisper-small dimensions and the real
vocabulary size (filler tokens pad the small BPE vocabulary so the special and timestamp ids land
where Whisper has them), for measuring compute cost; their text is meaningless too.

The tiny tokenizer's alphabet is only the corpus's letters, space and punctuation (no raw byte
tokens), so random output decodes to printable text. Weights are re-initialised under a fixed
seed with wide distributions so that different audio gives different, deterministic output.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from .build_once import build_once

__all__ = ["TINY_ASR_LANGUAGES", "TINY_ASR_MARKER", "TINY_ASR_NAME", "build_tiny_whisper", "ensure_tiny_whisper"]

TINY_ASR_NAME = "whisper-tiny-random"
TINY_ASR_MARKER = "FASTVLM_TINY_ASR.txt"
TINY_ASR_LANGUAGES = ("en", "de", "fr", "es", "it", "ja", "zh")
"""Languages the tiny model knows (the real model knows 99, in this order after English)."""
_SPECIALS_BEFORE_LANGUAGES = ("<|endoftext|>", "<|startoftranscript|>")
_SPECIALS_AFTER_LANGUAGES = ("<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                             "<|nospeech|>", "<|notimestamps|>")
_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> every 20 ms
_REAL_TEXT_VOCAB = 50257  # ids below <|endoftext|> in the real multilingual Whisper

_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128},
    "base": {"d_model": 512, "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8,
             "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048},
    "small": {"d_model": 768, "encoder_layers": 12, "decoder_layers": 12, "encoder_attention_heads": 12,
              "decoder_attention_heads": 12, "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072},
}

_WORDS = ("so today we are going to make the best video ever okay look at this wait for it "
          "hey guys welcome back to my channel this is really good you have to try it music "
          "dance food cat dog beach city night morning coffee please like and follow see you soon").split()


def _corpus(n: int = 500, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))).capitalize()
            + rng.choice([".", "!", "?", ",", "'s"]) for _ in range(n)]


def _build_tokenizer(real_vocab: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, WhisperTokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, special_tokens=[])
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = WhisperTokenizer(vocab=bpe.get_vocab(), merges=merges, unk_token="<|endoftext|>",
                           bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if real_vocab:  # fillers so that the special and timestamp ids match the real model's
        fillers = [AddedToken(f"<|filler{i}|>", special=True, normalized=False)
                   for i in range(_REAL_TEXT_VOCAB - len(tok))]
        tok.add_tokens(fillers, special_tokens=True)
    specials = [*_SPECIALS_BEFORE_LANGUAGES, *(f"<|{code}|>" for code in TINY_ASR_LANGUAGES),
                *_SPECIALS_AFTER_LANGUAGES]
    tok.add_tokens([AddedToken(s, special=True, normalized=False) for s in specials], special_tokens=True)
    tok.add_tokens([AddedToken(f"<|{i * 0.02:.2f}|>", special=False, normalized=False) for i in range(_TIMESTAMPS)])
    return tok


def _reinitialise(model, seed: int) -> None:
    """Wide random weights so the random model's output depends on its audio (see module docstring)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() < 2 or "embed_positions" in name:
                continue
            fan_in = param[0].numel()
            # The decoder must listen to the audio: strong cross-attention, weak token embeddings.
            scale = 4.0 if "encoder_attn" in name else 0.5 if "embed_tokens" in name else 1.0
            param.copy_(torch.randn(param.shape, generator=generator) * scale / fan_in ** 0.5)


def build_tiny_whisper(out_dir: str | Path, *, shape: Literal["tiny", "base", "small"] = "tiny",
                       seed: int = 0, dtype: str = "float32") -> Path:
    """Write a loadable random Whisper into ``out_dir`` and return the folder."""
    if shape not in _SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_SHAPES)}")
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _build_tokenizer(real_vocab=shape != "tiny")
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=448, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, suppress_tokens=None, begin_suppress_tokens=None,
                           **_SHAPES[shape])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    if shape == "tiny":
        _reinitialise(model, seed)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        is_multilingual=True, lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in TINY_ASR_LANGUAGES},
        task_to_id={"translate": ids("<|translate|>"), "transcribe": ids("<|transcribe|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50, max_length=448, begin_suppress_tokens=[eot], suppress_tokens=[])
    model.to(getattr(torch, dtype)).save_pretrained(out)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tok).save_pretrained(out)
    (out / TINY_ASR_MARKER).write_text(
        f"{TINY_ASR_NAME}: randomly initialised (shape={shape}, seed={seed}). Its transcripts are meaningless.\n"
        "Point FASTVLM_ASR_MODEL at real Whisper weights (e.g. openai/whisper-small) for real speech.\n")
    return out


def ensure_tiny_whisper(out_dir: str | Path) -> Path:
    """Build the tiny Whisper into ``out_dir`` once; safe when several processes race for it."""
    return build_once(out_dir, marker=TINY_ASR_MARKER, build=build_tiny_whisper)
