"""With API and admin keys on: the page loads without a key, asks for one when the API refuses,
keeps it in sessionStorage and sends it as a header, never in a URL; the status view shows what
/healthz shows until it has the admin key."""

from __future__ import annotations

import pytest

from fastvlm_engine.auth import hash_key
from tests.ui.conftest import SAMPLE_IMAGE, open_console, serve

pytestmark = pytest.mark.integration

API_KEY = "fvk_console-api-key-for-tests"
ADMIN_KEY = "fvk_console-admin-key-for-tests"


@pytest.fixture(scope="module")
def keyed_router(tmp_path_factory, tiny_model_dir):
    yield from serve(tmp_path_factory.mktemp("ui-keyed"), tiny_model_dir,
                     api_keys=hash_key(API_KEY), admin_keys=hash_key(ADMIN_KEY))


def test_keys_are_asked_for_kept_in_the_tab_and_sent_as_headers(browser, keyed_router):
    console = open_console(browser, keyed_router.base_url)
    page = console.page
    requests = []
    page.on("request", lambda request: requests.append(request))
    try:
        page.set_input_files("#image-file", str(SAMPLE_IMAGE))
        page.fill("#image-max-tokens", "8")
        page.click("#image-submit")
        page.locator("#error-code", has_text="unauthorized").wait_for()
        assert page.evaluate("() => document.getElementById('keys').open")
        assert page.evaluate("() => document.activeElement.id") == "api-key"  # it asks, right there
        page.keyboard.type(API_KEY)
        page.keyboard.press("Enter")
        assert page.evaluate("() => sessionStorage.getItem('fastvlm.apiKey')") == API_KEY
        assert page.input_value("#api-key") == ""  # not left in the field
        page.click("#image-submit")
        page.locator("#copy-json:not([disabled])").wait_for()
        assert page.text_content("#caption")

        page.click("#tab-status")
        page.locator("#hosts .worker").first.wait_for()  # from /healthz, without the admin key
        page.locator("#status-note", has_text="admin key").wait_for()
        assert page.locator("#charts .chart").count() == 0
        page.click("#status-admin-key")
        assert page.evaluate("() => document.activeElement.id") == "admin-key"
        page.keyboard.type(ADMIN_KEY)
        page.keyboard.press("Enter")
        page.locator("#charts .chart").first.wait_for()
        assert page.text_content("#status-note") == ""
        assert page.locator("#charts .chart").count() == 4

        media = [r for r in requests if r.url.endswith("/predict_image")]
        assert [r.all_headers().get("x-api-key") for r in media] == [None, API_KEY]
        status = [r for r in requests if "/status" in r.url]
        assert any(r.all_headers().get("authorization") == f"Bearer {ADMIN_KEY}" for r in status)
        assert all("authorization" not in r.all_headers() for r in media)  # the admin key stays off the API
        for request in requests:
            assert API_KEY not in request.url and ADMIN_KEY not in request.url
        assert page.evaluate("() => localStorage.length") == 0 and page.context.cookies() == []
        console.shot("keys")
    finally:
        page.context.close()
    assert not console.errors, console.errors


def test_a_new_tab_starts_without_keys_and_refuses_unsendable_ones(browser, keyed_router):
    console = open_console(browser, keyed_router.base_url)
    page = console.page
    try:
        assert page.evaluate("() => sessionStorage.length") == 0
        assert page.text_content("#api-key-state") == "none"
        page.click("#keys-summary")
        page.fill("#api-key", "two words")  # a header cannot carry it: refused, not stored
        page.press("#api-key", "Enter")
        assert "cannot be sent" in page.text_content("#keys-note")
        assert page.evaluate("() => sessionStorage.length") == 0
    finally:
        page.context.close()
    assert not console.errors, console.errors
