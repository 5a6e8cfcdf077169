"""Jobs in the console: in queue mode (and with "Submit as a job" in sync mode) the page submits a
job, follows it with long polls to its end and shows its result like a direct answer."""

from __future__ import annotations

import pytest

from fastvlm_engine.sample_media.video import write_sample_video
from tests.helpers.procs import http
from tests.ui.conftest import SAMPLE_IMAGE, open_console, serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def queue_router(tmp_path_factory, tiny_model_dir):
    state = tmp_path_factory.mktemp("ui-queue")
    yield from serve(state, tiny_model_dir, mode="queue", state_dir=state / "state")


def follow_in_page(console, kind: str, path: str) -> dict:
    """Submit from the page and wait until it shows the job's end; returns the job from the API."""
    page = console.page
    page.set_input_files(f"#{kind}-file", path)
    with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(
            "/predict_image" if kind == "image" else "/summarize_video")) as answer:
        page.click(f"#{kind}-submit")
    assert answer.value.status == 202
    submitted = answer.value.json()
    assert submitted["status"] == "queued" and page.text_content("#job-id") == submitted["job_id"]
    page.locator("#job-status", has_text="succeeded").wait_for(timeout=120_000)
    page.locator("#copy-json:not([disabled])").wait_for()
    status, _, job = http("GET", f"{console.base_url}/job/{submitted['job_id']}")
    assert status == 200 and job["status"] == "succeeded"
    return job


def test_queue_mode_submits_jobs_and_follows_them(browser, queue_router, tmp_path):
    console = open_console(browser, queue_router.base_url)
    page = console.page
    try:
        assert page.is_checked("#image-job") and page.is_disabled("#image-job")  # every request is a job here
        job = follow_in_page(console, "image", str(SAMPLE_IMAGE))
        assert page.text_content("#caption") == job["result"]["output"]
        video = tmp_path / "sample.mp4"
        write_sample_video(video)
        job = follow_in_page(console, "video", str(video))
        assert page.locator("#video-result .card").count() == len(job["result"]["captions"])
        console.shot("queue-job")
    finally:
        page.context.close()
    assert not console.errors, console.errors


def test_submit_as_a_job_in_sync_mode(console_page):
    page = console_page.page
    assert not page.is_disabled("#image-job")
    page.check("#image-job")
    job = follow_in_page(console_page, "image", str(SAMPLE_IMAGE))
    assert page.text_content("#caption") == job["result"]["output"]
