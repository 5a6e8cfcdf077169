"""FASTVLM_IMAGE_FIT: vertical frames reach the model whole under pad, centre-cropped under crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fastvlm_engine.engine.framing import pad_colour, pad_to_square


def _vertical(top_marker: bool) -> Image.Image:
    """A 9:16 phone frame: mid-grey, optionally with a red title bar in its top 10 %."""
    rgb = np.full((640, 360, 3), 128, np.uint8)
    if top_marker:
        rgb[8:64, 20:340] = (230, 20, 20)
    return Image.fromarray(rgb, "RGB")


def _pixels(vlm, image: Image.Image, fit: str) -> torch.Tensor:
    return vlm.prepare(image, "Describe the image.", 4, image_fit=fit).pixel_values


def test_top_of_a_vertical_frame_reaches_the_model_only_under_pad(vlm):
    plain, titled = _vertical(False), _vertical(True)
    assert not torch.equal(_pixels(vlm, plain, "pad"), _pixels(vlm, titled, "pad"))
    assert torch.equal(_pixels(vlm, plain, "crop"), _pixels(vlm, titled, "crop"))


def test_pad_keeps_the_whole_frame_on_the_processor_mean_colour(vlm):
    size = vlm.image_size
    pixels = _pixels(vlm, _vertical(True), "pad")[0]  # (3, size, size)
    assert pixels.shape == (3, size, size)
    processor = vlm.processor.image_processor
    mean = torch.tensor(processor.image_mean).view(3, 1)
    std = torch.tensor(processor.image_std).view(3, 1)
    fill = (torch.tensor(pad_colour(processor.image_mean), dtype=torch.float32).view(3, 1) / 255 - mean) / std
    content_width = round(size * 360 / 640)
    margin = (size - content_width) // 2
    left = pixels[:, :, : margin - 1].reshape(3, -1)
    assert torch.allclose(left, fill.expand_as(left), atol=1e-4)  # side bars are the pad colour
    grey = (torch.tensor(128 / 255) - mean) / std
    row = pixels[:, size // 2, margin + 2: size - margin - 2]  # the middle row is the grey frame
    assert torch.allclose(row, grey.expand_as(row), atol=0.02)
    top = pixels[0, 1: round(size * 64 / 640) - 1, size // 2]  # the title bar survives at the top
    assert float(top.mean()) > float(grey[0, 0]) + 0.3


def test_pad_colour_is_apples_expand2square_colour():
    assert pad_colour([0.0, 0.0, 0.0]) == (0, 0, 0)  # FastVLM's MobileCLIP processor
    # OpenAI CLIP's mean gives ml-fastvlm's hard-coded (122, 116, 104) in llava/conversation.py
    assert pad_colour([0.48145466, 0.4578275, 0.40821073]) == (122, 116, 104)
    with pytest.raises(ValueError):
        pad_colour([0.1, 0.2])


def test_pad_to_square_is_bounded_and_centred():
    sliver = Image.new("RGB", (1, 50_000), (255, 255, 255))
    square = pad_to_square(sliver, (0, 0, 0), max_side=256)
    assert square.size == (256, 256)
    landscape = pad_to_square(Image.new("RGB", (200, 100), (255, 0, 0)), (9, 9, 9), max_side=1024)
    assert landscape.size == (200, 200)
    arr = np.asarray(landscape)
    assert tuple(arr[10, 100]) == (9, 9, 9) and tuple(arr[100, 100]) == (255, 0, 0)
    assert tuple(arr[49, 100]) == (9, 9, 9) and tuple(arr[50, 100]) == (255, 0, 0)
    same = Image.new("RGB", (64, 64))
    assert pad_to_square(same, (0, 0, 0), max_side=256).size == (64, 64)


def test_unknown_fit_is_refused(vlm):
    with pytest.raises(ValueError):
        vlm.prepare(_vertical(False), "Describe the image.", 4, image_fit="stretch")
