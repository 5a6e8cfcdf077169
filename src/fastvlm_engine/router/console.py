"""The web console: ``GET /`` and its static files from the package's ``ui/`` folder.

The files are read once, when the app is built, into a fixed table; a request only ever looks a
name up in that table, so no request touches the file system or can name a path. Every console
response carries a strict Content-Security-Policy: scripts and styles only from this origin (no
inline script, no ``style`` attributes, no eval), no plugins, no framing, and Trusted Types with
no policy at all, so the page cannot hand a string to an HTML sink even by mistake. Thumbnails
arrive as ``data:`` JPEGs and previews of the user's own files as ``blob:`` URLs; nothing is
fetched from anywhere but this origin.

The page and its files need no API key (the page asks for one and sends it with its API calls);
the IP allowlist covers them like every other path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CONTENT_SECURITY_POLICY", "SECURITY_HEADERS", "console_routes", "load_console"]

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data: blob:",
    "media-src 'self' blob:",
    "connect-src 'self'",
    "font-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
    "object-src 'none'",
    "require-trusted-types-for 'script'",
    "trusted-types 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cache-Control": "no-cache",
}
"""Headers on every console response (the API's JSON responses are not pages and keep their own)."""

_MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8"}
_NAME = re.compile(r"^[a-z][a-z0-9_-]*\.(html|js|css)$")
_PACKAGE = "fastvlm_engine"
_FOLDER = "ui"

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str


def load_console() -> dict[str, _Asset]:
    """Every file of the console by URL path (``/`` is index.html, the rest under ``/ui/``).

    Raises FileNotFoundError when the package was installed without its console files."""
    folder = resources.files(_PACKAGE) / _FOLDER
    assets: dict[str, _Asset] = {}
    for entry in folder.iterdir():
        if entry.is_file() and _NAME.match(entry.name):
            suffix = entry.name[entry.name.rindex("."):]
            asset = _Asset(entry.read_bytes(), _MEDIA_TYPES[suffix])
            assets["/" if entry.name == "index.html" else f"/{_FOLDER}/{entry.name}"] = asset
    if "/" not in assets:
        raise FileNotFoundError(f"the console's index.html is missing from {_PACKAGE}/{_FOLDER}")
    return assets


def _handler(asset: _Asset) -> Handler:
    async def serve(request: Request) -> Response:
        return Response(asset.body, media_type=asset.media_type, headers=SECURITY_HEADERS)

    return serve


def console_routes() -> list[tuple[str, Handler]]:
    """(path, handler) for the page and each of its files, read now."""
    return [(path, _handler(asset)) for path, asset in sorted(load_console().items())]
