"""A content hash of a checkpoint folder, cheap to recompute on every start.

A converted copy is keyed by what it was made from, so a changed source file means a new
conversion. Hashing a 7B checkpoint takes tens of seconds, so each file's digest is remembered
next to the cache together with its size and modification time, and only files that changed
since are read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["folder_files", "folder_hash"]

_MEMO = ".file-digests.json"
_CHUNK = 8 * 1024 * 1024


def folder_files(folder: Path) -> list[Path]:
    """The top-level files of a checkpoint folder (symlinks followed, hidden files skipped)."""
    return sorted(path for path in folder.iterdir() if not path.name.startswith(".") and path.is_file())


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _load_memo(memo_path: Path) -> dict[str, dict]:
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def folder_hash(folder: str | Path, memo_dir: str | Path, *, salt: str = "") -> str:
    """SHA-256 over every file's name and content digest; ``salt`` adds e.g. a converter version."""
    folder, memo_dir = Path(folder), Path(memo_dir)
    memo_path = memo_dir / _MEMO
    memo = _load_memo(memo_path)
    changed = False
    lines = [salt]
    for path in folder_files(folder):
        real = os.path.realpath(path)
        stat = os.stat(real)
        seen = memo.get(real)
        if not seen or seen.get("size") != stat.st_size or seen.get("mtime_ns") != stat.st_mtime_ns:
            seen = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": _file_digest(Path(real))}
            memo[real] = seen
            changed = True
        lines.append(f"{path.name}\t{seen['sha256']}")
    if changed:
        memo_dir.mkdir(parents=True, exist_ok=True)
        partial = memo_path.with_name(f"{_MEMO}.{os.getpid()}")
        partial.write_text(json.dumps(memo, indent=1, sort_keys=True))
        os.replace(partial, memo_path)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()
