"""Router overhead: the same requests straight to a worker and through the router, in one run.

    .venv/bin/python bench/router_overhead.py
    .venv/bin/python bench/router_overhead.py --requests 500 --concurrency 8 --workloads miss,predict

Starts one router with one worker (``fastvlm serve``, FASTVLM_MAX_WORKERS=1) and one standalone
``fastvlm worker`` with the same settings. "direct" calls the standalone worker, "routed" calls
the router, which forwards to its own worker. (A router-spawned worker answers only calls that
carry the router's internal token, FASTVLM_WORKER_TOKEN, so it cannot be called directly.)

Workloads (--workloads):
  readyz   GET /readyz. Each server answers it itself, so there is no proxy hop: this row compares
           the HTTP floor of the router with that of a worker.
  miss     POST /predict_image for a file that does not exist. The worker answers 404 before it
           decodes anything or runs the model, so this row is close to the pure proxy hop:
           admission, reading and validating the body, forwarding, and copying the answer back.
  predict  POST /predict_image by image_path with --max-new-tokens (default 1): a full request.

What is measured (one pooled aiohttp session is the client):
  (a) Sequential latency. --requests per path and workload, split into --rounds rounds. Direct
      and routed alternate, and the path that goes first flips every round (ABBA), so drift on
      a noisy machine hits both alike. The table gives p50/p90/p99 over all samples.
  (b) Throughput at --concurrency C. C client loops run for --duration seconds per path, over
      --tp-rounds alternating rounds, and the table gives the median req/s over the rounds.

How to read the summary:
  - "routed/direct" is the ratio of the p50 latencies, or of the throughputs.
  - "added ms" is routed p50 minus direct p50. The range after it is the min..max of the same
    difference taken round by round; it shows how much of the difference is noise.
  - "added ms/req" is 1000/rps_routed - 1000/rps_direct: the router's extra cost per request when
    the machine is saturated. On a 2-core machine the client, the router and the worker all share
    the CPUs.

FASTVLM_MAX_CONCURRENT is set to C, so the router never sheds. FASTVLM_MAX_BATCH_WAIT_MS is set
to --batch-wait-ms (default 0), so a sequential request is not held for the 5 ms batch window,
which would hide the hop. Only the ratios within one run carry over: absolute numbers hold for this
machine at this moment, and the load average printed at start and end shows how busy it was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    parse_settings,
    percentile,
    positive_int,
    run_bench,
    table,
)

PATHS = ("direct", "routed")
WORKLOAD_KEYS = ("readyz", "miss", "predict")


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    method: str
    path: str
    body: bytes | None
    expect: int


@dataclass
class Samples:
    """One path's results for one workload and one measurement kind."""

    latencies: list[float] = field(default_factory=list)
    """Seconds, answers with the expected status only."""
    round_p50: list[float] = field(default_factory=list)
    round_rps: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def build_workloads(args: argparse.Namespace) -> list[Workload]:
    def body(image_path: str) -> bytes:
        return json.dumps({"image_path": image_path, "max_new_tokens": args.max_new_tokens}).encode()

    known = {
        "readyz": Workload("readyz", "GET /readyz (no hop)", "GET", "/readyz", None, 200),
        "miss": Workload("miss", "POST /predict_image 404", "POST", "/predict_image",
                         body("no-such-image.jpg"), 404),
        "predict": Workload("predict", f"POST /predict_image {args.max_new_tokens} tok", "POST", "/predict_image",
                            body(args.image), 200),
    }
    return [known[key] for key in args.workloads]


async def send(session: aiohttp.ClientSession, base_url: str, workload: Workload) -> tuple[float, str | None]:
    """One request; its latency in seconds and None, or a short error description."""
    started = time.perf_counter()
    try:
        async with session.request(workload.method, base_url + workload.path, data=workload.body,
                                   headers=JSON_HEADERS if workload.body else None) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return time.perf_counter() - started, type(exc).__name__
    elapsed = time.perf_counter() - started
    return elapsed, None if status == workload.expect else f"HTTP {status}"


def order(round_index: int) -> tuple[str, ...]:
    """ABBA: the path that goes first flips every round."""
    return PATHS if round_index % 2 == 0 else PATHS[::-1]


async def sequential(session: aiohttp.ClientSession, urls: dict[str, str], workload: Workload,
                     requests: int, rounds: int) -> dict[str, Samples]:
    results = {path: Samples() for path in PATHS}
    per_round = [requests // rounds + (1 if r < requests % rounds else 0) for r in range(rounds)]
    for r, count in enumerate(per_round):
        for path in order(r):
            samples, this_round = results[path], []
            for _ in range(count):
                latency, error = await send(session, urls[path], workload)
                if error:
                    samples.errors[error] += 1
                else:
                    this_round.append(latency)
            samples.latencies.extend(this_round)
            samples.round_p50.append(percentile(this_round, 50) * 1000)
    return results


async def saturate(session: aiohttp.ClientSession, url: str, workload: Workload, concurrency: int,
                   duration: float, samples: Samples) -> float:
    """``concurrency`` client loops for ``duration`` seconds; returns the answers/s with the expected status."""
    end = time.perf_counter() + duration
    ok = 0

    async def client_loop() -> None:
        nonlocal ok
        while time.perf_counter() < end:
            latency, error = await send(session, url, workload)
            if error:
                samples.errors[error] += 1
            else:
                ok += 1
                samples.latencies.append(latency)

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return ok / (time.perf_counter() - started)


async def throughput(session: aiohttp.ClientSession, urls: dict[str, str], workload: Workload,
                     concurrency: int, duration: float, rounds: int) -> dict[str, Samples]:
    results = {path: Samples() for path in PATHS}
    for r in range(rounds):
        for path in order(r):
            rps = await saturate(session, urls[path], workload, concurrency, duration, results[path])
            results[path].round_rps.append(rps)
    return results


def errors_text(samples: Samples) -> str:
    return str(sum(samples.errors.values()))


def error_details(label: str, kind: str, results: dict[str, Samples]) -> list[str]:
    return [f"  {label} {kind} {path}: " + ", ".join(f"{name} x{n}" for name, n in samples.errors.most_common())
            for path, samples in results.items() if samples.errors]


async def measure(args: argparse.Namespace, urls: dict[str, str]) -> None:
    workloads = build_workloads(args)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    seq: dict[str, dict[str, Samples]] = {}
    tput: dict[str, dict[str, Samples]] = {}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        for workload in workloads:
            print(f"measuring {workload.label} ...", flush=True)
            for r in range(args.warmup):
                await send(session, urls[order(r)[0]], workload)
            seq[workload.key] = await sequential(session, urls, workload, args.requests, args.rounds)
            tput[workload.key] = await throughput(session, urls, workload, args.concurrency, args.duration,
                                                  args.tp_rounds)

    details: list[str] = []
    rows = []
    for workload in workloads:
        for path, samples in seq[workload.key].items():
            rows.append([workload.label if path == "direct" else "", path, len(samples.latencies),
                         fmt(samples.p(50)), fmt(samples.p(90)), fmt(samples.p(99)),
                         fmt(statistics.fmean(samples.latencies) * 1000 if samples.latencies else float("nan")),
                         errors_text(samples)])
        details += error_details(workload.label, "sequential", seq[workload.key])
    print(f"\n(a) Sequential latency, ms: {args.requests} requests per path in {args.rounds} interleaved rounds")
    print(table(["workload", "path", "n", "p50", "p90", "p99", "mean", "errors"], rows, left=2))

    rows = []
    for workload in workloads:
        for path, samples in tput[workload.key].items():
            rows.append([workload.label if path == "direct" else "", path, fmt(statistics.median(samples.round_rps), 1),
                         f"{min(samples.round_rps):.1f}..{max(samples.round_rps):.1f}",
                         fmt(samples.p(50)), fmt(samples.p(99)), errors_text(samples)])
        details += error_details(workload.label, "throughput", tput[workload.key])
    print(f"\n(b) Throughput at concurrency {args.concurrency}: {args.tp_rounds} interleaved rounds of "
          f"{args.duration:g} s per path")
    print(table(["workload", "path", "req/s (median)", "rounds min..max", "p50 ms", "p99 ms", "errors"], rows,
                left=2))

    rows = []
    for workload in workloads:
        s, t = seq[workload.key], tput[workload.key]
        direct_p50, routed_p50 = s["direct"].p(50), s["routed"].p(50)
        deltas = [b - a for a, b in zip(s["direct"].round_p50, s["routed"].round_p50, strict=True)]
        direct_rps, routed_rps = statistics.median(t["direct"].round_rps), statistics.median(t["routed"].round_rps)
        rows.append([workload.label, fmt(routed_p50 / direct_p50), fmt(routed_p50 - direct_p50),
                     f"{min(deltas):.2f}..{max(deltas):.2f}",
                     fmt(routed_rps / direct_rps) if direct_rps else "-",
                     fmt(1000 / routed_rps - 1000 / direct_rps) if routed_rps and direct_rps else "-"])
    print("\nRouter overhead (routed vs direct, same run)")
    print(table(["workload", "seq p50 routed/direct", "added ms", "per-round added ms",
                 f"c={args.concurrency} req/s routed/direct", "added ms/req"], rows))
    if details:
        print("\nunexpected answers (left out of the latencies):\n" + "\n".join(details))


def workload_list(text: str) -> list[str]:
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(WORKLOAD_KEYS))
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"choose from {','.join(WORKLOAD_KEYS)}")
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(parser)
    parser.add_argument("--workloads", type=workload_list, default=list(WORKLOAD_KEYS),
                        help="comma-separated, from readyz,miss,predict (default: all)")
    parser.add_argument("--requests", type=positive_int, default=200,
                        help="sequential requests per path and workload (default %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=10,
                        help="interleaved rounds the sequential requests are split into (default %(default)s)")
    parser.add_argument("--concurrency", type=positive_int, default=4,
                        help="client loops for the throughput measurement; also FASTVLM_MAX_CONCURRENT "
                             "(default %(default)s)")
    parser.add_argument("--duration", type=float, default=2.0,
                        help="seconds per path and round of the throughput measurement (default %(default)s)")
    parser.add_argument("--tp-rounds", type=positive_int, default=4,
                        help="interleaved rounds of the throughput measurement (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=20,
                        help="unmeasured requests per workload before measuring, alternating paths "
                             "(default %(default)s)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=1,
                        help="generation length of the predict workload (default %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="FASTVLM_MAX_BATCH_WAIT_MS of both workers (default %(default)s; the service "
                             "default is 5)")
    parser.add_argument("--image", default="coffee.jpg",
                        help="image_path of the predict workload, relative to the sample media "
                             "(default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client timeout per request in seconds (default %(default)s)")
    args = parser.parse_args()
    extra = parse_settings(args.settings)

    def body(services: Services) -> None:
        settings = {"max_workers": 1, "max_concurrent": args.concurrency,
                    "max_batch_wait_ms": args.batch_wait_ms}
        router = services.start_router(**settings)
        worker = services.start_worker(**settings)
        health = services.wait_router(router, 1)
        services.wait_worker(worker)
        routed_worker = health["workers"][0]
        print(f"router {router.base_url} (pid {router.popen.pid}) -> worker {routed_worker['id']} "
              f"(pid {routed_worker['pid']}, port {routed_worker['port']}); direct: standalone worker "
              f"{worker.base_url} (pid {worker.popen.pid})")
        print(f"model {args.model or 'built-in tiny (random weights)'}, device {routed_worker['device']}, "
              f"max_concurrent {args.concurrency}, max_batch_wait_ms {args.batch_wait_ms:g}, torch threads 1"
              + (f", --set {' '.join(args.settings)}" if args.settings else ""), flush=True)
        asyncio.run(measure(args, {"direct": worker.base_url, "routed": router.base_url}))

    return run_bench(args.model, extra, args.startup_timeout, body)


if __name__ == "__main__":
    sys.exit(main())
