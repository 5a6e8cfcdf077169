"""What a media URL may be, checked before any network traffic and again for every redirect.

The checks run on the same parsed ``yarl.URL`` object that is later handed to aiohttp, so the
URL that was judged is the URL that is requested (no second parser that could read it
differently). Refusals carry a short ``reason`` for the one log line a refused fetch writes,
and a client message that names only what the client sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from yarl import URL

from ..errors import EngineError, UrlNotAllowed
from .addresses import IPAddress
from .hosts import HostPattern, HostShapeError, host_address, normalise_name, parse_host_pattern

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["HOSTS_SETTING", "MAX_URL_CHARS", "FetchPolicy", "FetchRefused", "Target", "check_url", "describe_url"]

MAX_URL_CHARS = 8192
"""Longest URL accepted; longer ones are refused before parsing."""

HOSTS_SETTING = "FASTVLM_FETCH_URL_HOSTS"
_SCHEMES = ("http", "https")


class FetchRefused(Exception):
    """A fetch stopped: ``error`` is what the client gets, ``reason`` the token the log line carries."""

    def __init__(self, error: EngineError, reason: str, *, log_detail: str = "") -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason
        self.log_detail = log_detail
        """Server-side context (a resolved address, a redirect's host); never shown to the client."""


@dataclass(frozen=True)
class FetchPolicy:
    """Which URLs may be fetched and how long a fetch may take; build it with :meth:`from_settings`."""

    hosts: tuple[HostPattern, ...]
    allow_private: bool
    timeout_s: float
    connect_timeout_s: float
    max_redirects: int
    allowed_ports: frozenset[int]

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        """The policy the ``fetch_*`` settings describe."""
        return cls(
            hosts=tuple(parse_host_pattern(entry) for entry in settings.fetch_url_hosts),
            allow_private=settings.fetch_allow_private,
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allowed_ports=frozenset(settings.fetch_allowed_ports),
        )

    @property
    def enabled(self) -> bool:
        """False when no host is allowed: every URL is refused."""
        return bool(self.hosts)


@dataclass(frozen=True)
class Target:
    """A URL that passed the checks, ready to be resolved and requested."""

    url: URL
    """What is requested: the parsed URL without its fragment."""
    host: str
    """The host as the URL names it (IDNA, lower case), for messages and logs."""
    port: int
    address: IPAddress | None
    """Set when the host is an IP literal (nothing to resolve)."""

    def describe(self) -> str:
        """The URL as log lines show it (see :func:`describe_url`)."""
        return describe_url(self.url)


def describe_url(url: URL | str) -> str:
    """``scheme://host:port/path`` for logs: never a user name, password, query string or fragment.

    Other schemes show only their name (a ``file:`` URL's path is nobody's business in a log).
    """
    try:
        parsed = URL(url) if isinstance(url, str) else url
    except (ValueError, TypeError):
        return "(not a valid URL)"
    if parsed.scheme not in _SCHEMES or not parsed.raw_host:
        return f"({parsed.scheme[:16] or 'relative'} URL)"
    host = f"[{parsed.raw_host}]" if ":" in parsed.raw_host else parsed.raw_host
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"{parsed.scheme}://{host}{port}{parsed.raw_path[:200]}"


def _refuse(message: str, reason: str, *, log_detail: str = "") -> FetchRefused:
    return FetchRefused(UrlNotAllowed(message), reason, log_detail=log_detail)


def check_url(url: URL | str, policy: FetchPolicy, *, redirected_from: str | None = None) -> Target:
    """Parse and check one URL (the client's, or a redirect's resolved Location); raises FetchRefused.

    ``redirected_from`` is the host the client named when ``url`` comes from a redirect: messages
    then name that host, never the redirect's target, which came from a server, not the client.
    """
    origin = redirected_from
    if isinstance(url, str):
        if not policy.enabled:
            raise _refuse(f"Fetching media by URL is turned off on this server; the operator allows hosts with "
                          f"{HOSTS_SETTING} (e.g. 'images.example.com,*.cdn.example.com'). Send the media as "
                          f"base64 or an upload instead.", "fetching_off")
        if len(url) > MAX_URL_CHARS:
            raise _refuse(f"The URL is longer than {MAX_URL_CHARS} characters.", "url_too_long")
        try:
            parsed = URL(url.strip())
            empty_userinfo = "@" in urlsplit(url.strip()).netloc
        except (ValueError, TypeError):
            raise _refuse("The media URL is not a valid http(s) URL.", "unparseable") from None
    else:
        parsed, empty_userinfo = url, False
    said = f"'{origin}' redirected to a URL that" if origin else "The media URL"
    if parsed.scheme not in _SCHEMES or not parsed.is_absolute() or not parsed.raw_host:
        raise _refuse(f"{said} is not an absolute http or https URL.", "scheme",
                      log_detail=f"scheme={parsed.scheme[:16]!r}")
    if parsed.raw_user is not None or parsed.raw_password is not None or empty_userinfo:
        raise _refuse(f"{said} carries a user name or password, which is not allowed.", "userinfo")
    host = parsed.raw_host
    try:
        address = host_address(host)
    except HostShapeError as exc:
        detail = "" if origin else f": {exc}"  # a redirect's host came from a server, not from the client
        raise _refuse(f"{said} has an invalid host{detail}.", "host_shape", log_detail=f"host={host!r}") from None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    shown = origin or host
    if port not in policy.allowed_ports:
        raise _refuse(f"{said} uses port {port}, which is not allowed for fetching media (allowed: "
                      f"{', '.join(map(str, sorted(policy.allowed_ports)))}).", "port")
    if address is not None:
        allowed = any(pattern.allows_address(address) for pattern in policy.hosts)
    else:
        host = normalise_name(host)
        allowed = any(pattern.allows_name(host) for pattern in policy.hosts)
    if not allowed:
        where = f"'{shown}' redirected to a host that is" if origin else f"The host '{shown}' is"
        raise _refuse(f"{where} not in the hosts this server may fetch media from ({HOSTS_SETTING}).",
                      "host_not_listed", log_detail=f"host={host}")
    return Target(url=parsed.with_fragment(None), host=host, port=port, address=address)
