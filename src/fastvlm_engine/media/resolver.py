"""Resolving a media host exactly once, and making aiohttp connect only to what was checked.

DNS rebinding works by answering a safe address when a server checks a name and an internal
one when it connects. So the fetcher resolves each host once (:class:`SystemResolver`, async
``getaddrinfo``), checks every address, and gives aiohttp a :class:`PinnedResolver` that can
only answer with those checked addresses: aiohttp never looks anything up itself. This was
chosen over connecting to a bare IP with ``server_hostname`` because the URL aiohttp requests
stays the client's URL, so the ``Host`` header, TLS SNI and certificate checks all use the
name with no extra code, and relative redirects resolve against the real URL.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Protocol

from aiohttp.abc import AbstractResolver, ResolveResult

from .addresses import IPAddress

__all__ = ["HostResolver", "PinnedResolver", "SystemResolver"]


class HostResolver(Protocol):
    """Turns a host name into its addresses (one lookup per call); the test seam for DNS answers."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address of ``host``, in the resolver's order; OSError (e.g. socket.gaierror) when none."""
        ...


class SystemResolver:
    """The operating system's resolver through the event loop's ``getaddrinfo`` (a thread, not blocking)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every TCP address of ``host``, duplicates removed, order kept."""
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             proto=socket.IPPROTO_TCP)
        addresses: list[IPAddress] = []
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            address = ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
        return addresses


class PinnedResolver(AbstractResolver):
    """aiohttp's resolver for one fetch: answers only with addresses pinned after they were checked.

    A host that was never pinned gets an OSError, which aiohttp reports as a connection error,
    so an unchecked name can never be connected to.
    """

    def __init__(self) -> None:
        self._pins: dict[str, tuple[IPAddress, ...]] = {}

    def pin(self, host: str, addresses: Sequence[IPAddress]) -> None:
        """From now on ``host`` (as aiohttp passes it: the URL's IDNA host) means exactly ``addresses``."""
        self._pins[host] = tuple(addresses)

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results: list[ResolveResult] = []
        for address in self._pins.get(host, ()):
            address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, address_family):
                continue
            results.append(ResolveResult(hostname=host, host=str(address), port=port, family=address_family,
                                         proto=socket.IPPROTO_TCP, flags=socket.AI_NUMERICHOST))
        if not results:
            raise OSError(f"no checked address for {host!r}")
        return results

    async def close(self) -> None:
        """Nothing to release: the resolver holds only its pins."""
