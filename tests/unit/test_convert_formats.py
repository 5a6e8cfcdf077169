"""Every file layout Apple's weights come in converts alike; bad checkpoints fail whole, writing nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from fastvlm_engine.engine.convert import ConversionError, convert_apple_checkpoint, plan_conversion
from fastvlm_engine.engine.convert.keymap import map_keys
from fastvlm_engine.engine.model import FastVLM
from tests.helpers.apple_fastvlm import (
    REAL_0_5B,
    REAL_DIMS,
    REAL_LAYERS,
    apple_config,
    apple_model_skeleton,
    both_logits,
    write_apple_checkpoint,
)
from tests.helpers.images import photo


@pytest.fixture(scope="module")
def reference_conversion(tmp_path_factory):
    """The single-file safetensors checkpoint and its conversion, to compare the other layouts with."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("layouts")
    folder, _ = write_apple_checkpoint(root / "apple-safetensors")
    convert_apple_checkpoint(folder, root / "native-safetensors")
    return folder, load_file(str(root / "native-safetensors" / "model.safetensors"))


@pytest.mark.parametrize("weights", ["sharded", "bin"])
def test_sharded_safetensors_and_pytorch_bin_convert_to_the_same_tensors(weights, reference_conversion, tmp_path):
    _, expected = reference_conversion
    folder, _ = write_apple_checkpoint(tmp_path / f"apple-{weights}", weights=weights)
    assert not list(folder.glob("model.safetensors"))
    convert_apple_checkpoint(folder, tmp_path / "native")
    written = load_file(str(tmp_path / "native" / "model.safetensors"))
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[name], expected[name]) for name in expected)


def test_tied_embeddings_stay_tied_and_match_apple(tmp_path):
    folder, reference = write_apple_checkpoint(tmp_path / "apple-tied", tie=True)
    convert_apple_checkpoint(folder, tmp_path / "native")
    config = json.loads((tmp_path / "native" / "config.json").read_text())
    assert config["text_config"]["tie_word_embeddings"] is True
    assert "lm_head.weight" not in load_file(str(tmp_path / "native" / "model.safetensors"))
    vlm = FastVLM.load(tmp_path / "native", device="cpu")
    native, apple, _, _ = both_logits(vlm, reference, folder, photo("chelsea"))
    assert float((native[..., :448] - apple).abs().max() / apple.abs().max()) < 1e-5


def test_a_stored_copy_of_tied_embeddings_is_dropped(tmp_path):
    folder, _ = write_apple_checkpoint(tmp_path / "apple-tied", tie=True)
    _edit_weights(folder, lambda state: state.update({"lm_head.weight": state["model.embed_tokens.weight"].clone()}))
    result = convert_apple_checkpoint(folder, tmp_path / "native")
    assert "lm_head.weight (tied to the embeddings)" in result.dropped
    assert json.loads((tmp_path / "native" / "config.json").read_text())["text_config"]["tie_word_embeddings"] is True


def test_a_tie_flag_with_a_different_lm_head_keeps_both_as_stored(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    convert_apple_checkpoint(folder, tmp_path / "native")
    written = load_file(str(tmp_path / "native" / "model.safetensors"))
    assert json.loads((tmp_path / "native" / "config.json").read_text())["text_config"]["tie_word_embeddings"] is False
    assert not torch.equal(written["lm_head.weight"], written["model.language_model.embed_tokens.weight"])


# --- failures: the whole list of keys, and no folder ---------------------------------------

def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "apple"))


def _edit_weights(folder: Path, edit) -> None:
    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _convert_fails(folder: Path, tmp_path: Path) -> ConversionError:
    out = tmp_path / "out" / "native"
    with pytest.raises(ConversionError) as caught:
        convert_apple_checkpoint(folder, out)
    assert not out.exists() and not list(out.parent.glob(".*"))  # nothing, not even a staging folder
    return caught.value


def test_unknown_keys_are_listed(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    train_mode = "model.vision_tower.vision_tower.model.network.0.0.token_mixer.mixer.rbr_conv.0.conv.weight"

    def add(state):
        state[train_mode] = torch.zeros(8, 1, 3, 3)
        state["model.some_adapter.weight"] = torch.zeros(2)

    _edit_weights(folder, add)
    error = _convert_fails(folder, tmp_path)
    assert set(error.problems["unknown keys"]) == {train_mode, "model.some_adapter.weight"}
    assert train_mode in str(error)


def test_missing_keys_are_listed(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    _edit_weights(folder, lambda state: [state.pop(name) for name in ("model.layers.1.mlp.up_proj.weight",
                                                                      "model.mm_projector.2.bias")])
    error = _convert_fails(folder, tmp_path)
    assert set(error.problems["missing keys (native names)"]) == {
        "model.language_model.layers.1.mlp.up_proj.weight", "model.multi_modal_projector.linear_2.bias"}


def test_shape_mismatches_are_listed(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    _edit_weights(folder, lambda state: state.update({"model.mm_projector.0.weight": torch.zeros(64, 100)}))
    error = _convert_fails(folder, tmp_path)
    assert error.problems["shape mismatches"] == [
        "model.mm_projector.0.weight: [64, 100] in the checkpoint, [64, 256] expected"]


def test_a_tower_of_another_design_is_refused(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    _edit_weights(folder, lambda state: [state.pop(name) for name in list(state) if ".network.6." in name])
    error = _convert_fails(folder, tmp_path)
    assert "not FastViTHD" in str(error) and "positional encodings" in str(error)


@pytest.mark.parametrize(("field", "value", "words"), [
    ("mm_projector_type", "linear", "mlp2x_gelu"),
    ("image_aspect_ratio", "anyres", "image_aspect_ratio"),
    ("mm_use_im_start_end", True, "start/end"),
    ("mm_vision_tower", "openai/clip-vit-large-patch14-336", "MobileCLIP"),
    ("mm_hidden_size", 1024, "mm_hidden_size"),
])
def test_unsupported_config_is_refused(reference_conversion, tmp_path, field, value, words):
    folder = _copy(reference_conversion[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, field: value}))
    assert words in str(_convert_fails(folder, tmp_path))


def test_a_pickle_with_code_is_not_loaded(reference_conversion, tmp_path):
    folder = _copy(reference_conversion[0], tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2), "hook": Path("/etc/passwd")}, folder / "pytorch_model.bin")
    assert "weights_only" in str(_convert_fails(folder, tmp_path))


def test_a_native_folder_is_not_an_apple_one(tiny_model_dir, tmp_path):
    assert "not an Apple FastVLM config" in str(_convert_fails(Path(tiny_model_dir), tmp_path))


def test_an_existing_destination_is_never_overwritten(reference_conversion, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError):
        convert_apple_checkpoint(reference_conversion[0], tmp_path / "taken")


# --- the real FastVLM-0.5B layout, on the meta device (no weights needed) ------------------

class _MetaWeights:
    """A TensorSource over a model built on the meta device: names and shapes, no data."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def keys(self) -> list[str]:
        return list(self.state)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.state[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        return self.state[name].dtype

    def get(self, name: str) -> torch.Tensor:
        return self.state[name]


def test_the_real_0_5b_layout_maps_onto_timm_fastvit_mci3(tmp_path):
    """Apple's full-size FastVLM-0.5B names and shapes (Qwen2-0.5B + FastViTHD 2-12-24-4-2) map onto
    the native model exactly, with the stock fastvit_mci3 tower and 152000 vocabulary rows."""
    from fastvlm_engine.engine.tiny import build_tokenizer

    tokenizer = build_tokenizer(with_image_token=False)
    tokenizer.save_pretrained(tmp_path)
    config = {**apple_config(tokenizer), **REAL_0_5B}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with torch.device("meta"):
        model = apple_model_skeleton(config, REAL_LAYERS, REAL_DIMS)
    plan = plan_conversion(tmp_path, _MetaWeights(model.state_dict()))
    assert plan.layout.model_args() == {"inference_mode": True}  # exactly timm's fastvit_mci3
    assert (plan.old_rows, plan.new_rows) == (151936, 152000)
    assert plan.config.image_seq_length == 256
    assert plan.mapping.dropped == ["model.vision_tower.vision_tower.model.head.proj"]
    renamed = plan.mapping.renamed
    vision = "model.vision_tower.vision_tower.model."
    native = "model.vision_tower.timm_model."
    # The stage of each entry of Apple's flat network list, as in transformers' conversion table.
    for apple_name, native_name in (
            ("network.0.1.token_mixer.reparam_conv.weight", "stages.0.blocks.1.token_mixer.reparam_conv.weight"),
            ("network.1.proj.0.lkb_reparam.weight", "stages.1.downsample.proj.0.reparam_conv.weight"),
            ("network.4.23.convffn.fc1.weight", "stages.2.blocks.23.mlp.fc1.weight"),
            ("network.6.reparam_conv.weight", "stages.3.pos_emb.reparam_conv.weight"),
            ("network.7.3.layer_scale_2", "stages.3.blocks.3.layer_scale_2.gamma"),
            ("network.8.proj.1.reparam_conv.bias", "stages.4.downsample.proj.1.reparam_conv.bias"),
            ("network.9.reparam_conv.bias", "stages.4.pos_emb.reparam_conv.bias"),
            ("network.10.1.token_mixer.qkv.weight", "stages.4.blocks.1.token_mixer.qkv.weight"),
            ("conv_exp.se.reduce.weight", "final_conv.se.fc1.weight"),
            ("patch_embed.2.reparam_conv.weight", "stem.2.reparam_conv.weight")):
        assert renamed[vision + apple_name] == native + native_name
    assert renamed["model.mm_projector.2.weight"] == "model.multi_modal_projector.linear_2.weight"
    assert renamed["model.norm.weight"] == "model.language_model.norm.weight"


def test_keys_outside_every_rule_are_unknown():
    mapping = map_keys(["model.image_newline", "vision.weight", "model.layers.0.self_attn.rotary_emb.inv_freq"])
    assert mapping.unknown == ["model.image_newline", "vision.weight"]
    assert mapping.dropped == ["model.layers.0.self_attn.rotary_emb.inv_freq"]
