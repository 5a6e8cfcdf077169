"""Apple-layout FastVLM -> native fast_vlm: the converted model computes what Apple's model computes.

A tiny random model is written in Apple's layout (tests/helpers/apple_fastvlm.py: Apple's key
names and config fields, Apple's forward written from ml-fastvlm), converted by the production
converter, loaded by the production loader, and compared logit by logit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fastvlm_engine.engine.convert import CONVERSION_MARKER, convert_apple_checkpoint
from fastvlm_engine.engine.model import FastVLM
from fastvlm_engine.engine.native_format import CHAT_TEMPLATE
from tests.helpers.apple_fastvlm import (
    TINY_IMAGE_SIZE,
    apple_logits,
    apple_prompt,
    both_logits,
    collapse_image_run,
    tokenizer_image_token,
    write_apple_checkpoint,
)
from tests.helpers.images import photo

APPLE_VOCAB = 448


def noise_image(seed: int, size: int = TINY_IMAGE_SIZE) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def close_enough(native: torch.Tensor, apple: torch.Tensor) -> float:
    """Largest difference relative to the logits' scale (fp32; timm's fused attention and LayerNorm2d
    differ from Apple's explicit ones only in rounding)."""
    return float((native - apple).abs().max() / apple.abs().max())


@pytest.fixture(scope="module")
def apple(tmp_path_factory):
    torch.set_num_threads(1)
    folder, reference = write_apple_checkpoint(tmp_path_factory.mktemp("apple") / "llava-fastvithd_0.5b_stage3")
    return folder, reference


@pytest.fixture(scope="module")
def converted(apple, tmp_path_factory):
    folder, _ = apple
    out = tmp_path_factory.mktemp("native") / "FastVLM-converted"
    result = convert_apple_checkpoint(folder, out, source=str(folder))
    return out, result


@pytest.fixture(scope="module")
def native_vlm(converted):
    return FastVLM.load(converted[0], device="cpu")


def test_logits_match_apples_forward_on_the_same_weights(apple, native_vlm):
    folder, reference = apple
    native, expected, native_ids, apple_ids = both_logits(native_vlm, reference, folder, photo("coffee"))
    image_token = native_vlm.model.config.image_token_id
    assert collapse_image_run(native_ids, image_token) == apple_ids  # same text tokens, one image slot
    assert native_ids.count(image_token) == (TINY_IMAGE_SIZE // 64) ** 2
    assert native.shape[:2] == expected.shape[:2] and expected.shape[-1] == APPLE_VOCAB
    assert close_enough(native[..., :APPLE_VOCAB], expected) < 1e-5
    assert torch.equal(native[0, -1, :APPLE_VOCAB].argmax(), expected[0, -1].argmax())


def test_the_comparison_can_fail(apple, native_vlm):
    """Different images give different logits, and one wrong vision weight breaks the match."""
    folder, reference = apple
    native_a, apple_a, _, _ = both_logits(native_vlm, reference, folder, photo("coffee"))
    native_b, apple_b, _, _ = both_logits(native_vlm, reference, folder, photo("astronaut"))
    assert close_enough(apple_a, apple_b) > 1e-2 and close_enough(native_a, native_b) > 1e-2
    weight = native_vlm.model.model.vision_tower.timm_model.stages[3].blocks[0].token_mixer.qkv.weight
    with torch.no_grad():
        weight.mul_(1.5)
        try:
            broken, _, _, _ = both_logits(native_vlm, reference, folder, photo("coffee"))
        finally:
            weight.div_(1.5)
    assert close_enough(broken[..., :APPLE_VOCAB], apple_a) > 1e-3


def test_generation_through_the_production_path(native_vlm):
    item = native_vlm.prepare(noise_image(3), "What is shown?", 5)
    first, again = native_vlm.generate([item]), native_vlm.generate([item])
    assert first == again and 1 <= len(first[0].token_ids) <= 5


def test_folder_is_native_with_apples_own_text_fields(apple, converted):
    folder, _ = apple
    out, result = converted
    source = json.loads((folder / "config.json").read_text())
    config = json.loads((out / "config.json").read_text())
    text = config["text_config"]
    assert config["model_type"] == "fast_vlm" and text["model_type"] == "qwen2"
    for field in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings"):
        assert text[field] == source[field], field
    assert text["rope_parameters"]["rope_theta"] == source["rope_theta"]
    assert text["vocab_size"] == 512  # 448 rows + <image>, padded to 64
    assert config["image_token_index"] == 402
    assert config["image_seq_length"] == 16
    vision = config["vision_config"]
    assert vision["architecture"] == "fastvit_mci3" and vision["hidden_size"] == source["mm_hidden_size"]
    assert vision["model_args"] == {"inference_mode": True, "layers": [1] * 5, "embed_dims": [8, 16, 32, 64, 128]}
    marker = json.loads((out / CONVERSION_MARKER).read_text())
    assert marker["format"] == "apple-converted" and marker["licence"] == "apple-amlr"
    assert marker["name"] == result.name == "FastVLM-0.5B-stage3"
    assert marker["image_aspect_ratio"] == "pad"
    assert marker["dropped"] == ["model.vision_tower.vision_tower.model.head.proj"]
    assert (out / "LICENSE_MODEL").read_text() == (folder / "LICENSE_MODEL").read_text()
    assert not list(out.parent.glob(".*partial*"))


def test_tokenizer_template_and_processor_are_the_native_ones(apple, native_vlm):
    from transformers import CLIPImageProcessor

    tokenizer = native_vlm.tokenizer
    assert tokenizer.chat_template == CHAT_TEMPLATE and tokenizer.model_max_length == 8192
    assert tokenizer.convert_tokens_to_ids("<image>") == 402
    content = [{"type": "image"}, {"type": "text", "text": "What is it?"}]
    rendered = native_vlm.processor.apply_chat_template([{"role": "user", "content": content}],
                                                        add_generation_prompt=True)
    assert rendered == apple_prompt("What is it?")  # Apple's conv_qwen_2 prompt, character for character
    # Apple's MobileCLIP tower builds this processor in code (mobileclip_encoder.py).
    apples = CLIPImageProcessor(crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
                                image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                                size={"shortest_edge": TINY_IMAGE_SIZE})
    image = noise_image(4, 300)
    ours = native_vlm.prepare(image, "x", 1).pixel_values
    assert torch.allclose(ours, apples(image, return_tensors="pt")["pixel_values"], atol=1 / 255)


def test_new_vocabulary_rows_are_the_mean_and_old_rows_unchanged(apple, converted):
    folder, _ = apple
    stored = load_file(str(folder / "model.safetensors"))
    written = load_file(str(converted[0] / "model.safetensors"))
    for apple_name, native_name in (("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
                                    ("lm_head.weight", "lm_head.weight")):
        old, new = stored[apple_name], written[native_name]
        assert new.shape == (512, old.shape[1])
        assert torch.equal(new[:APPLE_VOCAB], old)
        assert torch.allclose(new[APPLE_VOCAB:], old.mean(dim=0).expand(512 - APPLE_VOCAB, -1))


def test_apple_reference_uses_apples_placeholder_path(apple):
    """The reference really splices at -200: the placeholder becomes one embedding per image token."""
    folder, reference = apple
    from transformers import Qwen2Tokenizer

    ids = tokenizer_image_token(apple_prompt("Hi"), Qwen2Tokenizer.from_pretrained(str(folder)))
    pixels = torch.rand(1, 3, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    with_image = apple_logits(reference, ids, pixels)
    without = apple_logits(reference, [t for t in ids if t != -200], pixels)
    assert with_image.shape[1] - without.shape[1] == (TINY_IMAGE_SIZE // 64) ** 2
