"""Precision and recall of the cut detector on generated rapid-edit clips.

Each clip (tests/fixtures/rapid_edits.py, one per seed and frame rate) joins photos and grey
textures with hard cuts -- shots down to 0.15 s -- cross-dissolves and dips to black, around the
distractors a detector must ignore: camera flashes, fades at both ends, fast zooms, handheld
shake, whip pans inside a shot and a title popping in. Scoring: a hard cut counts when a
boundary lies within one frame of it, a dissolve or dip when one lies inside its blended frames;
every other boundary is a false positive, listed with the distractor it fell in.

Runs the current defaults and, for comparison, the same detector with the previous default
shortest scene (0.5 s), all in one run.

    .venv/bin/python bench/video_cuts.py [--seeds 16] [--fps 30 25] [--width 360 --height 640]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # for tests.fixtures

from fastvlm_engine.config import Settings  # noqa: E402
from fastvlm_engine.video.analysis import analyze_video  # noqa: E402
from tests.fixtures.rapid_edits import RapidEditFixture, make_rapid_edit_video  # noqa: E402


def score(clip: RapidEditFixture, found: list[int]) -> tuple[int, list[str], list[str]]:
    """(true positives, false positives with where they fell, misses)."""
    truth = [("cut", c, c - 1, c + 1) for c in clip.cuts] + [("gradual", s, s - 1, e) for s, e in clip.dissolves]
    matched: set[int] = set()
    false: list[str] = []
    for index in found:
        hit = next((j for j, (_, _, lo, hi) in enumerate(truth) if lo <= index <= hi and j not in matched), None)
        if hit is None:
            inside = [kind for kind, first, end in clip.events if first <= index <= end]
            false.append(f"{index} ({', '.join(inside) or 'plain shot'})")
        else:
            matched.add(hit)
    missed = [f"{kind} at {frame}" for j, (kind, frame, _, _) in enumerate(truth) if j not in matched]
    return len(matched), false, missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=16, help="clips per frame rate (seeds 0..N-1)")
    parser.add_argument("--fps", type=int, nargs="+", default=[30, 25])
    parser.add_argument("--width", type=int, default=360)
    parser.add_argument("--height", type=int, default=640)
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the generated clips here")
    args = parser.parse_args()
    if args.seeds < 1 or min(args.fps) < 10 or args.width < 64 or args.height < 64:
        parser.error("need --seeds >= 1, --fps >= 10 and a frame of at least 64 x 64")

    configs = {"defaults (shortest scene 0.15 s)": Settings(),
               "shortest scene 0.5 s (previous default)": Settings(video_min_scene_sec=0.5)}
    with tempfile.TemporaryDirectory(prefix="fastvlm-cuts-") as tmp:
        folder = args.cache_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clips = []
        started = time.perf_counter()
        for fps in args.fps:
            for seed in range(args.seeds):
                clips.append(make_rapid_edit_video(folder, seed=seed, fps=fps, size=(args.width, args.height)))
        print(f"{len(clips)} clips generated in {time.perf_counter() - started:.0f} s "
              f"({args.width}x{args.height}, fps {', '.join(map(str, args.fps))}); per clip "
              f"{sum(len(c.cuts) for c in clips) / len(clips):.1f} hard cuts, "
              f"{sum(len(c.dissolves) for c in clips) / len(clips):.1f} gradual, "
              f"{sum(len(c.events) for c in clips) / len(clips):.1f} distractors\n")
        for name, settings in configs.items():
            tp = fp = fn = 0
            causes: Counter[str] = Counter()
            misses: list[str] = []
            seconds = 0.0
            for clip in clips:
                began = time.perf_counter()
                analysis = analyze_video(clip.path, settings)
                seconds += time.perf_counter() - began
                hits, false, missed = score(clip, [c.index for c in analysis.cuts])
                tp, fp, fn = tp + hits, fp + len(false), fn + len(missed)
                causes.update(f.split(" (", 1)[1].rstrip(")") for f in false)
                misses.extend(f"{clip.path.stem}: {m}" for m in missed)
            precision = tp / (tp + fp) if tp + fp else 1.0
            recall = tp / (tp + fn) if tp + fn else 1.0
            print(f"{name}: precision {precision:.3f}, recall {recall:.3f} "
                  f"(TP {tp}, FP {fp}, FN {fn}; analysis {seconds / len(clips):.2f} s per clip)")
            if causes:
                print("  false positives in: " + ", ".join(f"{k} x{v}" for k, v in causes.most_common()))
            for line in misses[:12]:
                print(f"  missed {line}")
            if len(misses) > 12:
                print(f"  ... and {len(misses) - 12} more misses")
            print()


if __name__ == "__main__":
    main()
