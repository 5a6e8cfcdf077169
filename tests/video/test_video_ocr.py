"""On-screen text with the real Tesseract (Debian tesseract-ocr + tesseract-ocr-eng).

Known words are drawn with a real font (DejaVu Sans Bold, white with a black outline, as
creators use) over generated video frames; the stage must return exactly those words with the
time span they were shown. The backgrounds are mid-tone photos: outlined white text over large
bright areas is a documented weakness (see video/tesseract.py).
"""

from __future__ import annotations

import logging
import shutil

import pytest
from PIL import Image, ImageDraw, ImageFont

from fastvlm_engine.config import Settings
from fastvlm_engine.video import tesseract as tesseract_module
from fastvlm_engine.video.analysis import analyze_video
from fastvlm_engine.video.ocr import read_on_screen_text, same_text, text_lines
from fastvlm_engine.video.tesseract import TesseractReader, Word
from tests.fixtures.rapid_edits import BOLD_FONT

pytestmark = pytest.mark.skipif(shutil.which("tesseract") is None,
                                reason="needs Debian's tesseract-ocr (make test installs it)")

SPAN_TOLERANCE = 0.2
"""The clip's kept frames are 0.25 s apart: a span is exact to half of that, plus rounding."""


@pytest.fixture(scope="module")
def reader() -> TesseractReader:
    return TesseractReader()


def test_the_exact_words_come_back_with_their_time_span(titled_video, settings, reader):
    analysis = analyze_video(titled_video.path, settings, keep_samples=True)
    outcome = read_on_screen_text(analysis, reader, settings)
    assert outcome.report.status == "done" and outcome.report.reason is None
    assert [t.text for t in outcome.texts] == [o.text for o in titled_video.overlays]
    for found, shown in zip(outcome.texts, titled_video.overlays, strict=True):
        assert found.start_sec == pytest.approx(shown.start_sec, abs=SPAN_TOLERANCE)
        assert found.end_sec == pytest.approx(min(shown.end_sec, titled_video.duration), abs=SPAN_TOLERANCE)
        assert 0.8 <= found.confidence <= 1.0
    # Far fewer frames read than kept: keyframes, a scan and a bisection of each boundary.
    assert outcome.frames_read <= len(analysis.keyframes) + settings.ocr_max_extra_frames
    assert outcome.frames_read < len(analysis.samples)


def test_a_video_without_text_has_none(cut_video, settings, reader):
    analysis = analyze_video(cut_video.path, settings, keep_samples=True)
    outcome = read_on_screen_text(analysis, reader, settings)
    assert outcome.texts == [] and outcome.report.status == "done" and outcome.report.reason


def test_keyframes_only_when_no_extra_frames_are_allowed(titled_video, reader):
    settings = Settings(ocr_max_extra_frames=0)
    analysis = analyze_video(titled_video.path, settings, keep_samples=True)
    outcome = read_on_screen_text(analysis, reader, settings)
    assert outcome.frames_read == len(analysis.keyframes)


def test_missing_tesseract_warns_once_and_leaves_the_field_empty(titled_video, settings, caplog, monkeypatch):
    monkeypatch.setattr(tesseract_module, "_warned", set())
    missing = TesseractReader("/nonexistent/tesseract")
    analysis = analyze_video(titled_video.path, settings, keep_samples=True)
    with caplog.at_level(logging.WARNING, logger="fastvlm_engine.video.tesseract"):
        first = read_on_screen_text(analysis, missing, settings)
        second = read_on_screen_text(analysis, TesseractReader("/nonexistent/tesseract"), settings)
    for outcome in (first, second):
        assert outcome.texts == [] and outcome.report.status == "unavailable"
        assert "tesseract-ocr" in (outcome.report.reason or "")
    assert len([r for r in caplog.records if "on-screen text is off" in r.getMessage()]) == 1


def test_missing_language_data_is_named(reader):
    assert "tesseract-ocr-xyz" in (TesseractReader(language="xyz").unavailable_reason() or "")
    assert reader.unavailable_reason() is None


def _card(text: str, size=(480, 160), fill=(255, 255, 255), ink=(0, 0, 0)) -> Image.Image:
    image = Image.new("RGB", size, fill)
    ImageDraw.Draw(image).text((20, 50), text, font=ImageFont.truetype(BOLD_FONT, 44), fill=ink)
    return image


def test_one_run_reads_a_batch_and_both_polarities(reader):
    dark_on_light, light_on_dark = _card("Hello there"), _card("Wait for it", fill=(20, 20, 30), ink=(255, 230, 0))
    words = reader.read([dark_on_light, light_on_dark])
    assert [[w.text for w in ws] for ws in words] == [["Hello", "there"], ["Wait", "for", "it"]]
    assert reader.read([]) == []


def test_words_become_confident_lines_in_reading_order():
    words = [Word("SALE", 95, 120, 10, 80, 30), Word("BIG", 96, 20, 12, 80, 30), Word("x", 99, 300, 300, 10, 10),
             Word("link", 90, 20, 200, 60, 25), Word("bio", 88, 100, 202, 50, 25), Word("far", 92, 400, 201, 40, 25),
             Word("~~", 99, 10, 400, 20, 20), Word("smudge", 40, 10, 500, 90, 20)]
    lines = text_lines(words, min_confidence=80)
    assert [line.text for line in lines] == ["BIG SALE", "link bio", "far"]
    assert lines[0].confidence == pytest.approx(0.955)
    assert text_lines(words, min_confidence=95) == [lines[0]]


def test_readings_of_one_text_are_matched_across_frames():
    assert same_text("BIG SALE TODAY", "big sale today!")
    assert same_text("BIG SALE TODAY", "BIG SALE TODAV")
    assert same_text("link in bio", "link in bio |")
    assert not same_text("BIG SALE TODAY", "link in bio")
    assert not same_text("", "")
