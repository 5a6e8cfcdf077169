"""Reading FASTVLM_REGISTRY_URL: the job queue's Redis URL rules (``redis://[user:pass@]host:port/db``,
``rediss://`` for TLS), with SQLite refused, and a label that never shows the password.

Kept free of the rest of the package so that config.py can validate the setting with it.
"""

from __future__ import annotations

from ..jobs.url import QueueTarget, parse_queue_url

__all__ = ["parse_registry_url"]


def parse_registry_url(url: str) -> QueueTarget:
    """Parse and check a registry URL; raises ValueError saying what form is expected."""
    if not url.strip():
        raise ValueError("expected redis://[user:pass@]host:port/db; the registry URL is empty")
    target = parse_queue_url(url)
    if target.backend != "redis":
        raise ValueError("expected redis://[user:pass@]host:port/db (or rediss:// for TLS); the registry is "
                         "shared by hosts, so it cannot be SQLite")
    return target
