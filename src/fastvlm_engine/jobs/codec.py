"""A job as flat fields (SQLite columns, Redis hash fields) and back.

Dicts travel as JSON text, the result as raw bytes, times as floats (Redis: their repr, which
round-trips exactly, so a compare-and-set on a lease expiry compares like with like). A None
field is absent from a Redis hash and NULL in SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from .model import Job, JobStatus

__all__ = ["FIELDS", "from_record", "to_record"]

FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job))
_JSON = frozenset({"options", "source", "error", "progress"})
_FLOAT = frozenset({"created_at", "queued_at", "started_at", "finished_at", "lease_expires_at"})


def to_record(job: Job) -> dict[str, str | float | int | bytes | None]:
    """Every field of the job; dicts must be JSON-serialisable (a ValueError names the one that is not)."""
    record: dict[str, str | float | int | bytes | None] = {}
    for name in FIELDS:
        value = getattr(job, name)
        if name in _JSON and value is not None:
            try:
                value = json.dumps(value, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"the job's {name} must be JSON-serialisable: {exc}") from None
        elif name == "status":
            value = str(value)
        record[name] = value
    return record


def from_record(record: Mapping[str, Any]) -> Job:
    """Build a job from stored fields (str or bytes keys and values; missing = None)."""
    values: dict[str, Any] = {}
    for key, raw in record.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name not in FIELDS:
            continue
        if raw is None or name == "result":
            values[name] = raw if raw is None else bytes(raw)
            continue
        text = bytes(raw).decode() if isinstance(raw, (bytes, bytearray, memoryview)) else raw
        if name in _JSON:
            values[name] = json.loads(text)
        elif name in _FLOAT:
            values[name] = float(text)
        elif name == "attempts":
            values[name] = int(text)
        elif name == "status":
            values[name] = JobStatus(text)
        else:
            values[name] = text
    return Job(**values)
