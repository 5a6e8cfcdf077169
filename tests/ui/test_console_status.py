"""The status view: the running workers, GPU memory, queues and the router's own traffic charts,
refreshed live."""

from __future__ import annotations

import base64

import pytest

from tests.helpers.procs import http
from tests.ui.conftest import SAMPLE_IMAGE

pytestmark = pytest.mark.integration


def describe_once(base_url: str) -> None:
    body = {"image_base64": base64.b64encode(SAMPLE_IMAGE.read_bytes()).decode(), "max_new_tokens": 8}
    status, _, document = http("POST", base_url + "/predict_image", body)
    assert status == 200, document


def test_the_status_view_lists_the_workers_gpus_and_traffic(console_page, router):
    describe_once(router.base_url)
    page = console_page.page
    page.click("#tab-status")
    page.locator("#hosts .worker").first.wait_for()
    _, _, health = http("GET", router.base_url + "/healthz")
    cards = page.locator("#hosts .worker")
    assert cards.count() == len(health["workers"]) >= 1
    for worker in health["workers"]:
        card = page.locator(f'#hosts .worker[data-worker="{worker["id"]}"]')
        assert card.locator(".worker-id").text_content() == worker["id"]
        assert card.locator(".badge").text_content() == worker["state"] == "ready"
        assert worker["device"] in card.text_content()
        assert f'{worker["in_flight"]} / {worker["max_concurrent"]}' in card.text_content()
    assert page.locator("#hosts .host h3").all_text_contents() == ["local"]  # no host field yet: one local host
    gpus = page.locator("#gpus .gpu")
    assert gpus.count() == len(health["gpus"]) == 2
    assert all("simulated" in gpus.nth(i).text_content() for i in range(gpus.count()))
    assert page.locator("#queues dt").all_text_contents() == ["admission: image", "admission: video"]
    assert page.locator("#charts .chart").count() == 4
    assert page.locator("#chart-p50 .line, #chart-p50 .dot").count() >= 1  # the request above is on it
    assert "images: –" not in page.text_content("#chart-p50 .chart-legend")
    describe_once(router.base_url)
    _, _, status = http("GET", router.base_url + "/status")
    count = status["traffic"]["endpoints"]["/predict_image"]["requests"]
    page.locator("#traffic-note", has_text=f"images: {count} requests").wait_for(timeout=15_000)  # live refresh
    assert page.text_content("#status-note") == ""  # an open service: nothing held back
    console_page.shot("status")
