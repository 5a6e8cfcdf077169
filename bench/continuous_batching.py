"""Static batching (today's Batcher over FastVLM.generate) against the continuous-batching Scheduler.

    .venv/bin/python bench/continuous_batching.py                          # tiny model, CPU, 1 thread
    .venv/bin/python bench/continuous_batching.py --shape 0.5b --device cuda   # GPU: tokens/s vs HF generate

CPU scenarios, both paths in one run, with end-of-sequence disabled so every request does exactly
the work it asks for:
  (a) head-of-line: an 8-token request arrives 50 ms after seven 128-token requests; its latency
      over its latency alone (goal <= 2.0);
  (b) throughput with mixed lengths (8-256 new tokens): saturated (all queued at once) for each
      path's capacity, then Poisson arrivals at 80 % of the static path's capacity: achieved
      throughput and p50/p99 latency (goal: scheduler >= 1.3x the static capacity);
  (c) time to first token under (b)'s Poisson load, streaming; the static path cannot stream, so
      its first token arrives with its whole answer.
Both paths hold at most --concurrency sequences (the static batch size), so the comparison is
about scheduling, not about a larger batch.

With --device cuda (GPU only): tokens/s at batch 1, 8, 32 and 64 for HF generate, the scheduler
and the scheduler's fast path (CUDA graphs; UNVERIFIED until this has been run on a GPU), plus a
check that the fast path's greedy tokens equal the eager path's.
The figures are this machine at this moment: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import fmt, load_average, percentile, table  # noqa: E402

PROMPT = "Describe the image."


def _images(count: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size * 4 // 3, 3), dtype=np.uint8)) for _ in range(count)]


def _scheduler(vlm, sequences: int, context: int, fast_path: bool = False):
    from fastvlm_engine.engine.kv import KVCapacity, kv_bytes_per_token
    from fastvlm_engine.engine.scheduler import Scheduler

    capacity = KVCapacity(sequences=sequences, context_tokens=context,
                          bytes_per_token=kv_bytes_per_token(vlm.model.config.text_config, vlm.dtype))
    return Scheduler(vlm, capacity, max_queue_size=4096, fast_path=fast_path).start()


def _batcher(vlm, size: int):
    from fastvlm_engine.engine.batcher import Batcher

    return Batcher(vlm.generate, max_batch_size=size, max_batch_wait_s=0.005, max_queue_size=4096).start()


class Paths:
    """The two ways of running a prepared request, behind one awaitable."""

    def __init__(self, vlm, concurrency: int, context: int) -> None:
        self.batcher = _batcher(vlm, concurrency)
        self.scheduler = _scheduler(vlm, concurrency, context)

    def close(self) -> None:
        self.batcher.stop()
        self.scheduler.stop()

    async def static(self, item) -> dict:
        started = time.perf_counter()
        await self.batcher.run(item)
        done = time.perf_counter() - started
        return {"latency": done, "first_text": done, "tokens": item.max_new_tokens}

    async def continuous(self, item, *, stream: bool = False) -> dict:
        started = time.perf_counter()
        handle = self.scheduler.submit(item)
        first_text = None
        if stream:
            async for _delta in handle.stream():
                if first_text is None:
                    first_text = time.perf_counter() - started
        result = await handle.result()
        done = time.perf_counter() - started
        return {"latency": done, "first_text": first_text if first_text is not None else done,
                "ttft": result.ttft_s, "tokens": len(result.token_ids)}


async def _head_of_line(run, long_items, short, repeats: int) -> tuple[float, float]:
    """(median latency alone, median latency behind the long requests) of the short request."""
    alone, behind = [], []
    for _ in range(repeats):
        alone.append((await run(short))["latency"])
        longs = [asyncio.create_task(run(item)) for item in long_items]
        await asyncio.sleep(0.05)
        behind.append((await run(short))["latency"])
        await asyncio.gather(*longs)
    return statistics.median(alone), statistics.median(behind)


async def _saturated(run, items) -> tuple[float, float]:
    """(requests/s, tokens/s) with every request queued at once."""
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(run(item) for item in items))
    elapsed = time.perf_counter() - started
    return len(items) / elapsed, sum(o["tokens"] for o in outcomes) / elapsed


async def _poisson(run, items, gaps: Sequence[float]) -> tuple[list[dict], float]:
    """Submit on the given schedule; return the outcomes and the achieved requests/s."""
    started = time.perf_counter()
    tasks = []
    for item, gap in zip(items, gaps, strict=True):
        await asyncio.sleep(gap)
        tasks.append(asyncio.create_task(run(item)))
    outcomes = await asyncio.gather(*tasks)
    return outcomes, len(items) / (time.perf_counter() - started)


def cpu_scenarios(vlm, args) -> None:
    images = _images(8, vlm.image_size)
    rng = random.Random(args.seed)
    paths = Paths(vlm, args.concurrency, context=vlm.prepare(images[0], PROMPT, 1).prompt_tokens + 300)
    try:
        warm = [vlm.prepare(images[i], PROMPT, 4) for i in range(2)]
        asyncio.run(_saturated(paths.static, warm))
        asyncio.run(_saturated(paths.continuous, warm))

        # (a) head-of-line blocking
        long_items = [vlm.prepare(images[i % len(images)], PROMPT, 128) for i in range(7)]
        short = vlm.prepare(images[7], PROMPT, 8)
        static_alone, static_behind = asyncio.run(_head_of_line(paths.static, long_items, short, args.repeats))
        cont_alone, cont_behind = asyncio.run(_head_of_line(paths.continuous, long_items, short, args.repeats))
        print("\n(a) head-of-line: an 8-token request 50 ms after seven 128-token requests "
              f"(median of {args.repeats})")
        print(table(["path", "alone ms", "behind ms", "ratio", "goal"], [
            ["static Batcher", fmt(static_alone * 1000, 1), fmt(static_behind * 1000, 1),
             fmt(static_behind / static_alone), ""],
            ["Scheduler", fmt(cont_alone * 1000, 1), fmt(cont_behind * 1000, 1), fmt(cont_behind / cont_alone),
             "<= 2.0"]]))

        # (b) mixed lengths: saturated capacity, then Poisson at 80 % of the static capacity
        mix = [vlm.prepare(images[rng.randrange(len(images))], PROMPT, rng.randint(8, 256))
               for _ in range(args.requests)]
        rounds = {"static": [], "continuous": []}
        for _ in range(args.repeats):  # alternate, so a noisy neighbour hurts both paths alike
            rounds["static"].append(asyncio.run(_saturated(paths.static, mix)))
            rounds["continuous"].append(asyncio.run(_saturated(paths.continuous, mix)))
        static_rps, static_tps = max(rounds["static"])
        cont_rps, cont_tps = max(rounds["continuous"])
        rate = 0.8 * static_rps
        gaps = [0.0] + [rng.expovariate(rate) for _ in range(len(mix) - 1)]
        static_out, static_achieved = asyncio.run(_poisson(paths.static, mix, gaps))
        cont_out, cont_achieved = asyncio.run(
            _poisson(lambda item: paths.continuous(item, stream=True), mix, gaps))
    finally:
        paths.close()

    def latency(outcomes, key="latency", q=50):
        return fmt(percentile([o[key] for o in outcomes], q) * 1000, 0)

    mean_tokens = statistics.mean(item.max_new_tokens for item in mix)
    print(f"\n(b) {len(mix)} requests, 8-256 new tokens each (mean {mean_tokens:.0f}); saturated = all queued at "
          f"once, best of {args.repeats} alternating rounds")
    print(table(["path", "saturated req/s", "tokens/s", "ratio"], [
        ["static Batcher", fmt(static_rps), fmt(static_tps, 0), "1.00"],
        ["Scheduler", fmt(cont_rps), fmt(cont_tps, 0), f"{cont_tps / static_tps:.2f} (goal >= 1.3)"]]))
    print(f"\n    Poisson arrivals at {rate:.2f} req/s (80 % of the static capacity), the same schedule for both")
    print(table(["path", "achieved req/s", "p50 latency ms", "p99 latency ms"], [
        ["static Batcher", fmt(static_achieved), latency(static_out), latency(static_out, q=99)],
        ["Scheduler", fmt(cont_achieved), latency(cont_out), latency(cont_out, q=99)]]))
    p50_ratio = percentile([o["latency"] for o in static_out], 50) / percentile([o["latency"] for o in cont_out], 50)
    print(f"    offered {rate:.2f} req/s; achieved ratio Scheduler / static {cont_achieved / static_achieved:.2f}; "
          f"p50 latency static / Scheduler {p50_ratio:.2f}x")

    print("\n(c) time to first token under (b)'s Poisson load (the Scheduler streaming)")
    print(table(["path", "TTFT p50 ms", "TTFT p99 ms", "first text p50 ms", "first text p99 ms"], [
        ["static Batcher (no streaming)", latency(static_out), latency(static_out, q=99), latency(static_out),
         latency(static_out, q=99)],
        ["Scheduler", latency(cont_out, "ttft"), latency(cont_out, "ttft", 99), latency(cont_out, "first_text"),
         latency(cont_out, "first_text", 99)]]))
    print("    first token = sampled by the engine; first text = first non-empty delta received by the caller "
          "(the tiny model's gibberish often starts with tokens that decode to nothing)")


def gpu_scenarios(vlm, args) -> None:
    import torch

    images = _images(4, vlm.image_size)
    new_tokens = args.gpu_new_tokens
    sizes = [1, 8, 32, 64]

    def sync() -> None:
        torch.cuda.synchronize(vlm.device)

    def items(count: int):
        return [vlm.prepare(images[i % len(images)], PROMPT, new_tokens) for i in range(count)]

    context = items(1)[0].prompt_tokens + new_tokens + 16
    eager = _scheduler(vlm, max(sizes), context)
    fast = _scheduler(vlm, max(sizes), context, fast_path=True)
    rows = []
    try:
        for _, scheduler in (("eager", eager), ("fast", fast)):  # warm-up (graph capture for the fast path)
            for size in sizes:
                handles = [scheduler.submit(item) for item in items(size)]
                [h.wait(600) for h in handles]
        check = items(4)
        eager_tokens = [h.wait(600).token_ids for h in [eager.submit(i) for i in check]]
        fast_tokens = [h.wait(600).token_ids for h in [fast.submit(i) for i in check]]
        hf_tokens = [g.token_ids for g in vlm.generate(check)]
        for size in sizes:
            batch = items(size)
            vlm.generate(batch[:1])
            sync()
            started = time.perf_counter()
            vlm.generate(batch)
            sync()
            hf = size * new_tokens / (time.perf_counter() - started)
            measured = []
            for scheduler in (eager, fast):
                sync()
                started = time.perf_counter()
                handles = [scheduler.submit(item) for item in batch]
                total = sum(len(h.wait(600).token_ids) for h in handles)
                sync()
                measured.append(total / (time.perf_counter() - started))
            rows.append([str(size), fmt(hf, 0), fmt(measured[0], 0), fmt(measured[1], 0),
                         fmt(measured[0] / hf), fmt(measured[1] / hf)])
    finally:
        eager.stop()
        fast.stop()
    print(f"\nGPU tokens/s, {new_tokens} new tokens per request, images {vlm.image_size} px "
          f"(fast path = CUDA graphs; goal >= 5x HF generate at batch 1)")
    print(table(["batch", "HF generate", "Scheduler", "Scheduler fast", "ratio", "fast ratio"], rows))
    same = sum(a == b for a, b in zip(eager_tokens, fast_tokens, strict=True))
    same_hf = sum(a == b for a, b in zip(eager_tokens, hf_tokens, strict=True))
    print(f"greedy tokens identical: fast vs eager {same}/{len(check)}, eager vs HF generate {same_hf}/{len(check)} "
          "(bf16 rounding can legitimately differ between batched kernels)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: build a random model with engine/tiny.py)")
    parser.add_argument("--shape", default="tiny", choices=("tiny", "0.5b"))
    parser.add_argument("--image-size", type=int, help="default 256 for tiny, 1024 for 0.5b")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (cuda runs the GPU table)")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    parser.add_argument("--concurrency", type=int, default=8, help="static batch size = scheduler sequences")
    parser.add_argument("--requests", type=int, default=48, help="requests in (b) and (c)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of (a) and of (b)'s saturated rounds")
    parser.add_argument("--gpu-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from fastvlm_engine.engine.model import FastVLM
    from fastvlm_engine.engine.tiny import build_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    image_size = args.image_size or (1024 if args.shape == "0.5b" else 256)
    print(f"load average at start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or build_tiny_model(tmp, image_size=image_size, shape=args.shape,
                                                dtype="bfloat16" if args.shape == "0.5b" else "float32")
        vlm = FastVLM.load(source, device=args.device, dtype=args.dtype)
        # Fixed-length outputs: every request does exactly the work it asks for, on both paths.
        vlm.eos_ids = frozenset()
        vlm.model.generation_config.eos_token_id = None
        print(f"model={vlm.name} shape={args.shape} device={vlm.device} dtype={str(vlm.dtype).removeprefix('torch.')} "
              f"image_size={vlm.image_size} torch_threads={torch.get_num_threads()} concurrency={args.concurrency}")
        if vlm.device.type == "cuda":
            gpu_scenarios(vlm, args)
        else:
            cpu_scenarios(vlm, args)
    print(f"\nload average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
