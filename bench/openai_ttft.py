"""Time to first token through the router: streamed /v1/chat/completions vs streaming /predict_image.

    .venv/bin/python bench/openai_ttft.py
    .venv/bin/python bench/openai_ttft.py --requests 200 --max-new-tokens 32 --image-form inline

Starts one router with one worker (``fastvlm serve``, FASTVLM_MAX_WORKERS=1) and sends the same
question about the same image both ways, one request at a time:

  native  POST /predict_image {"image_path" | "image_base64", "prompt", "max_new_tokens", "stream": true}
  openai  POST /v1/chat/completions {"messages": [user: text + image_url], "max_tokens", "stream": true}

--image-form path names the image under the media roots (the worker reads it); inline sends it as
base64 (``image_base64``, or a ``data:image/jpeg;base64,`` URL that the router spools while parsing).

Measured per request, from sending it: TTFT, the arrival of the first event that carries text (a
``delta`` event; a chunk whose ``delta.content`` is not empty — the role chunk before it does not
count), and the time until the stream ended. Requests alternate between the two paths in --rounds
rounds, the path that goes first flipping every round (ABBA), so drift on a noisy machine hits both
alike. The summary gives the ratio openai/native of the TTFT and total p50, and the added
milliseconds with their per-round range (which shows the noise). Both paths answer greedily, so the
streamed texts must be equal; the script checks that on every request pair and reports mismatches.
Only the ratios within one run carry over: absolute numbers hold for this machine at this moment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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

PATHS = ("native", "openai")


@dataclass
class Samples:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    round_ttft_p50: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


def bodies(args: argparse.Namespace, media_dir: Path) -> dict[str, tuple[str, bytes]]:
    """(path, JSON body) of each way of asking."""
    inline = base64.b64encode((media_dir / args.image).read_bytes()).decode()
    native = {"prompt": args.prompt, "max_new_tokens": args.max_new_tokens, "stream": True,
              **({"image_base64": inline} if args.image_form == "inline" else {"image_path": args.image})}
    url = f"data:image/jpeg;base64,{inline}" if args.image_form == "inline" else args.image
    chat = {"messages": [{"role": "user", "content": [{"type": "text", "text": args.prompt},
                                                      {"type": "image_url", "image_url": {"url": url}}]}],
            "max_tokens": args.max_new_tokens, "stream": True}
    return {"native": ("/predict_image", json.dumps(native).encode()),
            "openai": ("/v1/chat/completions", json.dumps(chat).encode())}


def text_of(path: str, payload: str) -> str:
    """The text an SSE data payload carries on this path ('' for role, finish, usage and done events)."""
    if payload == "[DONE]":
        return ""
    document = json.loads(payload)
    if path == "native":
        return document.get("text") or ""
    choices = document.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or "" if choices else ""


async def one(session: aiohttp.ClientSession, base_url: str, path: str, request: tuple[str, bytes]
              ) -> tuple[float, float, str] | str:
    """(TTFT s, total s, streamed text), or a short error description."""
    started = time.perf_counter()
    first: float | None = None
    parts: list[str] = []
    try:
        async with session.post(base_url + request[0], data=request[1], headers=JSON_HEADERS) as response:
            if response.status != 200:
                await response.read()
                return f"HTTP {response.status}"
            async for raw in response.content:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: "):
                    continue
                text = text_of(path, line.removeprefix("data: "))
                if text and first is None:
                    first = time.perf_counter() - started
                parts.append(text)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return type(exc).__name__
    if first is None:
        return "no text"
    return first, time.perf_counter() - started, "".join(parts)


async def measure(args: argparse.Namespace, base_url: str, requests: dict[str, tuple[str, bytes]]) -> None:
    results = {path: Samples() for path in PATHS}
    mismatches = 0
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for i in range(args.warmup):
            await one(session, base_url, PATHS[i % 2], requests[PATHS[i % 2]])
        per_round = [args.requests // args.rounds + (1 if r < args.requests % args.rounds else 0)
                     for r in range(args.rounds)]
        for r, count in enumerate(per_round):
            order = PATHS if r % 2 == 0 else PATHS[::-1]
            this_round: dict[str, list[float]] = {path: [] for path in PATHS}
            for _ in range(count):
                texts = {}
                for path in order:
                    outcome = await one(session, base_url, path, requests[path])
                    if isinstance(outcome, str):
                        results[path].errors[outcome] += 1
                        continue
                    ttft, total, texts[path] = outcome
                    results[path].ttft.append(ttft)
                    results[path].total.append(total)
                    this_round[path].append(ttft)
                if len(texts) == 2 and texts["native"] != texts["openai"]:
                    mismatches += 1
            for path in PATHS:
                results[path].round_ttft_p50.append(percentile(this_round[path], 50) * 1000)

    rows = [[path, len(s.ttft), fmt(percentile(s.ttft, 50) * 1000), fmt(percentile(s.ttft, 90) * 1000),
             fmt(percentile(s.ttft, 99) * 1000), fmt(percentile(s.total, 50) * 1000),
             fmt(statistics.fmean(s.total) * 1000 if s.total else float("nan")), sum(s.errors.values())]
            for path, s in results.items()]
    print(f"\nSequential streamed requests, ms ({args.requests} per path in {args.rounds} interleaved rounds, "
          f"{args.max_new_tokens} tokens, image by {args.image_form})")
    print(table(["path", "n", "TTFT p50", "TTFT p90", "TTFT p99", "total p50", "total mean", "errors"], rows))
    native, chat = results["native"], results["openai"]
    deltas = [b - a for a, b in zip(native.round_ttft_p50, chat.round_ttft_p50, strict=True)]
    ttft_native, ttft_chat = percentile(native.ttft, 50) * 1000, percentile(chat.ttft, 50) * 1000
    total_native, total_chat = percentile(native.total, 50) * 1000, percentile(chat.total, 50) * 1000
    print("\nOpenAI API vs native streaming, same run")
    print(table(["measure", "openai/native", "added ms (p50)", "per-round added ms"],
                [["time to first token", fmt(ttft_chat / ttft_native), fmt(ttft_chat - ttft_native),
                  f"{min(deltas):.2f}..{max(deltas):.2f}"],
                 ["whole stream", fmt(total_chat / total_native), fmt(total_chat - total_native), ""]]))
    print(f"\nstreamed texts equal on both paths: {'yes' if not mismatches else f'NO, {mismatches} pairs differ'}")
    for path, samples in results.items():
        if samples.errors:
            print(f"  {path} errors: " + ", ".join(f"{name} x{n}" for name, n in samples.errors.most_common()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_service_args(parser)
    parser.add_argument("--requests", type=positive_int, default=100,
                        help="streamed requests per path (default %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=10,
                        help="interleaved rounds the requests are split into (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests first (default %(default)s)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=16,
                        help="tokens per answer (default %(default)s)")
    parser.add_argument("--prompt", default="What is on the table?", help="the question (default %(default)r)")
    parser.add_argument("--image", default="coffee.jpg", help="image in the sample media (default %(default)s)")
    parser.add_argument("--image-form", choices=("path", "inline"), default="path",
                        help="send the image by path under the media roots or inline as base64 (default %(default)s)")
    parser.add_argument("--batch-wait-ms", type=float, default=0.0,
                        help="FASTVLM_MAX_BATCH_WAIT_MS of the worker (default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=120.0,
                        help="client timeout per request in seconds (default %(default)s)")
    args = parser.parse_args()
    extra = parse_settings(args.settings)

    def body(services: Services) -> None:
        router = services.start_router(max_workers=1, max_batch_wait_ms=args.batch_wait_ms)
        health = services.wait_router(router, 1)
        worker = health["workers"][0]
        print(f"router {router.base_url} (pid {router.popen.pid}) -> worker {worker['id']} (pid {worker['pid']}, "
              f"{worker['device']}); model {args.model or 'built-in tiny (random weights)'}, torch threads 1"
              + (f", --set {' '.join(args.settings)}" if args.settings else ""), flush=True)
        asyncio.run(measure(args, router.base_url, bodies(args, services.media_dir)))

    return run_bench(args.model, extra, args.startup_timeout, body)


if __name__ == "__main__":
    sys.exit(main())
