"""Which network addresses the service may connect to on a user's behalf (SSRF).

One rule for every URL a user hands us (model archives, webhook endpoints): the host
must resolve only to public unicast addresses, never loopback, private, link-local,
multicast, unspecified or otherwise reserved ones, unless a setting allows them.
"""

from __future__ import annotations

import ipaddress
import socket

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnresolvableHost(Exception):
    """DNS gave no address for the host."""


def is_forbidden_address(ip: IPAddress) -> bool:
    """Not a public unicast address: loopback, private, link-local, shared (CGNAT),
    unspecified, reserved or multicast."""
    return not ip.is_global or ip.is_multicast


def resolve_addresses(host: str, port: int | None = None) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order (an IP literal is
    itself); raises UnresolvableHost."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnresolvableHost(host) from None
    addresses: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise UnresolvableHost(host)
    return addresses


def first_forbidden(addresses: list[IPAddress]) -> IPAddress | None:
    return next((ip for ip in addresses if is_forbidden_address(ip)), None)
