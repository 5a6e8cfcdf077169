"""A corpus of malformed images and videos against one real router (two real workers).

Every file of :mod:`tests.fixtures.bad_media` is sent to its endpoint twice — by path under the
media root and as base64 — and must get one of its expected answers: a 4xx with the README's
error schema (stable code matching the status, JSON, the request id, no stack trace, no server
path), or a 200 for the valid edge cases. After every request the router and both worker
processes must still be the ones that were started; at the end every worker is ready with the
same pid and restart count, no process logged an unhandled error, and normal requests succeed.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import shutil
import tempfile
from pathlib import Path

import pytest

from fastvlm_engine.config import Settings
from tests.fixtures.bad_media import VIDEO_MAX_SECONDS, MediaCase, write_bad_media
from tests.helpers.procs import http
from tests.security.conftest import (
    assert_every_worker_answers,
    assert_pool_unchanged,
    error_contract_problems,
    leaks,
    server_paths,
    unhandled_log_lines,
)

pytestmark = pytest.mark.integration

WORKERS = 2
DEFAULTS = Settings()
_ids = itertools.count()


# Parametrization needs the case names at collection time, so the corpus (about a second to
# build) is written once, when this module is imported, and that folder becomes the media root.
_CORPUS_DIR = Path(tempfile.mkdtemp(prefix="fastvlm-bad-media-"))
atexit.register(shutil.rmtree, _CORPUS_DIR, True)
_CASES = {case.name: case for case in write_bad_media(_CORPUS_DIR)}


@pytest.fixture(scope="module")
def corpus_dir() -> Path:
    return _CORPUS_DIR


@pytest.fixture(scope="module")
def corpus() -> dict[str, MediaCase]:
    return _CASES


@pytest.fixture(scope="module")
def router(capped_router_factory, corpus, corpus_dir):
    return capped_router_factory(
        WORKERS, media_roots=corpus_dir, video_max_seconds=VIDEO_MAX_SECONDS,
        video_caption_max_new_tokens=4, video_summary_mode="extractive", max_batch_wait_ms=0)


def send(router, endpoint: str, field: str, transport: str, filename: str,
         folder: Path) -> tuple[int, dict, object, str, str]:
    """POST one file; returns (status, headers, body, request id sent, request text sent)."""
    if transport == "path":
        body = {f"{field}_path": filename}
    else:
        body = {f"{field}_base64": base64.b64encode((folder / filename).read_bytes()).decode()}
    if field == "image":
        body["max_new_tokens"] = 4
    request_id = f"sec-{transport}-{next(_ids)}"
    status, headers, answer = http("POST", router.base_url + endpoint, body, headers={"X-Request-ID": request_id},
                                   timeout=120)
    sent = body.get(f"{field}_path", "")
    return status, headers, answer, request_id, sent


def check_answer(router, corpus_dir, label: str, statuses, codes, status, headers, answer, request_id, sent,
                 kind: str) -> None:
    text = answer if isinstance(answer, str) else repr(answer)
    found = leaks(text, server_paths(corpus_dir), sent)
    assert not found, f"{label}: response leaks {found}: {text[:800]}"
    assert status < 500, (f"{label}: server error {status} {text[:800]}\n"
                          f"log tail:\n{router.log()[-2500:]}")
    if status == 200:
        assert 200 in statuses, f"{label}: expected {sorted(statuses)} {sorted(codes)}, got 200: {text[:400]}"
        if kind == "image":
            info = answer["image"]
            assert info["width"] * info["height"] <= DEFAULTS.max_image_pixels, f"{label}: {info}"
            assert answer["output"] is not None and answer["usage"]["completion_tokens"] <= 4
        else:
            info = answer["video"]
            assert info["width"] * info["height"] <= DEFAULTS.video_max_frame_pixels, f"{label}: {info}"
            assert info["duration_sec"] <= VIDEO_MAX_SECONDS + 0.5, (
                f"{label}: answered 200 for a video whose reported duration {info['duration_sec']} s exceeds "
                f"the configured limit of {VIDEO_MAX_SECONDS:g} s (expected 413 video_too_long): {info}")
            assert answer["frames_used"] >= 1 and answer["captions"]
        return
    problems = error_contract_problems(status, headers, answer, request_id=request_id)
    assert not problems, f"{label}: error body breaks the schema: {problems}: {text[:600]}"
    code = answer["error"]["code"]
    assert status in statuses and code in codes, (
        f"{label}: expected {sorted(statuses)} {sorted(codes)}, got {status} {code}: {answer['error']['message']}")


@pytest.mark.parametrize("transport", ["path", "base64"])
@pytest.mark.parametrize("name", list(_CASES))
def test_corpus_case(router, corpus, corpus_dir, name, transport):
    case = corpus[name]
    statuses, codes = case.expected(transport)
    before = router.extra["baseline"]
    status, headers, answer, request_id, sent = send(router, case.endpoint, case.field, transport, case.filename,
                                                     corpus_dir)
    label = f"{case.name} ({case.filename}, {case.note or case.kind}) via {transport} to {case.endpoint}"
    try:
        check_answer(router, corpus_dir, label, statuses, codes, status, headers, answer, request_id, sent, case.kind)
    finally:
        assert_pool_unchanged(router, before, f"after {label}")


CROSS = [
    # images are not videos, and videos are not images: 415 both ways
    ("png_as_jpg", "/summarize_video", "video"),
    ("jpeg_cmyk", "/summarize_video", "video"),
    ("gif_animated", "/summarize_video", "video"),
    ("webp_ok", "/summarize_video", "video"),
    ("tiff_ok", "/summarize_video", "video"),
    ("vid_ok", "/predict_image", "image"),
    ("vid_ok_mkv", "/predict_image", "image"),
    ("vid_audio_only", "/predict_image", "image"),
    ("vid_mpegts_garbage", "/predict_image", "image"),
]


@pytest.mark.parametrize("transport", ["path", "base64"])
@pytest.mark.parametrize(("name", "endpoint", "field"), CROSS)
def test_wrong_kind_is_unsupported_media(router, corpus, corpus_dir, name, endpoint, field, transport):
    case = corpus[name]
    status, headers, answer, request_id, sent = send(router, endpoint, field, transport, case.filename, corpus_dir)
    label = f"{case.filename} via {transport} to {endpoint}"
    try:
        check_answer(router, corpus_dir, label, {415}, {"unsupported_media"}, status, headers, answer, request_id,
                     sent, field)
    finally:
        assert_pool_unchanged(router, router.extra["baseline"], f"after {label}")


def test_every_process_still_serving(router, corpus, corpus_dir):
    """Runs last in this module: nothing crashed, restarted or logged an unhandled error."""
    assert_pool_unchanged(router, router.extra["baseline"], "after the whole corpus")
    status, _, health = http("GET", router.base_url + "/healthz")
    assert status == 200 and health["ready_workers"] == WORKERS
    assert all(w["state"] == "ready" for w in health["workers"]), health["workers"]
    assert http("GET", router.base_url + "/readyz")[0] == 200
    assert_every_worker_answers(router.base_url, "png_as_jpg.jpg")
    status, _, answer = http("POST", router.base_url + "/summarize_video", {"video_path": "vid_ok.mp4"})
    assert status == 200, answer
    assert answer["video"]["frames_total"] == 12
    unhandled = unhandled_log_lines(router)
    assert not unhandled, "processes logged unexpected errors while serving the corpus:\n" + "\n".join(unhandled)
