"""Admin calls (hashed admin keys; disabled when none is configured)."""

from __future__ import annotations

import logging

from starlette.requests import Request

from ..auth import KeyRing, presented_key
from ..errors import HostNotFound, Unauthorized, WorkerNotFound
from .state import RouterState

__all__ = ["drain_host", "release_worker", "require_admin", "undrain_host"]

log = logging.getLogger(__name__)


def require_admin(request: Request) -> str:
    """The admin key's id, or 401."""
    admins: KeyRing = request.app.state.admin_keys
    if not admins:
        raise Unauthorized("The admin API is disabled: configure FASTVLM_ADMIN_KEYS.")
    who = admins.verify(presented_key(request.headers))
    if who is None:
        raise Unauthorized("A valid admin key is required.")
    return who


async def release_worker(worker_id: str, request: Request) -> dict:
    """Admin: release a quarantined worker slot (starts a fresh process)."""
    who = require_admin(request)
    state: RouterState = request.app.state.router
    if state.supervisor is None:
        raise WorkerNotFound("This router runs no workers of its own; release a node's worker on its node.")
    worker = await state.supervisor.release(worker_id)
    log.warning("worker %s released from quarantine by admin key %s", worker_id, who)
    return {"worker": worker.snapshot()}


async def drain_host(host: str, request: Request) -> dict:
    """Admin: stop sending new requests to a host's workers (every router sharing the registry
    follows); in-flight requests finish. ``DELETE`` undoes it."""
    return await _set_drained(host, request, drained=True)


async def undrain_host(host: str, request: Request) -> dict:
    """Admin: let a drained host take new requests again."""
    return await _set_drained(host, request, drained=False)


async def _set_drained(host: str, request: Request, *, drained: bool) -> dict:
    who = require_admin(request)
    state: RouterState = request.app.state.router
    remote = state.endpoints.remote
    if remote is None:
        raise HostNotFound("Hosts can be drained only through a registry (set FASTVLM_REGISTRY_URL).")
    if host not in {e.host for e in remote.endpoints()} and host not in remote.drained_hosts():
        if host in state.endpoints.hosts():  # this router's own workers, which no registry lists
            raise HostNotFound(f"{host!r} is this router's own workers, not a registered host: "
                               "stopping the router (SIGTERM) drains them.")
        raise HostNotFound(f"No host named {host!r} is registered.")
    await remote.set_drained(host, drained)
    log.warning("host %s %s by admin key %s", host, "drained" if drained else "undrained", who)
    return {"host": host, "drained": drained}
