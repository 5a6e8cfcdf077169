"""Load: throughput, latency, load shedding (503 rate) and drain time at several client counts.

    .venv/bin/python bench/load.py
    .venv/bin/python bench/load.py --clients 1,8,32 --duration 10 --workers 2 --max-concurrent 4

Starts one router (``fastvlm serve``) with --workers workers of --max-concurrent slots each,
sends a few unmeasured requests so the router has measured service times, then runs two modes
at each client count in --clients. Every request is POST /predict_image by image_path with
--max-new-tokens tokens. There is a --settle pause after each mode, so the router's memory of
recent rejections (which feeds retry_after_sec) does not leak into the next measurement.

raw: each client sends requests one after another for --duration seconds and never retries. A
  client that is shed sends its next request at once, so at high counts the 503s come from a hot
  loop. Columns:
  - 200, 503 busy and other count the answers; "other" is any other status or a transport
    error, listed below the table.
  - 503 rate is 503 busy / sent.
  - ok/s is 200s per second of wall time, up to the moment the last request came back.
  - p50 and p99 are the latencies of the 200s; "503 p50" is how fast shedding answers.
  - "hint s" is the mean of the 503 bodies' retry_after_sec, with its min..max.
  - "Retry-After ok" counts the 503s whose Retry-After header is an integer, whose body
    retry_after_sec is a float, and whose header is the ceiling of that float.

retry: each client makes --calls-per-client calls with the reference AsyncClient
  (fastvlm_engine.client). Every client starts at once, so a level begins with a burst. The
  client retries as the service tells it to (retry_after_sec plus jittered backoff,
  X-Retry-Attempt) under RetryPolicy(max_attempts=--max-attempts), and retries are seen through
  on_retry. Columns:
  - drain s is the time from the burst until the last call finished.
  - ok/failed count the calls; failures are listed below the table with their code and why
    retrying stopped.
  - retries is the number of retries, and "retried" the number of calls that needed at least one.
  - max tries is the most attempts any one call made.
  - p50 and p99 are the end-to-end times of the successful calls, waits included.
  - hint s is the mean retry_after_sec the client was given, and wait s the mean wait it chose.

The client, the router and the workers share this machine's CPUs (2 noisy cores here), so the
absolute numbers hold only for this machine at this moment. Compare levels and modes within
one run, and read the load average printed at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from _harness import (
    JSON_HEADERS,
    Services,
    add_service_args,
    fmt,
    int_list,
    parse_settings,
    percentile,
    run_bench,
    table,
)

from fastvlm_engine.client import AsyncClient, FastVLMError, RetryEvent, RetryPolicy

_DELAY_SECONDS = re.compile(r"[0-9]+")


@dataclass
class RawStats:
    ok: list[float] = field(default_factory=list)
    """Latencies (s) of the 200s."""
    busy: list[float] = field(default_factory=list)
    """Latencies (s) of the 503 workers_busy answers."""
    hints: list[float] = field(default_factory=list)
    hints_ok: int = 0
    other: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    @property
    def sent(self) -> int:
        return len(self.ok) + len(self.busy) + sum(self.other.values())


@dataclass
class RetryStats:
    calls: int
    ok: list[float] = field(default_factory=list)
    """End-to-end seconds of the successful calls."""
    failed: Counter[str] = field(default_factory=Counter)
    events: list[RetryEvent] = field(default_factory=list)
    drain: float = 0.0


def retry_after_consistent(header: str | None, value: object) -> bool:
    """Header is RFC 9110 delay-seconds, the body value a float, and the header its ceiling."""
    if header is None or not _DELAY_SECONDS.fullmatch(header.strip()) or type(value) is not float:
        return False
    # The body is rounded to milliseconds; the header is the ceiling of the unrounded value.
    return math.ceil(value - 0.0005) <= int(header) <= math.ceil(value + 0.0005)


def error_of(raw: bytes) -> dict:
    try:
        document = json.loads(raw)
    except ValueError:
        return {}
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, dict) else {}


async def raw_level(session: aiohttp.ClientSession, url: str, body: bytes, clients: int,
                    duration: float) -> RawStats:
    stats = RawStats()
    end = time.perf_counter() + duration

    async def client_loop() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=JSON_HEADERS) as response:
                    raw = await response.read()
                    status, header = response.status, response.headers.get("Retry-After")
            except (aiohttp.ClientError, TimeoutError) as exc:
                stats.other[type(exc).__name__] += 1
                continue
            latency = time.perf_counter() - started
            if status == 200:
                stats.ok.append(latency)
                continue
            error = error_of(raw)
            if status == 503 and error.get("code") == "workers_busy":
                stats.busy.append(latency)
                hint = error.get("retry_after_sec")
                if isinstance(hint, int | float) and not isinstance(hint, bool):
                    stats.hints.append(float(hint))
                stats.hints_ok += retry_after_consistent(header, hint)
            else:
                stats.other[f"HTTP {status} {error.get('code', '')}".rstrip()] += 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    stats.elapsed = time.perf_counter() - started
    return stats


async def retry_level(url: str, args: argparse.Namespace, clients: int) -> RetryStats:
    stats = RetryStats(calls=clients * args.calls_per_client)
    policy = RetryPolicy(max_attempts=args.max_attempts)
    async with AsyncClient(url, retry=policy, on_retry=stats.events.append) as client:
        async def one_client(index: int) -> None:
            for call in range(args.calls_per_client):
                started = time.perf_counter()
                try:
                    await client.predict_image(image_path=args.image, max_new_tokens=args.max_new_tokens,
                                               request_id=f"load-{clients}-{index}-{call}")
                except FastVLMError as exc:
                    stats.failed[f"{exc.code} after {exc.attempts} tries ({exc.stop_reason})"] += 1
                else:
                    stats.ok.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(clients)))
        stats.drain = time.perf_counter() - started
    return stats


def ms(values: list[float], q: float) -> str:
    return fmt(percentile(values, q) * 1000, 1)


def raw_row(clients: int, s: RawStats) -> list[object]:
    hints = f"{fmt(statistics.fmean(s.hints))} ({fmt(min(s.hints))}..{fmt(max(s.hints))})" if s.hints else "-"
    return [clients, fmt(s.elapsed, 1), s.sent, len(s.ok), len(s.busy), sum(s.other.values()),
            f"{100 * len(s.busy) / s.sent:.1f}%" if s.sent else "-", fmt(len(s.ok) / s.elapsed, 1),
            ms(s.ok, 50), ms(s.ok, 99), ms(s.busy, 50), hints, f"{s.hints_ok}/{len(s.busy)}"]


def retry_row(clients: int, s: RetryStats) -> list[object]:
    tries = Counter(e.request_id for e in s.events)
    hints = [e.retry_after_sec for e in s.events if e.retry_after_sec is not None]
    return [clients, s.calls, len(s.ok), sum(s.failed.values()), len(s.events), len(tries),
            1 + max(tries.values(), default=0), fmt(s.drain), fmt(len(s.ok) / s.drain, 1),
            fmt(percentile(s.ok, 50)), fmt(percentile(s.ok, 99)),
            fmt(statistics.fmean(hints)) if hints else "-",
            fmt(statistics.fmean(e.delay_s for e in s.events)) if s.events else "-"]


async def run(args: argparse.Namespace, url: str) -> None:
    body = json.dumps({"image_path": args.image, "max_new_tokens": args.max_new_tokens}).encode()
    raw_rows, retry_rows, notes = [], [], []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=args.request_timeout)) as session:
        for _ in range(args.warmup):
            async with session.post(url + "/predict_image", data=body, headers=JSON_HEADERS) as response:
                await response.read()
        for clients in args.clients:
            print(f"clients {clients}: raw for {args.duration:g} s ...", flush=True)
            raw = await raw_level(session, url + "/predict_image", body, clients, args.duration)
            raw_rows.append(raw_row(clients, raw))
            notes += [f"  raw, {clients} clients: {name} x{n}" for name, n in raw.other.most_common()]
            await asyncio.sleep(args.settle)

            print(f"clients {clients}: retry, {clients * args.calls_per_client} calls ...", flush=True)
            retry = await retry_level(url, args, clients)
            retry_rows.append(retry_row(clients, retry))
            reasons = Counter(e.reason for e in retry.events)
            if set(reasons) - {"workers_busy"}:
                notes.append(f"  retry, {clients} clients, retried on: "
                             + ", ".join(f"{r} x{n}" for r, n in reasons.most_common()))
            notes += [f"  retry, {clients} clients, failed: {name} x{n}" for name, n in retry.failed.most_common()]
            await asyncio.sleep(args.settle)

        async with session.get(url + "/healthz") as response:
            health = await response.json()

    print(f"\nraw: no retries, {args.duration:g} s per level (latencies in ms)")
    print(table(["clients", "s", "sent", "200", "503 busy", "other", "503 rate", "ok/s", "p50", "p99", "503 p50",
                 "hint s (min..max)", "Retry-After ok"], raw_rows, left=0))
    print(f"\nretry: reference AsyncClient, {args.calls_per_client} calls per client, max_attempts "
          f"{args.max_attempts} (times in s)")
    print(table(["clients", "calls", "ok", "failed", "retries", "retried", "max tries", "drain s", "ok/s",
                 "p50", "p99", "hint s", "wait s"], retry_rows, left=0))
    if notes:
        print("\nnot counted as 200 or 503 busy, or failed after retrying:\n" + "\n".join(notes))
    print("\nworkers after the run: " + ", ".join(
        f"{w['id']} {w['state']} (restarts {w['restarts']})" for w in health["workers"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(parser)
    parser.add_argument("--clients", type=int_list, default=[1, 4, 16, 64],
                        help="comma-separated client counts, one level each (default 1,4,16,64)")
    parser.add_argument("--workers", type=int, default=2, help="FASTVLM_MAX_WORKERS (default %(default)s)")
    parser.add_argument("--max-concurrent", type=int, default=2,
                        help="FASTVLM_MAX_CONCURRENT, slots per worker (default %(default)s)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds of the raw mode per level (default %(default)s)")
    parser.add_argument("--calls-per-client", type=int, default=2,
                        help="calls each client makes in the retry mode (default %(default)s)")
    parser.add_argument("--max-attempts", type=int, default=6,
                        help="RetryPolicy.max_attempts of the retry mode (default %(default)s, the client's own)")
    parser.add_argument("--max-new-tokens", type=int, default=16,
                        help="generation length of every request (default %(default)s)")
    parser.add_argument("--image", default="coffee.jpg",
                        help="image_path, relative to the sample media (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=8,
                        help="unmeasured sequential requests before the first level (default %(default)s)")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="pause after each mode, longer than the router's 1 s rejection memory "
                             "(default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="raw mode's client timeout per request in seconds (default %(default)s)")
    args = parser.parse_args()
    extra = parse_settings(args.settings)
    if min(args.workers, args.max_concurrent, args.calls_per_client, args.max_attempts) < 1:
        parser.error("--workers, --max-concurrent, --calls-per-client and --max-attempts must be at least 1")

    def body(services: Services) -> None:
        router = services.start_router(max_workers=args.workers, max_concurrent=args.max_concurrent)
        health = services.wait_router(router, args.workers)
        workers = ", ".join(f"{w['id']} pid {w['pid']} {w['device']}" for w in health["workers"])
        print(f"router {router.base_url} (pid {router.popen.pid}) with {args.workers} workers ({workers}), "
              f"{args.max_concurrent} slots each; model {args.model or 'built-in tiny (random weights)'}, "
              f"max_new_tokens {args.max_new_tokens}, torch threads 1"
              + (f", --set {' '.join(args.settings)}" if args.settings else ""), flush=True)
        asyncio.run(run(args, router.base_url))

    return run_bench(args.model, extra, args.startup_timeout, body)


if __name__ == "__main__":
    sys.exit(main())
