"""The status table, ids and the flat-field codec: pure functions, no store."""

from __future__ import annotations

import itertools

import pytest

from fastvlm_engine.jobs import TERMINAL, IllegalTransition, Job, JobEvent, JobStatus, apply_event, is_job_id
from fastvlm_engine.jobs.codec import from_record, to_record
from fastvlm_engine.jobs.model import TRANSITIONS, idempotency_scope, new_job_id

LEGAL = {
    (JobStatus.QUEUED, JobEvent.LEASE): JobStatus.RUNNING,
    (JobStatus.QUEUED, JobEvent.CANCEL): JobStatus.CANCELLED,
    (JobStatus.QUEUED, JobEvent.EXPIRE): JobStatus.EXPIRED,
    (JobStatus.RUNNING, JobEvent.REDELIVER): JobStatus.QUEUED,
    (JobStatus.RUNNING, JobEvent.SUCCEED): JobStatus.SUCCEEDED,
    (JobStatus.RUNNING, JobEvent.FAIL): JobStatus.FAILED,
    (JobStatus.RUNNING, JobEvent.CANCEL): JobStatus.CANCELLED,
}


def test_the_statuses_and_events_are_the_documented_ones():
    assert [s.value for s in JobStatus] == ["queued", "running", "succeeded", "failed", "cancelled", "expired"]
    assert {e.value for e in JobEvent} == {"lease", "redeliver", "succeed", "fail", "cancel", "expire"}
    assert TERMINAL == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.EXPIRED}


@pytest.mark.parametrize(("status", "event"), list(itertools.product(JobStatus, JobEvent)))
def test_every_status_event_pair_is_either_legal_or_refused(status, event):
    if (status, event) in LEGAL:
        assert apply_event(status, event) is LEGAL[(status, event)]
    else:
        with pytest.raises(IllegalTransition, match=event.value):
            apply_event(status, event)


def test_the_table_is_exactly_the_legal_moves_and_finished_jobs_never_move():
    assert TRANSITIONS == LEGAL
    assert not any(status in TERMINAL for status, _ in TRANSITIONS)
    assert all(status.terminal == (status in TERMINAL) for status in JobStatus)


def test_apply_event_accepts_the_wire_strings():
    assert apply_event("queued", "lease") is JobStatus.RUNNING  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        apply_event("paused", "lease")  # type: ignore[arg-type]


def test_ids_are_url_safe_random_and_recognised():
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(is_job_id(job_id) and len(job_id) == 32 for job_id in ids)
    for bad in ["", "short", "a" * 31, "a" * 87, "a" * 31 + "/", "a" * 31 + ".", None, 42, b"a" * 32]:
        assert not is_job_id(bad)


def test_idempotency_scopes_separate_owners_and_keys_without_collisions():
    pairs = [(None, "k"), ("", "k"), ("a", "k"), ("a", "k2"), ("a\0b", "c"), ("a", "b\0c"), ("a:b", "c"), ("a", "b:c")]
    scopes = {idempotency_scope(owner, key) for owner, key in pairs}
    assert len(scopes) == 8
    assert idempotency_scope("a", "k") == idempotency_scope("a", "k")
    assert all(len(scope) == 64 for scope in scopes)


def test_the_codec_round_trips_every_field_exactly():
    job = Job(job_id=new_job_id(), kind="video", status=JobStatus.RUNNING, created_at=1712345678.123456789,
              queued_at=1712345679.5, options={"prompt": "é", "n": [1, 2.5, None]},
              source={"upload": {"content_type": "video/mp4", "filename": None, "size": 9}}, owner="key",
              started_at=0.1 + 0.2, attempts=2, result=b"\x00\xffbody", error={"code": "c", "message": "m"},
              progress={"stage": "captions"}, idempotency_key="idem", trace_parent="00-ab-cd-01",
              lease_owner="w1", lease_expires_at=1e10 / 3)
    record = to_record(job)
    assert from_record(record) == job
    wire = {key.encode(): (value if isinstance(value, bytes) else repr(value).encode() if isinstance(value, float)
                           else str(value).encode()) for key, value in record.items() if value is not None}
    assert from_record(wire) == job  # as Redis hands the hash back: bytes, absent for None


def test_the_codec_refuses_dicts_that_are_not_json():
    job = Job(job_id=new_job_id(), kind="image", status=JobStatus.QUEUED, created_at=1.0, queued_at=1.0,
              options={"bad": float("nan")}, source={"path": "/a"})
    with pytest.raises(ValueError, match="options"):
        to_record(job)
