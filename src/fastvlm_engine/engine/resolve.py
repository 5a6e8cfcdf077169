"""From ``FASTVLM_MODEL`` to a folder the native loader can read, and the model's identity.

``FASTVLM_MODEL`` may name a native ``fast_vlm`` checkpoint, one of Apple's releases
(``llava_qwen2``: converted once into ``FASTVLM_CACHE_DIR``, see :mod:`.model_cache`), or be
empty (the built-in tiny random model), each as a local folder or a hub id. Hub ids are looked
up in the local Hugging Face cache first; with ``HF_HUB_OFFLINE=1`` that is the only place, and
a model that is not there fails with a message that says so.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import Settings
from .model_info import ModelInfo, derive_model_name

__all__ = ["ModelSourceError", "SourceKind", "SourceReport", "detect_format", "inspect_source", "resolve_model",
           "source_folder"]

SourceKind = Literal["native", "apple", "tiny-random"]

# What an Apple release needs from the hub to be converted (no optimizer states, no remote code).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.jinja", "LICENSE*"]


class ModelSourceError(ValueError):
    """``FASTVLM_MODEL`` names nothing loadable; the message says what was found and what to do."""


@dataclass(frozen=True)
class SourceReport:
    """What ``FASTVLM_MODEL`` points at, found without converting or loading anything."""

    setting: str
    kind: SourceKind
    folder: Path
    info: ModelInfo
    converted: Path | None = None  # where an Apple release's converted copy is (or will be) cached


def _hub_offline() -> bool:
    from huggingface_hub import is_offline_mode

    return bool(is_offline_mode())


def _looks_like_path(value: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a folder."""
    return value.startswith((os.sep, ".", "~")) or value.count("/") > 1


def _hub_file(repo_id: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=_hub_offline()))
    except Exception as exc:  # OfflineModeIsEnabled, LocalEntryNotFoundError, RepositoryNotFoundError, HTTP errors
        where = ("it is not in the local Hugging Face cache and the hub is off (HF_HUB_OFFLINE=1)"
                 if _hub_offline() else f"the hub lookup failed ({type(exc).__name__})")
        raise ModelSourceError(
            f"FASTVLM_MODEL={repo_id!r} is not a local folder, and {where}. Download it where the hub is "
            f"reachable (huggingface-cli download {repo_id}) or point FASTVLM_MODEL at a folder.") from None


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=_hub_offline()))
    except Exception as exc:  # the same failures as _hub_file, for the weight files
        raise ModelSourceError(f"FASTVLM_MODEL={repo_id!r}: its files could not be fetched from the hub or "
                               f"the local cache ({type(exc).__name__})") from None


def _read_config(folder: Path, setting: str) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise ModelSourceError(f"FASTVLM_MODEL={setting!r}: no config.json in the folder") from None
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"FASTVLM_MODEL={setting!r}: config.json is unreadable ({exc})") from None
    if not isinstance(config, dict):
        raise ModelSourceError(f"FASTVLM_MODEL={setting!r}: config.json is not a JSON object")
    return config


def detect_format(config: dict[str, Any], folder: Path) -> SourceKind:
    """native, apple or tiny-random, from the folder's config (and the tiny model's marker)."""
    from .convert import is_apple_config
    from .tiny import TINY_MARKER

    if (folder / TINY_MARKER).is_file():
        return "tiny-random"
    if config.get("model_type") == "fast_vlm":
        return "native"
    if is_apple_config(config):
        return "apple"
    raise ModelSourceError(f"config.json has model_type {config.get('model_type')!r}: expected 'fast_vlm' (the "
                           "native format) or 'llava_qwen2' (Apple's FastVLM release, converted on first start)")


def _stored_dtype(config: dict[str, Any]) -> str:
    text = config.get("text_config") or {}
    return str(config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or "float32")


def _hidden_size(config: dict[str, Any]) -> int | None:
    value = (config.get("text_config") or config).get("hidden_size")
    return value if isinstance(value, int) else None


def source_folder(value: str, *, config_only: bool = False) -> Path:
    """The local folder behind a folder path or hub id (from the hub cache, or fetched when allowed).

    ``config_only`` fetches just config.json of a hub repository, enough to tell its format.
    """
    local = Path(value).expanduser()
    if local.is_dir():
        return local.resolve()
    if _looks_like_path(value):
        raise ModelSourceError(f"FASTVLM_MODEL={value!r}: no such folder")
    return _hub_file(value, "config.json").parent if config_only else _hub_snapshot(value)


def inspect_source(settings: Settings) -> SourceReport:
    """Find what ``FASTVLM_MODEL`` names (hub config fetched if needed); converts and builds nothing."""
    from .convert import CONVERSION_MARKER
    from .model_cache import cache_entry, conversion_info, source_digest
    from .tiny import TINY_MODEL_NAME

    setting = settings.model
    if not setting:
        folder = settings.tiny_model_path
        info = ModelInfo(name=TINY_MODEL_NAME, format="tiny-random", dtype="float32", source="built-in")
        return SourceReport(setting="", kind="tiny-random", folder=folder, info=info)
    local = Path(setting).expanduser()
    folder = source_folder(setting, config_only=True)
    config = _read_config(folder, setting)
    kind = detect_format(config, folder)
    name = derive_model_name(setting, _hidden_size(config))
    if kind == "tiny-random":
        info = ModelInfo(name=TINY_MODEL_NAME, format="tiny-random", dtype=_stored_dtype(config), source=setting)
    elif kind == "native":
        recorded = conversion_info(folder) if (folder / CONVERSION_MARKER).is_file() else None
        info = recorded or ModelInfo(name=name, format="native", dtype=_stored_dtype(config), source=setting)
    else:
        if not local.is_dir():
            folder = source_folder(setting)
        digest = source_digest(folder, settings.cache_path)
        info = ModelInfo(name=name, format="apple-converted", dtype=_stored_dtype(config), source=setting,
                         source_hash=digest, image_aspect_ratio=config.get("image_aspect_ratio"))
        return SourceReport(setting=setting, kind=kind, folder=folder, info=info,
                            converted=cache_entry(settings.cache_path, name, digest))
    return SourceReport(setting=setting, kind=kind, folder=folder, info=info)


def resolve_model(settings: Settings) -> tuple[str, ModelInfo]:
    """(what to pass to the native loader, the model's identity); converts an Apple release once."""
    from .model_cache import ensure_converted
    from .tiny import ensure_tiny_model

    report = inspect_source(settings)
    if not report.setting:
        return str(ensure_tiny_model(report.folder)), report.info
    if report.kind == "apple" and report.converted is not None and report.info.source_hash:
        info = ensure_converted(report.folder, report.converted, source=report.setting,
                                digest=report.info.source_hash)
        return str(report.converted), info
    local = Path(report.setting).expanduser()
    return (str(report.folder) if local.is_dir() else report.setting), report.info
