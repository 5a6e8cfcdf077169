"""Convert an Apple FastVLM release folder into a native ``fast_vlm`` folder, fully offline.

Everything is checked before anything is written: every Apple tensor must have a native home
with the right shape and every native tensor a source, else :class:`ConversionError` lists the
offending keys. Output goes to a staging folder that becomes the destination by one rename, so
a failed or interrupted conversion never leaves a half-converted model where a loader looks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..build_once import publish
from ..model_info import derive_model_name
from ..native_format import IMAGE_TOKEN, build_processor
from .apple_config import AppleSpec, read_apple_spec
from .errors import ConversionError
from .keymap import KeyMapping, map_keys
from .native import expected_shapes, generation_config, load_tokenizer, native_config, padded_vocab_size
from .tensors import TensorSource, open_weights
from .vision_layout import VisionLayout, infer_vision_layout
from .writer import write_safetensors

__all__ = ["APPLE_LICENCE_NOTICE", "CONVERSION_MARKER", "CONVERTER_VERSION", "ConversionPlan", "ConversionResult",
           "convert_apple_checkpoint", "plan_conversion", "write_converted"]

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1
"""Bumped whenever the output changes, so cached conversions made by older code are redone."""

CONVERSION_MARKER = "FASTVLM_CONVERSION.json"

APPLE_LICENCE_NOTICE = (
    "Apple's FastVLM weights are licensed under the Apple Machine Learning Research Model License "
    "(apple-amlr): research use only, no commercial use. The converted copy is a Model Derivative under "
    "the same terms. Read LICENSE_MODEL (github.com/apple/ml-fastvlm) before serving it.")

_EMBED = "model.language_model.embed_tokens.weight"
_LM_HEAD = "lm_head.weight"
_LICENCE_FILES = ("LICENSE", "LICENSE_MODEL", "LICENSE.txt", "LICENSE.md")


@dataclass(frozen=True)
class ConversionResult:
    """What a conversion wrote (also stored as ``FASTVLM_CONVERSION.json`` in the folder)."""

    name: str
    format: str
    source: str
    source_hash: str | None
    dtype: str
    image_size: int
    image_aspect_ratio: str | None
    vocab_rows: tuple[int, int]
    tensors: int
    files: list[str]
    dropped: list[str] = field(default_factory=list)
    converter_version: int = CONVERTER_VERSION
    licence: str = "apple-amlr"
    modifications: tuple[str, ...] = (
        "weights renamed from Apple's llava_qwen2 layout to transformers' fast_vlm layout",
        "'<image>' token added to the tokenizer; embeddings grown by mean-initialised rows, padded to 64",
        "CLIP image-text projection head (unused by the VLM) removed")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class ConversionPlan:
    """A checked conversion: native name -> Apple name (None for a synthesised buffer), configs, sizes."""

    spec: AppleSpec
    weights: TensorSource
    mapping: KeyMapping
    sources: dict[str, str | None]
    shapes: dict[str, tuple[int, ...]]
    config: Any
    tokenizer: Any
    layout: VisionLayout
    old_rows: int
    new_rows: int


def _resized(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Grow a vocabulary matrix to ``rows``; new rows are the mean of the old (deterministic)."""
    if tensor.shape[0] == rows:
        return tensor
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


def _tie_state(weights: TensorSource, reverse: dict[str, str], tie: bool) -> tuple[bool, list[str]]:
    """Honour tie_word_embeddings unless the stored lm_head differs from the embeddings."""
    if not tie or _LM_HEAD not in reverse or _EMBED not in reverse:
        return tie, []
    if torch.equal(weights.get(reverse[_LM_HEAD]), weights.get(reverse[_EMBED])):
        return True, [f"{reverse[_LM_HEAD]} (tied to the embeddings)"]
    log.warning("tie_word_embeddings is set but the checkpoint's lm_head differs from its embeddings; "
                "keeping both (untied), as stored")
    return False, []


def plan_conversion(src: Path, weights: TensorSource | None = None) -> ConversionPlan:
    """Check everything and decide every tensor's fate; writes nothing.

    ``weights`` defaults to the folder's own files; anything with TensorSource's ``keys``,
    ``shape``, ``dtype`` and ``get`` will do (tests check real-size layouts on the meta device).
    """
    spec = read_apple_spec(src)
    weights = weights if weights is not None else open_weights(src)
    mapping = map_keys(weights.keys())
    reverse = {native: apple for apple, native in mapping.renamed.items()}
    layout = infer_vision_layout(reverse, lambda native: weights.shape(reverse[native]))
    if layout.hidden_size != spec.mm_hidden_size:
        raise ConversionError(f"mm_hidden_size is {spec.mm_hidden_size} but the vision tower's weights give "
                              f"{layout.hidden_size} channels")
    if _EMBED not in reverse:
        raise ConversionError("the checkpoint has no token embeddings", {"missing keys": ["model.embed_tokens.weight"]})
    old_rows = weights.shape(reverse[_EMBED])[0]
    if old_rows != spec.vocab_size:
        raise ConversionError(f"vocab_size is {spec.vocab_size} but model.embed_tokens.weight has {old_rows} rows")
    tokenizer = load_tokenizer(src, spec.tokenizer_max_length)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    new_rows = padded_vocab_size(old_rows, image_token_id)
    tie, tied_away = _tie_state(weights, reverse, bool(spec.text_fields.get("tie_word_embeddings", False)))
    mapping.dropped.extend(tied_away)
    dtype = spec.dtype if isinstance(spec.dtype, str) else _dtype_name(weights.floating_dtype())
    config = native_config(spec, layout, image_token_id=image_token_id, vocab_size=new_rows,
                           tie_word_embeddings=tie, dtype=dtype)
    shapes = expected_shapes(config)

    sources: dict[str, str | None] = {}
    missing, mismatched = [], []
    for native, shape in shapes.items():
        apple = reverse.get(native)
        if apple is None:
            if native.endswith(".num_batches_tracked"):  # a BatchNorm counter; unused in eval mode
                sources[native] = None
            else:
                missing.append(native)
            continue
        stored = weights.shape(apple)
        want = (old_rows, *shape[1:]) if native in (_EMBED, _LM_HEAD) else shape
        if stored != want:
            mismatched.append(f"{apple}: {list(stored)} in the checkpoint, {list(want)} expected")
        sources[native] = apple
    extra = [apple for apple, native in mapping.renamed.items()
             if native not in shapes and not (native == _LM_HEAD and tied_away)]
    unknown = mapping.unknown + extra
    if missing or unknown or mismatched:
        raise ConversionError("the checkpoint's weights do not match a FastVLM (llava_qwen2 + FastViTHD) model; "
                              "nothing was written",
                              {"missing keys (native names)": missing, "unknown keys": unknown,
                               "shape mismatches": mismatched})
    return ConversionPlan(spec=spec, weights=weights, mapping=mapping, sources=sources, shapes=shapes,
                          config=config, tokenizer=tokenizer, layout=layout, old_rows=old_rows, new_rows=new_rows)


def write_converted(src: str | Path, out: str | Path, *, source: str | None = None,
                    source_hash: str | None = None) -> ConversionResult:
    """Convert ``src`` into the (new or empty) folder ``out``; the marker file is written last."""
    src, out = Path(src), Path(out)
    started = time.monotonic()
    plan = plan_conversion(src)
    log.warning(APPLE_LICENCE_NOTICE)
    out.mkdir(parents=True, exist_ok=True)
    plan.config.save_pretrained(out)
    generation_config(src, plan.tokenizer, plan.spec.text_fields.get("eos_token_id")).save_pretrained(out)
    build_processor(plan.tokenizer, plan.spec.image_size).save_pretrained(out)

    def tensor(native: str) -> torch.Tensor:
        apple = plan.sources[native]
        if apple is None:
            return torch.zeros((), dtype=torch.long)
        value = plan.weights.get(apple)
        return _resized(value, plan.new_rows) if native in (_EMBED, _LM_HEAD) else value

    def nbytes(native: str) -> int:
        apple = plan.sources[native]
        itemsize = plan.weights.dtype(apple).itemsize if apple is not None else 8
        return math.prod(plan.shapes[native]) * itemsize

    files = write_safetensors(out, [(name, nbytes(name)) for name in plan.shapes], tensor)
    for name in _LICENCE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    label = source or str(src)
    result = ConversionResult(
        name=derive_model_name(label, plan.spec.text_fields.get("hidden_size")),
        format="apple-converted", source=label, source_hash=source_hash, dtype=str(plan.config.dtype),
        image_size=plan.spec.image_size, image_aspect_ratio=plan.spec.image_aspect_ratio,
        vocab_rows=(plan.old_rows, plan.new_rows), tensors=len(plan.shapes), files=files,
        dropped=plan.mapping.dropped)
    (out / CONVERSION_MARKER).write_text(json.dumps(asdict(result), indent=2))
    log.info("converted %s to the native fast_vlm format: %d tensors, vocabulary %d -> %d rows, %.1f s",
             result.name, result.tensors, plan.old_rows, plan.new_rows, time.monotonic() - started)
    if plan.spec.image_aspect_ratio == "pad":
        log.info("Apple's preprocessing pads images to a square (image_aspect_ratio=pad); the native processor "
                 "centre-crops, so pad images before the processor to see exactly what the model was trained on")
    return result


def convert_apple_checkpoint(src: str | Path, dst: str | Path, *, source: str | None = None,
                             source_hash: str | None = None) -> ConversionResult:
    """Convert ``src`` into ``dst`` (which must not exist) through a staging folder and one rename."""
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; choose a new destination folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = dst.parent / f".{dst.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        result = write_converted(src, staging, source=source, source_hash=source_hash)
        publish(staging, dst, replace=False)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
