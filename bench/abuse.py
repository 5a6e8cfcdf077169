"""Hostile clients against a real router: does the service stay fast for everyone else?

In one run, against one ``fastvlm serve`` on the tiny model:

1. steady goodput of well-behaved clients (complete ``/predict_image`` requests, back to back);
2. the same while N slow-drip uploaders trickle bodies (each reconnects when cut off with 408);
3. the same while a flood of idle connections is held open (re-opened as the server closes them);
4. the router's peak RSS while one large upload streams through it (to a worker that refuses it
   as not a video: the bytes still cross the router), above its idle RSS.

Goodput under abuse is reported as a ratio to the steady goodput measured in the same run
(goal >= 0.9 with 50 slow uploaders and 5,000 idle connections); the RSS goal is under 100 MB
above idle for a 200 MB upload. Numbers on a shared machine are noisy: compare within a run.

    python bench/abuse.py                    # defaults: 4 clients, 50 drippers, 5000 idle, 200 MB
    python bench/abuse.py --seconds 20 --idle 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Services, add_service_args, fmt, parse_settings, percentile, run_bench, table  # noqa: E402

MiB = 1024 * 1024


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def well_behaved(url: str, clients: int, seconds: float) -> tuple[int, int, list[float]]:
    """(ok, failed, latencies) of ``clients`` sending complete requests back to back."""
    body = json.dumps({"image_path": "coffee.jpg", "max_new_tokens": 8}).encode()
    ok = failed = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def client() -> None:
            nonlocal ok, failed
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    async with session.post(url + "/predict_image", data=body,
                                            headers={"Content-Type": "application/json"}) as response:
                        await response.read()
                        if response.status == 200:
                            ok += 1
                            latencies.append(time.monotonic() - started)
                        else:
                            failed += 1
                            if response.status == 503:
                                await asyncio.sleep(0.05)
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return ok, failed, latencies


async def drip(host: str, port: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """One slow uploader: headers, then a byte every half second; reconnects when cut off."""
    head = (b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 10000000\r\n\r\n")
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["connections"] += 1
        try:
            writer.write(head)
            while not stop.is_set():
                writer.write(b"x")
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(65536), 0.5)
                except TimeoutError:
                    continue
                if not data or b" 408 " in data:
                    stats["cut_off"] += 1
                    break
        except OSError:
            stats["cut_off"] += 1
        finally:
            writer.close()


async def hold_idle(host: str, port: int, count: int, stop: asyncio.Event, stats: dict[str, int]) -> None:
    """Keep ``count`` idle connections open, re-opening each as the server closes it.

    Each connection just awaits the server's close (no timer per connection: thousands of timeouts a
    second would cost this benchmark's event loop, which the well-behaved clients share, more than the
    server); ``stop`` cancels them all."""
    async def one() -> None:
        while True:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(0.2)
                continue
            stats["opened"] += 1
            try:
                while await reader.read(1024):
                    pass
                stats["closed_by_server"] += 1
            finally:
                writer.close()

    holders = [asyncio.create_task(one()) for _ in range(count)]
    await stop.wait()
    for task in holders:
        task.cancel()
    await asyncio.gather(*holders, return_exceptions=True)


async def measure(url: str, args: argparse.Namespace) -> dict[str, tuple]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    results: dict[str, tuple] = {}
    await well_behaved(url, args.clients, 3.0)  # warm up
    results["steady"] = (*await well_behaved(url, args.clients, args.seconds), {})

    stop = asyncio.Event()
    drip_stats = {"connections": 0, "cut_off": 0, "connect_errors": 0}
    drippers = [asyncio.create_task(drip(host, int(port), stop, drip_stats)) for _ in range(args.drippers)]
    await asyncio.sleep(1.0)
    results[f"{args.drippers} slow uploaders"] = (*await well_behaved(url, args.clients, args.seconds), drip_stats)
    stop.set()
    await asyncio.gather(*drippers)

    stop = asyncio.Event()
    idle_stats = {"opened": 0, "closed_by_server": 0, "connect_errors": 0}
    holder = asyncio.create_task(hold_idle(host, int(port), args.idle, stop, idle_stats))
    await asyncio.sleep(3.0)  # let the flood build up
    results[f"{args.idle} idle connections"] = (*await well_behaved(url, args.clients, args.seconds), idle_stats)
    stop.set()
    await holder
    results["steady again"] = (*await well_behaved(url, args.clients, args.seconds), {})
    return results


def upload_peak_rss(url: str, router_pid: int, size_mb: int) -> tuple[int, int, int]:
    """(idle RSS, peak RSS during the upload, HTTP status) for one raw upload of ``size_mb`` MB."""
    import http.client

    process = psutil.Process(router_pid)
    idle = process.memory_info().rss
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    chunk = b"\x00" * MiB
    try:
        connection.putrequest("POST", "/summarize_video")
        connection.putheader("Content-Type", "video/mp4")
        connection.putheader("Content-Length", str(size_mb * MiB))
        connection.endheaders()
        for _ in range(size_mb):
            connection.send(chunk)
        status = connection.getresponse().status
    finally:
        connection.close()
        done.set()
        sampler.join()
    return idle, peak[0], status


def report(results: dict[str, tuple], seconds: float) -> None:
    steady = results["steady"][0] / seconds
    rows = []
    for name, (ok, failed, latencies, extra) in results.items():
        goodput = ok / seconds
        rows.append([name, ok, failed, fmt(goodput, 1), fmt(goodput / steady if steady else float("nan")),
                     fmt(percentile(latencies, 50) * 1000, 0), fmt(percentile(latencies, 99) * 1000, 0),
                     " ".join(f"{k}={v}" for k, v in extra.items())])
    print(table(["phase", "ok", "failed", "ok/s", "vs steady", "p50 ms", "p99 ms", "abusers"], rows))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_service_args(parser)
    parser.add_argument("--clients", type=int, default=4, help="well-behaved clients (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each phase (default %(default)s)")
    parser.add_argument("--drippers", type=int, default=50, help="slow-drip uploaders (default %(default)s)")
    parser.add_argument("--idle", type=int, default=5000, help="idle connections (default %(default)s)")
    parser.add_argument("--upload-mb", type=int, default=200, help="size of the large upload (default %(default)s)")
    args = parser.parse_args()
    raise_fd_limit()

    def body(services: Services) -> None:
        router = services.start_router(max_workers=1, max_concurrent=4, log_level="WARNING",
                                       video_max_bytes=(args.upload_mb + 1) * MiB)
        services.wait_router(router, 1)
        print(f"router {router.base_url}; {args.clients} clients, {args.seconds:g}s per phase\n", flush=True)
        results = asyncio.run(measure(router.base_url, args))
        report(results, args.seconds)
        idle, peak, status = upload_peak_rss(router.base_url, router.popen.pid, args.upload_mb)
        print(f"\n{args.upload_mb} MB upload (status {status}): router RSS idle {idle / MiB:.0f} MB, "
              f"peak {peak / MiB:.0f} MB, +{(peak - idle) / MiB:.0f} MB")

    return run_bench(args.model, parse_settings(args.settings), args.startup_timeout, body)


if __name__ == "__main__":
    raise SystemExit(main())
