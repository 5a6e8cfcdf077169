"""Which IP addresses a media fetch may connect to.

By default only public unicast addresses: a URL must not be able to reach the host itself, the
private network around it or a cloud metadata service. The standard library's ``is_global`` is
not enough on its own (on Python 3.11 it is true for multicast, site-local IPv6, NAT64 and 6to4
forms of 127.0.0.1), so the refused networks are listed here explicitly and ``is_global`` is
only a last safety net. An IPv6 address that carries an IPv4 address (IPv4-mapped, -translated,
NAT64, 6to4) is judged by the IPv4 address it reaches, so ``::ffff:127.0.0.1`` is loopback.

Non-unicast targets (unspecified, multicast, broadcast) are refused even when private addresses
are allowed: no HTTP server lives there, and ``0.0.0.0`` would quietly reach the local host.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

__all__ = ["IPAddress", "address_refusal", "embedded_ipv4"]

IPAddress = IPv4Address | IPv6Address

_NEVER = (
    ("0.0.0.0/8", "unspecified"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified"),
    ("ff00::/8", "multicast"),
)
"""Refused whatever the policy says."""

_NON_PUBLIC = (
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay anycast"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("240.0.0.0/4", "reserved"),
    ("::1/128", "loopback"),
    ("::/96", "IPv4-compatible (deprecated)"),
    ("64:ff9b:1::/48", "NAT64 local use"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments (Teredo, ORCHID, ...)"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local (private)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
)
"""Refused unless private addresses are allowed."""

_IPV6_GLOBAL_UNICAST = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")


def _networks(table: tuple[tuple[str, str], ...]) -> tuple[tuple[IPv4Network | IPv6Network, str], ...]:
    return tuple((ip_network(net), why) for net, why in table)


_NEVER_NETS = _networks(_NEVER)
_NON_PUBLIC_NETS = _networks(_NON_PUBLIC)


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address reaches through mapping or translation, if it carries one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _IPV4_TRANSLATED:
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a fetch may not connect to ``address`` (a short phrase for logs), or None when it may."""
    if isinstance(address, IPv6Address):
        address = address.__class__(int(address))  # the scope (zone) does not change what it reaches
        inner = embedded_ipv4(address)
        if inner is not None:
            why = address_refusal(inner, allow_private=allow_private)
            return f"{why} (IPv4 inside IPv6)" if why else None
    for network, why in _NEVER_NETS:
        if address in network:
            return why
    if allow_private:
        return None
    for network, why in _NON_PUBLIC_NETS:
        if address in network:
            return why
    if isinstance(address, IPv6Address) and address not in _IPV6_GLOBAL_UNICAST:
        return "outside IPv6 global unicast (2000::/3)"
    if not address.is_global:
        return "not globally routable"
    return None
