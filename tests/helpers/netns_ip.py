"""The kernel side of the test network: iproute2 commands, namespace listing, and entering a namespace from a thread.

Everything here acts on named network namespaces (``/var/run/netns/<name>``, as ``ip netns`` keeps them) and never on
the root namespace's links, addresses or routes.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

IP = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), "")
# Where ``ip netns add`` bind-mounts each namespace (iproute2's NETNS_RUN_DIR).
NETNS_RUN_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be made here (not root, no CAP_NET_ADMIN, no iproute2, no veth/bridge support).

    Tests turn it into ``pytest.skip(str(exc))``: the message is the exact reason.
    """


class NetnsCommandFailed(RuntimeError):
    """An ``ip`` command failed after the network was up: a bug or a broken host, never a reason to skip."""


def ip(*args: str, namespace: str | None = None, batch: list[str] | None = None, timeout: float = 30.0) -> str:
    """Run ``ip [-n namespace] args``, or with ``batch`` ``ip [-n namespace] args -batch -`` fed those lines (then
    ``args`` are global options); returns stdout, raises on failure."""
    if not IP:
        raise NetnsUnavailable("iproute2's `ip` is not installed (apt-get install iproute2)")
    command = [IP, *(["-n", namespace] if namespace else []), *args, *(["-batch", "-"] if batch else [])]
    text = "".join(line + "\n" for line in batch) if batch else None
    done = subprocess.run(command, input=text, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        shown = " ".join(command[1:]) + (f" <<< {batch}" if batch else "")
        raise NetnsCommandFailed(f"`ip {shown}` failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def list_namespaces() -> list[str]:
    """Names of all named network namespaces on the machine (ours and anyone else's)."""
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def namespace_pids(namespace: str) -> list[int]:
    """PIDs of every process whose network namespace is ``namespace`` (what ``ip netns pids`` reports)."""
    try:
        return [int(pid) for pid in ip("netns", "pids", namespace).split()]
    except NetnsCommandFailed:
        return []  # the namespace is already gone


def kill_namespace_pids(namespace: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL whatever still runs in ``namespace`` (also processes that left their process group); returns them."""
    pids = namespace_pids(namespace)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline and namespace_pids(namespace):
        time.sleep(0.02)
    return pids


def delete_namespaces(names: list[str]) -> None:
    """Delete the named namespaces that still exist, in one ``ip`` call; deleting one that is gone is not an error."""
    present = set(list_namespaces())
    remaining = [name for name in names if name in present]
    if remaining:
        ip("-force", batch=[f"netns del {name}" for name in remaining])  # -force: one failure does not stop the rest


def enter_namespace(namespace: str) -> None:
    """Move the calling thread (only it: network namespaces are per thread) into ``namespace``, and check it took.

    Sockets made afterwards by this thread live in that namespace for good, whichever thread uses them later.
    """
    path = NETNS_RUN_DIR / namespace
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into network namespace {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)
    if os.stat("/proc/thread-self/ns/net").st_ino != os.stat(path).st_ino:
        raise OSError(f"setns reported success but this thread is not in network namespace {namespace}")

