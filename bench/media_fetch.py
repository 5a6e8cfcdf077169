"""Fetching media by URL: what the SSRF-safe MediaFetcher costs against plain aiohttp, in one run.

    .venv/bin/python bench/media_fetch.py
    .venv/bin/python bench/media_fetch.py --repeats 400 --large-mb 50

A loopback aiohttp.web server (in its own thread and event loop) serves a small JPEG and a large
body. Rows, each fetched sequentially --repeats times (the large body a tenth as often):
  MediaFetcher          the production path: URL checks, one lookup through the resolver, a new
                        connection per fetch, streaming into a counting sink with size and content checks.
  aiohttp, new session  a fresh ClientSession per fetch, no checks: the same connection cost.
  aiohttp, pooled       one ClientSession with keep-alive, no checks: the floor.
Columns: median milliseconds per fetch, and MediaFetcher's median over this row's (above 1 = the
fetcher is slower). Every client streams the body in the same chunks into a counting sink. The host is the IP literal
127.0.0.1 (listed, private addresses allowed), so the resolver is not involved; only the ratios
carry over, absolute numbers hold for this machine at this moment.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from importlib.resources import files
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import aiohttp  # noqa: E402
from _harness import fmt, load_average, table  # noqa: E402
from aiohttp import web  # noqa: E402

from fastvlm_engine.config import Settings  # noqa: E402
from fastvlm_engine.media.fetch import CHUNK_BYTES, MediaFetcher  # noqa: E402
from fastvlm_engine.media.fetch_policy import FetchPolicy  # noqa: E402

MiB = 1 << 20


class CountingSink:
    """Keeps only the byte count, so disk speed stays out of the figures."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def serve_in_thread(small: bytes, large: bytes) -> tuple[int, Callable[[], None]]:
    """Start the server on 127.0.0.1 in a thread; returns its port and a stop function."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict[str, object] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/small.jpg", lambda r: web.Response(body=small, content_type="image/jpeg"))
        app.router.add_get("/large.jpg", lambda r: web.Response(body=large, content_type="image/jpeg"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state["runner"], state["port"] = runner, runner.addresses[0][1]
        ready.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise SystemExit("the benchmark server did not start")

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(state["runner"].cleanup(), loop).result(30)  # type: ignore[union-attr]
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)

    return int(state["port"]), stop  # type: ignore[arg-type]


async def timed(fetch: Callable[[], Awaitable[int]], repeats: int, expected: int) -> float:
    """Median seconds of one fetch (after two warm-up fetches)."""
    for _ in range(2):
        await fetch()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        size = await fetch()
        samples.append(time.perf_counter() - start)
        if size != expected:
            raise SystemExit(f"fetched {size} bytes, expected {expected}")
    return statistics.median(samples)


async def drain(session: aiohttp.ClientSession, url: str) -> int:
    """Stream a body into a counting sink in the fetcher's chunk size (no checks)."""
    sink = CountingSink()
    async with session.get(url) as response:
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            sink.write(chunk)
    return sink.size


async def checked(fetcher: MediaFetcher, url: str, size: int) -> int:
    sink = CountingSink()
    await fetcher.fetch(url, kind="image", max_bytes=size + 1, sink=sink)
    return sink.size


async def fresh(url: str) -> int:
    async with aiohttp.ClientSession() as session:
        return await drain(session, url)


async def measure(port: int, sizes: dict[str, int], repeats: int) -> list[list[object]]:
    policy = FetchPolicy.from_settings(Settings(fetch_url_hosts="127.0.0.1", fetch_allow_private=True,
                                                fetch_allowed_ports=str(port), fetch_timeout_s=60))
    fetcher = MediaFetcher(policy)
    rows = []
    async with aiohttp.ClientSession() as pooled:
        for name, size in sizes.items():
            url = f"http://127.0.0.1:{port}/{name}"
            count = repeats if name == "small.jpg" else max(3, repeats // 10)

            t_safe = await timed(partial(checked, fetcher, url, size), count, size)
            t_fresh = await timed(partial(fresh, url), count, size)
            t_pooled = await timed(partial(drain, pooled, url), count, size)
            label = f"{name} ({size / MiB:.2f} MiB, n={count})"
            rows.append([label, "MediaFetcher", fmt(t_safe * 1e3), "-"])
            rows.append(["", "aiohttp, new session", fmt(t_fresh * 1e3), fmt(t_safe / t_fresh)])
            rows.append(["", "aiohttp, pooled", fmt(t_pooled * 1e3), fmt(t_safe / t_pooled)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=200, help="fetches of the small image (default %(default)s)")
    parser.add_argument("--large-mb", type=float, default=20.0, help="size of the large body (default %(default)s)")
    args = parser.parse_args()
    small = files("fastvlm_engine.sample_media").joinpath("coffee.jpg").read_bytes()
    large = small + b"\0" * (int(args.large_mb * MiB) - len(small))
    port, stop = serve_in_thread(small, large)
    try:
        rows = asyncio.run(measure(port, {"small.jpg": len(small), "large.jpg": len(large)}, args.repeats))
    finally:
        stop()
    print(f"load average: {load_average()}")
    print(table(["body", "client", "median ms", "MediaFetcher / this"], rows))


if __name__ == "__main__":
    main()
