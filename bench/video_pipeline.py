"""Benchmark the video pipeline on CPU: the analysis pass against plain decoding, then the whole
of /summarize_video with and without the speech and on-screen text stages.

Generates (once, then reuses from --cache-dir) a clip with known hard cuts -- Ken-Burns shots
of scikit-image photos plus a colour-bar shot, light temporal noise, H.264 via PyAV's libx264
-- with titles drawn over it (DejaVu Sans Bold) and an AAC track of speech-like sound (4 s on,
2 s off). Then, alternating runs to spread machine noise:

1. decode-only (open + decode every frame through the analysis' decode-ahead reader) against
   ``analyze_video`` (features, cuts, candidates, keyframes, pHash dedupe, RGB conversion);
   prints per-stage times, the analysis/decode ratio (goal <= 1.3), the cuts found;
2. ``summarize_video`` with the tiny FastVLM (captions, summary) and real opennsfw, four ways:
   captioning only, + speech, + on-screen text, + both; prints each wall time, its ratio to
   captioning only, and the stage costs: OCR seconds per keyframe and per frame read, speech
   seconds per second of audio, and what the voice gate saves (speech with and without it).

The speech model is a randomly initialised Whisper built on the fly: ``--asr-shape tiny`` (the
test model), ``base`` or ``small`` (real whisper-base / whisper-small dimensions and vocabulary,
so compute is realistic; random weights never stop early, so every window decodes the full
``--asr-tokens``: an upper bound). The VLM is the tiny one, so captioning here is far cheaper
than with real FastVLM weights: the ratios are CPU figures for this set-up, not the GPU goal.

    .venv/bin/python bench/video_pipeline.py [--seconds 30] [--width 1080 --height 1920]
                                             [--asr-shape tiny|base|small] [--no-stages]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # for tests.fixtures

from fastvlm_engine.config import Settings  # noqa: E402
from fastvlm_engine.video.analysis import analyze_video  # noqa: E402
from fastvlm_engine.video.reader import FrameReader  # noqa: E402
from fastvlm_engine.video.source import open_video  # noqa: E402
from tests.fixtures.social import Overlay, make_social_video  # noqa: E402
from tests.fixtures.videos import SceneSpec, VideoFixture  # noqa: E402

SHOTS = [
    ("astronaut", 5.0), ("coffee", 6.0), ("pattern", 2.5), ("chelsea", 6.0), ("rocket", 4.5),
    ("immunohistochemistry", 3.0), ("coffee", 3.0),
]
"""Shot sources and lengths, cycled until the requested duration is filled."""


TITLES = ("WAIT FOR IT", "BIG SALE TODAY", "link in bio", "day 3 of 30", "follow for part 2")


def build_clip(cache: Path, seconds: float, width: int, height: int, fps: int) -> VideoFixture:
    scenes, total, i = [], 0.0, 0
    while total < seconds - 1e-6:
        source, length = SHOTS[i % len(SHOTS)]
        length = min(length, seconds - total)
        zoom = (1.0, 1.08) if i % 2 == 0 else (1.08, 1.0)
        scenes.append(SceneSpec(source, length, zoom=zoom, pan=(0.03 * (-1) ** i, 0.0)))
        total += length
        i += 1
    overlays = [Overlay(TITLES[k % len(TITLES)], start, min(seconds, start + 3.0), y=0.12 if k % 2 else 0.78)
                for k, start in enumerate(x * 5.0 + 1.0 for x in range(int(seconds // 5)))]
    bursts = [(start, min(seconds, start + 4.0)) for start in (x * 6.0 + 0.5 for x in range(int(seconds // 6) + 1))
              if start < seconds]
    name = f"bench_{width}x{height}_{fps}fps_{seconds:g}s_av"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.mp4"
    counts = [max(1, round(s.seconds * fps)) for s in scenes]
    cuts = tuple(sum(counts[:k]) for k in range(1, len(counts)))
    if path.exists():
        return VideoFixture(path=path, fps=fps, frames=sum(counts), width=width, height=height, cuts=cuts)
    print(f"generating {path.name} ({len(scenes)} shots, {sum(counts)} frames, {len(overlays)} titles, "
          f"{len(bursts)} speech bursts) ...", flush=True)
    started = time.perf_counter()
    fixture = make_social_video(cache, name, scenes, size=(width, height), fps=fps, overlays=overlays,
                                bursts=bursts, noise_floor_db=-65)
    print(f"  done in {time.perf_counter() - started:.1f} s, {path.stat().st_size / 1e6:.1f} MB", flush=True)
    return fixture


def decode_only(path: Path, settings: Settings) -> tuple[float, int]:
    started = time.perf_counter()
    frames = 0
    with (open_video(path, max_bytes=settings.video_max_bytes,
                     max_frame_pixels=settings.video_max_frame_pixels) as video,
          FrameReader(video) as reader):
        for _ in reader:
            frames += 1
    return time.perf_counter() - started, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=1080)
    parser.add_argument("--height", type=int, default=1920)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each pass")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench-video")
    parser.add_argument("--asr-shape", choices=["tiny", "base", "small"], default="tiny")
    parser.add_argument("--asr-tokens", type=int, default=224, help="Whisper tokens per window")
    parser.add_argument("--no-stages", action="store_true", help="only the analysis pass (no models)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.width < 16 or args.height < 16 or args.repeat < 1:
        parser.error("need --seconds > 0, --width/--height >= 16 and --repeat >= 1")

    clip = build_clip(args.cache_dir, args.seconds, args.width, args.height, args.fps)
    settings = Settings(video_max_seconds=max(180.0, args.seconds + 1), asr_max_new_tokens=args.asr_tokens)
    analysis = bench_analysis(clip, settings, args)
    if not args.no_stages:
        bench_stages(clip, settings, args, analysis)


def bench_analysis(clip: VideoFixture, settings: Settings, args: argparse.Namespace):
    decode_times, analyses = [], []
    frames = 0
    for _ in range(args.repeat):
        seconds, frames = decode_only(clip.path, settings)
        decode_times.append(seconds)
        started = time.perf_counter()
        analysis = analyze_video(clip.path, settings)
        analyses.append((time.perf_counter() - started, analysis))

    decode_best = min(decode_times)
    total, analysis = min(analyses, key=lambda item: item[0])
    t = analysis.timings
    found = [c.index for c in analysis.cuts]
    exact = sum(any(abs(f - c) <= 1 for f in found) for c in clip.cuts)
    false = sum(not any(abs(f - c) <= 1 for c in clip.cuts) for f in found)
    print(f"\nclip: {clip.path.name}: {clip.frames} frames, {args.width}x{args.height} @ {args.fps} fps, "
          f"{len(clip.cuts)} hard cuts\n")
    print("1. analysis pass")
    print(f"{'stage':<34}{'seconds':>9}")
    for name, value in (("stats (open/probe)", t.stats_sec),
                        ("scene_detection (decode+features)", t.scene_detection_sec),
                        ("frame_extraction (candidates+RGB)", t.frame_extraction_sec),
                        ("dedupe (pHash)", t.dedupe_sec)):
        print(f"{name:<34}{value:>9.3f}")
    print(f"{'analysis total (wall)':<34}{total:>9.3f}")
    print(f"{'decode-only (wall, best)':<34}{decode_best:>9.3f}")
    print(f"\nanalysis / decode-only: {total / decode_best:.2f}  (goal <= 1.3; best of {args.repeat} each)")
    print(f"frames per second: analysis {frames / total:.0f}, decode-only {frames / decode_best:.0f}")
    print(f"all runs (s): decode {', '.join(f'{x:.2f}' for x in decode_times)}; "
          f"analysis {', '.join(f'{x:.2f}' for x, _ in analyses)}")
    print(f"cuts: {exact}/{len(clip.cuts)} found within ±1 frame, {false} false; scenes {len(analysis.scenes)}")
    print(f"keyframes: budget {analysis.budget}, selected {analysis.selected}, after dedupe "
          f"{len(analysis.keyframes)} ({analysis.keyframes[0].image.size[0]}x{analysis.keyframes[0].image.size[1]})")
    print(f"candidate pool peak: {analysis.candidate_peak_count} frames, "
          f"{analysis.candidate_peak_bytes / 1e6:.1f} MB")
    print(f"signals: {analysis.signals}; visual tags {analysis.visual_tags}")
    return analysis


def bench_stages(clip: VideoFixture, settings: Settings, args: argparse.Namespace, analysis) -> None:
    import asyncio
    import tempfile

    import torch

    torch.set_num_threads(1)
    from fastvlm_engine.engine.batcher import Batcher
    from fastvlm_engine.engine.kv import KVCapacity, kv_bytes_per_token
    from fastvlm_engine.engine.model import FastVLM
    from fastvlm_engine.engine.scheduler import Scheduler
    from fastvlm_engine.engine.tiny import build_tiny_model
    from fastvlm_engine.engine.tiny_whisper import build_tiny_whisper
    from fastvlm_engine.engine.whisper import WhisperASR
    from fastvlm_engine.video.pipeline import VideoOptions, summarize_video
    from fastvlm_engine.video.safety import SafetyChecker
    from fastvlm_engine.video.tesseract import TesseractReader
    from fastvlm_engine.worker.service import EngineCaptioner, EngineTranscriber

    with tempfile.TemporaryDirectory(prefix="fastvlm-bench-models-") as tmp:
        started = time.perf_counter()
        vlm = FastVLM.load(build_tiny_model(Path(tmp) / "vlm"), device="cpu")
        asr = WhisperASR.load(build_tiny_whisper(Path(tmp) / "asr", shape=args.asr_shape), device="cpu",
                              max_new_tokens=args.asr_tokens)
        print(f"\n2. /summarize_video stages (tiny FastVLM, {args.asr_shape}-shaped random Whisper, "
              f"{args.asr_tokens} tokens/window; models ready in {time.perf_counter() - started:.0f} s)")
    reader = TesseractReader()
    if reader.unavailable_reason():
        print(f"  on-screen text skipped: {reader.unavailable_reason()}")
    # Frames go through the continuous-batching scheduler, as on a worker.
    captions = Scheduler(vlm, KVCapacity(sequences=settings.engine_max_sequences,
                                         context_tokens=settings.engine_max_context_tokens,
                                         bytes_per_token=kv_bytes_per_token(vlm.model.config.text_config,
                                                                            vlm.dtype))).start()
    speech = Batcher(asr.transcribe, max_batch_size=8, max_batch_wait_s=0.005, name="asr").start()
    safety = SafetyChecker()
    safety.load()
    gate_off = Settings(**{**settings.model_dump(), "asr_vad": False})
    runs = {"captioning only": (settings, VideoOptions(speech=False, ocr=False)),
            "+ speech": (settings, VideoOptions(speech=True, ocr=False)),
            "+ on-screen text": (settings, VideoOptions(speech=False, ocr=True)),
            "+ speech + on-screen text": (settings, VideoOptions(speech=True, ocr=True)),
            "+ speech, no voice gate": (gate_off, VideoOptions(speech=True, ocr=False))}
    results: dict[str, list] = {name: [] for name in runs}

    async def one(run_settings: Settings, options: VideoOptions):
        began = time.perf_counter()
        doc = await summarize_video(clip.path, run_settings, EngineCaptioner(vlm, captions), model_name="tiny",
                                    safety=safety, transcriber=EngineTranscriber(asr, speech), text_reader=reader,
                                    options=options)
        return time.perf_counter() - began, doc

    try:
        for _ in range(max(1, args.repeat - 1)):
            for name, (run_settings, options) in runs.items():
                results[name].append(asyncio.run(one(run_settings, options)))
    finally:
        captions.stop()
        speech.stop()
    best = {name: min(rows, key=lambda row: row[0]) for name, rows in results.items()}
    base = best["captioning only"][0]
    print(f"{'configuration':<28}{'wall s':>8}{'ratio':>7}{'caption s':>11}{'asr s':>8}{'ocr s':>8}")
    for name, (wall, doc) in best.items():
        t = doc.timing
        print(f"{name:<28}{wall:>8.2f}{wall / base:>7.2f}{t.captioning_sec:>11.2f}{t.asr_sec:>8.2f}{t.ocr_sec:>8.2f}")
    both = best["+ speech + on-screen text"][1]
    keyframes = len(both.captions)
    ocr_doc = best["+ on-screen text"][1]
    speech_doc, ungated = best["+ speech"][1], best["+ speech, no voice gate"][1]
    print(f"\non-screen text: {ocr_doc.timing.ocr_sec / max(1, keyframes):.3f} s per keyframe ({keyframes} keyframes); "
          f"{len(ocr_doc.on_screen_text)} texts: {[t.text for t in ocr_doc.on_screen_text]}")
    audio = speech_doc.speech.audio_sec or 1.0
    print(f"speech: {speech_doc.timing.asr_sec / audio:.3f} s per second of audio "
          f"({speech_doc.speech.windows} windows, {speech_doc.speech.voiced_sec:.1f} of {audio:.1f} s voiced); "
          f"without the voice gate {ungated.timing.asr_sec / audio:.3f} s per second "
          f"({ungated.speech.windows} windows)")
    print("(all runs: " + "; ".join(f"{name} {', '.join(f'{w:.2f}' for w, _ in rows)}"
                                    for name, rows in results.items()) + ")")
    bench_voice_gate(args, asr, settings, gate_off)


def bench_voice_gate(args: argparse.Namespace, asr, settings: Settings, gate_off: Settings) -> None:
    """The gate on sparse speech (two 4 s bursts in 90 s): windows and Whisper time, gated or not."""
    import asyncio

    from fastvlm_engine.engine.batcher import Batcher
    from fastvlm_engine.video.speech import transcribe_speech
    from fastvlm_engine.worker.service import EngineTranscriber

    clip = make_social_video(args.cache_dir, "bench_sparse_speech_90s", [SceneSpec("coffee", 90.0)], size=(64, 36),
                             fps=4, bursts=[(5.0, 9.0), (60.0, 64.0)], noise_floor_db=-65)
    speech = Batcher(asr.transcribe, max_batch_size=8, max_batch_wait_s=0.005, name="asr").start()
    rows = {}
    try:
        for name, run_settings in (("gated", settings), ("not gated", gate_off)):
            best = None
            for _ in range(max(1, args.repeat - 1)):
                began = time.perf_counter()
                outcome = asyncio.run(transcribe_speech(clip.path, run_settings, EngineTranscriber(asr, speech),
                                                        video_start_sec=0.0, duration_sec=90.0))
                elapsed = time.perf_counter() - began
                best = min(best or (elapsed, outcome), (elapsed, outcome), key=lambda row: row[0])
            rows[name] = best
    finally:
        speech.stop()
    (gated_s, gated), (open_s, ungated) = rows["gated"], rows["not gated"]
    print(f"\nvoice gate on sparse speech (8 s of sound in 90 s): gated {gated.speech.windows} windows, "
          f"{gated_s:.2f} s; not gated {ungated.speech.windows} windows, {open_s:.2f} s; "
          f"the gate saves {1 - gated_s / max(1e-9, open_s):.0%} of the speech stage")


if __name__ == "__main__":
    main()
