"""A tiny FastVLM in Apple's own layout, and Apple's forward pass over it, for conversion tests.

Written from Apple's public code (github.com/apple/ml-fastvlm): ``llava/model/language_model/
llava_qwen.py`` (LlavaQwen2ForCausalLM = Qwen2ForCausalLM + LlavaMetaModel), ``llava_arch.py``
(encode_images, prepare_inputs_labels_for_multimodal), ``multimodal_projector/builder.py``
(mlp2x_gelu), ``multimodal_encoder/mobileclip_encoder.py`` and ``mobileclip/mci.py`` (FastViTHD
in inference form: MobileOneBlock, ReparamLargeKernelConv, PatchEmbed, RepMixer, ConvFFN,
LayerNormChannel, MHSA, RepCPE, conv_exp, the unused CLIP head). The module names below yield
exactly Apple's state-dict keys; the vision tower here is independent of timm, so comparing
its output with the converted timm tower checks the renaming, not timm against itself.

The language model is transformers' Qwen2ForCausalLM built from Apple's config, as Apple's
class is; the image splicing is Apple's (text chunks embedded, image features inserted at the
-200 placeholder), not the native masked_scatter.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_TOKEN_INDEX = -200  # llava/constants.py
APPLE_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"  # conv_qwen_2
TINY_LAYERS = (1, 1, 1, 1, 1)
TINY_DIMS = (8, 16, 32, 64, 128)  # attention stages (3, 4) need widths divisible by 32
TINY_IMAGE_SIZE = 256


def apple_prompt(question: str) -> str:
    """What Apple's predict.py builds: conv_qwen_2 with '<image>\\n' before the question."""
    return f"{APPLE_SYSTEM}<|im_start|>user\n<image>\n{question}<|im_end|>\n<|im_start|>assistant\n"


def tokenizer_image_token(prompt: str, tokenizer) -> list[int]:
    """llava/mm_utils.py: tokenise the text around each <image> separately, join with -200."""
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        if index:
            ids.append(IMAGE_TOKEN_INDEX)
        ids.extend(chunk)
    return ids


# --- MobileCLIP mci.py, inference form --------------------------------------------------------

class SEBlock(nn.Module):
    def __init__(self, channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, int(channels * rd_ratio), 1, bias=True)
        self.expand = nn.Conv2d(int(channels * rd_ratio), channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.avg_pool2d(x, kernel_size=list(x.shape[2:]))
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(scale))))


class MobileOneBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, groups: int,
                 use_se: bool = False) -> None:
        super().__init__()
        self.se = SEBlock(cout) if use_se else nn.Identity()
        self.activation = nn.GELU()
        self.reparam_conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.se(self.reparam_conv(x)))


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int) -> None:
        super().__init__()
        self.activation = nn.GELU()
        self.se = nn.Identity()
        self.lkb_reparam = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.se(self.lkb_reparam(x)))


class PatchEmbed(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(ReparamLargeKernelConv(cin, cout, 7, 2, groups=cin),
                                  MobileOneBlock(cout, cout, 1, 1, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class RepMixer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reparam_conv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reparam_conv(x)


class ConvFFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.conv.add_module("conv", nn.Conv2d(dim, dim, 7, padding=3, groups=dim, bias=False))
        self.conv.add_module("bn", nn.BatchNorm2d(dim))
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.conv(x))))


class RepMixerBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token_mixer = RepMixer(dim)
        self.convffn = ConvFFN(dim, 4 * dim)
        self.layer_scale = nn.Parameter(1e-5 * torch.ones((dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_mixer(x)
        return x + self.layer_scale * self.convffn(x)


class LayerNormChannel(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MHSA(nn.Module):
    def __init__(self, dim: int, head_dim: int = 32) -> None:
        super().__init__()
        self.head_dim, self.num_heads, self.scale = head_dim, dim // head_dim, head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(-2, -1)
        qkv = self.qkv(tokens).reshape(batch, height * width, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attention = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = self.proj((attention @ v).transpose(1, 2).reshape(batch, height * width, channels))
        return out.transpose(-2, -1).reshape(batch, channels, height, width)


class AttentionBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNormChannel(dim)
        self.token_mixer = MHSA(dim)
        self.convffn = ConvFFN(dim, 4 * dim)
        self.layer_scale_1 = nn.Parameter(1e-5 * torch.ones((dim, 1, 1)))
        self.layer_scale_2 = nn.Parameter(1e-5 * torch.ones((dim, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.layer_scale_1 * self.token_mixer(self.norm(x))
        return x + self.layer_scale_2 * self.convffn(x)


class RepCPE(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reparam_conv = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reparam_conv(x)


class GlobalPool2D(nn.Module):
    """MobileCLIP's image-text projection; in the checkpoint, never used by the VLM."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Parameter(in_dim ** -0.5 * torch.randn(in_dim, out_dim))


class FastViT(nn.Module):
    """fastvithd: 5 stages, RepMixer x3 then attention x2, RepCPE before the attention stages."""

    def __init__(self, layers: tuple[int, ...], dims: tuple[int, ...], projection_dim: int = 768) -> None:
        super().__init__()
        d0 = dims[0]
        self.patch_embed = nn.Sequential(MobileOneBlock(3, d0, 3, 2, 1, 1), MobileOneBlock(d0, d0, 3, 2, 1, d0),
                                         MobileOneBlock(d0, d0, 1, 1, 0, 1))
        network: list[nn.Module] = []
        for stage, (depth, dim) in enumerate(zip(layers, dims, strict=True)):
            if stage >= 3:
                network.append(RepCPE(dim))
            block = AttentionBlock if stage >= 3 else RepMixerBlock
            network.append(nn.Sequential(*[block(dim) for _ in range(depth)]))
            if stage < len(layers) - 1:
                network.append(PatchEmbed(dim, dims[stage + 1]))
        self.network = nn.ModuleList(network)
        self.conv_exp = MobileOneBlock(dims[-1], 2 * dims[-1], 3, 1, 1, groups=dims[-1], use_se=True)
        self.head = GlobalPool2D(2 * dims[-1], projection_dim)

    def image_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for module in self.network:
            x = module(x)
        return self.conv_exp(x)


class MCi(nn.Module):
    def __init__(self, layers: tuple[int, ...], dims: tuple[int, ...]) -> None:
        super().__init__()
        self.model = FastViT(layers, dims)


class MobileCLIPVisionTower(nn.Module):
    def __init__(self, layers: tuple[int, ...], dims: tuple[int, ...]) -> None:
        super().__init__()
        self.vision_tower = MCi(layers, dims)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.vision_tower.model.image_embeddings(images)
        batch, channels, height, width = features.shape
        return features.reshape(batch, channels, height * width).transpose(1, 2)


# --- LlavaQwen2ForCausalLM ------------------------------------------------------------------

def apple_config(tokenizer, *, tie: bool = False, vocab_size: int = 448) -> dict:
    """An Apple-format config.json with tiny dimensions (field names as in Apple's releases)."""
    return {
        "architectures": ["LlavaQwen2ForCausalLM"], "model_type": "llava_qwen2", "hidden_act": "silu",
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 1000000.0,
        "sliding_window": 2048, "use_sliding_window": False, "max_window_layers": 2, "attention_dropout": 0.0,
        "initializer_range": 0.02, "use_cache": True, "tie_word_embeddings": tie, "vocab_size": vocab_size,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "torch_dtype": "float32", "transformers_version": "4.39.3",
        "mm_vision_tower": f"mobileclip_l_{TINY_IMAGE_SIZE}", "mm_hidden_size": 2 * TINY_DIMS[-1],
        "mm_projector_type": "mlp2x_gelu", "mm_patch_merge_type": "flat", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "mm_projector_lr": None, "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "tokenizer_model_max_length": 8192, "tokenizer_padding_side": "right", "tune_mm_mlp_adapter": False,
        "freeze_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": True, "use_mm_proj": True,
    }


REAL_0_5B = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "vocab_size": 151936,
             "mm_vision_tower": "mobileclip_l_1024", "mm_hidden_size": 3072, "torch_dtype": "bfloat16"}
"""FastVLM-0.5B's own config values (Qwen2-0.5B with an untied lm_head, FastViTHD at 1024 px)."""
REAL_LAYERS, REAL_DIMS = (2, 12, 24, 4, 2), (96, 192, 384, 768, 1536)


def apple_model_skeleton(config: dict, layers: tuple[int, ...] = TINY_LAYERS, dims: tuple[int, ...] = TINY_DIMS):
    """Apple's model class in Apple's layout, uninitialised (build it under ``torch.device("meta")``
    to get every name and shape of a real-size checkpoint without memory)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in config.items() if k != "model_type"}))
    model.model.vision_tower = MobileCLIPVisionTower(layers, dims)
    hidden, mm_hidden = config["hidden_size"], config["mm_hidden_size"]
    model.model.mm_projector = nn.Sequential(nn.Linear(mm_hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
    return model


def build_apple_model(config: dict, seed: int = 0):
    """Apple's model class in Apple's layout, randomly initialised (image-dependent, not degenerate)."""
    torch.manual_seed(seed)
    model = apple_model_skeleton(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            # Small biases and gain-2 convolutions keep the random tower's output image-dependent;
            # with larger biases it converges to the same features for every image.
            vision = "vision_tower" in name
            if "layer_scale" in name:
                param.copy_(0.05 + 0.1 * torch.rand(param.shape, generator=generator))
            elif param.dim() >= 2:
                gain = 2.0 if vision else 1.0
                param.copy_(torch.randn(param.shape, generator=generator) * (gain / param[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_((0.01 if vision else 0.1) * torch.randn(param.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model.eval()


@torch.no_grad()
def apple_logits(model, input_ids: list[int], pixel_values: torch.Tensor) -> torch.Tensor:
    """encode_images + prepare_inputs_labels_for_multimodal (one prompt, one image), then Qwen2."""
    features = model.model.mm_projector(model.model.vision_tower(pixel_values))[0]
    embed = model.model.embed_tokens
    pieces, chunk = [], []
    for token in input_ids:
        if token == IMAGE_TOKEN_INDEX:
            pieces += [embed(torch.tensor(chunk, dtype=torch.long)), features]
            chunk = []
        else:
            chunk.append(token)
    pieces.append(embed(torch.tensor(chunk, dtype=torch.long)))
    return model(inputs_embeds=torch.cat(pieces)[None]).logits


def write_apple_checkpoint(out: Path, *, weights: str = "safetensors", tie: bool = False, seed: int = 0):
    """An Apple-format folder (config, Qwen2 tokenizer without <image>, weights); returns (folder, model)."""
    from safetensors.torch import save_file

    from fastvlm_engine.engine.tiny import build_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(with_image_token=False)
    tokenizer.save_pretrained(out)
    config = apple_config(tokenizer, tie=tie)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}))
    (out / "LICENSE_MODEL").write_text("Apple Machine Learning Research Model License (test copy)\n")
    model = build_apple_model(config, seed)
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if tie:
        state.pop("lm_head.weight")  # saved once, as the embeddings
    if weights == "safetensors":
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    elif weights == "sharded":
        names = list(state)
        shards = [names[: len(names) // 3], names[len(names) // 3: 2 * len(names) // 3], names[2 * len(names) // 3:]]
        weight_map = {}
        for index, shard in enumerate(shards):
            file_name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file({name: state[name] for name in shard}, str(out / file_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file_name))
        (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    elif weights == "bin":
        torch.save(state, out / "pytorch_model.bin")
    else:
        raise ValueError(f"unknown weights layout {weights!r}")
    return out, model


def both_logits(vlm, reference, apple_folder: Path, image, question: str = "Describe the image."):
    """The same image and question through the converted model (production prepare + forward) and
    through Apple's forward on the original weights: (native logits, Apple logits, native ids, Apple ids)."""
    from transformers import Qwen2Tokenizer

    item = vlm.prepare(image, question, 1)
    with torch.no_grad():
        native = vlm.model(input_ids=item.input_ids[None], pixel_values=item.pixel_values).logits
    apple_ids = tokenizer_image_token(apple_prompt(question), Qwen2Tokenizer.from_pretrained(str(apple_folder)))
    return native, apple_logits(reference, apple_ids, item.pixel_values), item.input_ids.tolist(), apple_ids


def collapse_image_run(ids: list[int], image_token_id: int) -> list[int]:
    """Native ids with the expanded run of image tokens folded back into Apple's single -200."""
    out: list[int] = []
    for token in ids:
        if token == image_token_id:
            if not out or out[-1] != IMAGE_TOKEN_INDEX:
                out.append(IMAGE_TOKEN_INDEX)
        else:
            out.append(token)
    return out
