"""Waiting for SQLite's write lock held by another process's connection."""

from __future__ import annotations

import sqlite3

import pytest

from fastvlm_engine.jobs import sqlite_store


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "jobs.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    return path


def test_a_writer_waiting_for_the_lock_retries_in_short_pauses_not_sqlites_long_backoff(database, monkeypatch):
    """SQLite's busy handler sleeps up to 100 ms between tries; the store retries itself, briefly."""
    holder = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 20:  # the other process commits while we wait
            holder.execute("COMMIT")

    monkeypatch.setattr(sqlite_store.time, "sleep", pause)
    writer = sqlite3.connect(database, timeout=30, isolation_level=None)
    with sqlite_store._write(writer):
        writer.execute("INSERT INTO t VALUES (1)")
    assert len(pauses) == 20 and max(pauses) <= sqlite_store.LOCK_RETRY_MAX_S
    assert writer.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000  # the connection's own timeout is back
    assert writer.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    holder.close()
    writer.close()


def test_a_lock_held_past_the_busy_timeout_still_fails_as_busy(database):
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    writer = sqlite3.connect(database, timeout=0.05, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError) as failure, sqlite_store._write(writer):
        pass
    assert failure.value.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
    assert writer.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    assert not writer.in_transaction
    holder.close()
    writer.close()
