"""Read the vision tower's shape from its weights, and say it in timm ``fastvit_mci3`` terms.

Apple's config names the tower (``mobileclip_l_1024``) but not its depths or widths; those are
in the weights. Real releases match ``fastvit_mci3`` exactly (layers 2-12-24-4-2, widths
96...1536); smaller towers of the same design (as in the tests) are expressed through timm's
``layers``/``embed_dims`` model arguments. A tower of another design is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .errors import ConversionError
from .keymap import NATIVE_VISION_PREFIX

__all__ = ["MCI3_EMBED_DIMS", "MCI3_LAYERS", "VisionLayout", "infer_vision_layout"]

MCI3_LAYERS = (2, 12, 24, 4, 2)
MCI3_EMBED_DIMS = (96, 192, 384, 768, 1536)
_MIXERS = ("repmixer", "repmixer", "repmixer", "attention", "attention")
_POS_EMB = (False, False, False, True, True)
_DOWNSAMPLE = (False, True, True, True, True)
_HEAD_DIM = 32  # fastvit attention heads are 32 wide
_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


@dataclass(frozen=True)
class VisionLayout:
    layers: tuple[int, ...]
    embed_dims: tuple[int, ...]

    @property
    def hidden_size(self) -> int:
        """Channels of the final conv, i.e. of each image feature (``mm_hidden_size``)."""
        return 2 * self.embed_dims[-1]

    def model_args(self) -> dict[str, Any]:
        """timm arguments for ``fastvit_mci3``; only what differs from its defaults."""
        args: dict[str, Any] = {"inference_mode": True}
        if self.layers != MCI3_LAYERS:
            args["layers"] = list(self.layers)
        if self.embed_dims != MCI3_EMBED_DIMS:
            args["embed_dims"] = list(self.embed_dims)
        return args


def infer_vision_layout(native_names: Iterable[str], shape: Callable[[str], tuple[int, ...]]) -> VisionLayout:
    """The layout behind the (already renamed) vision weights; ``shape`` gives a native key's shape."""
    names = {name.removeprefix(NATIVE_VISION_PREFIX) for name in native_names
             if name.startswith(NATIVE_VISION_PREFIX)}

    def full(name: str) -> str:
        return NATIVE_VISION_PREFIX + name

    blocks: dict[int, set[int]] = {}
    for name in names:
        match = _BLOCK.match(name)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    count = max(blocks) + 1 if blocks else 0
    problems = []
    if sorted(blocks) != list(range(5)):
        problems.append(f"stages with blocks: {sorted(blocks)}; FastViTHD has 5")
    else:
        mixers = tuple("attention" if f"stages.{s}.blocks.0.token_mixer.qkv.weight" in names else "repmixer"
                       for s in range(count))
        pos_emb = tuple(f"stages.{s}.pos_emb.reparam_conv.weight" in names for s in range(count))
        downsample = tuple(f"stages.{s}.downsample.proj.0.reparam_conv.weight" in names for s in range(count))
        if mixers != _MIXERS:
            problems.append(f"token mixers {mixers}; FastViTHD has {_MIXERS}")
        if pos_emb != _POS_EMB:
            problems.append(f"positional encodings at stages {pos_emb}; FastViTHD has {_POS_EMB}")
        if downsample != _DOWNSAMPLE:
            problems.append(f"downsampling at stages {downsample}; FastViTHD has {_DOWNSAMPLE}")
        missing = [f"stages.{s}.blocks.0.mlp.fc2.weight" for s in range(count)
                   if f"stages.{s}.blocks.0.mlp.fc2.weight" not in names]
        if "final_conv.reparam_conv.weight" not in names:
            missing.append("final_conv.reparam_conv.weight")
        if missing:
            problems.extend(f"no {name}" for name in missing)
    if problems:
        raise ConversionError("the vision tower is not FastViTHD (timm fastvit_mci3) in inference form",
                              {"vision tower": problems})
    layers = tuple(len(blocks[s]) for s in range(count))
    dims = tuple(int(shape(full(f"stages.{s}.blocks.0.mlp.fc2.weight"))[0]) for s in range(count))
    final = int(shape(full("final_conv.reparam_conv.weight"))[0])
    layout = VisionLayout(layers=layers, embed_dims=dims)
    if final != layout.hidden_size or any(dims[s] % _HEAD_DIM for s in (3, 4)):
        raise ConversionError("the vision tower's widths do not fit FastViTHD",
                              {"vision tower": [f"widths {dims}, final conv {final} channels (expected "
                                                f"{layout.hidden_size}; attention widths must divide by "
                                                f"{_HEAD_DIM})"]})
    return layout
