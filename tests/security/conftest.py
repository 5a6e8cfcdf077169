"""Shared pieces of the security tests: a router under a memory cap, and the error-body contract.

Routers here are real ``fastvlm serve`` processes started like :func:`tests.helpers.procs.start_router`
does, with one difference: the router and the workers it spawns run under an address-space limit
(``RLIMIT_AS``, inherited by the workers). A malformed input that makes a worker try to allocate
many gigabytes then fails inside that worker (and shows up as a wrong answer in the test) instead
of pushing a shared test machine into the kernel's OOM killer. The limit is far above what a worker
normally maps (about 5 GiB of address space with the tiny model on the CPU).
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
from pathlib import Path

import pytest

from fastvlm_engine.errors import ERROR_CODES
from tests.helpers.procs import FASTVLM, Proc, free_port, http, pid_alive, spawn, wait_workers_ready, worker_env

ADDRESS_SPACE_LIMIT = 8 << 30
"""Per-process RLIMIT_AS for the router and its workers (bytes)."""

REPO_ROOT = Path(__file__).resolve().parents[2]

LEAK_PATTERNS = [re.compile(p) for p in (
    r"Traceback \(most recent call last\)",
    r'File "[^"]+", line \d+',
    r"site-packages",
    r"dist-packages",
)]
"""Things that must never appear in a response body, whatever the request."""

UNHANDLED_LOG_MARKERS = (
    "unhandled error on",            # fastvlm_engine.web catch-all handler
    "Exception in ASGI application",  # uvicorn: an exception escaped the app
    "failed mid-request",            # router: a worker connection broke under a request
    "fatal device error",
)
"""Log lines that mean a process hit an unexpected error while serving the corpus or the fuzzer."""


def _limit_address_space() -> None:  # runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def start_capped_router(tmp_path: Path, model_dir: str, **settings: object) -> Proc:
    """``fastvlm serve`` on a free loopback port, as start_router, under :data:`ADDRESS_SPACE_LIMIT`."""
    port = free_port()
    env = worker_env(model=model_dir, port=port, **settings)
    proc = spawn([*FASTVLM, "serve"], env, tmp_path / f"router-{port}.log", preexec_fn=_limit_address_space)
    proc.base_url = f"http://127.0.0.1:{port}"
    return proc


def server_paths(*extra: str | os.PathLike) -> list[str]:
    """Absolute server-side paths that must never be echoed to a client."""
    paths = {str(REPO_ROOT), sys.prefix, os.path.realpath(sys.prefix), *(str(p) for p in extra)}
    return sorted(p for p in paths if p and len(p) > 4)


def leaks(text: str, paths: list[str], sent: str = "") -> list[str]:
    """Stack-trace fragments and server paths found in ``text`` (ignoring what the client sent)."""
    found = [p.pattern for p in LEAK_PATTERNS if p.search(text) and not p.search(sent)]
    found += [p for p in paths if p in text and p not in sent]
    return found


def error_contract_problems(status: int, headers: dict, body: object, *, request_id: str | None = None) -> list[str]:
    """Everything wrong with a non-2xx response under the README's error schema (empty = fine)."""
    problems = []
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "")
    if not content_type.startswith("application/json"):
        problems.append(f"content-type is {content_type!r}, not application/json")
    if isinstance(body, (str, bytes)):
        try:
            body = json.loads(body)
        except ValueError:
            return [*problems, f"body is not JSON: {str(body)[:200]!r}"]
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return [*problems, f"body is not {{'error': {{...}}}}: {str(body)[:200]!r}"]
    if set(body) != {"error"}:
        problems.append(f"unexpected top-level keys {sorted(set(body) - {'error'})}")
    code, message, rid = error.get("code"), error.get("message"), error.get("request_id")
    if not isinstance(code, str) or code not in ERROR_CODES:
        problems.append(f"code {code!r} is not one of the stable codes")
    elif ERROR_CODES[code].http_status != status:
        problems.append(f"code {code!r} belongs with HTTP {ERROR_CODES[code].http_status}, got {status}")
    if not isinstance(message, str) or not message.strip():
        problems.append(f"message {message!r} is empty or not a string")
    if not isinstance(rid, str) or not rid:
        problems.append("request_id missing from the error body")
    elif lower.get("x-request-id") != rid:
        problems.append(f"X-Request-ID header {lower.get('x-request-id')!r} != body request_id {rid!r}")
    if request_id is not None and rid != request_id:
        problems.append(f"request_id {rid!r} is not the X-Request-ID we sent ({request_id!r})")
    return problems


def pool_snapshot(base_url: str) -> dict[str, dict]:
    """Per worker id: state, pid and restarts, from the router's /healthz."""
    status, _, health = http("GET", base_url + "/healthz", timeout=10)
    assert status == 200, health
    return {w["id"]: {"state": w["state"], "pid": w["pid"], "restarts": w["restarts"]} for w in health["workers"]}


def assert_pool_unchanged(proc: Proc, baseline: dict[str, dict], what: str) -> None:
    """Router alive, every worker of ``baseline`` still the same live process, ready, never restarted."""
    assert proc.popen.poll() is None, f"router exited ({proc.popen.returncode}) {what}:\n{proc.log()[-3000:]}"
    dead = [f"{wid} pid {w['pid']}" for wid, w in baseline.items() if not pid_alive(w["pid"])]
    assert not dead, f"worker process(es) died {what}: {dead}\n{proc.log()[-3000:]}"
    now = pool_snapshot(proc.base_url)
    assert now == baseline, f"worker pool changed {what}:\nbefore {baseline}\nafter  {now}"


def assert_every_worker_answers(base_url: str, image_path: str, rounds: int = 6) -> None:
    """A normal image request succeeds on every worker the router lists.

    Workers only answer the router that started them, so this goes through the router: pairs of
    concurrent requests (each takes a slot on the least-loaded worker) until every worker id has
    appeared in ``X-FastVLM-Worker`` with a 200.
    """
    _, _, health = http("GET", base_url + "/healthz", timeout=10)
    expected = {w["id"] for w in health["workers"]}
    served: set[str] = set()
    answers: list[tuple[int, object]] = []

    def call() -> None:
        status, headers, body = http("POST", base_url + "/predict_image",
                                     {"image_path": image_path, "max_new_tokens": 4}, timeout=120)
        answers.append((status, body))
        if status == 200:
            served.add({k.lower(): v for k, v in headers.items()}.get("x-fastvlm-worker", "?"))

    for _ in range(rounds):
        threads = [threading.Thread(target=call) for _ in range(len(expected))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(150)
        failed = [a for a in answers if a[0] != 200]
        assert not failed, f"normal requests failed: {failed}"
        if served >= expected:
            return
    raise AssertionError(f"only {sorted(served)} of {sorted(expected)} answered normal requests")


def unhandled_log_lines(proc: Proc) -> list[str]:
    return [line[:600] for line in proc.log().splitlines() if any(m in line for m in UNHANDLED_LOG_MARKERS)]


@pytest.fixture(scope="module")
def capped_router_factory(tmp_path_factory, tiny_model_dir):
    """Start capped routers for a module; all of them are stopped by process group at teardown."""
    started: list[Proc] = []

    def start(workers: int, **settings: object) -> Proc:
        proc = start_capped_router(tmp_path_factory.mktemp("security-router"), tiny_model_dir,
                                   max_workers=workers, **settings)
        started.append(proc)
        wait_workers_ready(proc, workers)
        proc.extra["baseline"] = pool_snapshot(proc.base_url)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()
