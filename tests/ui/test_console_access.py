"""The console at phone width, and with the keyboard alone."""

from __future__ import annotations

import pytest

from fastvlm_engine.sample_media.video import write_sample_video
from tests.ui.conftest import SAMPLE_IMAGE, open_console

pytestmark = pytest.mark.integration

PHONE = {"width": 375, "height": 740}

FOCUSABLE = """() => {
    const selector = 'a[href], button, input, select, textarea, summary, video[controls], [tabindex]';
    const shown = (node) => node.checkVisibility({contentVisibilityAuto: true, visibilityProperty: true});
    const nodes = [...document.querySelectorAll(selector)].filter(
        (node) => !node.disabled && node.tabIndex >= 0 && shown(node));
    nodes.forEach((node, index) => { node.dataset.kb = String(index); });
    return nodes.map((node) => node.id || node.tagName.toLowerCase() + ':' + node.textContent.trim().slice(0, 20));
}"""
ACTIVE = "() => document.activeElement ? (document.activeElement.dataset.kb ?? null) : null"


def tab_through(page, count: int) -> list[int]:
    """Press Tab enough times to go round the page once; the tagged controls in first-visit order."""
    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    visited: list[int] = []
    for _ in range(count + 3):
        page.keyboard.press("Tab")
        active = page.evaluate(ACTIVE)
        if active is not None and int(active) not in visited:
            visited.append(int(active))
    return visited


def tab_to(page, element_id: str, limit: int = 60) -> None:
    """Move the focus with Tab alone until it reaches the element."""
    for _ in range(limit):
        if page.evaluate("() => document.activeElement && document.activeElement.id") == element_id:
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached #{element_id}")


def assert_fits(page, view: str) -> None:
    width = page.evaluate("() => document.documentElement.clientWidth")
    scroll = page.evaluate("() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)")
    assert scroll <= width, f"{view}: the page scrolls sideways ({scroll} > {width})"
    boxes = page.evaluate("""() => [...document.querySelectorAll('button, input, textarea, summary, video')]
        .filter((n) => n.checkVisibility({contentVisibilityAuto: true, visibilityProperty: true}))
        .map((n) => { const r = n.getBoundingClientRect();
                      return [n.id || n.tagName, r.left, r.right, r.width, r.height]; })""")
    assert boxes
    for name, left, right, box_width, box_height in boxes:
        assert left >= 0 and right <= width + 0.5 and box_width > 0 and box_height > 0, (view, name, left, right)


def test_the_console_fits_a_phone(browser, router, tmp_path):
    console = open_console(browser, router.base_url, **PHONE)
    page = console.page
    try:
        video = tmp_path / "sample.mp4"
        write_sample_video(video)
        page.set_input_files("#image-file", str(SAMPLE_IMAGE))
        page.fill("#image-max-tokens", "16")
        page.click("#image-submit")
        page.locator("#copy-json:not([disabled])").wait_for()
        assert_fits(page, "image result")
        page.set_input_files("#video-file", str(video))
        page.click("#video-submit")
        page.locator("#video-result .card").first.wait_for(timeout=120_000)
        assert page.locator("#timeline .segment").count() >= 1
        assert_fits(page, "video result")
        console.shot("phone-try")
        page.click("#tab-status")
        page.locator("#hosts .worker").first.wait_for()
        page.locator("#charts .chart").first.wait_for()
        assert_fits(page, "status")
        console.shot("phone-status")
    finally:
        page.context.close()
    assert not console.errors, console.errors


def test_the_keyboard_reaches_and_works_every_control(console_page, router):
    page = console_page.page
    controls = page.evaluate(FOCUSABLE)
    assert {"tab-try", "tab-status", "keys-summary", "image-file", "image-prompt", "image-max-tokens", "image-stream",
            "image-job", "image-submit", "video-file", "video-speech", "video-ocr", "video-job",
            "video-submit"} <= set(controls)
    visited = tab_through(page, len(controls))
    missed = [controls[i] for i in sorted(set(range(len(controls))) - set(visited))]
    assert not missed, f"Tab never reaches {missed}"
    assert visited == sorted(visited), "the Tab order does not follow the page"

    tab_to(page, "keys-summary")
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.getElementById('keys').open")
    tab_to(page, "api-key")  # the key fields are reachable once the panel is open
    tab_to(page, "keys-summary")
    page.keyboard.press("Space")
    assert not page.evaluate("() => document.getElementById('keys').open")

    tab_to(page, "image-file")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(str(SAMPLE_IMAGE))
    assert "coffee.jpg" in page.text_content("#image-name")
    tab_to(page, "image-prompt")
    page.keyboard.type("Typed with the keyboard")
    tab_to(page, "image-max-tokens")
    page.keyboard.type("12")
    tab_to(page, "image-stream")
    page.keyboard.press("Space")
    assert not page.is_checked("#image-stream")
    page.keyboard.press("Space")
    assert page.is_checked("#image-stream")
    tab_to(page, "image-submit")
    page.keyboard.press("Enter")
    page.locator("#copy-json:not([disabled])").wait_for()
    assert page.text_content("#image-result-prompt") == "Typed with the keyboard"
    assert page.text_content("#caption")
    tab_to(page, "copy-json")
    page.keyboard.press("Enter")
    page.locator("#copy-note", has_text="Copied").wait_for()
    tab_to(page, "json-summary")
    page.keyboard.press("Enter")
    assert page.locator("#json").is_visible()

    tab_to(page, "tab-status")
    page.keyboard.press("Enter")
    page.locator("#hosts .worker").first.wait_for()
    assert page.locator("#view-try").is_hidden()
    status_controls = page.evaluate(FOCUSABLE)
    assert {"status-refresh", "status-live"} <= set(status_controls)
    visited = tab_through(page, len(status_controls))
    assert sorted(visited) == list(range(len(status_controls)))
    tab_to(page, "status-live")
    page.keyboard.press("Space")
    assert not page.is_checked("#status-live")
    tab_to(page, "tab-try")
    page.keyboard.press("Space")
    assert page.locator("#view-try").is_visible() and page.locator("#view-status").is_hidden()
    console_page.shot("keyboard")
