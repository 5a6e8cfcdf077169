"""A video's analysis as the bounded text context the chat API answers video questions from."""

from __future__ import annotations

import pytest

from fastvlm_engine.schemas import (
    Caption,
    OnScreenText,
    Scene,
    Speech,
    SpeechSegment,
    SummarizeVideoResponse,
    VideoInfo,
    VideoTiming,
)
from fastvlm_engine.video.context import MIN_CONTEXT_CHARS, video_context

LONG = ("A person in a red jacket walks along a crowded market street, passing stalls of fruit, "
        "spices and bright fabric while vendors call out to shoppers under strings of lights.")


def document(captions: int = 3, caption: str = "A cup of coffee on a table.", summary: str = "Coffee is served.",
             ) -> SummarizeVideoResponse:
    duration = 2.0 * captions
    return SummarizeVideoResponse(
        video=VideoInfo(duration_sec=duration, fps=24, width=360, height=640, rotation=0, frames_total=144),
        scenes=[Scene(start_sec=2.0 * i, end_sec=2.0 * i + 2) for i in range(captions)], scenes_detected=captions,
        frames_used=captions,
        captions=[Caption(timestamp_sec=2.0 * i + 1, scene=i, caption=f"{caption} ({i})") for i in range(captions)],
        summary=summary, summary_source="model", safety_flags=[], vibe_tags=[], visual_tags=[],
        speech=Speech(segments=[SpeechSegment(start_sec=0.5, end_sec=1.5, text="hello there")]),
        on_screen_text=[OnScreenText(text="SALE", start_sec=3.0, end_sec=4.0, confidence=0.9)],
        model="m", timing=VideoTiming(stats_sec=0, scene_detection_sec=0, frame_extraction_sec=0, dedupe_sec=0,
                                      captioning_sec=0, summary_sec=0, tags_sec=0, safety_sec=0, total_sec=0))


def test_the_context_carries_length_summary_and_the_timeline_in_time_order():
    text = video_context(document(), 6000)
    lines = text.split("\n")
    assert lines[0].startswith("[A video of 6.0 seconds with 3 scene(s).")
    assert lines[1] == "Summary: Coffee is served." and lines[2] == "Timeline:"
    assert lines[3:] == ['[0.5s-1.5s] says: "hello there"', "[1.0s] A cup of coffee on a table. (0)",
                         "[3.0s] A cup of coffee on a table. (1)", '[3.0s-4.0s] on screen: "SALE"',
                         "[5.0s] A cup of coffee on a table. (2)"]


@pytest.mark.parametrize(("captions", "budget"), [(24, 6000), (24, 800), (200, 2000), (3, MIN_CONTEXT_CHARS)])
def test_the_context_stays_within_its_budget(captions, budget):
    text = video_context(document(captions, LONG, summary=LONG * 20), budget)
    assert len(text) <= budget
    assert text.startswith("[A video of") and "Summary: " in text


def test_an_empty_summary_and_no_captions_leave_the_head():
    text = video_context(document(0, summary=""), 1000)
    assert text.startswith("[A video of 0.0 seconds with 0 scene(s).") and "Summary" not in text
    assert 'says: "hello there"' in text  # speech still counts


def test_a_budget_too_small_is_refused():
    with pytest.raises(ValueError):
        video_context(document(), MIN_CONTEXT_CHARS - 1)
