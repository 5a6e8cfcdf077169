"""How a non-square picture becomes the square the vision tower sees.

Apple trained FastVLM with ``image_aspect_ratio: pad``: every image is centred on a square
filled with the image processor's mean colour (``expand2square`` in ml-fastvlm's
``llava/mm_utils.py``, colour ``tuple(int(x * 255) for x in image_processor.image_mean)``), so
the whole picture reaches the model. The native transformers processor instead resizes the
short side and centre-crops, which cuts 44 % of a 9:16 phone frame -- exactly where creators put
their titles and captions. ``pad`` (the default) restores Apple's framing; ``crop`` keeps the
processor's behaviour.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image

__all__ = ["IMAGE_FITS", "ImageFit", "pad_colour", "pad_to_square"]

ImageFit = Literal["pad", "crop"]
IMAGE_FITS: tuple[ImageFit, ...] = ("pad", "crop")


def pad_colour(image_mean: Sequence[float]) -> tuple[int, int, int]:
    """Apple's padding colour for a processor whose ``image_mean`` is given (0..1 per channel)."""
    channels = [int(x * 255) for x in image_mean]
    if len(channels) == 1:
        channels *= 3
    if len(channels) != 3:
        raise ValueError(f"image_mean must have 1 or 3 channels, got {len(channels)}")
    return channels[0], channels[1], channels[2]


def pad_to_square(image: Image.Image, fill: tuple[int, int, int], *, max_side: int) -> Image.Image:
    """``image`` centred on a square of colour ``fill``, as Apple's ``expand2square`` does.

    The long side is first scaled down to ``max_side`` (the model's input size) so the square
    never costs more than the model can see: a 1 x 50000 px image becomes 1 x ``max_side`` on a
    ``max_side`` square, not a 2.5-gigapixel canvas. The processor then has nothing to crop.
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    image = image.convert("RGB")
    width, height = image.size
    long_side = max(width, height)
    if long_side > max_side:
        scale = max_side / long_side
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        long_side = max(width, height)
    if width == height:
        return image
    square = Image.new("RGB", (long_side, long_side), fill)
    square.paste(image, ((long_side - width) // 2, (long_side - height) // 2))
    return square
