"""Which addresses a fetch may connect to.

``classify(ip)`` names why an address is off limits (loopback, private, link-local, multicast,
reserved, unspecified, or otherwise not globally routable), looking through IPv4-mapped, NAT64,
6to4 and Teredo wrappings. ``parse_ip_host`` reads every spelling of a numeric host the C library
would accept (``2130706433``, ``0x7f.1``, ``017700000001``, ``127.1``, a trailing dot, bracketed
IPv6 with a zone) so such hosts are judged as the address they are and never sent to DNS.

``AddressGuard.resolve(host, port)`` resolves a host once and returns the addresses to connect to,
or raises ``FetchError(private_address | dns_error | bad_url)``. Allow-list entries (``HOST`` or
``HOST:PORT``) are matched on the literal host and port of the URL; an allowed host is still
resolved only once and connected to at that address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from ie_env.fetcher.config import FetchError, Reason

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NUMERIC_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|[0-9]+)$")


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def classify(ip: IPAddress | str) -> str | None:
    """None when ``ip`` is a public unicast address, else the kind of address it is."""
    if isinstance(ip, str):
        ip = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            kind = classify(inner)
            if kind is not None:
                return kind
        if ip.scope_id:
            return "scoped"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link_local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site_local"
    if not ip.is_global:
        return "not_global"
    return None


def _parse_v4_part(part: str) -> int:
    if part.lower().startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not re.fullmatch(r"[0-7]+", part):
            raise ValueError(f"bad octal part {part!r}")
        return int(part, 8)
    return int(part, 10)


def parse_loose_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Parse ``host`` as ``inet_aton`` would (1-4 parts, decimal/octal/hex); None if not numeric.

    Raises ``ValueError`` for something numeric-looking that is not a valid address (such a host
    must not be handed to DNS either).
    """
    h = host[:-1] if host.endswith(".") else host
    parts = h.split(".")
    if not parts or not all(_NUMERIC_PART.match(p) for p in parts):
        return None
    if len(parts) > 4:
        raise ValueError(f"{host!r} has too many numeric parts")
    nums = [_parse_v4_part(p) for p in parts]
    value = 0
    for i, num in enumerate(nums[:-1]):
        if num > 255:
            raise ValueError(f"{host!r}: part {i} exceeds 255")
        value = (value << 8) | num
    rest_bits = 8 * (4 - len(nums) + 1)
    if nums[-1] >= (1 << rest_bits):
        raise ValueError(f"{host!r}: last part too large")
    value = (value << rest_bits) | nums[-1]
    return ipaddress.IPv4Address(value)


def parse_ip_host(host: str) -> IPAddress | None:
    """The address a numeric host spells, or None for a name. Raises ``ValueError`` when invalid."""
    h = host.strip("[]")
    if ":" in h:
        return ipaddress.IPv6Address(h)
    return parse_loose_ipv4(h)


def _split_entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower()
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValueError(f"bad allow-list entry {entry!r}")
        host, rest = entry[1:close], entry[close + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad allow-list entry {entry!r}")
        return host, int(rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    if entry.count(":") > 1:  # bare IPv6 without brackets: host only
        return entry, None
    return entry, None


@dataclass(frozen=True)
class Target:
    """Where one hop goes: the URL's host and port, and the single address checked for it."""

    host: str
    port: int
    ip: str
    allowed_private: bool = False


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = str(sockaddr[0])
        if ip not in out:
            out.append(ip)
    return out


class AddressGuard:
    """Resolve once, check every address, answer the one address to connect to."""

    def __init__(self, allow: Iterable[str] = (), resolver: Resolver | None = None) -> None:
        self.allow: set[tuple[str, int | None]] = set()
        for entry in allow:
            try:
                self.allow.add(_split_entry(entry))
            except ValueError as exc:
                raise ValueError(f"allow_private entry {entry!r}: {exc}") from None
        self.resolver = resolver or system_resolver

    def is_allowed(self, host: str, port: int) -> bool:
        h = host.lower().strip("[]")
        return (h, port) in self.allow or (h, None) in self.allow

    def resolve(self, host: str, port: int) -> Target:
        if not host:
            raise FetchError(Reason.BAD_URL, "no host")
        allowed = self.is_allowed(host, port)
        try:
            literal = parse_ip_host(host)
        except ValueError as exc:
            raise FetchError(Reason.BAD_URL, f"invalid numeric host: {exc}") from None
        if literal is not None:
            ips = [str(literal)]
        else:
            try:
                ips = [str(ip) for ip in self.resolver(host, port)]
            except (OSError, UnicodeError) as exc:
                raise FetchError(Reason.DNS_ERROR, f"{host}: {exc}") from None
            if not ips:
                raise FetchError(Reason.DNS_ERROR, f"{host}: no addresses")
        checked: list[str] = []
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                raise FetchError(Reason.DNS_ERROR, f"{host}: resolver returned {ip!r}") from None
            kind = classify(addr)
            if kind is not None and not allowed:
                raise FetchError(Reason.PRIVATE_ADDRESS, f"{host} -> {addr} ({kind})")
            checked.append(str(addr))
        return Target(host=host.lower(), port=port, ip=checked[0], allowed_private=allowed)
