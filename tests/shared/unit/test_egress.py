"""Where webhooks may go (shared/egress.py): pure decisions, no network."""

from __future__ import annotations

import ipaddress

import pytest

from shared.egress import (
    HOST_NOT_PUBLIC,
    HTTPS_REQUIRED,
    URL_INVALID,
    EgressPolicy,
    address_refusal,
    check_urls,
    legacy_ipv4,
    url_refusal,
)

SAFE = EgressPolicy()
HTTP_OK = EgressPolicy(require_https=False)
LOOPBACK_RECEIVER = EgressPolicy(require_https=False, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://127.9.9.9:8443/x", "https://[::1]/hook", "https://[::ffff:127.0.0.1]/hook",
    "https://[::ffff:7f00:1]/hook", "https://169.254.169.254/latest/meta-data/", "https://10.1.2.3/x",
    "https://172.16.0.1/x", "https://192.168.1.1/x", "https://100.64.0.1/x", "https://0.0.0.0/x", "https://0/x",
    "https://2130706433/x", "https://0x7f.0.0.1/x", "https://017700000001/x", "https://127.1/x",
    "https://0xa9fea9fe/x", "https://[fe80::1]/x", "https://[fd00::1]/x", "https://[::]/x",
    "https://[2002:7f00:1::]/x", "https://[64:ff9b::a00:1]/x", "https://224.0.0.1/x", "https://255.255.255.255/x",
    "https://localhost/x", "https://LOCALHOST./x", "https://localhost../x", "https://api.localhost/x",
    "https://metadata.google.internal/x", "https://printer.local/x",
    "https://kafka.herald.svc.cluster.local/x", "https://127.0.0.1./x",
])
def test_non_public_destinations_are_refused(url: str) -> None:
    assert url_refusal(url, SAFE) == HOST_NOT_PUBLIC


@pytest.mark.parametrize("url", [
    "https://crm.example.com/herald/status", "https://93.184.216.34/x", "https://[2606:4700::1111]/x",
    "https://hooks.example.com.:8443/x", "https://8.8.8.8/x",
    "https://reports/x",  # a single label (a cluster service name) is judged by what it resolves to
])
def test_public_destinations_pass(url: str) -> None:
    assert url_refusal(url, SAFE) is None


def test_https_is_required_by_default() -> None:
    assert url_refusal("http://crm.example.com/x", SAFE) == HTTPS_REQUIRED
    assert url_refusal("http://crm.example.com/x", HTTP_OK) is None


@pytest.mark.parametrize("url", ["ftp://crm.example.com/x", "https:///x", "nope", "https://h.example.com:99999/x", ""])
def test_invalid_urls(url: str) -> None:
    assert url_refusal(url, SAFE) == URL_INVALID


def test_an_allowed_network_lets_only_its_addresses_through() -> None:
    assert url_refusal("http://127.0.0.1:8080/hook", LOOPBACK_RECEIVER) is None
    assert url_refusal("http://localhost:8080/hook", LOOPBACK_RECEIVER) is None
    assert url_refusal("http://[::ffff:127.0.0.1]/hook", LOOPBACK_RECEIVER) is None
    for url in ("http://127.0.0.2/x", "http://169.254.169.254/x", "http://10.0.0.1/x", "http://[::1]/x"):
        assert url_refusal(url, LOOPBACK_RECEIVER) == HOST_NOT_PUBLIC, url


def test_allow_private_allows_everything_but_bad_urls() -> None:
    anything = EgressPolicy(allow_private=True, require_https=False)
    assert url_refusal("http://169.254.169.254/x", anything) is None
    assert url_refusal("http://reports:8080/x", anything) is None
    assert url_refusal("ftp://x.example.com/", anything) == URL_INVALID


@pytest.mark.parametrize(("address", "reason"), [
    ("127.0.0.1", HOST_NOT_PUBLIC), ("::1", HOST_NOT_PUBLIC), ("::ffff:10.0.0.1", HOST_NOT_PUBLIC),
    ("fe80::1%eth0", HOST_NOT_PUBLIC), ("169.254.169.254", HOST_NOT_PUBLIC), ("0.0.0.0", HOST_NOT_PUBLIC),
    ("192.0.2.1", HOST_NOT_PUBLIC), ("198.18.0.1", HOST_NOT_PUBLIC), ("not an address", HOST_NOT_PUBLIC),
    ("93.184.216.34", None), ("2606:4700::1111", None), ("::ffff:93.184.216.34", None),
])
def test_resolved_addresses(address: str, reason: str | None) -> None:
    assert address_refusal(address, SAFE) == reason


def test_legacy_ipv4_forms_are_read_as_the_resolver_reads_them() -> None:
    assert str(legacy_ipv4("2130706433")) == "127.0.0.1"
    assert str(legacy_ipv4("0x7f.1")) == "127.0.0.1"
    assert legacy_ipv4("example.com") is None and legacy_ipv4("1example.com") is None


async def test_names_are_refused_by_what_they_resolve_to() -> None:
    table = {"rebind.example.com": ["93.184.216.34", "10.0.0.7"], "ok.example.com": ["93.184.216.34"]}
    looked_up: list[str] = []

    async def resolve(host: str) -> list[str]:
        looked_up.append(host)
        if host not in table:
            raise OSError("no such name")
        return table[host]

    urls = ["https://rebind.example.com/a", "https://rebind.example.com/b", "https://ok.example.com/x",
            "https://gone.example.com/x", "https://127.0.0.1/x"]
    assert await check_urls(urls, SAFE, resolve=resolve) == {
        "https://rebind.example.com/a": HOST_NOT_PUBLIC, "https://rebind.example.com/b": HOST_NOT_PUBLIC,
        "https://127.0.0.1/x": HOST_NOT_PUBLIC}
    assert sorted(looked_up) == ["gone.example.com", "ok.example.com", "rebind.example.com"]  # each name once


async def test_answers_are_kept_for_their_ttl_and_failures_for_a_shorter_one() -> None:
    from shared.egress import CachedResolve

    calls: list[str] = []
    now = [0.0]

    async def resolve(host: str) -> list[str]:
        calls.append(host)
        if host == "bad.example.com":
            raise OSError("no such name")
        return ["93.184.216.34"]

    cached = CachedResolve(resolve, ttl_s=60, failed_ttl_s=10, clock=lambda: now[0])
    assert await cached("a.example.com") == ["93.184.216.34"]
    now[0] = 59
    assert await cached("a.example.com") == ["93.184.216.34"] and calls == ["a.example.com"]
    now[0] = 61
    await cached("a.example.com")
    assert await cached("bad.example.com") == [] and await cached("bad.example.com") == []  # no address: not refused
    now[0] = 72
    await cached("bad.example.com")
    assert calls == ["a.example.com", "a.example.com", "bad.example.com", "bad.example.com"]
