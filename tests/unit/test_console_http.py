"""The console's routes and ``/status`` through the router's real app and middleware stack (no
workers are started: these routes never reach one). The browser tests drive a real server."""

import asyncio
import re
import tomllib
from importlib import resources
from pathlib import Path

import httpx
import pytest

from fastvlm_engine.auth import hash_key
from fastvlm_engine.config import load_settings
from fastvlm_engine.observability.http import TelemetryMiddleware
from fastvlm_engine.observability.metrics import HttpMetrics
from fastvlm_engine.router.app import create_app
from fastvlm_engine.router.console import CONTENT_SECURITY_POLICY
from fastvlm_engine.router.server import console_url

UI = resources.files("fastvlm_engine") / "ui"
ROOT = Path(__file__).resolve().parents[2]


def run(app, requests, client=("127.0.0.1", 40000)):
    """Send (method, path, headers) requests to the app in-process; returns the responses."""

    async def go():
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as http:
            return [await http.request(method, path, headers=headers) for method, path, headers in requests]

    return asyncio.run(go())


def get(app, *paths, headers=None, client=("127.0.0.1", 40000)):
    return run(app, [("GET", path, headers or {}) for path in paths], client)


def test_page_and_files_are_served_with_a_strict_policy():
    app = create_app(load_settings())
    page, script, style = get(app, "/", "/ui/app.js", "/ui/app.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    for response in (page, script, style):
        policy = response.headers["content-security-policy"]
        assert policy == CONTENT_SECURITY_POLICY
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
    assert 'src="ui/app.js"' in page.text and "<script>" not in page.text  # no inline script
    [head] = run(app, [("HEAD", "/", {})])
    assert head.status_code == 200 and head.content == b""


def test_every_console_file_is_served_and_nothing_else():
    app = create_app(load_settings())
    names = sorted(entry.name for entry in UI.iterdir() if entry.is_file())
    responses = get(app, *[f"/ui/{name}" for name in names if name != "index.html"])
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    for path in ("/ui/index.html", "/ui/../config.py", "/ui/nope.js", "/ui/", "/ui/%2e%2e/errors.py"):
        [response] = get(app, path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path


def test_package_data_ships_every_console_file():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    globs = [p.removeprefix("ui/") for p in patterns["fastvlm_engine"] if p.startswith("ui/")]
    for entry in UI.iterdir():
        assert any(Path(entry.name).match(glob) for glob in globs), f"{entry.name} would not ship in the wheel"


def test_console_sources_never_build_html_from_strings():
    for entry in UI.iterdir():
        text = entry.read_text()
        for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                       "setAttribute(\"style\"", "javascript:"):
            assert banned not in text, f"{entry.name} uses {banned}"
        if entry.name.endswith(".html"):
            assert not re.search(r"\son[a-z]+\s*=", text), "inline event handler"
            assert not re.search(r"\sstyle\s*=", text), "inline style attribute"


def test_the_console_needs_no_key_but_the_api_does():
    app = create_app(load_settings(api_keys=[hash_key("sesame")]))
    page, script = get(app, "/", "/ui/app.js")
    assert page.status_code == 200 and script.status_code == 200
    [api] = run(app, [("POST", "/predict_image", {"content-type": "application/json"})])
    assert api.status_code == 401 and api.json()["error"]["code"] == "unauthorized"


def test_the_ip_allowlist_covers_the_console():
    app = create_app(load_settings(ip_allowlist=["10.0.0.0/8"]))
    outside = get(app, "/", "/ui/app.js", client=("192.168.1.5", 40000))
    assert [r.status_code for r in outside] == [403, 403]
    assert outside[0].json()["error"]["code"] == "forbidden_ip"
    [inside] = get(app, "/", client=("10.1.2.3", 40000))
    assert inside.status_code == 200


def test_ui_false_turns_the_console_off():
    app = create_app(load_settings(ui=False))
    page, script = get(app, "/", "/ui/app.js")
    assert page.status_code == script.status_code == 404
    assert page.json()["error"]["code"] == "not_found"
    [status] = get(app, "/status")
    assert status.status_code == 200  # the status document is API, not console


def test_status_is_open_on_an_open_service_and_carries_health_and_traffic():
    app = create_app(load_settings())
    [health] = get(app, "/healthz")
    shed, status = run(app, [("POST", "/predict_image", {"content-type": "application/json"}),
                             ("GET", "/status", {})])
    assert shed.status_code == 503  # no worker is running here: shed before reading the body
    document = status.json()
    assert {k: v for k, v in document.items() if k != "traffic"}.keys() == health.json().keys()
    image = document["traffic"]["endpoints"]["/predict_image"]
    assert image["requests"] == 1 and image["errors"] == 1 and image["p50_ms"] is None
    assert document["traffic"]["endpoints"]["/summarize_video"]["requests"] == 0


@pytest.mark.parametrize("configured", ["admin", "api", "both"])
def test_status_needs_the_admin_key_wherever_keys_are_on(configured):
    admin, api = hash_key("admin-secret"), hash_key("api-secret")
    settings = load_settings(admin_keys=[admin] if configured != "api" else [],
                             api_keys=[api] if configured != "admin" else [])
    app = create_app(settings)
    anonymous, with_api_key, with_admin_key = run(app, [
        ("GET", "/status", {}), ("GET", "/status", {"x-api-key": "api-secret"}),
        ("GET", "/status", {"authorization": "Bearer admin-secret"})])
    assert anonymous.status_code == with_api_key.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"
    if configured == "api":  # no admin keys: the admin API, /status included, is off
        assert with_admin_key.status_code == 401 and "FASTVLM_ADMIN_KEYS" in with_admin_key.json()["error"]["message"]
    else:
        assert with_admin_key.status_code == 200 and "traffic" in with_admin_key.json()
    [health] = get(app, "/healthz")
    assert health.status_code == 200  # /healthz stays open for probes


def test_a_failing_observer_never_breaks_the_request():
    from prometheus_client import CollectorRegistry

    seen = []

    def broken(outcome):
        raise RuntimeError("exporter down")

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"fine"})

    wrapped = TelemetryMiddleware(app, metrics=HttpMetrics(CollectorRegistry(), "t_"),
                                  endpoints=frozenset({"/predict_image"}), observers=[broken, seen.append])
    [response] = run(wrapped, [("POST", "/predict_image", {})])
    assert response.status_code == 200 and response.text == "fine"
    [outcome] = seen
    assert (outcome.endpoint, outcome.status, outcome.code) == ("/predict_image", 200, "ok") and outcome.seconds >= 0


def test_the_printed_console_address_is_one_a_browser_can_open():
    assert console_url("127.0.0.1", 9000) == "http://127.0.0.1:9000/"
    assert console_url("0.0.0.0", 9000) == "http://127.0.0.1:9000/"
    assert console_url("::", 9000) == "http://[::1]:9000/"
    assert console_url("fd00::5", 8080) == "http://[fd00::5]:8080/"
