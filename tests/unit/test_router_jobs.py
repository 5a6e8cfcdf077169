"""The router's job helpers: the Prefer header, drain-rate hints, the job document."""

from __future__ import annotations

import json

import pytest
from starlette.requests import Request

from fastvlm_engine.jobs.model import Job, JobStatus
from fastvlm_engine.router.jobs import DrainRate, job_document, wants_job


def _request(*headers: tuple[str, str]) -> Request:
    return Request({"type": "http", "headers": [(k.encode(), v.encode()) for k, v in headers]})


@pytest.mark.parametrize(("headers", "mode", "expected"), [
    ((), "sync", False),
    ((), "queue", True),
    ((("prefer", "respond-async"),), "sync", True),
    ((("prefer", "wait=5, respond-async"),), "sync", True),
    ((("prefer", "respond-async; wait=10"),), "sync", True),
    ((("prefer", "return=minimal"),), "sync", False),
    ((("prefer", "respond-asynchronously"),), "sync", False),
])
def test_who_asks_for_a_job(headers, mode, expected):
    assert wants_job(_request(*headers), mode) is expected


def test_the_queue_full_hint_follows_the_measured_drain_rate():
    rate = DrainRate(alpha=1.0)
    assert rate.retry_after(100, 1.0, 30.0) == 30.0  # nothing measured yet: the cap
    rate.observe(0, now=0.0)
    rate.observe(20, now=2.0)  # 10 jobs/s
    assert rate.retry_after(50, 1.0, 30.0) == 5.0
    assert rate.retry_after(5, 1.0, 30.0) == 1.0  # never below the floor
    assert rate.retry_after(10_000, 1.0, 30.0) == 30.0  # nor above the cap


def test_the_result_is_spliced_into_the_job_document_unchanged():
    body = b'{"output":"a \\u00e9 \\"quoted\\" result","usage":{"prompt_tokens":3}}'
    job = Job(job_id="j" * 32, kind="image", status=JobStatus.SUCCEEDED, created_at=1.0, queued_at=1.0,
              options={}, source={"path": "a.jpg"}, finished_at=2.0, result=body, attempts=1)
    raw = job_document(job)
    assert body in raw
    document = json.loads(raw)
    assert document["result"] == json.loads(body) and document["status"] == "succeeded"
    assert document["endpoint"] == "/predict_image"
    pending = job_document(Job(job_id="k" * 32, kind="video", status=JobStatus.QUEUED, created_at=1.0,
                               queued_at=1.0, options={}, source={"path": "v.mp4"}))
    assert json.loads(pending)["result"] is None and json.loads(pending)["endpoint"] == "/summarize_video"
