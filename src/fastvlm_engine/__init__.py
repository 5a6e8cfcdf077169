"""FastVLM Descriptor Engine: batched FastVLM inference for images and short videos.

Importing the package has no side effects and imports neither torch nor httpx: the names below
load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Client": "client", "AsyncClient": "client", "RetryPolicy": "client", "FastVLMError": "client",
    "ServiceError": "client", "BusyError": "client", "WorkerError": "client", "RequestRejected": "client",
    "ConnectionFailed": "client", "DeadlineExceeded": "client",
    "Settings": "config", "SettingsError": "config", "load_settings": "config",
    "EngineError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
