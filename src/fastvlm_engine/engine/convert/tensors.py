"""Read every tensor of a checkpoint folder, whatever the file layout, without trusting pickles.

Apple's checkpoints come as one ``model.safetensors``, as shards with an index, or as PyTorch
``.bin``/``.pt`` files. Safetensors are opened lazily (a 7B model never sits in memory twice);
PyTorch files are loaded with ``weights_only=True`` (no code in a pickle runs) and memory-mapped
where the file format allows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .errors import ConversionError

__all__ = ["TensorSource", "open_weights"]

_SAFETENSORS_INDEX = "model.safetensors.index.json"
_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# Files a training run leaves beside the weights; they are pickles of other things.
_NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt")


class TensorSource:
    """Name -> tensor over one or more files; shapes are known before any tensor is read."""

    def __init__(self, files: list[Path], kind: str) -> None:
        self.files = files
        self.kind = kind
        self._where: dict[str, int] = {}
        self._handles: list = []
        self._loaded: list[dict[str, torch.Tensor]] = []
        for index, path in enumerate(files):
            names = self._open(path)
            for name in names:
                if name in self._where:
                    raise ConversionError(f"tensor {name!r} appears in both {files[self._where[name]].name} "
                                          f"and {path.name}")
                self._where[name] = index

    def _open(self, path: Path) -> list[str]:
        if self.kind == "safetensors":
            from safetensors import safe_open

            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own SafetensorError for corrupt headers
                raise ConversionError(f"{path.name} is not a readable safetensors file: {exc}") from None
            self._handles.append(handle)
            return list(handle.keys())
        tensors = _load_torch_file(path)
        self._loaded.append(tensors)
        return list(tensors)

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        index = self._where[name]
        if self.kind == "safetensors":
            return tuple(self._handles[index].get_slice(name).get_shape())
        return tuple(self._loaded[index][name].shape)

    def dtype(self, name: str) -> torch.dtype | None:
        index = self._where[name]
        if self.kind == "safetensors":
            return _SAFETENSORS_DTYPES.get(self._handles[index].get_slice(name).get_dtype())
        return self._loaded[index][name].dtype

    def get(self, name: str) -> torch.Tensor:
        index = self._where[name]
        if self.kind == "safetensors":
            return self._handles[index].get_tensor(name)
        return self._loaded[index][name]

    def floating_dtype(self) -> torch.dtype:
        """The dtype most floating-point weights are stored in (by element count)."""
        counts: dict[torch.dtype, int] = {}
        for name in self._where:
            dtype = self.dtype(name)
            if dtype is not None and dtype.is_floating_point:
                counts[dtype] = counts.get(dtype, 0) + math.prod(self.shape(name))
        return max(counts, key=counts.__getitem__) if counts else torch.float32


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _load_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A PyTorch state dict, loaded so that no pickled code can run."""
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # files in the pre-1.6 (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for anything but plain tensors, zip errors for junk
        raise ConversionError(f"{path.name} cannot be loaded as plain tensors (weights_only=True): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in loaded.items()):
        raise ConversionError(f"{path.name} does not hold a state dict (a mapping of names to tensors)")
    return loaded


def _indexed_files(folder: Path, index_name: str) -> list[Path]:
    try:
        weight_map = json.loads((folder / index_name).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConversionError(f"{index_name} is not a valid shard index: {exc}") from None
    files = [folder / name for name in sorted(set(weight_map.values()))]
    absent = [path.name for path in files if not path.is_file()]
    if absent:
        raise ConversionError(f"{index_name} names shards that are not in the folder", {"missing files": absent})
    return files


def open_weights(folder: str | Path) -> TensorSource:
    """The weights of ``folder``: safetensors (sharded or not) first, else PyTorch files."""
    folder = Path(folder)
    if (folder / _SAFETENSORS_INDEX).is_file():
        return TensorSource(_indexed_files(folder, _SAFETENSORS_INDEX), "safetensors")
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return TensorSource(safetensors, "safetensors")
    if (folder / _TORCH_INDEX).is_file():
        return TensorSource(_indexed_files(folder, _TORCH_INDEX), "torch")
    torch_files = sorted(path for path in folder.iterdir()
                         if path.suffix in _TORCH_SUFFIXES and path.name not in _NOT_WEIGHTS
                         and not path.name.startswith("rng_state"))
    if torch_files:
        return TensorSource(torch_files, "torch")
    raise ConversionError(f"no weights found in {folder.name}: expected *.safetensors or pytorch .bin/.pt files")
