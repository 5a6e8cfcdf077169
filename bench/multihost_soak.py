"""A bounded multi-host soak: image and video load through one router while nodes are cut off and killed.

    .venv/bin/python bench/multihost_soak.py                 # 90 s; needs root and iproute2
    .venv/bin/python bench/multihost_soak.py --seconds 180

Hosts are network namespaces (tests/helpers/netns.py): Redis, a router without workers, nodes A
(``gpu=big``) and B (``gpu=small``) with one worker each, and a client host. Image clients and one
video client send back to back for the whole run while this schedule plays (fractions of the run):

    0.15  partition A (its link goes down: no connection is refused, everything just stops answering)
    0.35  heal A
    0.50  SIGKILL B's node agent (its workers die with it)
    0.60  start B again
    0.75  SIGTERM A (a graceful leave: in-flight work finishes), then start it again at 0.80

Every request is recorded. Printed: requests sent, succeeded and failed per kind, and the failures
split into *explained* — a video that was running on a host when a fault hit it (videos are not
retried: a half-analysed video cannot move) — and *unexplained*: anything else, including every failed
image (the router retries an image elsewhere when its host is lost). Goal: 0 failed images and 0
unexplained. The run also reports which hosts answered in each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _harness import load_average, table  # noqa: E402

from fastvlm_engine.engine.tiny import build_tiny_model  # noqa: E402
from fastvlm_engine.sample_media import __file__ as sample_media_file  # noqa: E402
from fastvlm_engine.sample_media.video import write_sample_video  # noqa: E402
from tests.cluster.cluster_kit import Cluster, host_of  # noqa: E402
from tests.helpers.netns import NetnsUnavailable, Network  # noqa: E402


@dataclass
class Outcome:
    kind: str
    started: float
    ended: float
    status: int | None
    code: str | None
    host: str | None


async def client_loop(url: str, kind: str, stop: threading.Event, out: list[Outcome], tokens: int) -> None:
    path, body = (("/predict_image", {"image_path": "coffee.jpg", "max_new_tokens": tokens}) if kind == "image"
                  else ("/summarize_video", {"video_path": "soak.mp4"}))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as session:
        while not stop.is_set():
            started = time.monotonic()
            status = code = host = None
            try:
                async with session.post(url + path, json=body) as response:
                    status = response.status
                    document = await response.json(content_type=None)
                    host = host_of(response.headers.get("X-FastVLM-Worker"))
                    if status != 200:
                        code = (document.get("error") or {}).get("code")
            except Exception as exc:  # a dropped client connection is a failure like any other
                code = type(exc).__name__
            out.append(Outcome(kind, started, time.monotonic(), status, code, host))
            if status == 503:
                await asyncio.sleep(0.2)  # the router said wait (no node ready, say); not a failure by itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=90.0, help="soak length (default %(default)s)")
    parser.add_argument("--image-clients", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    print(f"load average at start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="fastvlm-mhsoak-") as tmp_dir:
        tmp = Path(tmp_dir)
        model = build_tiny_model(tmp / "model")
        media = tmp / "media"
        shutil.copytree(Path(sample_media_file).parent, media, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
        write_sample_video(media / "soak.mp4", seconds_per_shot=1.0)
        try:
            net = Network(prefix="fvbs").open()
        except NetnsUnavailable as exc:
            print(f"cannot run: {exc}")
            return 2
        cluster = Cluster(net, tmp, str(model), str(media), extra={"log_level": "WARNING"})
        outcomes: list[Outcome] = []
        faults: list[tuple[float, float, str]] = []  # (from, until, host): when a host's work could be cut
        stop = threading.Event()
        try:
            cluster.start()
            a, b = cluster.start_node("node-a", "gpu=big"), cluster.start_node("node-b", "gpu=small")
            router = cluster.start_router()
            cluster.wait_ready(router, {"node-a": 1, "node-b": 1})
            loops = [cluster.client.submit(asyncio.run, client_loop(router.base_url, "image", stop, outcomes,
                                                                     args.tokens))
                     for _ in range(args.image_clients)]
            loops.append(cluster.client.submit(asyncio.run, client_loop(router.base_url, "video", stop, outcomes,
                                                                         args.tokens)))
            t0 = time.monotonic()

            def at(fraction: float) -> None:
                time.sleep(max(0.0, t0 + fraction * args.seconds - time.monotonic()))

            def event(text: str) -> None:
                print(f"  t={time.monotonic() - t0:5.1f}s {text}", flush=True)

            at(0.15)
            event("partition node-a")
            cut = time.monotonic()
            cluster.net.partition(a.host)
            at(0.35)
            cluster.net.heal(a.host)
            faults.append((cut, time.monotonic() + 5.0, "node-a"))
            event("heal node-a")
            at(0.50)
            event("SIGKILL node-b's agent")
            faults.append((time.monotonic(), time.monotonic() + 1.0, "node-b"))
            b.proc.signal(9)
            at(0.60)
            event("start node-b again")
            cluster.start_node("node-b", "gpu=small")
            at(0.75)
            event("SIGTERM node-a (graceful)")
            a.proc.signal(15)
            at(0.80)
            a.proc.popen.wait(timeout=60)
            event("start node-a again")
            cluster.start_node("node-a", "gpu=big")
            at(1.0)
            event("end")
        finally:
            stop.set()
            for loop in locals().get("loops", []):
                try:
                    loop.result(timeout=240)
                except Exception as exc:
                    print(f"a client loop failed: {exc!r}")
            cluster.stop()
            net.cleanup()

    def explained(outcome: Outcome) -> bool:
        return outcome.kind == "video" and any(start <= outcome.ended and outcome.started <= until
                                               for start, until, _ in faults)

    rows, unexplained = [], []
    for kind in ("image", "video"):
        mine = [o for o in outcomes if o.kind == kind]
        ok = [o for o in mine if o.status == 200]
        busy = [o for o in mine if o.status == 503]
        failed = [o for o in mine if o.status not in (200, 503)]
        why = Counter(o.code for o in failed)
        bad = [o for o in failed if not explained(o)]
        unexplained += bad
        rows.append([kind, len(mine), len(ok), len(busy), len(failed), len(failed) - len(bad), len(bad),
                     " ".join(f"{k}={v}" for k, v in why.items()) or "-"])
    print()
    print(table(["kind", "sent", "succeeded", "503 (told to wait)", "failed", "explained", "unexplained",
                 "failure codes"], rows))
    hosts = Counter(o.host for o in outcomes if o.status == 200)
    print(f"\nanswered by host: {dict(hosts)}")
    for o in unexplained[:10]:
        print(f"  unexplained: {o}")
    failed_images = sum(1 for o in outcomes if o.kind == "image" and o.status not in (200, 503))
    print(f"\ngoal: 0 failed images (got {failed_images}), 0 unexplained (got {len(unexplained)})")
    print(f"load average at end: {load_average()}")
    return 0 if failed_images == 0 and not unexplained else 1


if __name__ == "__main__":
    raise SystemExit(main())
