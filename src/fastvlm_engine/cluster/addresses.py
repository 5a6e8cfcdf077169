"""Worker URLs as they travel through the registry: building them, and telling loopback from the network.

A worker is advertised as ``http://<host>:<port>`` with an IPv6 literal in brackets
(``http://[fd00::2]:8101``), exactly what aiohttp and yarl expect. Whether a URL is loopback
decides whether it may be advertised without the cluster secret: only then is nothing but this
host able to reach the worker, so the missing credential cannot be exploited from elsewhere.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse

__all__ = ["endpoint_url", "is_loopback_host", "is_loopback_url", "url_host"]

_HOST_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                        r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def endpoint_url(host: str, port: int) -> str:
    """``http://host:port``, brackets around an IPv6 address; raises ValueError for anything else."""
    if not 1 <= port <= 65535:
        raise ValueError(f"expected a port between 1 and 65535, got {port}")
    address = _address(host)
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValueError(f"advertise an address without a zone (%{address.scope_id}): other hosts cannot use it")
        shown = f"[{address.compressed}]" if address.version == 6 else address.compressed
    elif _HOST_NAME.match(host):
        shown = host.lower()
    else:
        raise ValueError(f"expected a host name or an IP address to advertise, got {host!r}")
    if address is not None and address.is_unspecified:
        raise ValueError(f"{host} is a bind-all address, not one other hosts can reach; advertise a real one")
    return f"http://{shown}:{port}"


def url_host(url: str) -> str:
    """The host part of a worker URL (an IPv6 address without its brackets); raises ValueError when
    the URL is not ``http(s)://host:port`` with nothing after the port but an optional ``/``."""
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if (parts.scheme not in ("http", "https") or not parts.hostname or port is None or parts.username
            or parts.password or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise ValueError(f"expected a worker URL like http://10.0.0.5:8101, got {url!r}")
    return parts.hostname


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1 (also as an IPv4-mapped address)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    address = _address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def is_loopback_url(url: str) -> bool:
    """Does this worker URL point at this host only? (False for malformed URLs.)"""
    try:
        return is_loopback_host(url_host(url))
    except ValueError:
        return False
