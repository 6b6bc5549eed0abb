"""The SSRF guard: URL syntax, scheme, IP-literal tricks, names, and registration lookups."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading

import pytest

from ascend_webhooks.delivery import ssrf
from ascend_webhooks.delivery.ssrf import (
    ForbiddenURLError,
    check_endpoint_url,
    is_forbidden_address,
    parse_ip_host,
    resolve_addresses,
    validate_url,
)
from tests.support import dns as dns_fixtures
from tests.support.dns import HEALTHY, HungDNS

hung_dns = dns_fixtures.hung_dns
LOOPBACK = [ipaddress.ip_address("127.0.0.1")]

# Every spelling a resolver or browser reads as a loopback / private / non-global address.
FORBIDDEN_HOSTS = [
    "127.0.0.1",
    "127.0.0.1.",  # trailing dot
    "2130706433",  # decimal 127.0.0.1
    "0x7f000001",  # hex
    "0X7F000001",
    "0177.0.0.1",  # octal first octet
    "0x7f.0.0.1",
    "127.1",  # short form
    "127.0.1",
    "0",  # 0.0.0.0
    "0.0.0.0",
    "10.0.0.1",
    "012.0.0.1",  # octal 10.0.0.1
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata, link-local
    "100.64.0.1",  # CGNAT
    "192.0.2.1",  # documentation
    "198.18.0.1",  # benchmarking
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:7f00:1]",
    "[::ffff:10.0.0.1]",
    "[::127.0.0.1]",  # IPv4-compatible
    "[64:ff9b::127.0.0.1]",  # NAT64 embedding loopback
    "[64:ff9b::a00:1]",  # NAT64 embedding 10.0.0.1
    "[64:ff9b:1::1]",  # local-use NAT64
    "[2002:7f00:1::]",  # 6to4 embedding 127.0.0.1
    "[2002:c0a8:101::1]",  # 6to4 embedding 192.168.1.1
    "[fc00::1]",  # unique-local
    "[fd12:3456::1]",
    "[fe80::1]",  # link-local
    "[fec0::1]",  # site-local
    "[ff02::1]",  # multicast
    "[2001:db8::1]",  # documentation
    "localhost",
    "LOCALHOST",
    "localhost.",
    "api.localhost",
    "api.localhost.",
]

ALLOWED_HOSTS = [
    "example.com",
    "example.com.",
    "hooks.example.com",
    "8.8.8.8",
    "134744072",  # decimal 8.8.8.8
    "0x8080808",
    "[2606:4700::1111]",
    "[::ffff:8.8.8.8]",
    "[64:ff9b::8.8.8.8]",
    "[2002:808:808::1]",
    "1password.com",
    "xn--bcher-kva.example",
]


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_non_global_hosts_are_forbidden(host: str) -> None:
    with pytest.raises(ForbiddenURLError) as info:
        validate_url(f"https://{host}/hook", allow_http=False, allow_private=False)
    assert info.value.code == "forbidden_address"


@pytest.mark.parametrize("host", FORBIDDEN_HOSTS)
def test_non_global_hosts_pass_with_allow_private(host: str) -> None:
    parts = validate_url(f"https://{host}:8443/hook", allow_http=False, allow_private=True)
    assert parts.port == 8443


@pytest.mark.parametrize("host", ALLOWED_HOSTS)
def test_global_hosts_are_allowed(host: str) -> None:
    parts = validate_url(f"https://{host}/hook?x=1", allow_http=False, allow_private=False)
    assert parts.scheme == "https"
    assert parts.path == "/hook"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("1.2.3.4.", "1.2.3.4"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
    ],
)
def test_numeric_hosts_parse_like_a_resolver(host: str, expected: str) -> None:
    assert parse_ip_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["example.com", "1password.com", "a-b.example", "x.0a"])
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ip_host(host) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://1.2.3.4.5/",  # too many parts
        "https://256.0.0.1/",  # octet out of range
        "https://1.2.3.08/",  # 08 is not octal
        "https://4294967296/",  # 2**32
        "https://foo.123/",  # ends in a number but is no address
        "https://[::1%25eth0]/",  # zone id
        "https://[1:2:3]/",
        "https://exa mple.com/",
        "https://example.com/\n",
        "https://user:pass@example.com/",
        "https://user@example.com/",
        "https://example.com:0/",
        "https://example.com:65536/",
        "https://example.com:port/",
        "https:///path",
        "https://",
        "https://ex..ample.com/",
        "https://example.com../",  # the client would look this up as written, past the pin
        "https://-bad-.example.com/",
        "https://bücher.example/",  # IDN: must be given in its xn-- form
        "ftp://example.com/",
        "file:///etc/passwd",
        "//example.com/",
        "example.com",
        "",
    ],
)
def test_invalid_urls_are_refused(url: str) -> None:
    with pytest.raises(ForbiddenURLError) as info:
        validate_url(url, allow_http=True, allow_private=True)
    assert info.value.code == "invalid_url"


def test_http_needs_allow_http() -> None:
    with pytest.raises(ForbiddenURLError, match="https://"):
        validate_url("http://example.com/", allow_http=False, allow_private=False)
    parts = validate_url("http://example.com/", allow_http=True, allow_private=False)
    assert parts.scheme == "http"


def test_http_to_loopback_needs_both_flags() -> None:
    with pytest.raises(ForbiddenURLError):
        validate_url("http://127.0.0.1:9/", allow_http=True, allow_private=False)
    with pytest.raises(ForbiddenURLError):
        validate_url("http://127.0.0.1:9/", allow_http=False, allow_private=True)
    validate_url("http://127.0.0.1:9/", allow_http=True, allow_private=True)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "100.127.255.255",
        "169.254.0.1",
        "0.0.0.0",
        "::1",
        "::",
        "::ffff:192.168.0.1",
        "::ffff:169.254.169.254",
        "::7f00:1",
        "64:ff9b::7f00:1",
        "2002:a9fe:a9fe::",
        "fd00::1",
        "fe80::1",
        "ff05::2",
        "233.252.0.1",
        "203.0.113.7",
        # Global to some Python releases' tables, not to IANA's registry:
        "192.0.0.192",  # a cloud's metadata address
        "192.0.0.8",
        "::ffff:192.0.0.192",
        "3fff::1",  # documentation (2024)
        "5f00::1",  # SRv6 SIDs
        "2001:20::1",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:1.1.1.1", "64:ff9b::101:101"]
)
def test_global_addresses(address: str) -> None:
    assert not is_forbidden_address(ipaddress.ip_address(address))


async def test_check_endpoint_url_refuses_loopback_names_without_asking_dns() -> None:
    for url in ("https://localhost/", "https://a.localhost./"):
        with pytest.raises(ForbiddenURLError) as info:
            await check_endpoint_url(url, allow_http=False, allow_private=False, resolve=False)
        assert info.value.code == "forbidden_address"


async def test_check_endpoint_url_resolves_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name whose DNS answer is private is refused at registration."""
    import ascend_webhooks.delivery.ssrf as ssrf

    async def fake_resolve(host: str, port: int) -> list[ssrf.IPAddress]:
        assert (host, port) == ("internal.example.com", 443)
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]

    monkeypatch.setattr(ssrf, "resolve_addresses", fake_resolve)
    with pytest.raises(ForbiddenURLError, match="resolves to a non-public address") as info:
        await check_endpoint_url(
            "https://internal.example.com/", allow_http=False, allow_private=False
        )
    assert info.value.code == "forbidden_address"
    # The refusal goes back to whoever registered the URL: it does not say which address, or
    # any token could map the service's internal names through its resolver.
    assert "10.0.0.5" not in str(info.value)
    # With the flag the name is not even resolved.
    await check_endpoint_url("https://internal.example.com/", allow_http=False, allow_private=True)


async def test_check_endpoint_url_accepts_an_unresolvable_name() -> None:
    # .invalid never resolves (RFC 6761); the connect-time check guards it later.
    await check_endpoint_url(
        "https://receiver.invalid/hooks", allow_http=False, allow_private=False
    )


async def test_check_endpoint_url_validates_before_resolving() -> None:
    with pytest.raises(ForbiddenURLError):
        await check_endpoint_url("https://[::1]/", allow_http=False, allow_private=False)
    with pytest.raises(ForbiddenURLError):
        await check_endpoint_url("http://example.com/", allow_http=False, allow_private=False)
    await check_endpoint_url("https://8.8.8.8/", allow_http=False, allow_private=False)


async def test_names_whose_dns_hangs_hold_up_no_other_name(hung_dns: HungDNS) -> None:
    """More names whose nameserver never answers than asyncio's default pool has threads (on
    any machine): a healthy name still resolves at once."""
    dead = [asyncio.create_task(resolve_addresses(hung_dns.dead(i), 443)) for i in range(40)]
    await asyncio.sleep(0)  # every dead lookup is asked for first
    try:
        async with asyncio.timeout(2):
            assert await resolve_addresses(HEALTHY, 443) == LOOPBACK
    finally:
        for task in dead:
            task.cancel()
        await asyncio.gather(*dead, return_exceptions=True)


async def test_a_host_whose_dns_hangs_takes_one_thread_however_often_it_is_asked(
    hung_dns: HungDNS,
) -> None:
    name = hung_dns.dead(0)
    for _ in range(20):  # attempts that each give up on the lookup, one after the other
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await resolve_addresses(name, 443)
    waiting = [asyncio.create_task(resolve_addresses(name, 443)) for _ in range(20)]
    await asyncio.sleep(0.05)
    assert (hung_dns.calls[name], hung_dns.hanging) == (1, 1)

    hung_dns.release()
    for outcome in await asyncio.gather(*waiting, return_exceptions=True):
        assert isinstance(outcome, socket.gaierror)
    # An ended lookup is not kept: the next caller asks afresh.
    with pytest.raises(socket.gaierror):
        await resolve_addresses(name, 443)
    assert hung_dns.calls[name] == 2


async def test_lookups_beyond_the_thread_limit_wait_their_turn(hung_dns: HungDNS) -> None:
    lookups = ssrf._Lookups(limit=2, idle_seconds=0.01)
    dead = [asyncio.create_task(lookups.resolve(hung_dns.dead(i), 443)) for i in range(2)]
    healthy = asyncio.create_task(lookups.resolve(HEALTHY, 443))
    await asyncio.sleep(0.1)
    assert not healthy.done()
    assert (hung_dns.hanging, lookups._threads) == (2, 2)

    hung_dns.release()
    assert await healthy == LOOPBACK
    for outcome in await asyncio.gather(*dead, return_exceptions=True):
        assert isinstance(outcome, socket.gaierror)
    for _ in range(400):  # a thread ends once idle
        if not lookups._threads:
            break
        await asyncio.sleep(0.005)
    assert lookups._threads == 0


async def test_a_lookup_with_no_thread_to_run_on_fails_as_a_lookup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    lookups = ssrf._Lookups(limit=2)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    with pytest.raises(OSError, match="cannot start a resolver thread"):
        await lookups.resolve("receiver.example.test", 443)
    assert (lookups._threads, len(lookups._queued), lookups._by_host) == (0, 0, {})
