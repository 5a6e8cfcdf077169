import json
from pathlib import Path

import pytest

from fastvlm_engine.engine.tiny import build_tiny_model, ensure_tiny_model


def test_tiny_model_folder_is_a_native_fast_vlm_checkpoint(tiny_model_dir):
    folder = Path(tiny_model_dir)
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "generation_config.json", "chat_template.jinja"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "fast_vlm"
    assert config["vision_config"]["architecture"] == "fastvit_mci3"
    assert config["text_config"]["model_type"] == "qwen2"
    assert "meaningless" in (folder / "FASTVLM_TINY_MODEL.txt").read_text()


def test_loads_with_the_auto_classes(vlm):
    assert type(vlm.model).__name__ == "FastVlmForConditionalGeneration"
    assert type(vlm.processor).__name__ == "LlavaProcessor"
    assert vlm.tokenizer.padding_side == "left"
    assert "<image>" in vlm.reserved_tokens


def test_1024_px_variant_has_the_real_256_token_shape(tmp_path):
    from fastvlm_engine.engine.model import FastVLM
    from tests.helpers.images import photo

    vlm = FastVLM.load(build_tiny_model(tmp_path / "t1024", image_size=1024), device="cpu")
    item = vlm.prepare(photo("coffee"), "Describe the image.", 3)
    assert int((item.input_ids == vlm.model.config.image_token_id).sum()) == 256
    assert len(vlm.generate([item])[0].token_ids) <= 3


def test_builder_validates_arguments(tmp_path):
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path, image_size=300)
    with pytest.raises(ValueError):
        build_tiny_model(tmp_path, shape="7b")


def test_ensure_builds_once(tmp_path):
    out = ensure_tiny_model(tmp_path / "cache" / "tiny")
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_model(out) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
