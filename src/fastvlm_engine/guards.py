"""Who may call: pure-ASGI guards in front of the router and the workers.

``AccessGuard`` (router): the IP allowlist covers every path except, by default, ``/healthz``
and ``/readyz``; ``X-Forwarded-For`` is believed only from ``FASTVLM_TRUSTED_PROXIES`` (the
servers run with uvicorn's own proxy-header handling off). The API endpoints then need a valid
API key (when any is configured), and a key over its rate gets 429 with ``Retry-After``. The
resolved address and key id are left in the request's state for everything downstream (logs,
the retry-after estimate's notion of "one client").

``InternalTokenGuard`` (worker): a worker spawned by the router answers only requests carrying
the token the router gave that process, so an exposed worker port is useless to anyone else.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import INTERNAL_TOKEN_HEADER, KeyRing, RateLimiter, presented_key
from .errors import EngineError, ForbiddenIP, RateLimited, Unauthorized
from .web import error_response, request_id_of

__all__ = ["INTERNAL_TOKEN_HEADER", "AccessGuard", "InternalTokenGuard", "client_address"]

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _inside(address: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(scope: Scope, trusted: Sequence[IPNetwork]) -> IPAddress | None:
    """The caller's address: the peer, or — behind trusted proxies — the right-most untrusted
    hop of ``X-Forwarded-For``.

    Walking from the right, each trusted hop vouches for the one to its left; the first address
    that is not a trusted proxy is the client. Hops to its left were written by the client itself
    and are ignored. When every hop claims to be a trusted proxy, no trusted party vouched for a
    client, so the request is attributed to the peer that connected — never to the left-most
    hop, which a client (or a proxy that passes the header through) could have written.
    """
    peer = _address(scope["client"][0]) if scope.get("client") else None
    if peer is None or not _inside(peer, trusted):
        return peer
    forwarded = ",".join(v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-for")
    hops = [_address(h) for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if hop is None:
            return None  # a malformed hop from a trusted proxy: trust nothing
        if not _inside(hop, trusted):
            return hop
    return peer


class AccessGuard:
    def __init__(self, app: ASGIApp, *, allowlist: Iterable[str], trusted_proxies: Iterable[str],
                 keys: KeyRing, default_rate_per_minute: float, protected: frozenset[str],
                 open_paths: frozenset[str], protected_prefixes: tuple[str, ...] = ()) -> None:
        self.app = app
        self.allowlist = _networks(allowlist)
        self.trusted = _networks(trusted_proxies)
        self.keys = keys
        self.default_rate = default_rate_per_minute
        self.limiter = RateLimiter()
        self.protected = protected
        self.protected_prefixes = protected_prefixes
        """Every path under these (e.g. ``/v1/``) is protected too, whether or not it exists."""
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            self._check(scope)
        except EngineError as exc:
            await error_response(exc, request_id_of(scope))(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope) -> None:
        path = scope["path"]
        address = client_address(scope, self.trusted)
        state = scope.setdefault("state", {})
        state["client_ip"] = str(address) if address is not None else None
        if self.allowlist and path not in self.open_paths:
            if address is None or not _inside(address, self.allowlist):
                raise ForbiddenIP()
        if not self.keys or not (path in self.protected or path.startswith(self.protected_prefixes)):
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"authorization", b"x-api-key")}
        identity = self.keys.verify(presented_key(headers))
        if identity is None:
            raise Unauthorized("A valid API key is required (Authorization: Bearer <key> or X-API-Key).")
        state["api_key_id"] = identity
        wait = self.limiter.take(identity, self.keys.rate_for(identity, self.default_rate))
        if wait > 0:
            raise RateLimited(retry_after_sec=wait)


class InternalTokenGuard:
    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            presented = next((v for k, v in scope["headers"] if k == INTERNAL_TOKEN_HEADER.lower().encode()), b"")
            if not hmac.compare_digest(presented, self.token):
                error = Unauthorized("This worker only answers the router that started it.")
                await error_response(error, request_id_of(scope))(scope, receive, send)
                return
        await self.app(scope, receive, send)
