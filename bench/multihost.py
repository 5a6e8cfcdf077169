"""Scaling across hosts: image throughput through one router with one node, then with two, in one run.

    .venv/bin/python bench/multihost.py                  # needs root and iproute2 (network namespaces)
    .venv/bin/python bench/multihost.py --seconds 30 --clients 16 --tokens 32

Every host is a Linux network namespace on this machine (tests/helpers/netns.py): one for Redis (the
registry, with a password), one for the router (no workers of its own), one per node agent, and one for
the load clients. Each node runs one worker with one torch thread and is pinned to its own CPU core
(``taskset``; its workers inherit it), so "two nodes" means twice the cores for inference. The router,
Redis and the clients share whatever is left: on a 2-core machine that is nothing, so read the scaling
ratio together with the load average printed, and expect less than the goal of 1.8 that separate
machines reach.

Printed, all from this one run:
  - throughput (ok/s) with 1 node and with 2 nodes under the same closed-loop load, and their ratio;
  - the router's added latency per hop: the same sequential requests sent straight to a node's worker
    (signed with the cluster secret, as a router signs them) and through the router, p50 and p90 of
    each and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import fmt, load_average, percentile, table  # noqa: E402

from fastvlm_engine.cluster.signing import ClusterSigner  # noqa: E402
from fastvlm_engine.engine.tiny import build_tiny_model  # noqa: E402
from fastvlm_engine.sample_media import __file__ as sample_media_file  # noqa: E402
from tests.cluster.cluster_kit import ADMIN_KEY, Cluster  # noqa: E402
from tests.helpers.netns import NetnsUnavailable, Network  # noqa: E402


def _body(tokens: int) -> dict:
    return {"image_path": "coffee.jpg", "max_new_tokens": tokens}


async def closed_loop(url: str, clients: int, seconds: float, tokens: int) -> tuple[int, int]:
    """(successes, other answers) of ``clients`` callers sending back to back for ``seconds``."""
    ok = other = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def loop() -> None:
            nonlocal ok, other
            while time.monotonic() < deadline:
                async with session.post(url + "/predict_image", json=_body(tokens)) as response:
                    await response.read()
                    if response.status == 200:
                        ok += 1
                    else:
                        other += 1
                        await asyncio.sleep(0.05)

        await asyncio.gather(*(loop() for _ in range(clients)))
    return ok, other


async def sequential_ms(url: str, count: int, tokens: int, headers_for=None) -> list[float]:
    """Milliseconds of ``count`` requests one after another (``headers_for()`` gives each one's headers)."""
    times = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        for _ in range(count):
            body = aiohttp.payload.JsonPayload(_body(tokens))
            headers = {"Content-Type": "application/json", **(headers_for(body.size) if headers_for else {})}
            started = time.perf_counter()
            async with session.post(url + "/predict_image", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status} from {url}")
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load phase length (default %(default)s)")
    parser.add_argument("--clients", type=int, default=12, help="closed-loop callers (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per image (default %(default)s)")
    parser.add_argument("--hop-requests", type=int, default=60, help="sequential requests per hop measurement")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    print(f"load average at start: {load_average()}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastvlm-multihost-") as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_model(tmp / "model")
        media = Path(sample_media_file).parent
        try:
            net = Network(prefix="fvbm").open()
        except NetnsUnavailable as exc:
            print(f"cannot run: {exc}")
            return 2
        cluster = Cluster(net, tmp, str(model), str(media), extra={"log_level": "WARNING", "max_concurrent": 8})
        try:
            cluster.start()
            router = cluster.start_router()
            rows, rates = [], {}
            for count in (1, 2):
                name = f"node-{count}"
                cluster.start_node(name, pin_cpu=cores[(count - 1) % len(cores)])
                cluster.wait_ready(router, {f"node-{n}": 1 for n in range(1, count + 1)})
                url = router.base_url
                cluster.client.call(asyncio.run, closed_loop(url, args.clients, 3.0, args.tokens))  # warm-up
                ok, other = cluster.client.call(asyncio.run, closed_loop(url, args.clients, args.seconds, args.tokens))
                rates[count] = ok / args.seconds
                rows.append([count, args.clients, ok, other, fmt(rates[count], 1)])
                print(f"  {count} node(s): {fmt(rates[count], 1)} ok/s", flush=True)
            print()
            print(table(["nodes", "clients", "ok", "other", "ok/s"], rows))
            print(f"\nscaling 1 -> 2 nodes: {fmt(rates[2] / rates[1], 2)}x (goal 1.8 on separate machines)")

            worker = next(w for h in cluster.health(router)["hosts"] if h["host"] == "node-1" for w in h["workers"])
            signer = ClusterSigner(cluster.secret.encode())
            ids = iter(range(10**9))

            def signed(length: int) -> dict:
                return signer.headers("POST", "/predict_image", body_length=length, request_id=f"hop-{next(ids)}")

            # Drain node-2 so both paths end on the same worker.
            cluster.http("POST", router.base_url + "/admin/hosts/node-2/drain",
                         headers={"Authorization": "Bearer " + ADMIN_KEY})
            cluster.wait_gone(router, "node-2")
            direct = cluster.client.call(asyncio.run, sequential_ms(worker["url"], args.hop_requests, 4, signed))
            routed = cluster.client.call(asyncio.run, sequential_ms(router.base_url, args.hop_requests, 4))
            hop_rows = [[name, fmt(percentile(times, 50), 1), fmt(percentile(times, 90), 1)]
                        for name, times in (("straight to the worker", direct), ("through the router", routed))]
            print()
            print(table(["path (4 tokens, sequential)", "p50 ms", "p90 ms"], hop_rows))
            print(f"router hop: +{fmt(percentile(routed, 50) - percentile(direct, 50), 2)} ms at p50, "
                  f"+{fmt(percentile(routed, 90) - percentile(direct, 90), 2)} ms at p90")
        finally:
            cluster.stop()
            net.cleanup()
    print(f"\nload average at end:   {load_average()}")
    print(f"total time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
