"""Build a model folder once, even when several worker processes start at the same moment."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_once"]


def build_once(out_dir: str | Path, marker: str, build: Callable[[Path], object]) -> Path:
    """Return ``out_dir`` once it holds ``marker``; otherwise run ``build(staging)`` under a file
    lock and move the result into place, so a half-written folder is never seen."""
    out = Path(out_dir)
    if (out / marker).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / marker).is_file():
            return out
        staging = out.parent / f".{out.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        build(staging)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    return out
