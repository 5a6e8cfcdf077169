"""Trying a video in the console: the timeline, one card per keyframe with the API's timestamps,
speech and on-screen text under their scenes, flags, tags, timing, and copy JSON."""

from __future__ import annotations

import pytest

from fastvlm_engine.sample_media.video import write_sample_video

pytestmark = pytest.mark.integration

MARKUP_FILE_NAME = "<script>window.__pwned='video'</script><img src=x onerror=\"window.__pwned='v'\">.mp4"


@pytest.fixture(scope="module")
def sample_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "sample.mp4"
    write_sample_video(path)
    return path


def is_summarize(response) -> bool:
    return response.url.endswith("/summarize_video") and response.request.method == "POST"


def test_the_timeline_has_a_card_per_keyframe_with_the_api_timestamps(console_page, sample_video):
    page = console_page.page
    page.set_input_files("#video-file", str(sample_video))
    with page.expect_response(is_summarize, timeout=120_000) as answer:
        page.click("#video-submit")
    response = answer.value
    assert response.status == 200
    page.locator("#video-result .card").first.wait_for()
    document = response.json()
    cards = page.locator("#video-result .card")
    assert cards.count() == len(document["captions"]) >= 1
    shown = [float(cards.nth(i).get_attribute("data-timestamp")) for i in range(cards.count())]
    by_scene = sorted(document["captions"], key=lambda c: (c["scene"], c["timestamp_sec"]))
    assert shown == [c["timestamp_sec"] for c in by_scene]
    for i, caption in enumerate(by_scene):
        card = cards.nth(i)
        assert card.locator(".said").text_content() == caption["caption"]
        assert card.locator("img").get_attribute("src") == "data:image/jpeg;base64," + caption["thumbnail_jpeg_base64"]
        assert card.evaluate("(node) => node.closest('.scene').dataset.scene") == str(caption["scene"])
    assert page.locator("#timeline .segment").count() == len(document["scenes"])
    for index, scene in enumerate(document["scenes"]):
        section = page.locator(f"#scene-{index}")
        assert section.locator(".card").count() == sum(c["scene"] == index for c in document["captions"])
        assert section.locator(".speech li").count() == len(scene["speech"])
        assert [t.text_content() for t in section.locator(".on-screen .shown").all()] == [
            t["text"] for t in scene["on_screen_text"]]
    assert page.text_content("#video-summary") == document["summary"]
    assert [c.text_content() for c in page.locator("#vibe-tags .chip").all()] == document["vibe_tags"]
    assert [c.text_content() for c in page.locator("#visual-tags .chip").all()] == document["visual_tags"]
    assert page.locator("#safety .flag").count() == len(document["safety_flags"])
    assert page.locator("#timing .timing-bar .part").count() >= 1
    assert "in all" in page.text_content("#timing h3")
    page.locator("#timeline .segment").last.click()  # a segment takes you to its scene
    last = len(document["scenes"]) - 1
    assert page.evaluate("document.activeElement.id") == f"scene-{last}"
    page.click("#copy-json")
    page.locator("#copy-note", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == response.text()  # the exact API response
    console_page.shot("video-timeline")


def test_a_video_file_name_with_markup_stays_text(console_page, sample_video):
    page = console_page.page
    page.set_input_files("#video-file", files=[{"name": MARKUP_FILE_NAME, "mimeType": "video/mp4",
                                                "buffer": sample_video.read_bytes()}])
    assert page.text_content("#video-name").startswith(MARKUP_FILE_NAME)
    with page.expect_response(is_summarize, timeout=120_000):
        page.click("#video-submit")
    page.locator("#video-result .card").first.wait_for()
    assert page.text_content("#result-file") == MARKUP_FILE_NAME
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], main script').length") == 0
    assert page.evaluate("document.scripts.length") == 1
