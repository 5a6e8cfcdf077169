"""FastVLM's forward pass over its own Hugging Face modules, with our KV slots instead of HF's cache.

Running the Qwen2 decoder layers here (norms, q/k/v projections, the model's own rotary module,
attention, o_proj, MLP, final norm, lm_head) lets every row of a batch sit at its own position:
a prefill fills new rows while others are mid-generation, and a decode step advances all rows by
one token each. The vision path is FastVlmModel's: ``get_image_features`` over the arrivals' images
at once, spliced with ``masked_scatter`` at the image-token positions. The arithmetic is the same
as transformers' (including fp32 RMSNorm and rotary), so greedy tokens match ``generate``.

Decode attention folds grouped-query heads into the query axis: the ``heads / kv_heads`` queries
that share one KV head become that head's query rows, which is exact for a single new token and
needs no repeated keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .kv import SlotKVCache
from .model import PreparedInput

__all__ = ["DecoderRunner", "check_supported"]


def check_supported(model) -> None:
    """Raise ValueError unless the language model is a full-attention Qwen2 (every FastVLM checkpoint).

    The layer arithmetic below is Qwen2's; a relative with extra pieces (Qwen3's q/k norms, sliding
    windows) would run without them and silently produce different text, so it is refused.
    """
    config = model.config.text_config
    if config.model_type != "qwen2":
        raise ValueError(f"continuous batching runs Qwen2 language models, not {config.model_type!r}")
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    if any(kind != "full_attention" for kind in layer_types):
        raise ValueError("continuous batching supports full-attention layers only (no sliding window)")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


class DecoderRunner:
    """Prefill and decode steps over rows of a :class:`SlotKVCache`."""

    def __init__(self, model, cache: SlotKVCache, *, channels_last: bool = False) -> None:
        check_supported(model)
        config = model.config.text_config
        self.model = model
        self.cache = cache
        self.channels_last = channels_last
        lm = model.model.language_model
        self.embed = model.get_input_embeddings()
        self.layers = list(lm.layers)
        self.norm = lm.norm
        self.rotary = lm.rotary_emb
        self.lm_head = model.lm_head
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.groups = self.heads // self.kv_heads
        self.image_token_id = model.config.image_token_id
        self.device = next(model.parameters()).device
        self.dtype = self.embed.weight.dtype

    # --- vision and embeddings -------------------------------------------------------------------

    def _embed_prompts(self, inputs: Sequence[PreparedInput], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt embeddings with image features spliced in, and the prompt lengths."""
        ids = torch.zeros((len(inputs), width), dtype=torch.long)
        for row, item in enumerate(inputs):
            ids[row, :item.prompt_tokens] = item.input_ids
        ids = ids.to(self.device)
        embeds = self.embed(ids)
        pixels = [item.pixel_values for item in inputs if item.pixel_values is not None]
        if pixels:
            pixel_values = torch.cat(pixels).to(self.device, self.dtype)
            if self.channels_last:
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            features = self.model.model.get_image_features(pixel_values=pixel_values).pooler_output
            mask = ids == self.image_token_id
            if int(mask.sum()) * embeds.shape[-1] != features.numel():
                raise ValueError(f"image features and image tokens do not match: {int(mask.sum())} tokens, "
                                 f"{features.shape[0] * features.shape[1]} features")
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))
        lengths = torch.tensor([item.prompt_tokens for item in inputs], device=self.device)
        return embeds, lengths

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden))

    def _project(self, layer, hidden: torch.Tensor, rows: int, length: int):
        attn = layer.self_attn
        shape = (rows, length, -1, self.head_dim)
        q = attn.q_proj(hidden).view(shape).transpose(1, 2)
        k = attn.k_proj(hidden).view(shape).transpose(1, 2)
        v = attn.v_proj(hidden).view(shape).transpose(1, 2)
        return q, k, v

    def _finish_layer(self, layer, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        hidden = residual + layer.self_attn.o_proj(attended)
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    # --- steps -----------------------------------------------------------------------------------

    def prefill(self, row_start: int, inputs: Sequence[PreparedInput]) -> torch.Tensor:
        """Run the prompts, store their keys/values in rows ``row_start..``, return last-token logits."""
        rows = len(inputs)
        width = max(item.prompt_tokens for item in inputs)
        if width > self.cache.capacity.context_tokens:
            raise ValueError(f"a prompt of {width} tokens does not fit a KV slot")
        hidden, lengths = self._embed_prompts(inputs, width)
        positions = torch.arange(width, device=self.device).unsqueeze(0).expand(rows, width)
        cos, sin = self.rotary(hidden, positions)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        if rows == 1:
            mask, causal = None, True  # no padding: the plain causal kernel (flash attention on a GPU)
        else:
            keys_valid = torch.arange(width, device=self.device).unsqueeze(0) < lengths.unsqueeze(1)
            mask = torch.ones((width, width), dtype=torch.bool, device=self.device).tril()
            mask = (mask.unsqueeze(0) & keys_valid.unsqueeze(1)).unsqueeze(1)
            causal = False
        for index, layer in enumerate(self.layers):
            residual = hidden
            q, k, v = self._project(layer, layer.input_layernorm(hidden), rows, width)
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            self.cache.write_prompt(index, row_start, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                 enable_gqa=self.groups > 1)
            hidden = self._finish_layer(layer, residual, out.transpose(1, 2).reshape(rows, width, -1))
        last = hidden[torch.arange(rows, device=self.device), lengths - 1]
        return self._logits(last)

    def decode(self, row_start: int, tokens: torch.Tensor, positions: torch.Tensor, context: int) -> torch.Tensor:
        """One token for each of rows ``row_start..+n``: ``tokens`` at ``positions`` (both ``(n,)`` on the
        device), attending to the first ``context`` cache positions (> every position). Graph-safe: no
        host synchronisation and static shapes for static inputs."""
        rows = tokens.shape[0]
        row_index = torch.arange(row_start, row_start + rows, device=self.device)
        hidden = self.embed(tokens).unsqueeze(1)
        cos, sin = self.rotary(hidden, positions.unsqueeze(1))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        valid = torch.arange(context, device=self.device).unsqueeze(0) <= positions.unsqueeze(1)
        mask = valid.view(rows, 1, 1, context)
        for index, layer in enumerate(self.layers):
            residual = hidden
            q, k, v = self._project(layer, layer.input_layernorm(hidden), rows, 1)
            q, k = _rotary(q, cos, sin), _rotary(k, cos, sin)
            self.cache.write_token(index, row_index, positions, k[:, :, 0], v[:, :, 0])
            keys, values = self.cache.view(index, row_start, rows, context)
            grouped = q.reshape(rows, self.kv_heads, self.groups, self.head_dim)
            out = F.scaled_dot_product_attention(grouped, keys, values, attn_mask=mask)
            hidden = self._finish_layer(layer, residual, out.reshape(rows, 1, -1))
        return self._logits(hidden[:, 0])
