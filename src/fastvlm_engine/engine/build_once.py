"""Build a model folder exactly once, however many processes ask for it at the same moment.

Several workers start together and all want the same folder (the tiny model, a converted
checkpoint). One takes an exclusive file lock and builds into a private staging folder; the
others wait on the lock and then find the finished folder. The folder appears by one atomic
rename, and a marker file written last inside it says it is complete, so a crash mid-build
leaves only a staging folder that the next attempt discards, never a half-written model.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_once", "publish"]


def build_once(out: str | Path, *, marker: str, build: Callable[[Path], None]) -> Path:
    """Return ``out``, calling ``build(staging)`` first unless ``out/marker`` already exists.

    ``build`` must write the whole folder, ``marker`` last.
    """
    out = Path(out)
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / marker).is_file():
            return out
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            build(staging)
            if not (staging / marker).is_file():
                raise RuntimeError(f"building {out.name} did not write its marker {marker}")
            publish(staging, out, replace=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def publish(staging: Path, out: Path, *, replace: bool) -> None:
    """Move a finished staging folder to ``out`` in one rename (same filesystem)."""
    if out.exists():
        if not replace:
            raise FileExistsError(f"{out} already exists")
        shutil.rmtree(out)
    os.replace(staging, out)
