"""Router → worker request authentication across hosts: HMAC-signed requests with a replay window.

What it protects. A worker (or node) port reachable on a network answers only two kinds of
caller: the supervisor that spawned it on the same host (the per-process token it was given,
``auth.INTERNAL_TOKEN_HEADER``), and any process holding ``FASTVLM_CLUSTER_SECRET`` (a router).
Every request of the second kind is signed: HMAC-SHA256, with a key derived from the secret for
this purpose only, over

    fastvlm-cluster-request-v1 \\n METHOD \\n target \\n timestamp \\n nonce \\n request id \\n body length

where ``target`` is the path with its query exactly as sent (percent-encoded), ``timestamp`` is
unix seconds, ``nonce`` is 128 random bits in hex, the request id is the ``X-Request-ID`` sent
with it, and the body length is the declared ``Content-Length``, ``-`` for a chunked (streamed)
body, or ``0`` for a request with neither. A captured request cannot be replayed: the timestamp
must be within ``window_s`` of the worker's clock (either direction), and a nonce is accepted
once while its timestamp is inside the window (:mod:`.replay`). Nothing is learnt from a refusal:
every failure is the same 401, and the reason goes only to the worker's log.

What it does not protect. Nothing is encrypted, and the body is not signed (only its declared
length is): an attacker *on the path* between router and worker can read requests and answers,
and could substitute a body of the same length in a request they hold up. Run the cluster on a
private network, or put TLS between hosts (a TLS-terminating proxy in front of each node); the
signature then still decides who may call. Clocks must agree within the window (NTP).

Why HMAC and not mutual TLS. One secret distributed once (the same way as the registry's
password) instead of a CA, a certificate per node and their rotation; it works with the router's
existing pooled aiohttp session and plain HTTP keep-alive; and the same secret also signs the
registry's entries, so one credential covers both who may receive traffic and who may call.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import INTERNAL_TOKEN_HEADER
from ..errors import Unauthorized
from ..headers import CLUSTER_NONCE_HEADER, CLUSTER_SIGNATURE_HEADER, CLUSTER_TIME_HEADER, REQUEST_ID_HEADER
from ..web import error_response, request_id_of
from .lograte import LogLimiter, untrusted
from .replay import DEFAULT_MAX_NONCES, NonceCache
from .secret import derive_key, sign, signature_matches

__all__ = ["ClusterGuard", "ClusterSigner", "ClusterVerifier", "canonical_request", "request_target"]

log = logging.getLogger(__name__)

VERSION = "fastvlm-cluster-request-v1"
_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]{0,8191}")  # visible ASCII: what goes on the request line
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")  # the ids the worker's RequestIdMiddleware keeps
_STAMP = re.compile(r"\d{1,12}(\.\d{1,6})?")
_NONCE = re.compile(r"[0-9a-f]{32}")
_LENGTH = re.compile(r"\d{1,19}|-")


def canonical_request(method: str, target: str, stamp: str, nonce: str, request_id: str, body_length: str) -> bytes:
    """The signed string (see the module docstring); every part is checked to hold no separator."""
    return "\n".join((VERSION, method, target, stamp, nonce, request_id, body_length)).encode("ascii")


def _declared_length(headers: Mapping[str, str]) -> str:
    if "content-length" in headers:
        return headers["content-length"].strip()
    return "-" if "transfer-encoding" in headers else "0"


class ClusterSigner:
    """Signs the requests a router sends to workers on other hosts."""

    def __init__(self, secret: bytes, *, clock: Callable[[], float] = time.time) -> None:
        self._key = derive_key(secret, "request")
        self._clock = clock

    def headers(self, method: str, path: str, *, body_length: int | None, request_id: str) -> dict[str, str]:
        """Headers to send with the request (``X-Request-ID`` included, as signed).

        ``path`` is the exact request target (path and query, percent-encoded) and must go on the
        wire unchanged: with aiohttp, pass ``yarl.URL(base + path, encoded=True)``, since yarl
        otherwise re-normalises percent-encoding (``%2F`` in a query becomes ``/``) and the worker
        would refuse the request. ``body_length`` is the Content-Length the request will declare
        (0 for no body), or None for a chunked body. Raises ValueError for a value that cannot be
        sent as signed.
        """
        method = method.upper()
        if not _METHOD.fullmatch(method):
            raise ValueError(f"not an HTTP method: {method!r}")
        if not _TARGET.fullmatch(path):
            raise ValueError("the path must start with '/' and be visible ASCII (percent-encode the rest)")
        if not _REQUEST_ID.fullmatch(request_id):
            raise ValueError("the request id must be 1-128 of letters, digits and '._:-'")
        if body_length is not None and body_length < 0:
            raise ValueError(f"the body length cannot be negative, got {body_length}")
        stamp = f"{self._clock():.3f}"
        nonce = secrets.token_hex(16)
        length = "-" if body_length is None else str(body_length)
        signature = sign(self._key, canonical_request(method, path, stamp, nonce, request_id, length))
        return {REQUEST_ID_HEADER: request_id, CLUSTER_TIME_HEADER: stamp, CLUSTER_NONCE_HEADER: nonce,
                CLUSTER_SIGNATURE_HEADER: signature}


class ClusterVerifier:
    """Checks signed requests on a worker: signature, timestamp window and nonce reuse."""

    def __init__(self, secret: bytes, window_s: float, *, clock: Callable[[], float] = time.time,
                 max_nonces: int = DEFAULT_MAX_NONCES) -> None:
        if window_s <= 0:
            raise ValueError(f"the replay window must be positive, got {window_s}")
        self._key = derive_key(secret, "request")
        self.window_s = window_s
        self._clock = clock
        self.nonces = NonceCache(window_s, max_nonces)

    def check(self, method: str, path: str, headers: Mapping[str, str]) -> str | None:
        """None when the request is validly signed (its nonce is then used up), else a short reason for
        the log. ``headers`` may use any letter case; nothing of the secret or signature is echoed."""
        lower = {key.lower(): value for key, value in headers.items()}
        stamp = lower.get(CLUSTER_TIME_HEADER.lower(), "")
        nonce = lower.get(CLUSTER_NONCE_HEADER.lower(), "")
        signature = lower.get(CLUSTER_SIGNATURE_HEADER.lower(), "")
        if not (stamp or nonce or signature):
            return "no cluster signature"
        request_id = lower.get(REQUEST_ID_HEADER.lower(), "")
        length = _declared_length(lower)
        method = method.upper()
        if not (_STAMP.fullmatch(stamp) and _NONCE.fullmatch(nonce) and _REQUEST_ID.fullmatch(request_id)
                and _LENGTH.fullmatch(length) and _METHOD.fullmatch(method) and _TARGET.fullmatch(path)):
            return "malformed cluster signature headers"
        now = self._clock()
        if abs(now - float(stamp)) > self.window_s:
            return "timestamp outside the replay window (are the hosts' clocks in sync?)"
        if not signature_matches(self._key, canonical_request(method, path, stamp, nonce, request_id, length),
                                 signature):
            return "bad signature (wrong secret, or the request was altered)"
        if not self.nonces.admit(nonce, float(stamp), now):
            return "nonce already used (a replayed request)"
        return None


def request_target(scope: Scope) -> str:
    """The path and query of an ASGI request as they were sent (``raw_path`` when the server gives it)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")
    query = scope.get("query_string", b"")
    return f"{path}?{query.decode('latin-1')}" if query else path


class ClusterGuard:
    """Pure-ASGI guard of a worker reachable from other hosts: the spawning supervisor's token or a valid
    cluster signature, otherwise 401 ``unauthorized``. Replaces InternalTokenGuard when a secret is set."""

    def __init__(self, app: ASGIApp, *, verifier: ClusterVerifier, local_token: str | None) -> None:
        self.app = app
        self.verifier = verifier
        self.local_token = local_token.encode() if local_token else None
        self._log_limit = LogLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self._refusal(scope)
        if reason is None:
            await self.app(scope, receive, send)
            return
        skipped = self._log_limit.allow()
        if skipped is not None:
            peer = scope.get("client") or ("?", 0)
            log.warning("refused a request from %s: %s", untrusted(peer[0]), reason,
                        extra={"refused_since_last_log": skipped, "path": untrusted(scope.get("path", ""))})
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        error = Unauthorized("This worker answers only its own supervisor and the cluster's routers.")
        await error_response(error, request_id_of(scope))(scope, receive, send)

    def _refusal(self, scope: Scope) -> str | None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if self.local_token is not None:
            presented = headers.get(INTERNAL_TOKEN_HEADER.lower())
            if presented is not None and hmac.compare_digest(presented.encode("latin-1"), self.local_token):
                return None
        return self.verifier.check(scope["method"] if scope["type"] == "http" else "GET", request_target(scope),
                                   headers)
