"""Host names and IP literals as media URLs name them, and the patterns that allow them.

A URL's host is one of three things: a DNS name, a standard IP literal (``203.0.113.7``,
``[2001:db8::1]``), or something that only looks like a name. Browsers and ``getaddrinfo``
read ``2130706433``, ``0x7f.1`` and ``0177.0.0.1`` as IPv4 addresses (127.0.0.1 in all three),
so a host whose last label is a number is refused unless it is a standard dotted-decimal
address: such a host would otherwise slip past a name allow-list as an address nobody listed.

Patterns (``fetch_url_hosts``): an exact name (``images.example.com``), ``*.example.com`` (any
name below example.com, not example.com itself), ``*`` (any DNS name) or an IP literal. IP
literal hosts are allowed only when that very literal is listed; ``*`` never covers them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Literal

from yarl import URL

from .addresses import IPAddress

__all__ = ["HostPattern", "HostShapeError", "host_address", "normalise_name", "parse_host_pattern"]

_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
_NUMBER_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")


class HostShapeError(ValueError):
    """A host is neither a valid DNS name nor a standard IP literal."""


def host_address(host: str) -> IPAddress | None:
    """The IP address a URL host (already without brackets) stands for, or None for a DNS name.

    Raises HostShapeError for non-standard IPv4 forms and hosts that are not valid names.
    """
    if ":" in host:
        try:
            return ip_address(host)
        except ValueError:
            raise HostShapeError(f"{host!r} is not a valid IPv6 address") from None
    name = host.lower().removesuffix(".")
    if _NUMBER_LABEL_RE.match(name.rsplit(".", 1)[-1]):
        try:
            return IPv4Address(name)
        except ValueError:
            raise HostShapeError(f"{host!r} is not a standard IPv4 address (write four decimal numbers, "
                                 "e.g. 192.0.2.10) nor a host name") from None
    normalise_name(host)
    return None


def normalise_name(host: str) -> str:
    """Lower-case IDNA form of a DNS name, without a trailing dot; HostShapeError when invalid."""
    try:
        raw = URL.build(scheme="http", host=host.strip()).raw_host or ""
    except ValueError:
        raise HostShapeError(f"{host!r} is not a valid host name") from None
    name = raw.lower().removesuffix(".")
    if not _NAME_RE.match(name):
        raise HostShapeError(f"{host!r} is not a valid host name")
    return name


@dataclass(frozen=True)
class HostPattern:
    """One entry of the allow-list."""

    kind: Literal["name", "suffix", "any", "address"]
    name: str = ""
    """The exact name, or the suffix after ``*.``; empty for ``any`` and ``address``."""
    address: IPAddress | None = None

    def allows_name(self, name: str) -> bool:
        """Does this pattern allow the (normalised) DNS name?"""
        if self.kind == "any":
            return True
        if self.kind == "name":
            return name == self.name
        return self.kind == "suffix" and name.endswith("." + self.name)

    def allows_address(self, address: IPAddress) -> bool:
        """Does this pattern list exactly this IP literal?"""
        return self.kind == "address" and self.address == address

    def __str__(self) -> str:
        return {"any": "*", "suffix": f"*.{self.name}", "name": self.name}.get(self.kind, str(self.address))


def parse_host_pattern(text: str) -> HostPattern:
    """``images.example.com``, ``*.example.com``, ``*``, ``192.0.2.10`` or ``[2001:db8::1]``; ValueError otherwise."""
    entry = text.strip()
    if entry == "*":
        return HostPattern("any")
    if entry.startswith("*."):
        suffix = entry[2:]
        if host_address(suffix) is not None:
            raise HostShapeError(f"{text!r}: a wildcard needs a host name after '*.', not an address")
        return HostPattern("suffix", name=normalise_name(suffix))
    if "*" in entry:
        raise HostShapeError(f"{text!r}: '*' is allowed only alone or as a leading '*.'")
    if entry.startswith("[") and entry.endswith("]"):
        entry = entry[1:-1]
    address = host_address(entry)
    if address is not None:
        return HostPattern("address", address=address)
    return HostPattern("name", name=normalise_name(entry))
