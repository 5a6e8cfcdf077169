"""Benchmark the CPU video analysis pass against plain decoding of the same file.

Generates (once, then reuses from --cache-dir) a clip with known hard cuts -- Ken-Burns shots
of scikit-image photos plus a colour-bar shot, light temporal noise, H.264 via PyAV's libx264
-- then times, alternating to spread machine noise over both:

* decode-only: open + decode every frame through the same decode-ahead reader the analysis
  uses (frame threads, no per-frame work);
* analysis: ``analyze_video`` -- features, cut detection, candidate pool, keyframe selection,
  pHash dedupe and RGB conversion of the kept frames.

Captioning, the summary and NSFW scoring are excluded (no model here). Prints per-stage times
of the best analysis run, the analysis/decode ratio (goal <= 1.3), frames per second, the
cuts found against the ground truth, and the peak memory of the keyframe candidates.

    .venv/bin/python bench/video_pipeline.py [--seconds 30] [--width 1080 --height 1920]
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
from tests.fixtures.videos import SceneSpec, VideoFixture, make_scenes_video  # noqa: E402

SHOTS = [
    ("astronaut", 5.0), ("coffee", 6.0), ("pattern", 2.5), ("chelsea", 6.0), ("rocket", 4.5),
    ("immunohistochemistry", 3.0), ("coffee", 3.0),
]
"""Shot sources and lengths, cycled until the requested duration is filled."""


def build_clip(cache: Path, seconds: float, width: int, height: int, fps: int, preset: str) -> VideoFixture:
    scenes, total, i = [], 0.0, 0
    while total < seconds - 1e-6:
        source, length = SHOTS[i % len(SHOTS)]
        length = min(length, seconds - total)
        zoom = (1.0, 1.08) if i % 2 == 0 else (1.08, 1.0)
        scenes.append(SceneSpec(source, length, zoom=zoom, pan=(0.03 * (-1) ** i, 0.0)))
        total += length
        i += 1
    name = f"bench_{width}x{height}_{fps}fps_{seconds:g}s_{preset}"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}.mp4"
    counts = [max(1, round(s.seconds * fps)) for s in scenes]
    cuts = tuple(sum(counts[:k]) for k in range(1, len(counts)))
    if path.exists():
        return VideoFixture(path=path, fps=fps, frames=sum(counts), width=width, height=height, cuts=cuts)
    print(f"generating {path.name} ({len(scenes)} shots, {sum(counts)} frames) ...", flush=True)
    started = time.perf_counter()
    fixture = make_scenes_video(cache, name, scenes, size=(width, height), fps=fps, preset=preset)
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
    parser.add_argument("--preset", default="veryfast", help="libx264 preset for the generated clip")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs of each pass")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".cache" / "bench-video")
    args = parser.parse_args()
    if args.seconds <= 0 or args.width < 16 or args.height < 16 or args.repeat < 1:
        parser.error("need --seconds > 0, --width/--height >= 16 and --repeat >= 1")

    clip = build_clip(args.cache_dir, args.seconds, args.width, args.height, args.fps, args.preset)
    settings = Settings(video_max_seconds=max(180.0, args.seconds + 1))

    decode_times, analyses = [], []
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
          f"{len(clip.cuts)} hard cuts")
    print("(captioning, summary and NSFW scoring excluded: no model in this benchmark)\n")
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


if __name__ == "__main__":
    main()
