"""/summarize_video on a real worker process with the tiny model, over HTTP."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from tests.fixtures import videos
from tests.helpers.procs import http, start_worker, wait_ready

pytestmark = pytest.mark.integration

DOCUMENT_KEYS = {"video", "scenes", "scenes_detected", "frames_used", "captions", "summary", "summary_source",
                 "safety_flags", "vibe_tags", "visual_tags", "speech", "on_screen_text", "stages", "model", "timing"}
TIMING_KEYS = {"stats_sec", "scene_detection_sec", "frame_extraction_sec", "dedupe_sec", "captioning_sec",
               "summary_sec", "tags_sec", "safety_sec", "asr_sec", "ocr_sec", "total_sec"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, videos.VideoFixture]:
    root = tmp_path_factory.mktemp("video-media")
    made = {
        "cuts": videos.make_cut_video(root),
        "single": videos.make_single_shot_video(root),
        "dissolve": videos.make_dissolve_video(root),
        "rotated": videos.make_rotated_video(root, rotation=90),
        "corrupt": videos.make_corrupt_video(root),
        "truncated": videos.make_truncated_video(root, keep_fraction=0.5, faststart=False),
        "audio": videos.make_audio_only(root),
        "empty": videos.make_zero_frame_video(root),
        "long": videos.make_long_video(root, seconds=170, size=(256, 144)),
        "lying": videos.make_long_video(root, seconds=185, claimed_seconds=2.0),
    }
    for name, payload in videos.not_video_payloads().items():
        (root / f"not_video_{name}.mp4").write_bytes(payload)
    made["root"] = root  # type: ignore[assignment]
    return made


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir, clips):
    proc = start_worker(tmp_path_factory.mktemp("video-worker"), tiny_model_dir, media_roots=clips["root"],
                        max_batch_wait_ms=20)
    try:
        wait_ready(proc)
        yield proc
    finally:
        proc.stop()


def summarize(worker, body, timeout=180):
    return http("POST", worker.base_url + "/summarize_video", body, timeout=timeout)


def check_document(doc: dict, clip: videos.VideoFixture) -> None:
    assert set(doc) == DOCUMENT_KEYS and set(doc["timing"]) == TIMING_KEYS
    info = doc["video"]
    assert info["frames_total"] == clip.frames and info["fps"] == pytest.approx(clip.fps)
    assert info["duration_sec"] == pytest.approx(clip.frames / clip.fps, abs=0.1)
    assert doc["scenes_detected"] == len(doc["scenes"]) >= 1
    assert doc["frames_used"] == len(doc["captions"]) >= 1
    for caption in doc["captions"]:
        assert 0 <= caption["timestamp_sec"] <= info["duration_sec"]
        assert 0 <= caption["scene"] < len(doc["scenes"])
        scene = doc["scenes"][caption["scene"]]
        assert scene["start_sec"] <= caption["timestamp_sec"] <= scene["end_sec"]
    assert {c["scene"] for c in doc["captions"]} == set(range(len(doc["scenes"])))  # every scene captioned
    assert isinstance(doc["summary"], str) and doc["summary_source"] in ("model", "extractive")
    assert all(flag["source"] and flag["level"] in ("flag", "review") for flag in doc["safety_flags"])
    assert doc["timing"]["total_sec"] > 0
    # FASTVLM_MODEL is set and FASTVLM_ASR_MODEL is not: no speech stage, and the document says why.
    assert doc["stages"]["speech"]["status"] == "skipped" and "FASTVLM_ASR_MODEL" in doc["stages"]["speech"]["reason"]
    assert doc["speech"]["segments"] == []


def test_known_cuts_are_exact(worker, clips):
    clip = clips["cuts"]
    status, _, doc = summarize(worker, {"video_path": clip.path.name})
    assert status == 200, doc
    check_document(doc, clip)
    boundaries = [scene["start_sec"] for scene in doc["scenes"][1:]]
    assert len(boundaries) == len(clip.cuts)
    for found, cut in zip(boundaries, clip.cuts, strict=True):
        assert abs(found - cut / clip.fps) <= 1 / clip.fps + 1e-6


def test_single_shot_is_one_scene_with_several_keyframes(worker, clips):
    status, _, doc = summarize(worker, {"video_path": clips["single"].path.name})
    assert status == 200
    check_document(doc, clips["single"])
    assert doc["scenes_detected"] == 1 and doc["frames_used"] >= 1


def test_dissolve_and_rotation(worker, clips):
    status, _, doc = summarize(worker, {"video_path": clips["dissolve"].path.name})
    assert status == 200
    check_document(doc, clips["dissolve"])
    status, _, doc = summarize(worker, {"video_path": clips["rotated"].path.name})
    assert status == 200
    rotated = clips["rotated"]
    assert doc["video"]["rotation"] in (90, 270)
    assert (doc["video"]["width"], doc["video"]["height"]) == (rotated.height, rotated.width)


def test_base64_upload_gives_the_same_document(worker, clips):
    clip = clips["cuts"]
    by_path = summarize(worker, {"video_path": str(clip.path)})[2]
    status, _, by_upload = summarize(worker, {"video_base64": base64.b64encode(clip.path.read_bytes()).decode()})
    assert status == 200
    assert by_upload["scenes"] == by_path["scenes"]
    assert [c["caption"] for c in by_upload["captions"]] == [c["caption"] for c in by_path["captions"]]


def _step_sizes(worker) -> tuple[float, float]:
    """(model steps so far, of which steps with a single sequence) from the worker's histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    text = http("GET", worker.base_url + "/metrics")[2]
    family = next(f for f in text_string_to_metric_families(text) if f.name == "fastvlm_batch_size")
    total = next(s.value for s in family.samples if s.name == "fastvlm_batch_size_count")
    single = next(s.value for s in family.samples if s.name == "fastvlm_batch_size_bucket" and s.labels["le"] == "1.0")
    return total, single


def test_frames_share_batches(worker, clips):
    steps_before, single_before = _step_sizes(worker)
    status, _, doc = summarize(worker, {"video_path": clips["cuts"].path.name})
    steps_after, single_after = _step_sizes(worker)
    assert status == 200 and doc["frames_used"] >= 3
    # The frames' captions were decoded together: some steps carried several sequences at once.
    assert steps_after - steps_before > single_after - single_before


@pytest.mark.parametrize(("name", "status", "code"), [
    ("corrupt", 422, "invalid_video"),
    ("truncated", 422, "invalid_video"),
    ("empty", 422, "invalid_video"),
    ("audio", 415, "unsupported_media"),
    ("lying", 413, "video_too_long"),
])
def test_bad_videos_get_their_codes(worker, clips, name, status, code):
    got, _, body = summarize(worker, {"video_path": clips[name].path.name})
    assert (got, body["error"]["code"]) == (status, code), body
    text = json.dumps(body)
    assert "Traceback" not in text and "/tmp/" not in text


def test_not_videos_are_415(worker, clips):
    for path in sorted(clips["root"].glob("not_video_*")):
        got, _, body = summarize(worker, {"video_path": path.name})
        assert (got, body["error"]["code"]) == (415, "unsupported_media"), (path.name, body)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"video_path": "/etc/passwd"}, 403, "path_not_allowed"),
    ({"video_path": "missing.mp4"}, 404, "media_not_found"),
    ({"video_base64": "%%%"}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"video_path": "a.mp4", "video_base64": "AAAA"}, 422, "invalid_request"),
])
def test_request_errors(worker, body, status, code):
    got, _, answer = summarize(worker, body)
    assert (got, answer["error"]["code"]) == (status, code)


def test_worker_keeps_serving_after_bad_videos(worker, clips):
    assert worker.popen.poll() is None
    status, _, doc = summarize(worker, {"video_path": clips["single"].path.name})
    assert status == 200 and doc["frames_used"] >= 1


def test_images_keep_completing_while_a_long_video_is_analysed(worker, clips, media_root_images):
    """Decoding and analysis run off the inference thread and off the event loop."""
    video: dict = {}

    def run_video() -> None:
        video["started"] = time.monotonic()
        video["result"] = summarize(worker, {"video_path": clips["long"].path.name})
        video["finished"] = time.monotonic()

    thread = threading.Thread(target=run_video)
    thread.start()
    finished_images = []
    while thread.is_alive():
        status, _, body = http("POST", worker.base_url + "/predict_image",
                               {"image_base64": media_root_images, "max_new_tokens": 4})
        assert status == 200, body
        finished_images.append(time.monotonic())
    thread.join()
    status, _, doc = video["result"]
    assert status == 200, doc
    timing = doc["timing"]
    analysis = timing["stats_sec"] + timing["scene_detection_sec"] + timing["frame_extraction_sec"]
    during_analysis = [t for t in finished_images if t < video["started"] + analysis]
    assert len(during_analysis) >= 3, (len(finished_images), analysis)


@pytest.fixture(scope="module")
def media_root_images() -> str:
    from tests.helpers.images import encode, photo

    return base64.b64encode(encode(photo("coffee"), "JPEG")).decode()
