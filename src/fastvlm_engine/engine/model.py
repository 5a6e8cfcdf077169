"""FastVLM loaded through transformers' native ``fast_vlm`` classes.

The split follows the serving loop: :meth:`FastVLM.prepare` runs per request on any thread
(chat template, tokenising, image preprocessing), :meth:`FastVLM.generate` runs on the single
inference thread and turns a list of prepared inputs into one left-padded ``generate`` call.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from .chat import ChatTurn, template_messages
from .detokenize import decode_text
from .framing import ImageFit, pad_colour, pad_to_square
from .model_info import ModelInfo
from .prompts import sanitize_prompt

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["FastVLM", "Generation", "PreparedInput", "is_fatal_device_error", "resolve_device", "resolve_dtype"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class PreparedInput:
    """One request, tokenised and preprocessed, ready to join a batch."""

    input_ids: torch.Tensor  # 1-D, image tokens already expanded
    pixel_values: torch.Tensor | None  # (images, 3, H, W) or None for text-only prompts
    max_new_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.numel())


@dataclass(frozen=True)
class Generation:
    """The model's answer to one prepared input."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int


def resolve_device(setting: str) -> torch.device:
    """``auto`` picks the first CUDA device when one is usable, else the CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} requested but CUDA is not available")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise RuntimeError(f"device {setting!r} requested but only "
                               f"{torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """bf16 on GPU and fp32 on CPU unless a dtype is configured."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, setting)


_FATAL_MARKERS = ("CUDA error", "CUBLAS_STATUS", "CUDNN_STATUS", "cuDNN error", "device-side assert",
                  "NCCL error", "illegal memory access", "unspecified launch failure")


def is_fatal_device_error(exc: BaseException) -> bool:
    """Out-of-memory and CUDA runtime errors leave the device in an unknown state: not retryable."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in _FATAL_MARKERS)


MAX_ASPECT_RATIO = 2.0
"""Images longer than this relative to their short side are centre-cropped before preprocessing.

The processor resizes the short side to the crop size and keeps the aspect ratio before its
centre crop, so a 1 x 50000 image would become a 256 x 12.8M (or 1024 x 51M) intermediate
(gigabytes). The centre square the model sees lies inside the cropped region anyway."""


def bound_aspect(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    width, height = image.size
    short, long = min(width, height), max(width, height)
    if long <= short * max_ratio:
        return image
    keep = max(1, int(short * max_ratio))
    if width > height:
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    top = (height - keep) // 2
    return image.crop((0, top, width, top + keep))


class _PerRowLimit:
    """Stops each row at its own max_new_tokens, so one batch serves mixed lengths."""

    def __init__(self, prompt_len: int, limits: Sequence[int]) -> None:
        self.prompt_len = prompt_len
        self.limits = limits

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt_len
        limits = torch.as_tensor(self.limits, device=input_ids.device)
        return generated >= limits


class FastVLM:
    """A loaded model, its processor, and the device it lives on."""

    def __init__(self, model, processor, *, name: str, device: torch.device, dtype: torch.dtype,
                 info: ModelInfo | None = None) -> None:
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"  # not persisted by save_pretrained; batches need it
        self.device = device
        self.dtype = dtype
        dtype_name = str(dtype).removeprefix("torch.")
        info = info or ModelInfo(name=name, format="native", dtype=dtype_name, source=name)
        self.info = info.with_dtype(dtype_name)  # the dtype it runs in, not the one it is stored in
        self.name = self.info.name
        generation = model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else eos)
        pad = generation.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.pad_token_id or next(iter(self.eos_ids)))
        image_token = getattr(processor, "image_token", "<image>")
        self.reserved_tokens = tuple(sorted(
            {tok.content for tok in self.tokenizer.added_tokens_decoder.values() if tok.special}
            | set(self.tokenizer.all_special_tokens) | {image_token}))

    @classmethod
    def load(cls, source: str | Path, *, device: str = "auto", dtype: str = "auto",
             name: str | None = None, info: ModelInfo | None = None) -> FastVLM:
        """Load a native-format FastVLM from a folder or a hub id (offline if HF_HUB_OFFLINE=1).

        ``info`` (from :func:`.resolve.resolve_model`) names the model; else the folder or hub id does.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        if torch_device.type == "cpu":
            # Random or tiny weights run into float denormals on CPU, costing ~20x time.
            torch.set_flush_denormal(True)
        processor = AutoProcessor.from_pretrained(str(source))
        model = AutoModelForImageTextToText.from_pretrained(str(source), dtype=torch_dtype)
        model.to(torch_device).eval()
        label = (info.name if info else None) or name or (Path(source).name if os.path.isdir(source) else str(source))
        log.info("loaded model %s on %s (%s)", label, torch_device, str(torch_dtype).removeprefix("torch."))
        return cls(model, processor, name=label, device=torch_device, dtype=torch_dtype, info=info)

    @property
    def image_size(self) -> int:
        crop = getattr(self.processor.image_processor, "crop_size", None) or {}
        return int(crop.get("height", 1024))

    def clean_prompt(self, prompt: str) -> str:
        """The prompt with reserved tokens and control characters removed."""
        return sanitize_prompt(prompt, self.reserved_tokens)

    def prepare(self, image: Image.Image | None, prompt: str, max_new_tokens: int, *,
                image_fit: ImageFit = "pad") -> PreparedInput:
        """Template, tokenise and preprocess one request (thread-safe, off the inference thread).

        ``image_fit``: ``pad`` shows the model the whole image on a square of the processor's
        mean colour (Apple's training framing); ``crop`` keeps the processor's centre crop.
        """
        turn = ChatTurn("user", (prompt,), images=0 if image is None else 1)
        return self.prepare_chat([turn], [] if image is None else [image], max_new_tokens, image_fit=image_fit)

    def prepare_chat(self, turns: Sequence[ChatTurn], images: Sequence[Image.Image], max_new_tokens: int, *,
                     image_fit: ImageFit = "pad") -> PreparedInput:
        """Template, tokenise and preprocess a conversation (thread-safe, off the inference thread).

        ``images`` are the pictures of every user turn, in turn order (``turn.images`` of them each);
        each turn's texts are cleaned like a prompt (see :mod:`.chat`). A single user turn with one
        image and one text gives exactly what :meth:`prepare` gives.
        """
        if sum(turn.images for turn in turns) != len(images):
            raise ValueError(f"the turns show {sum(turn.images for turn in turns)} images, {len(images)} were given")
        messages = template_messages(turns, self.clean_prompt)
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        if not images:
            encoded = self.tokenizer([text], return_tensors="pt")
            pixel_values = None
        else:
            encoded = self.processor(images=[self._fit(image, image_fit) for image in images], text=[text],
                                     return_tensors="pt")
            pixel_values = encoded["pixel_values"]
        return PreparedInput(input_ids=encoded["input_ids"][0], pixel_values=pixel_values,
                             max_new_tokens=max_new_tokens)

    def _fit(self, image: Image.Image, image_fit: ImageFit) -> Image.Image:
        if image_fit == "pad":
            mean = getattr(self.processor.image_processor, "image_mean", None) or (0.0, 0.0, 0.0)
            return pad_to_square(image, pad_colour(mean), max_side=self.image_size)
        if image_fit == "crop":
            return bound_aspect(image)
        raise ValueError(f"image_fit must be 'pad' or 'crop', got {image_fit!r}")

    @torch.inference_mode()
    def generate(self, batch: Sequence[PreparedInput]) -> list[Generation]:
        """One left-padded greedy ``generate`` over the batch; row i answers batch[i]."""
        if not batch:
            return []
        width = max(item.prompt_tokens for item in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, width - item.prompt_tokens:] = item.input_ids
            attention[row, width - item.prompt_tokens:] = 1
        kwargs = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
        pixels = [item.pixel_values for item in batch if item.pixel_values is not None]
        if pixels:
            kwargs["pixel_values"] = torch.cat(pixels).to(self.device, self.dtype)
        limits = [item.max_new_tokens for item in batch]
        from transformers import StoppingCriteriaList

        output = self.model.generate(
            **kwargs, do_sample=False, num_beams=1, max_new_tokens=max(limits),
            stopping_criteria=StoppingCriteriaList([_PerRowLimit(width, limits)]),
            pad_token_id=self.pad_id)
        new_tokens = output[:, width:].tolist()
        return [self._finish(tokens[:limit], limit, item.prompt_tokens)
                for tokens, limit, item in zip(new_tokens, limits, batch, strict=True)]

    def _finish(self, tokens: list[int], limit: int, prompt_tokens: int) -> Generation:
        for i, token in enumerate(tokens):
            if token in self.eos_ids:
                kept = tokens[:i]
                reason: Literal["stop", "length"] = "stop"
                break
        else:
            kept, reason = tokens, "length"
        return Generation(text=decode_text(self.tokenizer, kept), token_ids=tuple(kept), finish_reason=reason,
                          prompt_tokens=prompt_tokens)
