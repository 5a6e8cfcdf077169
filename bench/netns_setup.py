"""What one multi-host test pays for its network: namespace + link set-up and teardown, measured in one run.

    .venv/bin/python bench/netns_setup.py                  # 4 hosts, 10 rounds (needs root and iproute2)
    .venv/bin/python bench/netns_setup.py --hosts 8 --rounds 20

Each round builds a fresh tests.helpers.netns.Network (switch namespace with its bridge, then --hosts host namespaces,
each with a veth link, addresses and loopback up), then measures:
  - set-up ms: Network.open() plus every host() call;
  - first call ms: the first host.call() on every host (its thread starts and enters the namespace);
  - spawn ms: starting ``true`` inside a host with host.spawn (``ip netns exec``) until it exits, next to the same
    command spawned directly, so the extra cost of entering a namespace shows as a ratio;
  - teardown ms: Network.cleanup() (stops no process here: the spawned ones have exited), until the namespace names
    are gone. The kernel frees a deleted namespace asynchronously afterwards; that part is not measured.

The machine is shared (2 noisy cores here), so read the medians of one run together with the load average printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import fmt, load_average, percentile, table  # noqa: E402

from tests.helpers.netns import NetnsUnavailable, Network  # noqa: E402
from tests.helpers.procs import spawn  # noqa: E402

ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def one_round(hosts: int, logs: Path) -> dict[str, float]:
    """One network's life; every figure in milliseconds."""
    started = time.perf_counter()
    net = Network(prefix="fvb").open()
    try:
        members = [net.host(f"host-{n}") for n in range(hosts)]
        built = time.perf_counter()
        for member in members:
            member.call(os.getpid)
        called = time.perf_counter()
        members[0].spawn(["true"], env=ENV, log_path=logs / "netns-true.log").popen.wait(30)
        spawned = time.perf_counter()
        spawn(["true"], ENV, logs / "direct-true.log").popen.wait(30)
        direct = time.perf_counter()
    finally:
        teardown_started = time.perf_counter()
        net.cleanup()
    done = time.perf_counter()
    return {"set-up": (built - started) * 1e3, "first call": (called - built) * 1e3,
            "spawn in host": (spawned - called) * 1e3, "spawn direct": (direct - spawned) * 1e3,
            "teardown": (done - teardown_started) * 1e3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=4, help="hosts per network (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=10, help="networks built and torn down (default %(default)s)")
    args = parser.parse_args()
    if args.hosts < 1 or args.rounds < 1:
        parser.error("--hosts and --rounds must be at least 1")
    print(f"load before: {load_average()}")
    rounds = []
    with tempfile.TemporaryDirectory(prefix="netns-bench-") as logs:
        try:
            for _ in range(args.rounds):
                rounds.append(one_round(args.hosts, Path(logs)))
        except NetnsUnavailable as exc:
            print(f"cannot measure: {exc}", file=sys.stderr)
            return 1
    rows = []
    for name in rounds[0]:
        values = [r[name] for r in rounds]
        rows.append([name, fmt(percentile(values, 50)), fmt(min(values)), fmt(max(values))])
    print(f"\n{args.hosts} hosts + 1 switch namespace, {args.rounds} rounds (ms)")
    print(table(["step", "p50", "min", "max"], rows))
    ratio = percentile([r["spawn in host"] for r in rounds], 50) / percentile([r["spawn direct"] for r in rounds], 50)
    total = percentile([r["set-up"] + r["teardown"] for r in rounds], 50)
    print(f"\nper-test network cost (set-up + teardown, p50): {fmt(total)} ms")
    print(f"spawn in a host / direct spawn (p50): {fmt(ratio)}x")
    print(f"load after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
