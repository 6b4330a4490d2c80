"""Where Herald may post webhooks (status callbacks, reply webhooks): public destinations only.

A webhook URL is chosen by a tenant, so without a rule anyone with an API key could make
Herald post to its own network (127.0.0.1, 10/8, 169.254.169.254, cluster service names).
The rule is checked twice: when the URL is submitted (ingest: 422 with a reason code) and when
it is posted (reports: the HTTP client's resolver refuses non-public addresses, and the post
connects to the addresses that were checked, so a name cannot resolve publicly at the check
and privately at the connect). See docs/webhooks.md.

The decisions here are pure (no I/O): :func:`url_refusal` for a URL as written,
:func:`address_refusal` for one resolved address. :func:`check_url` adds the name
resolution (injectable) for submission-time checks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# reason codes (machine-readable: API errors, dead letters, metrics)
URL_INVALID = "webhook_url_invalid"
HTTPS_REQUIRED = "webhook_https_required"
HOST_NOT_PUBLIC = "webhook_host_not_public"

# Not global, or not a place a webhook can live, beyond what ``is_global`` already says.
SPECIAL: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/128", "::1/128", "::ffff:0:0/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8",
))
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Names that never denote a public host (RFC 6761 and common cluster / LAN suffixes).
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".svc", ".cluster.local", ".intranet")


@dataclass(frozen=True)
class EgressPolicy:
    """``allow_private``: anything goes (local development only). ``allowed_networks``: these
    addresses are allowed even if not public (a test's loopback receiver: 127.0.0.1/32).
    ``require_https``: only https URLs."""

    allow_private: bool = False
    require_https: bool = True
    allowed_networks: tuple[Network, ...] = ()

    @classmethod
    def of(cls, settings: Any) -> EgressPolicy:
        return cls(
            allow_private=bool(getattr(settings, "webhook_allow_private", False)),
            require_https=bool(getattr(settings, "webhook_require_https", True)),
            allowed_networks=tuple(ipaddress.ip_network(n, strict=False)
                                   for n in getattr(settings, "webhook_allowed_networks", ()) or ()),
        )


def _embedded(ip: Address) -> Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo client, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_address(value: str | Address) -> Address | None:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    try:
        return ipaddress.ip_address(value.split("%", 1)[0])  # an IPv6 zone id (fe80::1%eth0) goes
    except ValueError:
        return None


def _public(ip: Address) -> bool:
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified:
        return False
    return not any(ip.version == n.version and ip in n for n in SPECIAL)


def address_refusal(value: str | Address, policy: EgressPolicy) -> str | None:
    """Why a webhook may not go to this address (a reason code), or None if it may."""
    ip = parse_address(value)
    if ip is None:
        return HOST_NOT_PUBLIC
    inner = _embedded(ip)
    candidates = [ip] if inner is None else [ip, inner]
    if policy.allow_private:
        return None
    if any(c.version == n.version and c in n for c in candidates for n in policy.allowed_networks):
        return None
    if inner is not None:  # judged by the IPv4 address it reaches
        return None if _public(inner) else HOST_NOT_PUBLIC
    return None if _public(ip) else HOST_NOT_PUBLIC


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """A host written as an IPv4 address in a form the resolver also reads: ``2130706433``,
    ``0x7f.1``, ``017700000001``, ``127.1`` (inet_aton's forms; no lookup is made)."""
    if not host or not all(c in "0123456789abcdefx." for c in host) or not host[0].isdigit():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def host_of(url: str) -> str | None:
    """The URL's host, lower case, brackets and trailing dots removed; None if it has none."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return None
    host = (host or "").rstrip(".")
    return host or None


def literal_address(host: str) -> Address | None:
    return parse_address(host) or legacy_ipv4(host)


def url_refusal(url: str, policy: EgressPolicy) -> str | None:
    """Why a webhook may not be posted to ``url`` as written (a reason code), or None if the URL
    may be posted — provided its name resolves to public addresses (:func:`address_refusal`)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        return URL_INVALID
    if parts.scheme not in ("http", "https"):
        return URL_INVALID
    host = host_of(url)
    if host is None:
        return URL_INVALID
    if policy.require_https and parts.scheme != "https":
        return HTTPS_REQUIRED
    ip = literal_address(host)
    if ip is not None:
        return address_refusal(ip, policy)
    if policy.allow_private:
        return None
    if host == "localhost" or host.endswith(LOCAL_SUFFIXES):
        return address_refusal("127.0.0.1", policy) if host == "localhost" or host.endswith(".localhost") \
            else HOST_NOT_PUBLIC
    return None  # a name: judged by the addresses it resolves to


def addresses_refusal(addresses: Iterable[str | Address], policy: EgressPolicy) -> str | None:
    """Every address a name resolves to must be allowed (a client may connect to any of them)."""
    for address in addresses:
        reason = address_refusal(address, policy)
        if reason is not None:
            return reason
    return None


Resolve = Callable[[str], Awaitable[list[str]]]


async def system_resolve(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class CachedResolve:
    """A resolver that keeps each answer ``ttl_s`` (at most ``size`` names), so a stream of
    messages with the same callback host costs one lookup a minute, not one per request. A
    lookup that fails or takes longer than ``timeout_s`` answers no address (the name is not
    refused for it) and is kept ``failed_ttl_s``, so a slow DNS does not slow every request."""

    def __init__(self, resolve: Resolve = system_resolve, ttl_s: float = 60.0, size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic, timeout_s: float = 2.0, failed_ttl_s: float = 10.0) -> None:
        self.resolve, self.ttl_s, self.size, self.clock = resolve, ttl_s, size, clock
        self.timeout_s, self.failed_ttl_s = timeout_s, failed_ttl_s
        self.answers: dict[str, tuple[list[str], float]] = {}

    async def __call__(self, host: str) -> list[str]:
        now = self.clock()
        kept = self.answers.get(host)
        if kept is not None and kept[1] > now:
            return kept[0]
        try:
            addresses, ttl = await asyncio.wait_for(self.resolve(host), self.timeout_s), self.ttl_s
        except (OSError, TimeoutError, UnicodeError):
            addresses, ttl = [], self.failed_ttl_s
        if len(self.answers) >= self.size:
            self.answers.clear()
        self.answers[host] = (addresses, now + ttl)
        return addresses


async def check_urls(urls: Iterable[str], policy: EgressPolicy, *, resolve: Resolve = system_resolve,
                     timeout_s: float = 2.0) -> dict[str, str]:
    """The refused URLs among ``urls`` and why (submission time). Each distinct host name is
    resolved once, concurrently; a name that does not resolve (or not in time) is not refused
    here (its posts fail and are retried; the check is made again when posting)."""
    refused: dict[str, str] = {}
    names: dict[str, list[str]] = {}
    for url in set(urls):
        reason = url_refusal(url, policy)
        if reason is not None:
            refused[url] = reason
            continue
        host = host_of(url)
        if host is not None and literal_address(host) is None and not policy.allow_private:
            names.setdefault(host, []).append(url)
    if names:
        async def one(host: str) -> tuple[str, list[str]]:
            try:
                return host, await asyncio.wait_for(resolve(host), timeout_s)
            except (OSError, TimeoutError, UnicodeError):
                return host, []

        for host, addresses in await asyncio.gather(*(one(h) for h in names)):
            reason = addresses_refusal(addresses, policy)
            if reason is not None:
                for url in names[host]:
                    refused[url] = reason
    return refused


async def check_url(url: str, policy: EgressPolicy, *, resolve: Resolve = system_resolve) -> str | None:
    return (await check_urls([url], policy, resolve=resolve)).get(url)


MESSAGES = {
    URL_INVALID: "only http and https URLs with a host",
    HTTPS_REQUIRED: "webhook URLs must use https",
    HOST_NOT_PUBLIC: "the webhook host is not a public address (loopback, private, link-local, "
                     "metadata or cluster-internal destinations are refused)",
}
