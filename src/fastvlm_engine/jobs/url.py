"""Reading FASTVLM_QUEUE_URL: which backend, where, and how to name it without its password.

Kept free of the rest of the package so that config.py can validate the setting with it.

    ""                                  SQLite at <state_dir>/jobs.db
    sqlite:///relative/jobs.db          SQLite, path relative to the working directory
    sqlite:////var/lib/fastvlm/jobs.db  SQLite, absolute path (four slashes, as SQLAlchemy)
    redis://[user:pass@]host:port/db    Redis (rediss:// for TLS)
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["QueueTarget", "parse_queue_url"]

_SCHEMES = ("sqlite", "redis", "rediss")


@dataclass(frozen=True)
class QueueTarget:
    """A parsed queue URL. ``path`` is None for the default SQLite file under the state dir."""

    backend: Literal["sqlite", "redis"]
    url: str = ""
    path: Path | None = None
    label: str = ""
    """Backend kind and host, never a password or a file path: safe in a client-facing message."""
    description: str = ""
    """For logs: the label plus the database (SQLite: its file)."""


def parse_queue_url(url: str) -> QueueTarget:
    """Parse and check a queue URL; raises ValueError saying what form is expected."""
    url = url.strip()
    if not url:
        return QueueTarget("sqlite", label="sqlite", description="sqlite (default file under the state dir)")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise ValueError(f"expected sqlite:///<path> or redis://[user:pass@]host:port/db; got a URL with "
                         f"scheme {scheme or '(none)'!r}")
    if scheme == "sqlite":
        if parts.netloc or not url.lower().startswith("sqlite:///") or len(parts.path) < 2:
            raise ValueError("expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = Path(urllib.parse.unquote(parts.path[1:]))
        return QueueTarget("sqlite", path=path, label="sqlite", description=f"sqlite at {path}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("the Redis URL has an invalid port") from None
    if not parts.hostname:
        raise ValueError("expected redis://host:port/db; the URL names no host")
    database = parts.path.strip("/") or "0"
    if not database.isdigit():
        raise ValueError(f"expected a Redis database number after the host, got {database!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    label = f"{'redis (TLS)' if scheme == 'rediss' else 'redis'} at {host}:{port or 6379}"
    return QueueTarget("redis", url=url, label=label, description=f"{label}/{database}")
