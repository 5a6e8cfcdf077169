"""Job store: how fast each backend takes, hands out and finishes jobs, measured in one run.

    .venv/bin/python bench/job_store.py
    .venv/bin/python bench/job_store.py --jobs 2000 --concurrency 32 --upload-kib 1024

Backends: SQLite (WAL, synchronous=FULL, uploads fsynced), and a real Debian redis-server on a
free loopback port twice: without persistence (as the tests run it) and with ``appendonly yes
appendfsync always`` (the configuration that is as durable as SQLite). Each redis-server gets its
own temporary folder and is stopped by PID at the end, also on Ctrl-C or an error.

Per backend, on one store object (the router's view) unless said otherwise:
  - submit p50/p99 ms: one job at a time, media given by path (what a 202 waits for);
  - upload p50/p99 ms: the same with an uploaded body of --upload-kib KiB;
  - submit/s: --concurrency tasks submitting at once;
  - drain/s: a second store object (a worker) leasing 8 at a time and finishing each with succeed;
  - ratio: the backend's submit/s over SQLite's in this run.

The machine is shared (2 noisy cores here), so compare the rows of one run and read the load
average printed before and after; absolute numbers hold only for this machine at this moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import free_port, load_average, percentile, table  # noqa: E402

from fastvlm_engine.config import load_settings  # noqa: E402
from fastvlm_engine.errors import MediaTooLarge  # noqa: E402
from fastvlm_engine.intake.spool import Spool  # noqa: E402
from fastvlm_engine.jobs import open_store_from_settings  # noqa: E402

OPTIONS = {"prompt": "Describe the image.", "max_new_tokens": 64}


def start_redis(folder: Path, *extra: str) -> tuple[subprocess.Popen, int]:
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is needed (Debian: apt-get install redis-server)")
    port = free_port()
    log = open(folder / "redis.log", "wb")
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(folder),
                             *extra], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, port
        except OSError:
            time.sleep(0.05)
    stop(proc)
    raise SystemExit(f"redis-server did not answer on port {port}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def upload(data: bytes, folder: Path) -> Spool:
    spool = Spool(max_bytes=len(data), too_large=lambda limit: MediaTooLarge(), directory=str(folder))
    spool.write(data)
    return spool.finish()


async def measure(settings, jobs: int, concurrency: int, upload_bytes: int, spool_dir: Path) -> dict[str, float]:
    body = os.urandom(upload_bytes)
    result: dict[str, float] = {}
    async with open_store_from_settings(settings) as router, open_store_from_settings(settings) as worker:
        await router.ping()
        single = []
        for _ in range(jobs):
            started = time.perf_counter()
            await router.submit("image", OPTIONS, source_path="/media/a.jpg", max_queued=10 * jobs)
            single.append(time.perf_counter() - started)
        uploads = []
        for _ in range(max(1, jobs // 10)):
            spool = upload(body, spool_dir)
            started = time.perf_counter()
            await router.submit("image", OPTIONS, upload=spool, max_queued=10 * jobs)
            uploads.append(time.perf_counter() - started)
            spool.close()

        async def submitter(count: int) -> None:
            for _ in range(count):
                await router.submit("image", OPTIONS, source_path="/media/a.jpg", max_queued=10 * jobs)

        started = time.perf_counter()
        await asyncio.gather(*(submitter(jobs // concurrency) for _ in range(concurrency)))
        result["submit/s"] = (jobs // concurrency * concurrency) / (time.perf_counter() - started)

        queued = sum((await router.depth()).values())
        started = time.perf_counter()
        drained = 0
        for _ in range(queued):  # bounded: at least one job per round
            batch = await worker.lease("w1", images=8, videos=0, lease_s=30)
            if not batch:
                break
            for job in batch:
                await worker.succeed(job.job_id, "w1", b'{"output": "x"}')
            drained += len(batch)
        result["drain/s"] = drained / (time.perf_counter() - started)
        result["submit p50"] = percentile(single, 50) * 1000
        result["submit p99"] = percentile(single, 99) * 1000
        result["upload p50"] = percentile(uploads, 50) * 1000
        result["upload p99"] = percentile(uploads, 99) * 1000
        result["drained"] = drained
        result["expected"] = queued
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs per phase (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent submitters (default %(default)s)")
    parser.add_argument("--upload-kib", type=int, default=256, help="upload size in KiB (default %(default)s)")
    args = parser.parse_args()
    print(f"load average before: {load_average()}")
    rows = []
    servers: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="fastvlm-bench-jobs-") as tmp:
        root = Path(tmp)
        try:
            backends = [("sqlite", "")]
            for name, extra in (("redis (no persistence)", ("--appendonly", "no")),
                                ("redis (appendfsync always)", ("--appendonly", "yes", "--appendfsync", "always"))):
                folder = root / name.split()[0] / str(len(servers))
                folder.mkdir(parents=True)
                proc, port = start_redis(folder, *extra)
                servers.append(proc)
                backends.append((name, f"redis://127.0.0.1:{port}/0"))
            measured = {}
            for name, url in backends:
                settings = load_settings(state_dir=root / "state" / str(len(measured)), queue_url=url,
                                         job_max_media_mib=max(1, args.upload_kib // 1024 + 1))
                measured[name] = asyncio.run(measure(settings, args.jobs, args.concurrency, args.upload_kib * 1024,
                                                     root))
        finally:
            for proc in servers:
                stop(proc)
    base = measured["sqlite"]["submit/s"]
    for name, m in measured.items():
        rows.append([name, f"{m['submit p50']:.2f}", f"{m['submit p99']:.2f}", f"{m['upload p50']:.2f}",
                     f"{m['upload p99']:.2f}", f"{m['submit/s']:.0f}", f"{m['drain/s']:.0f}",
                     f"{m['submit/s'] / base:.2f}", f"{m['drained']:.0f}/{m['expected']:.0f}"])
    print(table(["backend", "submit p50 ms", "submit p99 ms", f"upload {args.upload_kib} KiB p50 ms", "upload p99 ms",
                 "submit/s", "drain/s", "submit/s vs sqlite", "drained"], rows))
    print(f"load average after: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
