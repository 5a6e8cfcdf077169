"""Bursts: how fast a burst drains, and what overload costs, in sync and queue mode.

    .venv/bin/python bench/burst.py
    .venv/bin/python bench/burst.py --bursts 16,64,256 --workers 2 --max-concurrent 4 --tokens 64

In one run, with the same workers (--workers x --max-concurrent slots, the tiny model, --tokens new
tokens per image):

1. steady capacity: as many closed-loop clients as there are slots, for --steady-s seconds (ok/s);
2. each burst (every caller starts at once and makes --calls calls) through
   (a) sync mode without an admission queue, the reference client retrying on 503 (backoff, hint),
   (b) sync mode with the admission queue (the default), through the same client,
   (c) queue mode: each call submits a job and waits on it (GET /job/<id>?wait=);
   drain goodput = calls / time until the last one finished, as a ratio to the steady capacity;
3. 10x raw overload: ten times the slots in closed loops that never back off (a shed request is
   sent again at once), against the default sync mode, as a ratio to the steady capacity.

Goals: (c) >= 0.9 and (b) >= 0.8 at every burst size; overload >= 0.9. Everything shares this
machine's CPUs (the client too), so compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    JSON_HEADERS,
    Services,
    add_service_args,
    fmt,
    int_list,
    parse_settings,
    run_bench,
    table,
)

from fastvlm_engine.client import AsyncClient, FastVLMError, RetryPolicy  # noqa: E402

POLICY = RetryPolicy(max_attempts=60, image_deadline_s=900)


async def closed_loop(url: str, body: bytes, clients: int, seconds: float) -> tuple[int, Counter]:
    """(200s, other statuses) of ``clients`` sending back to back without any backoff."""
    ok, other = 0, Counter()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def loop() -> None:
            nonlocal ok
            while time.monotonic() < deadline:
                try:
                    async with session.post(url + "/predict_image", data=body, headers=JSON_HEADERS) as response:
                        await response.read()
                        if response.status == 200:
                            ok += 1
                        else:
                            other[response.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    other[type(exc).__name__] += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    return ok, other


async def burst(url: str, callers: int, calls: int, tokens: int, *, as_jobs: bool) -> tuple[float, int, Counter]:
    """(drain seconds, successes, failures by code) for one burst through the reference client."""
    failures: Counter = Counter()
    ok = 0
    async with AsyncClient(url, retry=POLICY) as client:
        async def caller(index: int) -> None:
            nonlocal ok
            for call in range(calls):
                image = ("coffee.jpg", "chelsea.jpg", "astronaut.jpg", "rocket.jpg")[(index + call) % 4]
                try:
                    if as_jobs:
                        job = await client.submit_image(image_path=image, max_new_tokens=tokens)
                        await job.wait(timeout=900)
                    else:
                        await client.predict_image(image_path=image, max_new_tokens=tokens)
                    ok += 1
                except FastVLMError as exc:
                    failures[exc.code] += 1

        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        return time.monotonic() - started, ok, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_service_args(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-concurrent", type=int, default=4, help="slots per worker (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per image (default %(default)s)")
    parser.add_argument("--bursts", type=int_list, default=[16, 64, 256], help="callers per burst")
    parser.add_argument("--calls", type=int, default=2, help="calls per caller (default %(default)s)")
    parser.add_argument("--steady-s", type=float, default=15.0, help="steady / overload phase length")
    args = parser.parse_args()
    slots = args.workers * args.max_concurrent
    body = json.dumps({"image_path": "coffee.jpg", "max_new_tokens": args.tokens}).encode()
    common = dict(max_workers=args.workers, max_concurrent=args.max_concurrent, log_level="WARNING",
                  max_new_tokens_limit=max(args.tokens, 128))
    configs = {
        "(a) sync, client retries": dict(admission_queue_wait_ms=0),
        "(b) sync, admission queue": {},
        "(c) queue mode, wait": dict(mode="queue", queue_max_jobs=max(1000, 2 * max(args.bursts) * args.calls)),
    }

    def body_fn(services: Services) -> None:
        results: dict[str, dict[int, tuple[float, int, Counter]]] = {}
        steady = overload = None
        overload_other: Counter = Counter()
        for name, extra in configs.items():
            router = services.start_router(**common, **extra)
            services.wait_router(router, args.workers)
            url = router.base_url
            asyncio.run(closed_loop(url, body, slots, 3.0))  # warm-up: measured service times
            if steady is None and "admission queue" in name:
                ok, _ = asyncio.run(closed_loop(url, body, slots, args.steady_s))
                steady = ok / args.steady_s
                print(f"steady capacity: {fmt(steady, 1)} ok/s with {slots} closed-loop clients on {slots} slots",
                      flush=True)
                ok, overload_other = asyncio.run(closed_loop(url, body, 10 * slots, args.steady_s))
                overload = ok / args.steady_s
            results[name] = {}
            for callers in args.bursts:
                drain, ok, failures = asyncio.run(burst(url, callers, args.calls, args.tokens,
                                                        as_jobs="queue" in name))
                results[name][callers] = (drain, ok, failures)
                print(f"  {name}: burst {callers}x{args.calls} drained in {fmt(drain, 1)} s", flush=True)
                time.sleep(2.0)  # let the retry-after memory of the last burst fade
            services.stop(router)
        rows = []
        for name, by_burst in results.items():
            for callers, (drain, ok, failures) in by_burst.items():
                goodput = ok / drain if drain else 0.0
                rows.append([name, f"{callers}x{args.calls}", ok, sum(failures.values()), fmt(drain, 1),
                             fmt(goodput, 1), fmt(goodput / steady, 2),
                             " ".join(f"{k}={v}" for k, v in failures.items()) or "-"])
        print()
        print(table(["mode", "burst", "ok", "failed", "drain s", "ok/s", "vs steady", "failures"], rows))
        print(f"\n10x raw overload ({10 * slots} clients, no backoff): {fmt(overload, 1)} ok/s = "
              f"{fmt(overload / steady, 2)} of steady; other answers: {dict(overload_other)}")

    return run_bench(args.model, parse_settings(args.settings), args.startup_timeout, body_fn)


if __name__ == "__main__":
    raise SystemExit(main())
