"""The folder of converted checkpoints (``FASTVLM_CACHE_DIR``): convert once, reuse on every start.

Each entry is named after the model and the hash of its source files
(``FastVLM-0.5B-1f0c...``), so editing or replacing the source makes a new entry and every
worker pointed at the same source shares one copy. Concurrent workers build it once
(:func:`..build_once.build_once`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .build_once import build_once
from .convert import CONVERSION_MARKER, CONVERTER_VERSION, write_converted
from .model_info import ModelInfo
from .source_hash import folder_hash

__all__ = ["CachedModel", "cache_entry", "conversion_info", "ensure_converted", "list_cached", "source_digest"]


@dataclass(frozen=True)
class CachedModel:
    """One converted checkpoint in the cache, as ``fastvlm models`` lists it."""

    path: Path
    info: ModelInfo
    size_bytes: int


def source_digest(folder: Path, cache_dir: Path) -> str:
    """The cache key of a source folder (its files' hashes and the converter version)."""
    return folder_hash(folder, cache_dir, salt=f"fastvlm-convert v{CONVERTER_VERSION}")


def cache_entry(cache_dir: Path, name: str, digest: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"
    return cache_dir / f"{slug}-{digest[:16]}"


def conversion_info(folder: Path) -> ModelInfo | None:
    """The identity recorded in a converted folder, or None for a folder not made by the converter."""
    try:
        data = json.loads((folder / CONVERSION_MARKER).read_text())
        return ModelInfo(name=str(data["name"]), format="apple-converted", dtype=str(data["dtype"]),
                         source=str(data["source"]), source_hash=data.get("source_hash"),
                         image_aspect_ratio=data.get("image_aspect_ratio"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def ensure_converted(source_folder: Path, out: Path, *, source: str, digest: str) -> ModelInfo:
    """Convert an Apple folder into the cache entry ``out`` unless a worker already has; its identity."""
    build_once(out, marker=CONVERSION_MARKER,
               build=lambda staging: write_converted(source_folder, staging, source=source, source_hash=digest))
    info = conversion_info(out)
    if info is None:
        raise RuntimeError(f"{out.name} has an unreadable {CONVERSION_MARKER}; delete it to convert again")
    return info


def list_cached(cache_dir: Path) -> list[CachedModel]:
    """Every complete conversion in the cache (staging folders and stray files are skipped)."""
    if not cache_dir.is_dir():
        return []
    entries = []
    for folder in sorted(cache_dir.iterdir()):
        info = conversion_info(folder) if folder.is_dir() and not folder.name.startswith(".") else None
        if info is not None:
            size = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
            entries.append(CachedModel(path=folder, info=info, size_bytes=size))
    return entries
