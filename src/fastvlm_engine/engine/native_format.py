"""What makes a folder a native ``fast_vlm`` checkpoint, shared by every builder of one.

The tiny random model and the converter of Apple's checkpoints both write this format, and the
loader (:mod:`.model`) reads it; the chat template, the image token and the processor settings
live here once so the three cannot drift apart.
"""

from __future__ import annotations

__all__ = ["CHAT_TEMPLATE", "IMAGE_TOKEN", "PATCH_SIZE", "build_processor", "image_seq_length"]

IMAGE_TOKEN = "<image>"

PATCH_SIZE = 64
"""FastViTHD's total stride: each 64 x 64 pixel patch becomes one image token."""

# ChatML as in the FastVLM conversion script (and Apple's ``qwen_2`` conversation): a default
# system turn, images first in a user turn (each as <image>), then each text part prefixed by a newline.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def image_seq_length(image_size: int) -> int:
    """Image tokens per picture at this input size."""
    return (image_size // PATCH_SIZE) ** 2


def build_processor(tokenizer, image_size: int):
    """The ``LlavaProcessor`` of the native checkpoints: rescale to [0, 1] only, bicubic, centre crop."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0], do_center_crop=True)
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          chat_template=CHAT_TEMPLATE)
