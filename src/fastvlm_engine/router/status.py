"""``GET /status``: the console's live view, /healthz's document plus the router's rolling series.

Request rates, error rates and latencies say more about a deployment than /healthz does, so they
are an admin matter wherever the service is protected at all: with API keys or admin keys
configured, ``/status`` needs an admin key (and with API keys but no admin keys it is off, like
the rest of the admin API). A service with neither answers everyone who can reach it anyway, so
there ``/status`` is open too; the IP allowlist applies in every case.
"""

from __future__ import annotations

from starlette.requests import Request

from ..auth import KeyRing
from .admin import require_admin
from .health import health_document
from .state import RouterState

__all__ = ["status", "status_needs_admin"]


def status_needs_admin(admin_keys: KeyRing, api_keys: KeyRing) -> bool:
    """Whether ``/status`` asks for an admin key: whenever any key protects the service."""
    return bool(admin_keys) or bool(api_keys)


async def status(request: Request) -> dict:
    """The console's status view: workers, GPUs and queues (as /healthz) plus request rate, errors
    and p50/p99 latency per endpoint over the last minutes. Needs an admin key when keys are on."""
    if status_needs_admin(request.app.state.admin_keys, request.app.state.api_keys):
        require_admin(request)
    state: RouterState = request.app.state.router
    return {**health_document(state), "traffic": state.live.snapshot()}
