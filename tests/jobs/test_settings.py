"""FASTVLM_QUEUE_URL and the job queue settings: defaults, validation, and what a store is built from."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastvlm_engine.config import SettingsError, load_settings
from fastvlm_engine.jobs import JobPolicy, open_store, resolve_state_dir
from fastvlm_engine.jobs.url import parse_queue_url


def test_defaults_follow_the_brief():
    s = load_settings()
    assert (s.mode, s.queue_url, s.state_dir) == ("sync", "", None)
    assert (s.job_ttl_s, s.job_max_queued_s, s.queue_max_jobs, s.job_max_attempts) == (3600, 600, 1000, 3)
    assert (s.job_lease_s, s.job_video_aging_s, s.job_max_media_mib) == (30, 5, 64)
    policy = JobPolicy.from_settings(s)
    assert policy.max_media_bytes == 64 * 1024 * 1024 and policy.key_prefix == "fastvlm:"


def test_the_state_dir_defaults_under_xdg_state_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert resolve_state_dir(load_settings()) == tmp_path / "fastvlm-engine"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert resolve_state_dir(load_settings()) == Path.home() / ".local" / "state" / "fastvlm-engine"
    assert resolve_state_dir(load_settings(state_dir=tmp_path / "x")) == tmp_path / "x"


@pytest.mark.parametrize(("url", "backend", "path", "label"), [
    ("", "sqlite", None, "sqlite"),
    ("sqlite:///jobs.db", "sqlite", Path("jobs.db"), "sqlite"),
    ("sqlite:////var/lib/fastvlm/jobs.db", "sqlite", Path("/var/lib/fastvlm/jobs.db"), "sqlite"),
    ("redis://127.0.0.1:6380/2", "redis", None, "redis at 127.0.0.1:6380"),
    ("redis://user:hunter2@cache.internal/0", "redis", None, "redis at cache.internal:6379"),
    ("rediss://:hunter2@[::1]:7000", "redis", None, "redis (TLS) at [::1]:7000"),
])
def test_queue_urls_parse_and_their_labels_hide_passwords(url, backend, path, label):
    target = parse_queue_url(url)
    assert (target.backend, target.path, target.label) == (backend, path, label)
    assert "hunter2" not in target.label + target.description


@pytest.mark.parametrize(("url", "named"), [
    ("mysql://db/jobs", "scheme 'mysql'"),
    ("jobs.db", "scheme '(none)'"),
    ("sqlite://jobs.db", "sqlite:///relative"),
    ("sqlite:///", "sqlite:///relative"),
    ("redis:///0", "names no host"),
    ("redis://host:notaport/0", "invalid port"),
    ("redis://host:6379/zero", "database number"),
])
def test_a_bad_queue_url_stops_start_up_naming_the_setting(url, named):
    with pytest.raises(SettingsError) as caught:
        load_settings(queue_url=url)
    assert "FASTVLM_QUEUE_URL" in str(caught.value) and named in str(caught.value)


@pytest.mark.parametrize(("field", "value"), [("mode", "async"), ("job_ttl_s", 0), ("job_max_attempts", 0),
                                              ("queue_max_jobs", 0), ("job_video_aging_s", -1),
                                              ("job_max_media_mib", 0), ("queue_key_prefix", "")])
def test_out_of_range_job_settings_are_refused(field, value):
    with pytest.raises(SettingsError, match=f"FASTVLM_{field.upper()}"):
        load_settings(**{field: value})


def test_open_store_picks_the_backend_from_the_url(tmp_path):
    policy = JobPolicy.from_settings(load_settings())
    sqlite_store = open_store("", state_dir=tmp_path, policy=policy)
    assert sqlite_store.description().startswith(f"sqlite at {tmp_path / 'jobs.db'}")
    redis_store = open_store("redis://:pw@127.0.0.1:1/3", state_dir=tmp_path, policy=policy)
    assert redis_store.description() == "redis at 127.0.0.1:1/3 (keys fastvlm:*)"
    with pytest.raises(ValueError, match="scheme"):
        open_store("postgres://x", state_dir=tmp_path, policy=policy)
