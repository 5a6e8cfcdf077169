"""The supervisor's pure parts: the settings a worker is handed, the slot state table, healing plans."""

import asyncio
import hashlib
import json
import os
import sys
from collections import deque
from pathlib import Path

import pytest
from pydantic import SecretStr

from fastvlm_engine.cluster.endpoint import WorkerState
from fastvlm_engine.config import load_settings
from fastvlm_engine.supervisor.healing import plan_after_failure
from fastvlm_engine.supervisor.lifecycle import TRANSITIONS, IllegalTransition, check_transition
from fastvlm_engine.supervisor.process import settings_payload


def test_the_settings_payload_rebuilds_the_same_settings_secrets_and_paths_included(tmp_path):
    digest = hashlib.sha256(b"alpha").hexdigest()
    settings = load_settings(api_keys=[digest], admin_keys=[digest], media_roots=str(tmp_path), max_concurrent=3,
                             worker_token=SecretStr("inherited"))
    values = json.loads(settings_payload(settings, device="cuda:0", worker_token="t0k"))
    rebuilt = load_settings(**values)
    assert rebuilt.device == "cuda:0" and rebuilt.worker_token.get_secret_value() == "t0k"
    assert rebuilt.media_roots == [Path(os.path.realpath(tmp_path))]
    assert rebuilt.model_dump(exclude={"device", "worker_token"}) == settings.model_dump(
        exclude={"device", "worker_token"})
    assert isinstance(rebuilt.admin_keys, type(settings.admin_keys))
    assert not any(isinstance(v, SecretStr) for v in values.values())  # plain JSON, nothing repr-hidden


def test_a_spawned_worker_reads_its_settings_from_the_pipe_not_the_environment(tmp_path, monkeypatch):
    """The child's environment carries no FASTVLM_ variable, yet it gets the supervisor's settings."""
    from fastvlm_engine.supervisor import process

    monkeypatch.setenv("FASTVLM_MAX_CONCURRENT", "7")  # what an inherited environment would leak
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, os, sys\n"
        "from fastvlm_engine.cli import _settings_from_fd\n"
        "fd = int(sys.argv[sys.argv.index('--settings-fd') + 1])\n"
        "s = _settings_from_fd(fd)\n"
        "leaked = sorted(k for k in os.environ if k.startswith('FASTVLM_'))\n"
        "print(json.dumps({'max_concurrent': s.max_concurrent, 'device': s.device, 'leaked': leaked}))\n")
    settings = load_settings(max_concurrent=3)
    monkeypatch.setattr(process.sys, "executable", sys.executable)

    async def run() -> dict:
        original = process.asyncio.create_subprocess_exec

        async def exec_probe(*args, **kwargs):  # same pipes and environment, our probe instead of the worker
            return await original(sys.executable, str(probe), *args[3:], **kwargs)

        monkeypatch.setattr(process.asyncio, "create_subprocess_exec", exec_probe)
        spawned = await process.spawn_worker(settings_payload(settings, device="cpu"), host="127.0.0.1",
                                             worker_id="w0", incarnation=0, cuda_env={"CUDA_VISIBLE_DEVICES": ""})
        out, _ = await spawned.process.communicate()
        assert spawned.process.returncode == 0, out.decode()
        return json.loads(out.decode().strip().splitlines()[-1])

    env_path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(process.__file__).parents[2]), env_path])))
    answer = asyncio.run(run())
    assert answer == {"max_concurrent": 3, "device": "cpu", "leaked": []}


def test_every_state_change_the_supervisor_makes_is_in_the_table():
    check_transition(WorkerState.STARTING, WorkerState.READY)
    check_transition(WorkerState.RESTARTING, WorkerState.STARTING)
    check_transition(WorkerState.STARTING, WorkerState.STARTING)  # a new slot's first spawn
    with pytest.raises(IllegalTransition):
        check_transition(WorkerState.STOPPED, WorkerState.READY)
    with pytest.raises(IllegalTransition):
        check_transition(WorkerState.QUARANTINED, WorkerState.READY)  # only through a fresh start
    assert set(TRANSITIONS) == set(WorkerState)


def test_healing_backs_off_doubling_then_quarantines_within_the_window():
    failures: deque[float] = deque()
    plans = [plan_after_failure(failures, t, window_s=60, quarantine_after=4, backoff_initial_s=0.5,
                                backoff_max_s=1.5) for t in (0, 1, 2)]
    assert [p.delay_s for p in plans] == [0.5, 1.0, 1.5] and not any(p.quarantine for p in plans)
    assert plan_after_failure(failures, 3, window_s=60, quarantine_after=4, backoff_initial_s=0.5,
                              backoff_max_s=1.5).quarantine
    late: deque[float] = deque([0.0, 1.0, 2.0])
    plan = plan_after_failure(late, 100, window_s=60, quarantine_after=4, backoff_initial_s=0.5, backoff_max_s=8)
    assert not plan.quarantine and plan.delay_s == 0.5 and list(late) == [100]
