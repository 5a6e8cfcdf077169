"""First start vs later starts with an Apple-format FastVLM: conversion, hashing and reuse, at real size.

    .venv/bin/python bench/convert_checkpoint.py
    .venv/bin/python bench/convert_checkpoint.py --shape tiny --keep /tmp/fastvlm-bench

Writes a randomly initialised checkpoint in Apple's layout (FastVLM-0.5B's names and shapes:
Qwen2-0.5B + FastViTHD, untied lm_head, bfloat16, one model.safetensors, as Apple's release),
then times, in one run:
  - cold: resolve_model with an empty FASTVLM_CACHE_DIR (hash every file, convert, publish);
  - warm: resolve_model again (file digests remembered by size and mtime, cached copy reused);
  - rehash: the folder hash with the digest memo deleted (what a changed file costs to notice);
  - load: FastVLM.load of the converted copy on the CPU.
The numbers hold for this machine at this moment (2 shared, noisy cores here); compare the rows
of one run. Needs about 3x the checkpoint size in free disk space (0.5B: ~4.5 GB).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers: Apple's layout


def write_random_apple_checkpoint(folder: Path, shape: str) -> int:
    """Apple-layout names and shapes from the meta device, filled with bf16 noise; returns bytes written."""
    import torch
    from safetensors.torch import save_file

    from fastvlm_engine.engine.tiny import build_tokenizer
    from tests.helpers import apple_fastvlm as apple

    tokenizer = build_tokenizer(with_image_token=False)
    tokenizer.save_pretrained(folder)
    config = {**apple.apple_config(tokenizer), "torch_dtype": "bfloat16"}
    layers, dims = apple.TINY_LAYERS, apple.TINY_DIMS
    if shape == "0.5b":
        config.update(apple.REAL_0_5B)
        layers, dims = apple.REAL_LAYERS, apple.REAL_DIMS
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with torch.device("meta"):
        model = apple.apple_model_skeleton(config, layers, dims)
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, meta in model.state_dict().items():
        if meta.dtype.is_floating_point:
            state[name] = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)
        else:
            state[name] = torch.zeros(meta.shape, dtype=meta.dtype)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return (folder / "model.safetensors").stat().st_size


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("0.5b", "tiny"), default="0.5b")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temp dir, removed)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from fastvlm_engine.config import Settings
    from fastvlm_engine.engine.model import FastVLM
    from fastvlm_engine.engine.model_cache import source_digest
    from fastvlm_engine.engine.resolve import resolve_model

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastvlm-convert-bench-"))
    try:
        source = root / f"llava-fastvithd_{args.shape}_stage3"
        shutil.rmtree(root / "cache", ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
        source.mkdir(parents=True)
        size, build_s = timed(lambda: write_random_apple_checkpoint(source, args.shape))
        settings = Settings(model=str(source), cache_dir=root / "cache")
        (path, info), cold_s = timed(lambda: resolve_model(settings))
        (again, _), warm_s = timed(lambda: resolve_model(settings))
        if again != path:
            raise SystemExit("the second start did not reuse the converted copy")
        (root / "cache" / ".file-digests.json").unlink()
        _, rehash_s = timed(lambda: source_digest(source, root / "cache"))
        _, load_s = timed(lambda: FastVLM.load(path, device="cpu", dtype="bfloat16"))
        print(f"{info.name} ({args.shape} shape, {size / 2**30:.2f} GiB of bf16 weights, written in {build_s:.1f} s)")
        print(f"{'step':<48} {'seconds':>8} {'x cold':>8}")
        for label, seconds in (("cold start: hash + convert + publish", cold_s),
                               ("warm start: digests remembered, copy reused", warm_s),
                               ("rehash every file (digest memo deleted)", rehash_s),
                               ("FastVLM.load of the converted copy (CPU, bf16)", load_s)):
            print(f"{label:<48} {seconds:>8.2f} {seconds / cold_s:>8.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
