"""Request-body parsers: MB/s and peak memory of the streaming parsers against json.loads, in one run.

    .venv/bin/python bench/intake_parsers.py
    .venv/bin/python bench/intake_parsers.py --media-mb 300 --text-mb 5 --repeats 5 --spool /var/tmp

Rows (each body is built in memory first and parsed from a BytesIO, so disk speed is left out):
  json base64 media   {"video_base64": "<N MB of base64>", "prompt": ...}: parse_json spooling the
                      string, against json.loads + base64.b64decode of the same body.
  json base64 wrapped the same media as PHP or MIME tools write it: 76-character lines joined by
                      JSON-escaped newlines, every "/" escaped as "\\/". The slower path: escapes
                      go through the exact tokenizer.
  json chat (text)    a chat history of small objects (role, content, numbers), no media.
  json floats (text)  one flat array of floats: the tokenizer's worst shape (a value per ~20 bytes).
  multipart file      one file part of N MB and a text part: parse_multipart against copying the
                      same body in the same chunks (the floor: read + write, no parsing).

Columns: MB/s is body megabytes (10^6 bytes) per second, best of --repeats; "vs baseline" is the
parser's MB/s over the baseline's; "peak MiB" is tracemalloc's peak during one parse (a separate,
untimed run), which shows what a body costs in memory. Media go to a sink that only counts
bytes unless --spool DIR is given (then the default SpooledSink, spilling to DIR). Only the
ratios carry over: absolute numbers hold for this machine at this moment.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from _harness import fmt, load_average, table  # noqa: E402

from fastvlm_engine.intake.jsonstream import JsonLimits, MediaPolicy, parse_json  # noqa: E402
from fastvlm_engine.intake.multipart import parse_multipart  # noqa: E402
from fastvlm_engine.intake.sinks import SinkFactory, SinkInfo, spool_sinks  # noqa: E402

MB = 1_000_000
MiB = 1 << 20
CHUNK = 256 * 1024
DEFAULT_LIMITS = JsonLimits()
BOUNDARY = "bench-boundary-7c1f"


class CountingSink:
    """Takes bytes and keeps only their count, so the parser's own cost is what is measured."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def close(self) -> None:
        pass


def counting_sinks(info: SinkInfo) -> CountingSink:
    return CountingSink()


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_mib(run: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


def media_bodies(megabytes: int) -> tuple[bytes, bytes]:
    raw = random.Random(1).randbytes(megabytes * MB * 3 // 4)
    plain = base64.b64encode(raw).decode()
    body = json.dumps({"prompt": "Summarize the video.", "video_base64": plain}).encode()
    wrapped = base64.encodebytes(raw).decode()
    wrapped_body = json.dumps({"prompt": "Summarize the video.", "video_base64": wrapped}).replace("/", "\\/").encode()
    return body, wrapped_body


def text_bodies(megabytes: int) -> tuple[bytes, bytes]:
    rng = random.Random(2)
    words = ["frame", "scene", "caption", "the", "a", "video", "shows", "caf\u00e9", "\u00fcber", "\"quoted\"", "\n"]
    messages, size = [], 0
    while size < megabytes * MB:
        message = {"role": rng.choice(["user", "assistant"]), "id": len(messages), "score": rng.random(),
                   "content": " ".join(rng.choice(words) for _ in range(rng.randint(5, 120)))}
        messages.append(message)
        size += len(json.dumps(message))
    chat = json.dumps({"model": "fastvlm", "messages": messages}).encode()
    floats = json.dumps([rng.random() for _ in range(megabytes * MB // 20)]).encode()
    return chat, floats


def multipart_body(megabytes: int) -> bytes:
    content = random.Random(3).randbytes(megabytes * MB)
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nSummarize.\r\n"
            f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"clip.mp4\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--media-mb", type=int, default=100, help="base64 / file size in MB (default %(default)s)")
    parser.add_argument("--text-mb", type=int, default=5, help="non-media JSON size in MB (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings per row (default %(default)s)")
    parser.add_argument("--spool", metavar="DIR", help="spool media with the default sink into DIR")
    args = parser.parse_args()
    sinks: SinkFactory = spool_sinks(args.spool) if args.spool else counting_sinks

    print(f"load average at start: {load_average()}")
    media_policy = MediaPolicy(max_bytes={"video": 10 * args.media_mb * MB}, fields={"video_base64": "video"},
                               open_sink=sinks)
    text_limits = JsonLimits(max_text_chars=4 * args.text_mb * MB)
    media, wrapped = media_bodies(args.media_mb)
    chat, floats = text_bodies(args.text_mb)
    form = multipart_body(args.media_mb)
    content_type = f"multipart/form-data; boundary={BOUNDARY}"

    def ours_json(data: bytes, limits: JsonLimits = DEFAULT_LIMITS) -> Callable[[], object]:
        return lambda: parse_json(io.BytesIO(data), media=media_policy, limits=limits, chunk_bytes=CHUNK)

    def loads_and_decode(data: bytes) -> Callable[[], object]:
        def run() -> object:
            value = json.loads(data)
            return base64.b64decode(value["video_base64"]) if "video_base64" in value else value
        return run

    def ours_multipart() -> object:
        return parse_multipart(io.BytesIO(form), content_type, file_fields={"video": 10 * args.media_mb * MB},
                               open_sink=sinks, chunk_bytes=CHUNK)

    def copy_floor() -> object:
        source, sink = io.BytesIO(form), CountingSink()
        while data := source.read(CHUNK):
            sink.write(bytes(data))
        return sink

    cases = [
        ("json base64 media", media, ours_json(media), loads_and_decode(media), "json.loads+b64decode"),
        ("json base64 wrapped", wrapped, ours_json(wrapped), loads_and_decode(wrapped), "json.loads+b64decode"),
        ("json chat (text)", chat, ours_json(chat, text_limits), loads_and_decode(chat), "json.loads"),
        ("json floats (text)", floats, ours_json(floats, text_limits), loads_and_decode(floats), "json.loads"),
        ("multipart file", form, ours_multipart, copy_floor, "copy in chunks"),
    ]
    rows = []
    for name, body, ours, baseline, baseline_name in cases:
        ours_mbs = len(body) / MB / best_seconds(ours, args.repeats)
        base_mbs = len(body) / MB / best_seconds(baseline, args.repeats)
        rows.append([name, fmt(len(body) / MB, 1), fmt(ours_mbs, 1), baseline_name, fmt(base_mbs, 1),
                     fmt(ours_mbs / base_mbs), fmt(peak_mib(ours), 1), fmt(peak_mib(baseline), 1)])
    print(table(["body", "MB", "MB/s", "baseline", "baseline MB/s", "vs baseline", "peak MiB", "baseline peak MiB"],
                rows, left=1))
    print(f"load average at end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
