"""The SSRF guard: what check_url refuses, what an allowlist lets through, and which address it pins."""

from __future__ import annotations

import pytest

from openfang.protocol.errors import SecurityError
from openfang.security.netguard import address_problem, check_url


def fixed(answers: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    """A resolver answering from a table (a test double for DNS, not for the guard)."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return list(answers[host])

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://h:70/", "javascript:1"]
)
def test_check_url_refuses_schemes_other_than_http(url: str) -> None:
    """Only http and https pass; the error names the scheme."""
    with pytest.raises(SecurityError, match="scheme"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.1.2.3/", "private"),
        ("http://172.16.0.9/", "private"),
        ("http://192.168.1.1:8080/admin", "private"),
        ("http://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fd00::1]/", "private"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://100.64.0.1/", "shared"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 written as one decimal number
    ],
)
def test_check_url_refuses_internal_addresses(url: str, reason: str) -> None:
    """Private, loopback, link-local, metadata, shared and mapped addresses are refused with the reason."""
    with pytest.raises(SecurityError, match=reason):
        check_url(url)


def test_check_url_refuses_a_name_that_resolves_to_a_private_address() -> None:
    """A harmless-looking name is judged by what it resolves to, and the error names that address."""
    with pytest.raises(SecurityError, match=r"intranet\.test resolves to 10\.9\.8\.7, a private address"):
        check_url("https://intranet.test/", resolver=fixed({"intranet.test": ["10.9.8.7"]}))


def test_check_url_refuses_a_mixed_dns_answer() -> None:
    """One private address among public ones is enough to refuse (the client might pick it)."""
    resolver = fixed({"mixed.test": ["93.184.216.34", "127.0.0.1"]})
    with pytest.raises(SecurityError, match="loopback"):
        check_url("http://mixed.test/", resolver=resolver)


def test_check_url_pins_the_checked_addresses_of_a_public_host() -> None:
    """A public host passes and the target carries the addresses that were checked, in order."""
    resolver = fixed({"www.example.test": ["93.184.216.34", "2606:2800:220:1::1"]})
    t = check_url("https://WWW.Example.test:8443/a/b?q=1#frag", resolver=resolver)
    assert (t.scheme, t.host, t.port, t.path) == ("https", "www.example.test", 8443, "/a/b?q=1")
    assert t.ip == "93.184.216.34"
    assert t.addresses == ("93.184.216.34", "2606:2800:220:1::1")
    assert t.host_header == "www.example.test:8443"
    assert resolver.calls == ["www.example.test"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("entry", ["intranet.test", "*.test", "10.9.8.7", "10.0.0.0/8"])
def test_check_url_allowlist_entry_lifts_the_address_check(entry: str) -> None:
    """A host name, a *.suffix, an address or a CIDR in allow_hosts lets a private target through."""
    t = check_url(
        "http://intranet.test/x", allow_hosts=[entry], resolver=fixed({"intranet.test": ["10.9.8.7"]})
    )
    assert t.ip == "10.9.8.7"


def test_check_url_allowlist_does_not_cover_other_private_hosts() -> None:
    """Naming one internal host does not open the rest of the network."""
    with pytest.raises(SecurityError, match="private"):
        check_url("http://10.9.8.8/", allow_hosts=["10.9.8.7", "intranet.test"])


def test_check_url_allow_private_never_opens_metadata() -> None:
    """allow_private lets RFC 1918 and loopback through but cloud metadata stays refused."""
    assert check_url("http://10.1.1.1/", allow_private=True).ip == "10.1.1.1"
    assert check_url("http://127.0.0.1:9/", allow_private=True).ip == "127.0.0.1"
    with pytest.raises(SecurityError, match="metadata"):
        check_url("http://169.254.169.254/", allow_private=True)
    with pytest.raises(SecurityError, match="metadata"):
        check_url("http://metadata.google.internal/computeMetadata/v1/", allow_private=True)


def test_check_url_refuses_metadata_host_names_before_resolving() -> None:
    """Metadata host names are refused without asking DNS at all."""
    resolver = fixed({})
    with pytest.raises(SecurityError, match="metadata host"):
        check_url("http://metadata.google.internal/", resolver=resolver)
    assert resolver.calls == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://user:pw@example.com/", "credentials"),
        ("http:///nohost", "no host"),
        ("http://example.com:99999/", "(?i)port"),
        ("http://exa mple.com/", "whitespace"),
        ("", "empty"),
    ],
)
def test_check_url_refuses_malformed_urls(url: str, reason: str) -> None:
    """Credentials, missing hosts, bad ports and control characters are refused, each named."""
    with pytest.raises(SecurityError, match=reason):
        check_url(url, resolver=fixed({"example.com": ["93.184.216.34"]}))


def test_check_url_refuses_a_host_that_resolves_to_nothing() -> None:
    """An empty DNS answer is a refusal, not a crash."""
    with pytest.raises(SecurityError, match="no address"):
        check_url("http://void.test/", resolver=fixed({"void.test": []}))


def test_address_problem_accepts_public_addresses() -> None:
    """Public IPv4 and IPv6 addresses have no problem."""
    import ipaddress

    assert address_problem(ipaddress.ip_address("8.8.8.8")) is None
    assert address_problem(ipaddress.ip_address("2606:4700:4700::1111")) is None
    assert address_problem(ipaddress.ip_address("2002:7f00:1::1")) is not None  # 6to4 wrapping 127.0.0.1
