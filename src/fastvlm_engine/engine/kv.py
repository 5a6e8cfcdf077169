"""KV cache memory: what one token costs, how many sequences fit, and the slot storage itself.

Storage is one row ("slot") per running sequence, each as long as the largest context a request may
need. Active sequences always occupy rows ``0..n-1``: when one leaves, the last row moves into its
place, so a decode step reads plain views of the first rows with no gather, and the GPU fast path can
capture a step over rows ``0..bucket-1`` as a CUDA graph with static shapes. The price is that a short
request reserves a whole slot; admission is therefore per slot (prompt + max_new_tokens must fit in
one), and the sequence count comes from the memory budget divided by the slot size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import MiB

__all__ = ["KVCapacity", "SlotKVCache", "kv_bytes_per_token", "kv_memory_budget", "plan_capacity"]


def kv_bytes_per_token(text_config, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers: layers x kv_heads x head_dim x 2 x dtype size."""
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // heads
    element = torch.empty((), dtype=dtype).element_size()
    return int(text_config.num_hidden_layers * kv_heads * head_dim * 2 * element)


def kv_memory_budget(device: torch.device, *, memory_fraction: float, reserve_bytes: int) -> int:
    """Bytes the KV cache may take: (free memory - reserve) x fraction.

    Free memory is what the GPU has left after the model loaded (``torch.cuda.mem_get_info``), or the
    host's available RAM for a CPU worker. The fraction leaves room for other workers on the same
    device, which load after this one measured.
    """
    if not 0 < memory_fraction <= 1:
        raise ValueError("memory_fraction must be in (0, 1]")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(max(0, free - reserve_bytes) * memory_fraction)


@dataclass(frozen=True)
class KVCapacity:
    """How much a worker can hold: ``sequences`` slots of ``context_tokens`` tokens each."""

    sequences: int
    context_tokens: int
    bytes_per_token: int

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.context_tokens < 1 or self.bytes_per_token < 1:
            raise ValueError("sequences, context_tokens and bytes_per_token must be at least 1")

    @property
    def tokens(self) -> int:
        return self.sequences * self.context_tokens

    @property
    def bytes(self) -> int:
        return self.tokens * self.bytes_per_token


def plan_capacity(text_config, dtype: torch.dtype, budget_bytes: int, *, max_sequences: int,
                  max_context_tokens: int) -> KVCapacity:
    """Fit as many slots as the budget allows, up to ``max_sequences``; raise if not even one fits."""
    if max_sequences < 1 or max_context_tokens < 1:
        raise ValueError("max_sequences and max_context_tokens must be at least 1")
    context = min(max_context_tokens, int(getattr(text_config, "max_position_embeddings", max_context_tokens)))
    per_token = kv_bytes_per_token(text_config, dtype)
    sequences = min(max_sequences, budget_bytes // (context * per_token))
    if sequences < 1:
        raise RuntimeError(f"the KV cache budget ({budget_bytes / MiB:.1f} MiB) holds no sequence of {context} "
                           f"tokens ({context * per_token / MiB:.1f} MiB); lower engine_max_context_tokens or "
                           "raise kv_cache_memory_fraction")
    return KVCapacity(sequences=int(sequences), context_tokens=context, bytes_per_token=per_token)


class SlotKVCache:
    """Keys and values as ``(layers, rows, kv_heads, context, head_dim)`` tensors.

    Rows are allocated on demand (doubling, zero-filled, so stale slots never hold NaN) unless
    ``preallocate`` is set, which the CUDA-graph fast path needs: graphs capture tensor addresses,
    so the storage must never move.
    """

    def __init__(self, capacity: KVCapacity, *, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, preallocate: bool = False) -> None:
        self.capacity = capacity
        self.shape_tail = (kv_heads, capacity.context_tokens, head_dim)
        self.layers = layers
        self.dtype = dtype
        self.device = device
        self.preallocated = preallocate
        rows = capacity.sequences if preallocate else 1
        self.k = torch.zeros((layers, rows, *self.shape_tail), dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    @property
    def rows_allocated(self) -> int:
        return self.k.shape[1]

    @property
    def bytes_allocated(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def ensure_rows(self, rows: int, used_context: int) -> None:
        """Make rows ``0..rows-1`` exist, copying only the ``used_context`` prefix of the old ones."""
        if rows > self.capacity.sequences:
            raise RuntimeError(f"{rows} rows requested but the cache holds {self.capacity.sequences}")
        old = self.rows_allocated
        if rows <= old:
            return
        if self.preallocated:
            raise RuntimeError("a preallocated KV cache cannot grow")
        new_rows = min(self.capacity.sequences, max(rows, 2 * old))
        grown = []
        for tensor in (self.k, self.v):
            fresh = torch.zeros((self.layers, new_rows, *self.shape_tail), dtype=self.dtype, device=self.device)
            if used_context > 0:
                fresh[:, :old, :, :used_context] = tensor[:, :, :, :used_context]
            grown.append(fresh)
        self.k, self.v = grown

    def write_prompt(self, layer: int, row_start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store a prefill's ``(n, kv_heads, length, head_dim)`` keys/values in rows ``row_start..+n``."""
        rows, length = keys.shape[0], keys.shape[2]
        self.k[layer, row_start:row_start + rows, :, :length] = keys
        self.v[layer, row_start:row_start + rows, :, :length] = values

    def write_token(self, layer: int, rows: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
                    values: torch.Tensor) -> None:
        """Store one ``(n, kv_heads, head_dim)`` token per row at that row's own position."""
        self.k[layer][rows, :, positions] = keys
        self.v[layer][rows, :, positions] = values

    def view(self, layer: int, row_start: int, rows: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(rows, kv_heads, context, head_dim)`` views of keys and values (no copy)."""
        end = row_start + rows
        return self.k[layer, row_start:end, :, :context], self.v[layer, row_start:end, :, :context]

    def move_row(self, source: int, target: int, length: int) -> None:
        """Copy the first ``length`` positions of row ``source`` into row ``target`` (all layers)."""
        if length > 0 and source != target:
            self.k[:, target, :, :length] = self.k[:, source, :, :length]
            self.v[:, target, :, :length] = self.v[:, source, :, :length]
