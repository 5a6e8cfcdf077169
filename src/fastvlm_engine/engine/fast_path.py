"""The GPU fast path: decode steps replayed as CUDA graphs, and a channels-last vision tower.

UNVERIFIED: this module was written without access to a GPU and has never run. The scheduler only
imports it when ``engine_fast_path`` is on and the model lives on a CUDA device; the CPU path never
touches it. Check it on a GPU with ``bench/continuous_batching.py --shape 0.5b --device cuda`` (it
compares the tokens against the eager path) before relying on it.

How it works: the KV cache is preallocated (graphs capture tensor addresses), active sequences
always sit in rows ``0..n-1`` (see :mod:`.kv`), so a step for ``n`` sequences replays the graph of
the smallest captured batch size ``b >= n`` over rows ``0..b-1``; rows ``n..b-1`` are free slots
whose dummy token writes position 0 of its own row and is ignored. Attention reads the first ``c``
cache positions, ``c`` being the smallest power-of-two context bucket above every position, so
short contexts do not pay for the whole slot. Graphs are captured lazily, the first time a
(batch, context) bucket is needed, from the step's real inputs, so the warm-up run before the
capture writes exactly what the replay writes. All graphs share one memory pool; they never run
concurrently, and each keeps its own output tensor alive.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from .runner import DecoderRunner

__all__ = ["GraphedDecoder", "context_buckets", "use_channels_last_vision"]

log = logging.getLogger(__name__)

_SMALLEST_CONTEXT_BUCKET = 128


def context_buckets(context_tokens: int) -> list[int]:
    """Powers of two from 128 up to the slot length, ending with the slot length itself."""
    buckets, size = [], _SMALLEST_CONTEXT_BUCKET
    while size < context_tokens:
        buckets.append(size)
        size *= 2
    buckets.append(context_tokens)
    return buckets


def use_channels_last_vision(model) -> None:
    """Store the vision tower's conv weights channels-last (faster convolutions in bf16 on GPUs)."""
    model.model.vision_tower.to(memory_format=torch.channels_last)


class GraphedDecoder:
    """Drop-in for :meth:`DecoderRunner.decode` that replays captured CUDA graphs."""

    def __init__(self, runner: DecoderRunner, batch_sizes: Sequence[int]) -> None:
        if runner.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        if not runner.cache.preallocated:
            raise ValueError("CUDA graphs need a preallocated KV cache")
        rope_type = getattr(runner.rotary, "rope_type", "default")
        if "dynamic" in str(rope_type) or rope_type == "longrope":
            raise ValueError(f"rope type {rope_type!r} changes its frequencies at run time; no graphs")
        capacity = runner.cache.capacity
        self.runner = runner
        self.batch_sizes = sorted({size for size in batch_sizes if 1 <= size <= capacity.sequences})
        self.context_buckets = context_buckets(capacity.context_tokens)
        largest = self.batch_sizes[-1] if self.batch_sizes else 1
        self._tokens = torch.zeros(largest, dtype=torch.long, device=runner.device)
        self._positions = torch.zeros(largest, dtype=torch.long, device=runner.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None

    def decode(self, row_start: int, tokens: torch.Tensor, positions: torch.Tensor, context: int) -> torch.Tensor:
        rows = tokens.shape[0]
        if row_start != 0 or not self.batch_sizes or rows > self.batch_sizes[-1]:
            return self.runner.decode(row_start, tokens, positions, context)
        batch = next(size for size in self.batch_sizes if size >= rows)
        bucket = next(size for size in self.context_buckets if size >= context)
        self._tokens[:rows].copy_(tokens)
        self._positions[:rows].copy_(positions)
        self._tokens[rows:batch].zero_()
        self._positions[rows:batch].zero_()
        graph, logits = self._graphs.get((batch, bucket)) or self._capture(batch, bucket)
        graph.replay()
        return logits[:rows]

    def _capture(self, batch: int, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        tokens, positions = self._tokens[:batch], self._positions[:batch]
        side = torch.cuda.Stream(device=self.runner.device)
        side.wait_stream(torch.cuda.current_stream(self.runner.device))
        with torch.cuda.stream(side):
            self.runner.decode(0, tokens, positions, bucket)
        torch.cuda.current_stream(self.runner.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self.runner.decode(0, tokens, positions, bucket)
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[(batch, bucket)] = (graph, logits)
        log.info("captured a CUDA graph for %d sequences over %d context positions", batch, bucket)
        return graph, logits
