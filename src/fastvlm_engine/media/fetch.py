"""Fetching client media from an http(s) URL without letting the URL reach the host's own network.

Every hop (the client's URL and each redirect) goes through the same steps:

1. :func:`~.fetch_policy.check_url`: scheme, no user info, port, host shape, host allow-list.
2. One resolution (:class:`~.resolver.HostResolver`); *every* address must pass
   :func:`~.addresses.address_refusal`, so an answer that mixes a public and an internal
   address is refused whole. IP-literal hosts are checked as they are.
3. The request goes through aiohttp with a :class:`~.resolver.PinnedResolver` that knows only
   the checked addresses, so no second lookup can rebind the name; ``Host`` and TLS SNI keep
   the name. No proxy from the environment (``trust_env=False``), no cookies, no keep-alive.
4. Redirects are followed here, never by aiohttp, each one checked from step 1.

The body is streamed: a Content-Length over the limit is refused before reading, a body that
passes the limit is refused at that chunk, compressed bodies are refused (we ask for identity),
and the first bytes must be the requested kind of media before anything reaches the sink. One
deadline covers the whole fetch. aiohttp's exceptions are translated here and nowhere else,
into messages that name the host the client sent, never an address DNS returned. Each failed
fetch writes one log line with a ``fetch_reason`` (a warning when the policy refused it). Neither
messages nor logs carry a query string or user info; resolved addresses appear only in the log.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
from yarl import URL

from .. import __version__
from ..errors import EngineError, FetchFailed, MediaTooLarge, UnsupportedMedia, UrlNotAllowed
from .addresses import IPAddress, address_refusal
from .fetch_policy import FetchPolicy, FetchRefused, Target, check_url, describe_url
from .images import sniff_image_format
from .resolver import HostResolver, PinnedResolver, SystemResolver

__all__ = ["ByteSink", "FetchedMedia", "MediaFetcher", "MediaKind"]

log = logging.getLogger(__name__)

MediaKind = Literal["image", "video"]

SNIFF_BYTES = 512
"""Bytes collected before the content check (MPEG-TS needs two sync bytes 188 apart)."""
CHUNK_BYTES = 64 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = f"fastvlm-engine/{__version__} (media fetch)"


class ByteSink(Protocol):
    """Where the body goes (e.g. an ``intake.spool.Spool``); it may raise its own too-large error."""

    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class FetchedMedia:
    """What a successful fetch wrote into the sink."""

    url: str
    """The final URL after redirects (fragment removed; it may carry a query string: do not log it)."""
    content_type: str | None
    """The server's declared media type (lower case, no parameters), unverified; None if it sent none."""
    format: str
    """What the first bytes are: an image format (``PNG``, ``JPEG`` ...) or ``video``."""
    size: int
    """Bytes written into the sink."""
    redirects: int


@dataclass
class _Progress:
    """Where a fetch is, for its one log line."""

    client_host: str = ""
    hop: int = 0
    url: str = ""


class MediaFetcher:
    """Fetches media by URL under a :class:`FetchPolicy`; one per process, holds no connections between fetches.

    ``resolver`` replaces the system's DNS (tests count lookups with it); ``ssl_context`` replaces
    the system trust store for https (tests trust their own certificate with it).
    """

    def __init__(self, policy: FetchPolicy, *, resolver: HostResolver | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.policy = policy
        self._resolver: HostResolver = resolver or SystemResolver()
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True

    def check(self, url: str) -> None:
        """Refuse a URL the policy forbids (UrlNotAllowed) without any network traffic.

        For callers that want to reject a request before admitting it; :meth:`fetch` checks again.
        """
        try:
            check_url(url, self.policy)
        except FetchRefused as refused:
            self._log_failure(refused, _Progress(url=describe_url(url)))
            raise refused.error from None

    async def fetch(self, url: str, *, kind: MediaKind, max_bytes: int, sink: ByteSink) -> FetchedMedia:
        """Stream the media at ``url`` into ``sink``; raises UrlNotAllowed, FetchFailed, MediaTooLarge,
        UnsupportedMedia, or the sink's own error."""
        if kind not in ("image", "video"):
            raise ValueError(f"kind must be 'image' or 'video', not {kind!r}")
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        progress = _Progress(url=describe_url(url))
        try:
            async with asyncio.timeout(self.policy.timeout_s):
                return await self._follow(url, kind, max_bytes, sink, progress)
        except FetchRefused as refused:
            self._log_failure(refused, progress)
            raise refused.error from None
        except TimeoutError:
            timed_out = FetchRefused(FetchFailed(f"Fetching the media from '{progress.client_host}' took longer "
                                                 f"than {self.policy.timeout_s:g} s."), "timeout")
            self._log_failure(timed_out, progress)
            raise timed_out.error from None
        except EngineError as exc:  # the sink's own limit
            self._log_failure(FetchRefused(exc, exc.code), progress)
            raise

    async def _follow(self, url: str, kind: MediaKind, max_bytes: int, sink: ByteSink,
                      progress: _Progress) -> FetchedMedia:
        target = check_url(url, self.policy)
        progress.client_host = target.host
        sniff = await _sniffer(kind)
        pins = PinnedResolver()
        connector = aiohttp.TCPConnector(resolver=pins, use_dns_cache=False, force_close=True, limit=1,
                                         ssl=self._ssl)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.policy.connect_timeout_s)
        async with aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                         cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout) as session:
            while True:
                progress.url = target.describe()
                if target.address is None:
                    pins.pin(target.url.raw_host or "", await self._checked_addresses(target, progress))
                else:
                    self._check_address(target.address, progress)
                with _translate(progress.client_host, target.port):
                    async with session.get(target.url, headers=_headers(kind), allow_redirects=False) as response:
                        if response.status in _REDIRECTS:
                            target = self._next_hop(target, response, progress)
                            continue
                        return await _receive(response, target, kind=kind, sniff=sniff, max_bytes=max_bytes,
                                              sink=sink, host=progress.client_host, redirects=progress.hop)

    async def _checked_addresses(self, target: Target, progress: _Progress) -> list[IPAddress]:
        """Resolve the target's host once and check every address it has."""
        try:
            addresses = await self._resolver.resolve(target.url.raw_host or "", target.port)
        except OSError:
            addresses = []
        if not addresses:
            raise FetchRefused(FetchFailed(f"The host name '{progress.client_host}' could not be resolved."),
                               "resolve_failed", log_detail=f"host={target.host}")
        for address in addresses:
            self._check_address(address, progress)
        return addresses

    def _check_address(self, address: IPAddress, progress: _Progress) -> None:
        why = address_refusal(address, allow_private=self.policy.allow_private)
        if why is not None:
            where = f"'{progress.client_host}' redirected to a host that resolves" if progress.hop else \
                f"The host '{progress.client_host}' resolves"
            raise FetchRefused(UrlNotAllowed(f"{where} to an address this server does not fetch from (only "
                                             f"public addresses are allowed)."),
                               "address_refused", log_detail=f"address={address} ({why})")

    def _next_hop(self, target: Target, response: aiohttp.ClientResponse, progress: _Progress) -> Target:
        host = progress.client_host
        if progress.hop >= self.policy.max_redirects:
            raise FetchRefused(FetchFailed(f"'{host}' redirected more than {self.policy.max_redirects} times."),
                               "too_many_redirects")
        location = response.headers.get("Location", "")
        try:
            following = target.url.join(URL(location.strip())) if location.strip() else None
        except (ValueError, TypeError):
            following = None
        if following is None:
            raise FetchRefused(FetchFailed(f"'{host}' answered with a redirect that has no valid Location."),
                               "bad_redirect")
        progress.hop += 1
        progress.url = describe_url(following)
        return check_url(following, self.policy, redirected_from=host)

    @staticmethod
    def _log_failure(refused: FetchRefused, progress: _Progress) -> None:
        """One line per fetch that did not succeed: a warning when the policy refused it (a possible SSRF
        attempt), info when an allowed URL could not be read."""
        refused_by_policy = isinstance(refused.error, UrlNotAllowed)
        log.log(logging.WARNING if refused_by_policy else logging.INFO,
                "media fetch %s: %s", "refused" if refused_by_policy else "failed", refused.reason,
                extra={"fetch_reason": refused.reason, "fetch_url": progress.url, "fetch_hop": progress.hop,
                       "fetch_code": refused.error.code, "fetch_detail": refused.log_detail or None})


def _headers(kind: MediaKind) -> dict[str, str]:
    return {"Accept": f"{kind}/*;q=1.0, */*;q=0.1", "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}


async def _receive(response: aiohttp.ClientResponse, target: Target, *, kind: MediaKind,
                   sniff: Callable[[bytes], str | None], max_bytes: int, sink: ByteSink, host: str,
                   redirects: int) -> FetchedMedia:
    """Check the answer, then stream its body into the sink within ``max_bytes``."""
    if response.status != 200:
        raise FetchRefused(FetchFailed(f"'{host}' answered HTTP {response.status} instead of the media."),
                           "http_status", log_detail=f"status={response.status}")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise FetchRefused(FetchFailed(f"'{host}' sent a compressed body ({encoding[:32]}); only uncompressed "
                                       "media is accepted."), "content_encoding")
    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise FetchRefused(MediaTooLarge(f"The media at '{host}' is {declared} bytes; the limit is {max_bytes}."),
                           "too_large")
    head = bytearray()
    media_format: str | None = None
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise FetchRefused(MediaTooLarge(f"The media at '{host}' is larger than the limit of {max_bytes} "
                                             "bytes."), "too_large")
        if media_format is None:
            head += chunk
            if len(head) < SNIFF_BYTES:
                continue
            media_format = _content_check(bytes(head), sniff, kind, host)
            chunk, head = bytes(head), bytearray()
        sink.write(chunk)
    if media_format is None:  # the whole body was shorter than SNIFF_BYTES
        media_format = _content_check(bytes(head), sniff, kind, host)
        sink.write(bytes(head))
    return FetchedMedia(url=str(target.url), content_type=_declared_type(response), format=media_format,
                        size=size, redirects=redirects)


async def _sniffer(kind: MediaKind) -> Callable[[bytes], str | None]:
    """The function that names the media format of a body's first bytes, or None when they are not ``kind``."""
    if kind == "image":
        return sniff_image_format
    # The video package loads PyAV (about 0.3 s); a router that only fetches images never pays for it, and
    # the first video fetch imports it off the event loop.
    name = f"{__package__.rsplit('.', 1)[0]}.video.source"
    source = sys.modules.get(name) or await asyncio.to_thread(importlib.import_module, name)
    looks_like_video = source.looks_like_video_container
    return lambda head: "video" if looks_like_video(head) else None


def _content_check(head: bytes, sniff: Callable[[bytes], str | None], kind: MediaKind, host: str) -> str:
    """The media format the first bytes show; UnsupportedMedia when they are not ``kind``."""
    if not head:
        raise FetchRefused(UnsupportedMedia(f"The answer from '{host}' has an empty body."), "wrong_content")
    media_format = sniff(head)
    if media_format is None:
        wanted = "image (JPEG, PNG, GIF, WebP, BMP or TIFF)" if kind == "image" else "video container"
        raise FetchRefused(UnsupportedMedia(f"The content at '{host}' is not a supported {wanted}."),
                           "wrong_content")
    return media_format


def _declared_type(response: aiohttp.ClientResponse) -> str | None:
    if "Content-Type" not in response.headers:
        return None
    return response.content_type.lower()[:128] or None


@contextmanager
def _translate(host: str, port: int) -> Iterator[None]:
    """Turn aiohttp's exceptions for one hop into FetchFailed with fixed, address-free messages.

    aiohttp's own messages name the connected IP address, so none of them reaches a client.
    """
    try:
        yield
    except aiohttp.ClientError as exc:
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            message, reason = f"The TLS certificate of '{host}' could not be verified.", "tls_certificate"
        elif isinstance(exc, aiohttp.ClientSSLError):
            message, reason = f"The TLS handshake with '{host}' failed.", "tls"
        elif isinstance(exc, aiohttp.ConnectionTimeoutError):
            message, reason = f"Connecting to '{host}' on port {port} timed out.", "connect_timeout"
        elif isinstance(exc, aiohttp.ClientConnectorError):
            message, reason = f"Could not connect to '{host}' on port {port}.", "connect_failed"
        elif isinstance(exc, aiohttp.ClientResponseError):
            message, reason = f"'{host}' sent an invalid HTTP response.", "bad_response"
        elif isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
            message, reason = f"The connection to '{host}' closed before the media was complete.", "disconnected"
        else:
            message, reason = f"Fetching the media from '{host}' failed.", "client_error"
        raise FetchRefused(FetchFailed(message), reason, log_detail=type(exc).__name__) from exc
