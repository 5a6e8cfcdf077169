"""Bursts: how fast a burst drains, and what overload costs, in sync and queue mode.

    .venv/bin/python bench/burst.py
    .venv/bin/python bench/burst.py --bursts 16,64,256 --workers 2 --max-concurrent 4 --tokens 64

In one run, with the same workers (--workers x --max-concurrent slots, the tiny model, --tokens new
tokens per image, alternating the bundled sample photos):

1. steady capacity: as many closed-loop clients as there are slots, against the default sync
   service, in windows of --steady-s seconds before and after every other phase; each phase is
   compared with the mean of the two windows around it, since this machine's other load drifts;
2. each burst (every caller starts at once and makes --calls calls, each caller with its own
   reference client) through
   (a) sync mode without an admission queue, the reference client retrying on 503 (backoff, hint),
   (b) sync mode with the admission queue (the default), through the same client,
   (c) queue mode: each call submits a job and waits on it (GET /job/<id>?wait=);
   drain goodput = calls / time until the last one finished, as a ratio to the steady capacity (a
   small burst is repeated until it made --min-calls calls, and the drain times are summed);
3. 10x raw overload: ten times the slots in closed loops that never back off (a shed request is
   sent again at once), against the default sync mode (b) and, to measure the shed path itself,
   against (a) where every request beyond the slots is shed at once; as a ratio to the steady capacity.

Every phase also reports the CPU each successful call cost the router, the workers and this
benchmark's clients: on a small machine they all share the CPUs, so CPU that the clients or the
router's shedding take is capacity the workers lose.

Goals: (c) >= 0.9 and (b) >= 0.8 at every burst size; overload >= 0.9. Compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (  # noqa: E402
    JSON_HEADERS,
    CpuMeter,
    Proc,
    Services,
    StartupError,
    add_service_args,
    fmt,
    int_list,
    parse_settings,
    run_bench,
    table,
)

from fastvlm_engine.client import AsyncClient, FastVLMError, RetryPolicy  # noqa: E402

POLICY = RetryPolicy(max_attempts=60, image_deadline_s=900)
IMAGES = ("coffee.jpg", "astronaut.jpg")
"""The bundled sample photos (``fastvlm sample-media``) the bursts cycle through."""
WARM_UP_CALLS = 10
"""Calls per slot before a mode is measured, so the router has measured service times."""


def check_samples(media_dir: Path) -> None:
    """Fail before measuring if a sample is missing: every call to it would fail (media_not_found)."""
    missing = [name for name in IMAGES if not (media_dir / name).is_file()]
    if missing:
        raise StartupError(f"sample media missing from {media_dir}: {', '.join(missing)}")


async def closed_loop(url: str, bodies: list[bytes], clients: int, seconds: float) -> tuple[int, Counter]:
    """(200s, other statuses) of ``clients`` sending back to back without any backoff, cycling through ``bodies``."""
    ok, other = 0, Counter()
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def loop(index: int) -> None:
            nonlocal ok
            while time.monotonic() < deadline:
                index += 1
                body = bodies[index % len(bodies)]
                try:
                    async with session.post(url + "/predict_image", data=body, headers=JSON_HEADERS) as response:
                        await response.read()
                        if response.status == 200:
                            ok += 1
                        else:
                            other[response.status] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    other[type(exc).__name__] += 1

        await asyncio.gather(*(loop(i) for i in range(clients)))
    return ok, other


async def burst(url: str, callers: int, calls: int, tokens: int, *, as_jobs: bool, shared_client: bool = False,
                on_start: Callable[[], object] = lambda: None) -> tuple[float, int, Counter]:
    """(drain seconds, successes, failures by code) for one burst through the reference client.

    Each caller has its own client, made before the clock starts (``on_start``), as independent
    callers would: one AsyncClient shared by hundreds of concurrent calls spends most of its CPU in
    httpcore's connection-pool bookkeeping, which grows with the calls queued in it (encode/httpcore#1035),
    and on this machine that CPU is taken from the service. ``shared_client`` measures that case.
    """
    failures: Counter = Counter()
    ok = 0
    tls = ssl.create_default_context()  # one for every client: building one per client costs ~20 ms of CPU
    clients = [AsyncClient(url, retry=POLICY, transport=httpx.AsyncHTTPTransport(verify=tls))
               for _ in range(1 if shared_client else callers)]
    async with AsyncExitStack() as stack:
        for client in clients:
            await stack.enter_async_context(client)

        async def caller(index: int) -> None:
            nonlocal ok
            client = clients[index % len(clients)]
            for call in range(calls):
                image = IMAGES[(index + call) % len(IMAGES)]
                try:
                    if as_jobs:
                        job = await client.submit_image(image_path=image, max_new_tokens=tokens)
                        await job.wait(timeout=900)
                    else:
                        await client.predict_image(image_path=image, max_new_tokens=tokens)
                    ok += 1
                except FastVLMError as exc:
                    failures[exc.code] += 1

        on_start()
        started = time.monotonic()
        await asyncio.gather(*(caller(i) for i in range(callers)))
        return time.monotonic() - started, ok, failures


def counts(counter: Counter) -> str:
    return " ".join(f"{key}={value}" for key, value in counter.items()) or "-"


def cpu_seconds_split(used: dict[str, float]) -> list[float]:
    """CPU seconds of the router, of all workers together, of this benchmark's clients."""
    workers = sum(seconds for name, seconds in used.items() if name not in ("router", "client"))
    return [used["router"], workers, used["client"]]


def cpu_cells(used: dict[str, float], calls: int) -> list[str]:
    """CPU milliseconds per successful call: the router, all workers together, this benchmark's clients."""
    router, workers, client = (1000.0 * seconds / max(1, calls) for seconds in cpu_seconds_split(used))
    return [fmt(router, 2), fmt(workers, 1), fmt(client, 2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_service_args(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-concurrent", type=int, default=4, help="slots per worker (default %(default)s)")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per image (default %(default)s)")
    parser.add_argument("--bursts", type=int_list, default=[16, 64, 256], help="callers per burst")
    parser.add_argument("--calls", type=int, default=2, help="calls per caller (default %(default)s)")
    parser.add_argument("--min-calls", type=int, default=256,
                        help="repeat each burst until it made at least this many calls (default %(default)s)")
    parser.add_argument("--steady-s", type=float, default=6.0,
                        help="each steady window, before and after every phase (default %(default)s)")
    parser.add_argument("--overload-s", type=float, default=15.0, help="each overload phase (default %(default)s)")
    parser.add_argument("--shared-client", action="store_true",
                        help="one reference client for all the callers of a burst (default: one each)")
    args = parser.parse_args()
    slots = args.workers * args.max_concurrent
    bodies = [json.dumps({"image_path": image, "max_new_tokens": args.tokens}).encode() for image in IMAGES]
    common = dict(max_workers=args.workers, max_concurrent=args.max_concurrent, log_level="WARNING",
                  max_new_tokens_limit=max(args.tokens, 128))
    # (name, service settings, overload phase?). (b), the sync default, also measures the steady windows;
    # (a)'s overload runs with the admission queue off, so it measures the shed path itself.
    configs = [
        ("(b) sync, admission queue", {}, True),
        ("(a) sync, client retries", dict(admission_queue_wait_ms=0), True),
        ("(c) queue mode, wait", dict(mode="queue", queue_max_jobs=max(1000, 2 * max(args.bursts) * args.calls)),
         False),
    ]

    def body_fn(services: Services) -> None:
        check_samples(services.media_dir)
        rows: list[list[object]] = []
        windows: list[float] = []
        reference: dict[str, object] = {}

        def start(name: str, extra: dict[str, object]) -> tuple[Proc, dict[str, int]]:
            router = services.start_router(**common, **extra)
            health = services.wait_router(router, args.workers)
            pids = {"router": router.popen.pid, **{w["id"]: w["pid"] for w in health.get("workers", [])}}
            # Warm-up (measured service times) through the path this mode measures: in queue mode a
            # plain POST makes a job, and thousands of unwaited warm-up jobs would sit ahead of the bursts.
            asyncio.run(burst(router.base_url, slots, WARM_UP_CALLS, args.tokens, as_jobs="queue" in name))
            return router, pids

        def steady_window() -> float:
            """Steady capacity now, on the default sync service: the machine's other load drifts, so
            every phase is compared with the windows measured just before and just after it."""
            meter = CpuMeter(reference["pids"]).start()
            ok, _ = asyncio.run(closed_loop(reference["url"], bodies, slots, args.steady_s))
            reference["cpu"] = [a + b for a, b in zip(reference.get("cpu", [0.0, 0.0, 0.0]),
                                                     cpu_seconds_split(meter.stop()), strict=True)]
            reference["ok"] = int(reference.get("ok", 0)) + ok
            windows.append(ok / args.steady_s)
            return windows[-1]

        def phase(label: str, load: str, run: Callable[[CpuMeter], tuple[float, int, Counter]],
                  pids: dict[str, int]) -> None:
            before = windows[-1] if windows else steady_window()
            meter = CpuMeter(pids)
            seconds, ok, other = run(meter)
            used = meter.stop()
            after = steady_window()
            goodput = ok / seconds if seconds else 0.0
            rows.append([label, load, ok, sum(other.values()), fmt(seconds, 2), fmt(goodput, 1),
                         fmt((before + after) / 2, 1), fmt(goodput / ((before + after) / 2), 2),
                         *cpu_cells(used, ok), counts(other)])
            print(f"  {label} {load}: {fmt(goodput, 1)} ok/s (steady {fmt(before, 1)} before, {fmt(after, 1)} "
                  "after)", flush=True)

        def overload(url: str) -> Callable[[CpuMeter], tuple[float, int, Counter]]:
            def run(meter: CpuMeter) -> tuple[float, int, Counter]:
                meter.start()
                ok, other = asyncio.run(closed_loop(url, bodies, 10 * slots, args.overload_s))
                return args.overload_s, ok, other
            return run

        def bursting(url: str, callers: int, as_jobs: bool) -> Callable[[CpuMeter], tuple[float, int, Counter]]:
            """The burst, repeated until it made at least --min-calls calls: drain time and calls are summed
            (a burst of 32 calls drains in well under a second, too short to measure once on a shared box)."""
            repeats = max(1, -(-args.min_calls // (callers * args.calls)))

            def run(meter: CpuMeter) -> tuple[float, int, Counter]:
                seconds, ok, failures = 0.0, 0, Counter()
                for index in range(repeats):
                    if index:
                        time.sleep(0.5)
                    took, done, failed = asyncio.run(burst(url, callers, args.calls, args.tokens, as_jobs=as_jobs,
                                                           shared_client=args.shared_client,
                                                           on_start=meter.start if index == 0 else lambda: None))
                    seconds, ok, failures = seconds + took, ok + done, failures + failed
                return seconds, ok, failures
            return run

        for name, extra, with_overload in configs:
            router, pids = start(name, extra)
            if not reference:  # the first, (b), stays up for the steady windows
                reference.update(url=router.base_url, pids=pids)
            if with_overload:
                phase(f"10x raw overload, no backoff {name[:3]}", f"{10 * slots} clients", overload(router.base_url),
                      pids)
            for callers in args.bursts:
                phase(name, f"{callers}x{args.calls}", bursting(router.base_url, callers, "queue" in name), pids)
                time.sleep(2.0)  # let the retry-after memory of the last burst fade
            if router.base_url != reference["url"]:
                services.stop(router)
        ok = int(reference["ok"])
        per = 1000.0 / max(1, ok)
        steady = sum(windows) / len(windows)
        rows.insert(0, [f"steady: {len(windows)} windows, raw aiohttp", f"{slots} clients", ok, 0,
                        fmt(len(windows) * args.steady_s, 1), fmt(steady, 1), fmt(steady, 1), "1.00",
                        *(fmt(seconds * per, 2) for seconds in reference["cpu"]),
                        f"windows {fmt(min(windows), 1)}..{fmt(max(windows), 1)} ok/s"])
        print()
        print(table(["phase", "load", "ok", "failed", "s", "ok/s", "steady ok/s", "vs steady", "router ms/ok",
                     "workers ms/ok", "client ms/ok", "failures / other answers"], rows))
        print("\n(steady ok/s: the mean of the steady windows measured on (b) just before and after that phase. "
              "CPU per successful call, in ms: the router process, all workers together, and this benchmark's "
              "own clients, which share the machine with the service.)")

    return run_bench(args.model, parse_settings(args.settings), args.startup_timeout, body_fn)


if __name__ == "__main__":
    raise SystemExit(main())
