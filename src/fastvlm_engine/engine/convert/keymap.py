"""Apple's weight names -> the native ``fast_vlm`` names, one rule per module of the architecture.

Apple (ml-fastvlm): ``LlavaQwen2ForCausalLM`` = Qwen2 (``model.embed_tokens``, ``model.layers``,
``model.norm``, ``lm_head``) + ``model.mm_projector`` (Sequential: Linear, GELU, Linear) +
``model.vision_tower.vision_tower.model`` = MobileCLIP's FastViT (``mci.py``): ``patch_embed``,
one flat ``network`` list and ``conv_exp``. Native (transformers ``FastVlmForConditionalGeneration``):
``model.language_model.*``, ``model.multi_modal_projector.linear_1/2``, and the timm
``fastvit_mci3`` tower under ``model.vision_tower.timm_model``: ``stem``, ``stages.N``
(``downsample``, ``pos_emb``, ``blocks``) and ``final_conv``.

The flat ``network`` list interleaves, in order, a stage's blocks, the patch embedding that
downsamples into the next stage, and that stage's positional encoding; timm groups them per
stage. The stage of each entry is read from that order rather than from a fixed table, so a
shape error reports the right stage.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["APPLE_VISION_PREFIX", "NATIVE_VISION_PREFIX", "KeyMapping", "map_keys"]

APPLE_VISION_PREFIX = "model.vision_tower.vision_tower.model."
NATIVE_VISION_PREFIX = "model.vision_tower.timm_model."

_NETWORK = re.compile(r"^network\.(\d+)\.(.+)$")
_BLOCK = re.compile(r"^(\d+)\.(.+)$")
_LLM = (("model.embed_tokens.", "model.language_model.embed_tokens."),
        ("model.layers.", "model.language_model.layers."),
        ("model.norm.", "model.language_model.norm."),
        ("model.mm_projector.0.", "model.multi_modal_projector.linear_1."),
        ("model.mm_projector.2.", "model.multi_modal_projector.linear_2."),
        ("lm_head.", "lm_head."))
# In Apple's checkpoints but not used by the VLM: the CLIP image-text projection head, and rotary
# frequencies older transformers versions saved as buffers (recomputed from the config).
_UNUSED = (re.compile(r"^model\.vision_tower\.vision_tower\.model\.head\.proj$"),
           re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"))


@dataclass
class KeyMapping:
    """Where each Apple tensor goes; ``unknown`` has no counterpart in the native model at all."""

    renamed: dict[str, str] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def _block_part(rest: str) -> str:
    rest = re.sub(r"^convffn\.", "mlp.", rest)
    return re.sub(r"^(layer_scale(?:_[12])?)$", r"\1.gamma", rest)


def _network_kinds(names: Iterable[str]) -> dict[int, str]:
    kinds: dict[int, set[str]] = {}
    for name in names:
        match = _NETWORK.match(name)
        if not match:
            continue
        rest = match.group(2)
        kind = "blocks" if _BLOCK.match(rest) else "downsample" if rest.startswith("proj.") else \
            "pos_emb" if rest.startswith("reparam_conv.") else "other"
        kinds.setdefault(int(match.group(1)), set()).add(kind)
    return {index: next(iter(found)) if len(found) == 1 else "other" for index, found in kinds.items()}


def _network_stages(kinds: dict[int, str]) -> dict[int, int]:
    """A stage's blocks close it; a downsample or positional encoding opens the next one."""
    stages, stage = {}, 0
    for index in sorted(kinds):
        stages[index] = stage
        if kinds[index] == "blocks":
            stage += 1
    return stages


def _vision_name(rest: str, kinds: dict[int, str], stages: dict[int, int]) -> str | None:
    if rest.startswith("patch_embed."):
        return "stem." + rest.removeprefix("patch_embed.")
    if rest.startswith("conv_exp."):
        tail = rest.removeprefix("conv_exp.").replace("se.reduce.", "se.fc1.").replace("se.expand.", "se.fc2.")
        return "final_conv." + tail
    match = _NETWORK.match(rest)
    if not match:
        return None
    index, inner = int(match.group(1)), match.group(2)
    stage = f"stages.{stages[index]}."
    kind = kinds[index]
    if kind == "blocks":
        block = _BLOCK.match(inner)
        return stage + f"blocks.{block.group(1)}." + _block_part(block.group(2)) if block else None
    if kind == "downsample":
        return stage + "downsample." + inner.replace("lkb_reparam.", "reparam_conv.")
    if kind == "pos_emb":
        return stage + "pos_emb." + inner
    return None


def map_keys(names: Iterable[str]) -> KeyMapping:
    """Rename every Apple key; the caller checks the result against the native model's own keys."""
    names = list(names)
    vision = [name.removeprefix(APPLE_VISION_PREFIX) for name in names if name.startswith(APPLE_VISION_PREFIX)]
    kinds = _network_kinds(vision)
    stages = _network_stages(kinds)
    mapping = KeyMapping()
    for name in names:
        if any(pattern.match(name) for pattern in _UNUSED):
            mapping.dropped.append(name)
            continue
        target: str | None = None
        if name.startswith(APPLE_VISION_PREFIX):
            rest = _vision_name(name.removeprefix(APPLE_VISION_PREFIX), kinds, stages)
            target = NATIVE_VISION_PREFIX + rest if rest is not None else None
        else:
            for old, new in _LLM:
                if name.startswith(old):
                    target = new + name.removeprefix(old)
                    break
        if target is None:
            mapping.unknown.append(name)
        else:
            mapping.renamed[name] = target
    return mapping
