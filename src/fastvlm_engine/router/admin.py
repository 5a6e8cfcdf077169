"""Admin calls (hashed admin keys; disabled when none is configured)."""

from __future__ import annotations

import logging

from starlette.requests import Request

from ..auth import KeyRing, presented_key
from ..errors import Unauthorized
from .state import RouterState

__all__ = ["release_worker", "require_admin"]

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
    worker = await state.pool.release(worker_id)
    log.warning("worker %s released from quarantine by admin key %s", worker_id, who)
    return {"worker": worker.snapshot()}
