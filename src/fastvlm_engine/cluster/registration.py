"""One worker as the registry advertises it: where it is, what it offers and how loaded it is.

A registration is what a node publishes every heartbeat and what routers read back. It carries
no credential and no process detail (pid, log tail stay with the node's supervisor). Its JSON form
(:meth:`Registration.to_json`) is canonical, sorted keys and no spaces, because that exact text
is what gets signed; decoding (:meth:`Registration.from_json`) checks every field, since the text
comes out of a shared Redis.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .addresses import url_host
from .tags import check_tags

__all__ = ["HOST_NAME", "Registration", "still_valid"]

_WORKER_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,128}")
_NODE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
HOST_NAME = re.compile(r"[A-Za-z0-9._:-]{1,253}")
"""What a node's host name may look like (registrations and drains)."""
_STATE = re.compile(r"[a-z_]{1,32}")
_LABEL = re.compile(r"[\x20-\x7e]{0,128}")
_DEVICE = re.compile(r"[\x21-\x7e]{1,64}")
_GPU_FIELDS = {"index": int, "name": str, "memory_total_bytes": int, "memory_free_bytes": int}
_MODEL_FIELDS = {"name": str, "format": str, "dtype": str}
MAX_LATENCY_ENTRIES = 16


def _number(name: str, value: Any, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative {'integer' if integer else 'number'}, got {value!r}")


def _check_record(name: str, record: Any, kinds: dict[str, type]) -> None:
    """``gpu`` and ``model``: None, or a dict of known keys whose values are None or of their kind."""
    if record is None:
        return
    if not isinstance(record, dict) or set(record) - set(kinds):
        raise ValueError(f"{name} must be None or a dict with keys among {', '.join(kinds)}")
    for key, value in record.items():
        if value is None:
            continue
        if kinds[key] is str:
            if not isinstance(value, str) or not _LABEL.fullmatch(value):
                raise ValueError(f"{name} {key} must be printable text of at most 128 characters")
        else:
            _number(f"{name} {key}", value, integer=True)


@dataclass(frozen=True, kw_only=True)
class Registration:
    """A worker endpoint in the registry. ``published_at`` and ``ttl_s`` are stamped by ``Registry.publish``."""

    worker_id: str
    """Unique in the whole cluster: ``<node id>/<local id>``."""
    node_id: str
    host: str
    """The node's host name: routing, draining and ``/healthz`` group workers by it."""
    url: str
    """``http://<advertised address>:<port>`` (IPv6 in brackets)."""
    device: str
    """The device label (``cpu``, ``cuda:0``)."""
    gpu: dict[str, Any] | None = None
    """``index``, ``name``, ``memory_total_bytes``, ``memory_free_bytes`` of its GPU, or None."""
    tags: dict[str, str] = field(default_factory=dict)
    slots: int = 1
    video_slots: int = 1
    state: str = "ready"
    """``ready``, ``draining``, ``loading``... only ``ready`` workers should get new work."""
    in_flight: int = 0
    video_in_flight: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """Measured duration per endpoint (``/predict_image``...), for retry hints and routing."""
    model: dict[str, Any] | None = None
    """``name``, ``format``, ``dtype`` of the loaded model."""
    published_at: float = 0.0
    """Unix seconds, on the publishing node's clock."""
    ttl_s: float = 0.0
    """The entry vanishes from Redis this long after ``published_at`` unless published again."""

    def __post_init__(self) -> None:
        for name, pattern in (("worker_id", _WORKER_ID), ("node_id", _NODE_ID), ("host", HOST_NAME),
                              ("state", _STATE), ("device", _DEVICE)):
            value = getattr(self, name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise ValueError(f"{name} {value!r} is not allowed (expected the form {pattern.pattern})")
        if not isinstance(self.url, str):
            raise ValueError("url must be text")
        url_host(self.url)
        if not isinstance(self.tags, dict):
            raise ValueError("tags must be a dict")
        check_tags(self.tags)
        for name in ("slots", "video_slots", "in_flight", "video_in_flight"):
            _number(name, getattr(self, name), integer=True)
        for name in ("published_at", "ttl_s"):
            _number(name, getattr(self, name))
        if not isinstance(self.latency_ms, dict) or len(self.latency_ms) > MAX_LATENCY_ENTRIES:
            raise ValueError(f"latency_ms must be a dict of at most {MAX_LATENCY_ENTRIES} entries")
        for endpoint, value in self.latency_ms.items():
            if not isinstance(endpoint, str) or not _LABEL.fullmatch(endpoint):
                raise ValueError("latency_ms keys must be printable text of at most 128 characters")
            _number(f"latency_ms[{endpoint}]", value)
        _check_record("gpu", self.gpu, _GPU_FIELDS)
        _check_record("model", self.model, _MODEL_FIELDS)

    @property
    def expires_at(self) -> float:
        return self.published_at + self.ttl_s

    def to_json(self) -> str:
        """The canonical text that is signed and stored."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> Registration:
        """Decode and check an entry; unknown keys (from a newer node) are ignored. Raises ValueError."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise ValueError("the entry is not JSON") from None
        if not isinstance(data, dict):
            raise ValueError("the entry is not a JSON object")
        known = {f.name for f in fields(cls)}
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError:
            raise ValueError("the entry lacks required fields") from None


def still_valid(registration: Registration, now: float, *, skew_s: float = 0.0) -> bool:
    """Was this entry published, and not yet expired, at ``now``, allowing clocks to differ by ``skew_s``?

    Routers use it to keep routing to the workers of their last good snapshot for at most one TTL
    while the registry is unreachable; the registry uses it (with the replay window as skew) to
    refuse stale or future-dated entries, such as an old signed entry written back into Redis.
    """
    return registration.published_at - skew_s <= now <= registration.expires_at + skew_s
