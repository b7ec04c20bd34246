"""SSRF guard: decide whether an agent may reach a URL, and pin the address that was checked.

An agent that can fetch URLs can be talked into fetching ``http://169.254.169.254/`` (cloud metadata with
credentials), ``http://127.0.0.1:6379/`` or a host on the operator's LAN. :func:`check_url` refuses:

- schemes other than http and https, URLs with credentials, empty hosts, bad ports;
- any host whose resolved addresses include one that is not publicly routable: private (10/8, 172.16/12,
  192.168/16, fc00::/7), loopback (127/8, ::1), link-local (169.254/16, fe80::/10), shared (100.64/10),
  multicast, reserved, unspecified, and IPv4 addresses hidden in IPv6 (``::ffff:127.0.0.1``, 6to4, NAT64);
- well-known metadata names and addresses (``metadata.google.internal``, 169.254.169.254, fd00:ec2::254,
  100.100.100.200), even with ``allow_private=True``.

An explicit ``allow_hosts`` entry (a host name, ``*.suffix``, an IP address or a CIDR network) lifts the
address check for what it names. Every address the name resolves to is checked, not only the first: a
DNS answer that mixes a public and a private address is refused.

DNS rebinding: resolving once to check and again to connect lets an attacker answer differently the second
time. :class:`ResolvedTarget` carries the addresses that were checked; the caller connects to
``target.ip`` (sending ``Host: target.host``) and calls :func:`check_url` again for every redirect.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from openfang.protocol.errors import SecurityError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# A resolver maps (host, port) to the list of IP address strings it resolves to.
Resolver = Callable[[str, int], list[str]]

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_SHARED = ipaddress.ip_network("100.64.0.0/10")


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedTarget:
    """A URL that passed the guard, with the addresses that were checked (connect to ``ip``)."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path plus query, ready for the request line ("/" when empty)
    addresses: tuple[str, ...]

    @property
    def ip(self) -> str:
        """The checked address to connect to (never resolve ``host`` again)."""
        return self.addresses[0]

    @property
    def host_header(self) -> str:
        """The value of the Host header (port only when it is not the scheme's default)."""
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if DEFAULT_PORTS[self.scheme] == self.port else f"{name}:{self.port}"


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver (getaddrinfo), keeping the order it returned, without duplicates."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SecurityError(f"cannot resolve host {host!r}: {exc}") from None
    seen: list[str] = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        if addr not in seen:
            seen.append(addr)
    return seen


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv6 one (mapped, 6to4, NAT64, compatible), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(int(ip))
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be reached without an allowlist entry, or None when it is publicly routable."""
    inner = _embedded_ipv4(ip)
    if inner is not None:
        why = address_problem(inner)
        return f"{why} (embedded in {ip})" if why else None
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True, slots=True)
class _Allow:
    names: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> _Allow:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry.rstrip("."))
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def names_host(self, host: str) -> bool:
        return host in self.names or any(host.endswith(s) for s in self.suffixes)

    def names_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)


def _split(url: str) -> SplitResult:
    if not isinstance(url, str) or not url:
        raise SecurityError("url refused: empty url")
    if any(ch in url for ch in "\r\n\t\x00 "):
        raise SecurityError("url refused: contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise SecurityError(f"url refused: {exc}") from None
    return parts


def check_url(
    url: str,
    *,
    allow_hosts: Sequence[str] = (),
    allow_private: bool = False,
    resolver: Resolver | None = None,
) -> ResolvedTarget:
    """Check ``url`` against the SSRF policy and return the target with the addresses to connect to.

    Raises :class:`SecurityError` naming the reason. ``allow_private`` lets private, loopback and link-local
    addresses through (never metadata ones); ``allow_hosts`` lifts the check for the hosts, addresses and
    networks it names. ``resolver`` replaces the system resolver (tests, or a worker-wide DNS cache).
    """
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise SecurityError(f"url refused: scheme {scheme or '(none)'!r} is not http or https: {url}")
    if parts.username is not None or parts.password is not None:
        raise SecurityError("url refused: credentials in the url are not allowed")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise SecurityError(f"url refused: no host in {url}")
    port = parts.port if parts.port is not None else DEFAULT_PORTS[scheme]
    if not 0 < port < 65536:
        raise SecurityError(f"url refused: port {port} out of range")
    allow = _Allow.parse(allow_hosts)
    host_named = allow.names_host(host)
    if host in METADATA_HOSTS and not host_named:
        raise SecurityError(f"url refused: {host} is a cloud metadata host")
    addresses = (resolver or system_resolver)(host, port)
    if not addresses:
        raise SecurityError(f"url refused: host {host!r} resolved to no address")
    for addr in addresses:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            raise SecurityError(f"url refused: resolver returned a non-address {addr!r} for {host}") from None
        if host_named or allow.names_ip(ip):
            continue
        why = address_problem(ip)
        if why is None:
            continue
        if allow_private and "metadata" not in why:
            continue
        shown = host if host == addr else f"{host} resolves to {addr}"
        raise SecurityError(f"url refused: {shown}, {why} (add it to allow_hosts to permit it)")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return ResolvedTarget(url=url, scheme=scheme, host=host, port=port, path=path, addresses=tuple(addresses))
