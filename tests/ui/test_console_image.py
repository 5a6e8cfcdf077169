"""Trying an image in the console: a streamed caption, drag and drop, errors, and markup that
stays text. The tiny model's words are gibberish, so the tests compare what the page shows with
what the API sent, never with an expected caption."""

from __future__ import annotations

import json

import pytest

from tests.ui.conftest import SAMPLE_IMAGE, record_text_changes, sse_events

pytestmark = pytest.mark.integration

MARKUP_PROMPT = ("<script>window.__pwned = 'script'</script><img src=x onerror=\"window.__pwned = 'img'\">"
                 "<b>bold?</b>")
MARKUP_FILE_NAME = "<img src=x onerror=\"window.__pwned='file'\">.jpg"


def is_predict(response) -> bool:
    return response.url.endswith("/predict_image") and response.request.method == "POST"


def test_the_caption_streams_in_and_copy_json_gives_the_done_document(console_page):
    page = console_page.page
    page.set_input_files("#image-file", str(SAMPLE_IMAGE))
    assert "coffee.jpg" in page.text_content("#image-name")
    page.fill("#image-prompt", "What is on the table?")
    page.fill("#image-max-tokens", "24")
    assert page.is_checked("#image-stream")
    record_text_changes(page, "#caption")
    with page.expect_response(is_predict) as answer:
        page.click("#image-submit")
    response = answer.value
    assert response.status == 200 and response.headers["content-type"].startswith("text/event-stream")
    page.locator("#copy-json:not([disabled])").wait_for()
    events = sse_events(response.text())
    deltas = [json.loads(data)["text"] for name, data in events if name == "delta"]
    [done] = [data for name, data in events if name == "done"]
    document = json.loads(done)
    assert page.text_content("#caption") == document["output"] == "".join(deltas)
    assert page.text_content("#image-result-prompt") == "What is on the table?" == document["prompt"]
    shown = [text for text in page.evaluate("window.__texts") if text]
    growing = [text for text in shown if text != document["output"]]
    assert len(growing) >= 2, f"the caption did not grow piece by piece: {shown}"
    assert all(document["output"].startswith(text) for text in shown)
    page.click("#copy-json")
    page.locator("#copy-note", has_text="Copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == done
    console_page.shot("image-streamed")


def test_a_dropped_file_and_markup_in_the_prompt_stay_text(console_page):
    page = console_page.page
    data_transfer = page.evaluate_handle("""([name, bytes]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'}));
        return transfer;
    }""", [MARKUP_FILE_NAME, list(SAMPLE_IMAGE.read_bytes())])
    page.dispatch_event("#image-drop", "drop", {"dataTransfer": data_transfer})
    assert page.text_content("#image-name").startswith(MARKUP_FILE_NAME)
    page.fill("#image-prompt", MARKUP_PROMPT)
    page.uncheck("#image-stream")  # the plain JSON answer this time
    with page.expect_response(is_predict) as answer:
        page.click("#image-submit")
    assert answer.value.headers["content-type"].startswith("application/json")
    page.locator("#copy-json:not([disabled])").wait_for()
    document = answer.value.json()
    assert document["prompt"] == MARKUP_PROMPT  # the API echoes the markup: the page must show it as text
    assert page.text_content("#image-result-prompt") == MARKUP_PROMPT
    assert page.text_content("#result-file") == MARKUP_FILE_NAME
    assert page.text_content("#caption") == document["output"]
    assert page.evaluate("typeof window.__pwned") == "undefined"
    assert page.evaluate("document.querySelectorAll('img[src=\"x\"], b, main script').length") == 0
    assert page.evaluate("document.scripts.length") == 1  # only the console's own module
    console_page.shot("image-markup-inert")


def test_errors_show_the_api_code_and_message(console_page):
    page = console_page.page
    page.click("#image-submit")  # nothing chosen yet: the console says so itself
    assert page.text_content("#error-code") == "no_file"
    page.set_input_files("#image-file", files=[{"name": "notes.txt", "mimeType": "text/plain",
                                                "buffer": b"not an image at all"}])
    with page.expect_response(is_predict) as answer:
        page.click("#image-submit")
    error = answer.value.json()["error"]
    page.locator("#error-code", has_text=error["code"]).wait_for()
    assert answer.value.status == 415 and error["code"] == "unsupported_media"
    assert page.text_content("#error-message") == error["message"]
    assert error["request_id"] in page.text_content("#error-extra")
    assert "HTTP 415" in page.text_content("#error-extra")
    console_page.shot("image-error")
