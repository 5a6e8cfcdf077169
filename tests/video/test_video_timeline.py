"""summarize_video with every stage: the per-scene timeline, the timeline summary prompt,
lexicon flags per source, thumbnails, request switches and stage reports.

Real components throughout: the tiny FastVLM and the tiny Whisper behind production batchers,
Tesseract, opennsfw. A recording wrapper around the captioner captures the summary prompt.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil

import pytest
from PIL import Image

from fastvlm_engine.config import Settings
from fastvlm_engine.engine.batcher import Batcher
from fastvlm_engine.engine.scheduler import Scheduler
from fastvlm_engine.schemas import Caption, OnScreenText, SpeechSegment
from fastvlm_engine.video.pipeline import NO_TEXT_READER, VideoOptions, summarize_video
from fastvlm_engine.video.safety import caption_safety_flags
from fastvlm_engine.video.speech import NO_TRANSCRIBER
from fastvlm_engine.video.tesseract import TesseractReader
from fastvlm_engine.video.timeline import build_scenes, overlaps
from fastvlm_engine.worker.service import EngineCaptioner, EngineTranscriber
from tests.fixtures.social import Overlay, make_social_video
from tests.fixtures.videos import SceneSpec

needs_tesseract = pytest.mark.skipif(shutil.which("tesseract") is None, reason="needs Debian's tesseract-ocr")


@pytest.fixture(scope="module")
def engines(vlm, asr):
    captions = Scheduler.from_settings(vlm, Settings()).start()
    speech = Batcher(asr.transcribe, max_batch_size=8, max_batch_wait_s=0.005, name="asr").start()
    try:
        yield EngineCaptioner(vlm, captions), EngineTranscriber(asr, speech)
    finally:
        captions.stop()
        speech.stop()


class PromptRecorder:
    def __init__(self, engine: EngineCaptioner) -> None:
        self.engine = engine
        self.prompts: list[str] = []

    async def caption(self, images, prompts, max_new_tokens):
        return await self.engine.caption(images, prompts, max_new_tokens)

    async def complete(self, prompt, max_new_tokens):
        self.prompts.append(prompt)
        return await self.engine.complete(prompt, max_new_tokens)


def _summarize(clip, settings, engines, safety_checker, **kwargs):
    captioner, transcriber = engines
    recorder = PromptRecorder(captioner)
    kwargs.setdefault("transcriber", transcriber)
    kwargs.setdefault("text_reader", TesseractReader())
    response = asyncio.run(summarize_video(clip.path, settings, recorder, model_name="tiny", safety=safety_checker,
                                           **kwargs))
    return response, recorder


@needs_tesseract
def test_every_scene_carries_its_captions_speech_and_text(titled_video, settings, engines, safety_checker):
    response, recorder = _summarize(titled_video, settings, engines, safety_checker)
    assert response.stages.speech.status == "done" and response.stages.ocr.status == "done"
    assert [t.text for t in response.on_screen_text] == ["BIG SALE TODAY", "link in bio"]
    assert response.speech.windows == 1 and response.speech.model == engines[1].name
    assert len(response.scenes) == 2
    for index, scene in enumerate(response.scenes):
        assert [(c.timestamp_sec, c.caption) for c in scene.captions] == [
            (c.timestamp_sec, c.caption) for c in response.captions if c.scene == index]
        assert scene.speech == [s for s in response.speech.segments
                                if overlaps(s.start_sec, s.end_sec, scene.start_sec, scene.end_sec + 1e-6)]
        assert scene.on_screen_text == [t for t in response.on_screen_text
                                        if overlaps(t.start_sec, t.end_sec, scene.start_sec, scene.end_sec + 1e-6)]
    first, second = response.scenes
    assert [t.text for t in first.on_screen_text] == ["BIG SALE TODAY"]  # shown across the cut: in both
    assert [t.text for t in second.on_screen_text] == ["BIG SALE TODAY", "link in bio"]
    timing = response.timing
    assert timing.asr_sec > 0 and timing.ocr_sec > 0 and timing.total_sec >= timing.captioning_sec
    assert all(c.thumbnail_jpeg_base64 is None for c in response.captions)
    # The summary prompt is the timeline: captions, speech and text, in time order, bounded.
    (prompt,) = recorder.prompts
    stamps = [float(m) for m in re.findall(r"^\[(\d+\.\d)s", prompt, flags=re.M)]
    assert stamps == sorted(stamps) and len(stamps) >= len(response.captions) + 2
    assert 'on screen: "BIG SALE TODAY"' in prompt and 'on screen: "link in bio"' in prompt
    assert all(f'says: "{s.text}' in prompt for s in response.speech.segments)


def test_request_switches_turn_stages_off(titled_video, settings, engines, safety_checker):
    response, _ = _summarize(titled_video, settings, engines, safety_checker,
                             options=VideoOptions(speech=False, ocr=False))
    assert response.speech.segments == [] and response.on_screen_text == []
    for report in (response.stages.speech, response.stages.ocr):
        assert report.status == "off" and report.reason == "Switched off by the request."
    assert response.speech.windows == 0 and response.speech.model is None  # the transcriber was never asked


def test_stages_without_an_engine_say_so(cut_video, settings, engines, safety_checker):
    response, _ = _summarize(cut_video, settings, engines, safety_checker, transcriber=None, text_reader=None)
    assert response.stages.speech.status == "skipped" and response.stages.speech.reason == NO_TRANSCRIBER
    assert response.stages.ocr.status == "skipped" and response.stages.ocr.reason == NO_TEXT_READER


def test_missing_tesseract_leaves_ocr_empty_with_a_reason(titled_video, settings, engines, safety_checker):
    response, _ = _summarize(titled_video, settings, engines, safety_checker,
                             text_reader=TesseractReader("/nonexistent/tesseract"))
    assert response.on_screen_text == [] and response.stages.ocr.status == "unavailable"
    assert "tesseract-ocr" in (response.stages.ocr.reason or "")
    assert response.summary and response.captions  # the rest of the document is unaffected


def test_thumbnails_are_small_jpegs_of_the_keyframes(speech_video, engines, safety_checker):
    settings = Settings(video_thumbnail_max_side=96)
    response, _ = _summarize(speech_video, settings, engines, safety_checker, text_reader=None,
                             options=VideoOptions(include_thumbnails=True))
    assert response.captions
    for caption in response.captions:
        image = Image.open(io.BytesIO(base64.b64decode(caption.thumbnail_jpeg_base64 or "")))
        assert image.format == "JPEG" and max(image.size) == 96
        assert image.size[1] > image.size[0]  # still a vertical frame


@needs_tesseract
def test_lexicon_reads_the_text_on_screen_and_names_its_source(video_dir, settings, engines, safety_checker):
    clip = make_social_video(video_dir, "weapons_title", [SceneSpec("chelsea", 3.0)], audio=False,
                             overlays=[Overlay("NO GUNS ALLOWED", 0.0, 3.0)])
    response, _ = _summarize(clip, settings, engines, safety_checker)
    flags = [f for f in response.safety_flags if f.source == "on_screen_text_lexicon"]
    assert [(f.category, f.evidence) for f in flags] == [("weapons", ["guns"])]
    assert flags[0].frames == [response.on_screen_text[0].start_sec]
    assert response.stages.speech.reason == "The video has no audio track."


def test_lexicon_flags_name_the_text_they_came_from():
    said = [(1.0, "we are going to fight them"), (4.0, "so good")]
    (flag,) = caption_safety_flags(said, source="speech_lexicon")
    assert (flag.category, flag.source, flag.frames, flag.evidence) == ("violence", "speech_lexicon", [1.0], ["fight"])


def test_scene_membership_by_overlap():
    scenes = [(0.0, 2.0), (2.0, 5.0)]
    captions = [Caption(timestamp_sec=1.0, scene=0, caption="a"), Caption(timestamp_sec=3.0, scene=1, caption="b")]
    across = SpeechSegment(start_sec=1.5, end_sec=2.5, text="across the cut")
    inside = SpeechSegment(start_sec=2.5, end_sec=3.0, text="inside")
    instant = OnScreenText(text="flash", start_sec=2.0, end_sec=2.0, confidence=0.9)
    at_end = OnScreenText(text="end card", start_sec=4.5, end_sec=5.0, confidence=0.9)
    first, second = build_scenes(scenes, captions, [across, inside], [instant, at_end])
    assert [c.caption for c in first.captions] == ["a"] and [c.caption for c in second.captions] == ["b"]
    assert first.speech == [across] and second.speech == [across, inside]
    assert first.on_screen_text == [] and second.on_screen_text == [instant, at_end]
