"""Write converted weights as safetensors, in shards with an index once they pass a size bound.

Shards are produced one at a time from a name -> tensor callback, so converting a 7B model
holds about one shard in memory, not the whole model. The file names and the index are the
ones ``from_pretrained`` looks for.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["MAX_SHARD_BYTES", "write_safetensors"]

MAX_SHARD_BYTES = 4 * 1024**3
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def _plan(sizes: Sequence[tuple[str, int]], max_bytes: int) -> list[list[str]]:
    shards: list[list[str]] = [[]]
    used = 0
    for name, size in sizes:
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def write_safetensors(out: Path, sizes: Sequence[tuple[str, int]], get: Callable[[str], torch.Tensor], *,
                      max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write ``get(name)`` for every name, in order, into ``out``; returns the file names written."""
    from safetensors.torch import save_file

    shards = _plan(sizes, max_shard_bytes)
    files = [_SINGLE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map: dict[str, str] = {}
    for file_name, names in zip(files, shards, strict=True):
        tensors: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for name in names:
            tensor = get(name).contiguous()
            pointer = tensor.untyped_storage().data_ptr()
            if pointer in storages:  # safetensors refuses tensors that share memory (tied .bin weights)
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            tensors[name] = tensor
            weight_map[name] = file_name
        save_file(tensors, str(out / file_name), metadata={"format": "pt"})
        del tensors
    if len(files) > 1:
        total = sum(size for _, size in sizes)
        (out / _INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                             indent=2, sort_keys=True))
        files.append(_INDEX)
    return files
