"""Images per second: sequential generate calls vs the batcher at several batch sizes, in one run.

    .venv/bin/python bench/engine_batching.py                      # tiny model, CPU
    .venv/bin/python bench/engine_batching.py --model DIR --device cuda --batch-sizes 1,8,32

Without --model a tiny random model is built in a temporary folder (--image-size, --shape).
The figures are throughput on this machine at this moment: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import wait

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _images(count: int, size: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size * 4 // 3, 3), dtype=np.uint8))
            for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: build a tiny random model)")
    parser.add_argument("--shape", default="tiny", choices=("tiny", "0.5b"))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--images", type=int, default=16, help="images per measurement")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N per measurement")
    args = parser.parse_args()

    import torch

    from fastvlm_engine.engine.batcher import Batcher
    from fastvlm_engine.engine.model import FastVLM
    from fastvlm_engine.engine.tiny import build_tiny_model

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.model or build_tiny_model(tmp, image_size=args.image_size, shape=args.shape)
        vlm = FastVLM.load(source, device=args.device, dtype=args.dtype)
        # Fixed-length outputs make every configuration do the same work: EOS is not allowed to end early.
        vlm.eos_ids = frozenset()
        vlm.model.generation_config.eos_token_id = None
        items = [vlm.prepare(img, "Describe the image.", args.max_new_tokens)
                 for img in _images(args.images, vlm.image_size)]
        vlm.generate(items[:2])  # warm-up

        def sync() -> None:
            if vlm.device.type == "cuda":
                torch.cuda.synchronize()

        def sequential() -> float:
            started = time.perf_counter()
            for item in items:
                vlm.generate([item])
            sync()
            return time.perf_counter() - started

        def batched(size: int) -> tuple[float, list[int]]:
            batcher = Batcher(vlm.generate, max_batch_size=size, max_batch_wait_s=0.05,
                              max_queue_size=len(items) + 1).start()
            try:
                started = time.perf_counter()
                futures = [batcher.submit(item) for item in items]
                wait(futures)
                sync()
                elapsed = time.perf_counter() - started
                return elapsed, [f.result().batch_size for f in futures]
            finally:
                batcher.stop()

        print(f"model={vlm.name} device={vlm.device} dtype={str(vlm.dtype).removeprefix('torch.')} "
              f"image_size={vlm.image_size} images={len(items)} new_tokens={args.max_new_tokens} "
              f"torch_threads={torch.get_num_threads()}")
        seq = min(sequential() for _ in range(args.repeats))
        seq_rate = len(items) / seq
        print(f"{'sequential':>14}: {seq_rate:8.2f} images/s  ({seq / len(items) * 1000:7.1f} ms/image)")
        for size in [int(s) for s in args.batch_sizes.split(",")]:
            runs = [batched(size) for _ in range(args.repeats)]
            elapsed, sizes = min(runs, key=lambda r: r[0])
            rate = len(items) / elapsed
            print(f"{'batch ' + str(size):>14}: {rate:8.2f} images/s  ({elapsed / len(items) * 1000:7.1f} "
                  f"ms/image, mean batch {statistics.mean(sizes):.1f})  ratio vs sequential {rate / seq_rate:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
