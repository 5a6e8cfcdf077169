"""A separate test process that builds a network and then ends in one chosen way, so the tests can check from outside
what its clean-up (or the next run's reaping) left behind.

    python -m tests.cluster._netns_child MODE PREFIX LOG_DIR [SERVE_DIR]

After set-up it prints one JSON line: the namespaces, the pid of a sleeper inside one host, and whether every
namespace exists at that moment. Modes: raise (the body raises inside ``with``), sigterm (waits to be sent SIGTERM),
exit (a network opened without ``with``, then a normal exit), crash (SIGKILLs itself: nothing can clean up), hold (also
serves SERVE_DIR on node-a:8000, and waits for a line on stdin), probe (prints only whether namespaces can be made).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from tests.helpers.netns import NetnsUnavailable, Network
from tests.helpers.netns_ip import list_namespaces

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def build(net: Network, log_dir: Path, serve_dir: str | None) -> dict:
    a, b = net.host("node-a"), net.host("node-b")
    sleeper = b.spawn(["sleep", "600"], env=ENV, log_path=log_dir / "sleeper.log")
    if serve_dir:
        a.spawn([sys.executable, "-m", "http.server", "--bind", a.address, "--directory", serve_dir, "8000"],
                env=ENV, log_path=log_dir / "server.log")
    present = set(list_namespaces())
    return {"namespaces": net.namespaces, "sleeper": sleeper.pid, "address": a.address,
            "present": all(name in present for name in net.namespaces)}


def report(state: dict) -> None:
    print(json.dumps(state), flush=True)


def main(mode: str, prefix: str, logs: str, serve_dir: str | None = None) -> None:
    log_dir = Path(logs)
    if mode == "probe":
        try:
            Network(prefix=prefix).open().cleanup()
        except NetnsUnavailable as exc:
            report({"unavailable": str(exc)})
        else:
            report({"available": True})
        return
    if mode == "exit":
        report(build(Network(prefix=prefix).open(), log_dir, serve_dir))
        sys.exit(0)
    with Network(prefix=prefix) as net:
        report(build(net, log_dir, serve_dir))
        if mode == "raise":
            raise RuntimeError("test body failed on purpose")
        if mode == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sigterm":
            time.sleep(120)  # SIGTERM arrives long before this ends
            raise SystemExit("no SIGTERM came")
        if mode == "hold":
            sys.stdin.readline()
            return
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(*sys.argv[1:])
