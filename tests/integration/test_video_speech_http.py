"""/summarize_video with speech and on-screen text on a real worker process, over HTTP.

The worker serves the tiny FastVLM with the tiny Whisper as FASTVLM_ASR_MODEL (both built
locally, loaded by the production loaders) and calls Debian's Tesseract.
"""

from __future__ import annotations

import base64
import io
import shutil

import pytest
from PIL import Image

from tests.fixtures.social import Overlay, make_social_video
from tests.fixtures.videos import SceneSpec
from tests.helpers.procs import http, start_worker, wait_ready

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs Debian's tesseract-ocr")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("speech-media")
    return make_social_video(root, "titled", [SceneSpec("chelsea", 3.0), SceneSpec("rocket", 3.0)],
                             overlays=[Overlay("BIG SALE TODAY", 1.0, 3.5), Overlay("link in bio", 4.0, 6.0, y=0.8)],
                             bursts=[(0.5, 2.0), (3.2, 5.0)])


@pytest.fixture(scope="module")
def worker(tmp_path_factory, tiny_model_dir, tiny_asr_dir, clip):
    proc = start_worker(tmp_path_factory.mktemp("speech-worker"), tiny_model_dir, media_roots=clip.path.parent,
                        asr_model=tiny_asr_dir, asr_max_new_tokens=32)
    try:
        wait_ready(proc)
        yield proc
    finally:
        proc.stop()


def summarize(worker, body):
    return http("POST", worker.base_url + "/summarize_video", body, timeout=180)


def test_a_clip_with_speech_and_titles_gets_a_full_timeline(worker, clip):
    status, _, doc = summarize(worker, {"video_path": clip.path.name, "include_thumbnails": True})
    assert status == 200, doc
    assert doc["stages"] == {"speech": {"status": "done", "reason": doc["stages"]["speech"]["reason"]},
                             "ocr": {"status": "done", "reason": None}}
    assert [t["text"] for t in doc["on_screen_text"]] == ["BIG SALE TODAY", "link in bio"]
    title, link = doc["on_screen_text"]
    assert abs(title["start_sec"] - 1.0) <= 0.2 and abs(link["end_sec"] - 6.0) <= 0.2
    speech = doc["speech"]
    assert speech["windows"] == 1 and speech["language"] and speech["audio_sec"] > 5
    for segment in speech["segments"]:
        assert 0 <= segment["start_sec"] <= segment["end_sec"] <= doc["video"]["duration_sec"] and segment["text"]
    assert [len(scene["captions"]) for scene in doc["scenes"]] == [
        sum(c["scene"] == i for c in doc["captions"]) for i in range(len(doc["scenes"]))]
    assert [t["text"] for t in doc["scenes"][1]["on_screen_text"]] == ["BIG SALE TODAY", "link in bio"]
    assert doc["timing"]["asr_sec"] > 0 and doc["timing"]["ocr_sec"] > 0
    thumb = Image.open(io.BytesIO(base64.b64decode(doc["captions"][0]["thumbnail_jpeg_base64"])))
    assert thumb.format == "JPEG" and max(thumb.size) <= 192
    status, _, text = http("GET", worker.base_url + "/metrics")
    assert status == 200
    for stage in ("asr", "ocr"):  # the new stages are labelled like the others
        assert any(line.startswith("fastvlm_video_stage_seconds_count") and f'stage="{stage}"' in line
                   for line in text.splitlines())


def test_each_stage_can_be_switched_off(worker, clip):
    status, _, doc = summarize(worker, {"video_path": clip.path.name, "speech": False, "ocr": False})
    assert status == 200, doc
    assert doc["stages"]["speech"]["status"] == doc["stages"]["ocr"]["status"] == "off"
    assert doc["speech"]["segments"] == [] and doc["on_screen_text"] == []
    assert all(c["thumbnail_jpeg_base64"] is None for c in doc["captions"])


def test_switches_must_be_booleans(worker, clip):
    status, _, body = summarize(worker, {"video_path": clip.path.name, "speech": "maybe"})
    assert status == 422 and body["error"]["code"] == "invalid_request"
