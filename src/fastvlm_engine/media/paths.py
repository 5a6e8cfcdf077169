"""Opening client-named files only inside the configured media roots.

A path is resolved (symlinks followed) before the check, opened without following a final
symlink, and the opened descriptor is checked again through /proc, so a file swapped for a
symlink between the check and the open is still refused. Refusals outside the roots carry the
same message whether or not the target exists: the API must not become a file-existence oracle.
Folders can change while this runs (a directory swapped for a symlink and back); whatever the
file system answers then — missing, a loop, a path too long — is "not found", never an error.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import MediaNotFound, MediaTooLarge, PathNotAllowed

__all__ = ["open_media", "read_media"]

_NO_ROOTS = ("Reading server paths is disabled because no media roots are configured. Set "
             "FASTVLM_MEDIA_ROOTS (folders separated by ':') or send the media as base64.")
_OUTSIDE = "That path is not inside the server's media roots."


def _within(path: str, roots: Sequence[Path]) -> bool:
    return any(path == str(root) or path.startswith(str(root).rstrip(os.sep) + os.sep) for root in roots)


def _candidates(user_path: str, roots: Sequence[Path]) -> list[str]:
    if os.path.isabs(user_path):
        return [user_path]
    return [os.path.join(root, user_path) for root in roots]


def open_media(user_path: str, roots: Sequence[Path], max_bytes: int) -> BinaryIO:
    """Open a regular file under one of ``roots`` for reading, enforcing ``max_bytes``.

    Relative paths are looked up in each root in order. Raises PathNotAllowed, MediaNotFound
    or MediaTooLarge; never reveals a resolved server path.
    """
    if not roots:
        raise PathNotAllowed(_NO_ROOTS)
    if "\x00" in user_path or not user_path.strip():
        raise PathNotAllowed(_OUTSIDE)
    allowed = [real for real in map(_resolved, _candidates(user_path, roots)) if real and _within(real, roots)]
    if not allowed:
        raise PathNotAllowed(_OUTSIDE)
    for real in allowed:
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            return _checked(fd, roots, max_bytes)
        except BaseException:
            os.close(fd)
            raise
    raise MediaNotFound()


def _resolved(path: str) -> str | None:
    """The path with every symlink followed, or None when the file system cannot say right now."""
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):  # e.g. a component swapped away mid-walk, ELOOP, embedded NUL
        return None


def _checked(fd: int, roots: Sequence[Path], max_bytes: int) -> BinaryIO:
    proc_link = f"/proc/self/fd/{fd}"
    try:
        opened = os.readlink(proc_link)
    except OSError:
        opened = None  # no /proc (not Linux): the O_NOFOLLOW open and realpath check stand alone
    if opened is not None and not _within(opened, roots):
        raise PathNotAllowed(_OUTSIDE)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise MediaNotFound("That path is not a regular file.")
    if info.st_size > max_bytes:
        raise MediaTooLarge(f"The file is {info.st_size} bytes; the limit is {max_bytes}.")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_media(user_path: str, roots: Sequence[Path], max_bytes: int) -> bytes:
    """Read a whole file under the roots, never more than ``max_bytes``."""
    with open_media(user_path, roots, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # the file grew after fstat
        raise MediaTooLarge(f"The file is larger than the limit of {max_bytes} bytes.")
    return data
