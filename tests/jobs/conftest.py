"""Both job store backends behind one fixture: every behavioural test runs on SQLite and on a real Redis."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from fastvlm_engine.config import load_settings
from fastvlm_engine.errors import MediaTooLarge
from fastvlm_engine.intake.spool import Spool
from fastvlm_engine.jobs import JobStore, open_store_from_settings


@pytest.fixture(params=["sqlite", "redis"])
def backend(request) -> str:
    return request.param


class Backend:
    """Opens stores on one test's data (a fresh SQLite folder, or a fresh Redis key prefix), and looks
    underneath the interface to check that nothing was left behind."""

    def __init__(self, kind: str, state_dir: Path, redis_url: str) -> None:
        self.kind = kind
        self.state_dir = state_dir
        self.redis_url = redis_url
        self.prefix = f"fastvlm-test-{uuid.uuid4().hex[:12]}:"

    def settings(self, **overrides: object):
        return load_settings(state_dir=self.state_dir, queue_url=self.redis_url if self.kind == "redis" else "",
                             queue_key_prefix=self.prefix, **overrides)

    def open(self, **overrides: object) -> JobStore:
        return open_store_from_settings(self.settings(**overrides))

    def leftovers(self) -> list[str]:
        """Rows and upload files (SQLite), or keys (Redis), that this test's data still holds."""
        if self.kind == "redis":
            client = redis.Redis.from_url(self.redis_url)
            try:
                return sorted(key.decode() for key in client.scan_iter(match=self.prefix + "*"))
            finally:
                client.close()
        media = self.state_dir / "media"
        files = sorted(f"file {p.name}" for p in media.iterdir()) if media.exists() else []
        with sqlite3.connect(self.state_dir / "jobs.db") as conn:
            rows = [f"row {job_id}" for (job_id,) in conn.execute("SELECT job_id FROM jobs")]
        return rows + files


@pytest.fixture
def store_backend(request, backend, tmp_path) -> Backend:
    url = request.getfixturevalue("redis_server").url if backend == "redis" else ""
    return Backend(backend, tmp_path / "state", url)


def make_spool(data: bytes, *, on_disk: bool = False, directory: Path | None = None) -> Spool:
    """An upload as the intake hands it over: in memory, or spilled to a file."""
    spool = Spool(max_bytes=len(data) + 1, too_large=lambda limit: MediaTooLarge(),
                  directory=str(directory) if directory else None, memory_bytes=0 if on_disk else len(data) + 1)
    spool.write(data)
    return spool.finish()


@pytest.fixture
def spool() -> Callable[..., Spool]:
    made: list[Spool] = []

    def make(data: bytes, **kwargs: object) -> Spool:
        made.append(make_spool(data, **kwargs))
        return made[-1]

    yield make
    for item in made:
        item.close()
