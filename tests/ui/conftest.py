"""The web console in a real browser: Debian's Chromium driven headless by Playwright, against a
real ``fastvlm serve`` on the tiny model. Screenshots land in ``tests/artifacts/ui/`` (printed at
the end of the run).

Playwright's waits that take a JavaScript string (``wait_for_function``) evaluate it inside the
page, which the console's CSP forbids (no eval) — so the tests wait on locators instead, and the
page keeps its real policy throughout (no ``bypass_csp``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pytest

from tests.helpers.procs import Proc, start_router, wait_workers_ready

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
_ANSWERED_ERROR = "Failed to load resource: the server responded with a status of"
"""Chromium logs every non-2xx fetch; an API error the test provoked is not a page error."""
SAMPLE_IMAGE = Path(str(resources.files("fastvlm_engine") / "sample_media" / "coffee.jpg"))



def pytest_terminal_summary(terminalreporter) -> None:
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"web console screenshots: {ARTIFACTS}")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium per test module (Chromium writes to $HOME: a temporary one)."""
    from playwright.sync_api import sync_playwright

    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError("Debian's chromium is needed at /usr/bin/chromium (make test installs it)")
    home = tmp_path_factory.mktemp("chromium-home")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                             env={**os.environ, "HOME": str(home)})
        try:
            yield browser
        finally:
            browser.close()


def serve(tmp_path: Path, model_dir: str, **settings: object) -> Iterator[Proc]:
    """A real router with one worker on the tiny model; stopped by process group afterwards."""
    proc = start_router(tmp_path, model_dir, max_workers=1, **settings)
    try:
        wait_workers_ready(proc, 1)
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="package")
def router(tmp_path_factory, tiny_model_dir) -> Iterator[Proc]:
    """The open service most console tests share (two simulated GPUs, so the GPU panel has rows)."""
    yield from serve(tmp_path_factory.mktemp("ui-router"), tiny_model_dir, simulate_gpus="2x16GiB")


@dataclass
class Console:
    """One page of the console, with every script error and console error it produced."""

    page: object
    base_url: str
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def open_console(browser, base_url: str, *, width: int = 1200, height: int = 900, hash_: str = "") -> Console:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
    page = context.new_page()
    console = Console(page=page, base_url=base_url)
    page.on("pageerror", lambda exc: console.errors.append(f"page error: {exc}"))
    page.on("console", lambda msg: console.errors.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" and not msg.text.startswith(_ANSWERED_ERROR) else None)
    page.goto(base_url + "/" + hash_)
    page.locator("#service").filter(has_text="mode").wait_for()  # the first /healthz has been read
    return console


@pytest.fixture
def console_page(browser, router) -> Iterator[Console]:
    """A fresh context (own sessionStorage and clipboard) on the shared router; it must end clean."""
    console = open_console(browser, router.base_url)
    try:
        yield console
    finally:
        console.page.context.close()
    assert not console.errors, console.errors


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body, for comparing with what the page showed."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        if data:
            events.append((name, "\n".join(data)))
    return events


def record_text_changes(page, selector: str) -> None:
    """Record every text the element shows, in order, into window.__texts (read back with
    ``page.evaluate``; Playwright's evaluate is not page script, so the CSP allows it)."""
    page.evaluate("""(selector) => {
        const node = document.querySelector(selector);
        window.__texts = [];
        new MutationObserver((records) => {
            for (const record of records) {
                for (const added of record.addedNodes) window.__texts.push(added.textContent);
                if (record.type === 'characterData') window.__texts.push(record.target.data);
            }
        }).observe(node, {childList: true, characterData: true, subtree: true});
    }""", selector)
