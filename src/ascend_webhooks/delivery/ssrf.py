"""The SSRF guard: which endpoint URLs and which addresses a delivery may be sent to.

An endpoint URL is chosen by an organization, but the POST leaves from our network: without a
guard, ``https://169.254.169.254/`` or ``http://localhost:6379/`` would make the service attack
its own neighbours. The guard runs twice (SPEC section 3):

* at **registration** (:func:`check_endpoint_url`): the URL is validated and its name resolved;
  a name that resolves to any non-global address is refused (422 in the API). A name that does
  not resolve (yet) is *accepted*: DNS for a new receiver often appears after its webhook is
  configured, and the connect-time check below guards it anyway.
* at **connect time** (:mod:`ascend_webhooks.delivery.transport`): the name is resolved again
  and the connection is pinned to an address checked by :func:`is_forbidden_address`, so a name
  that later starts to resolve to a private address (DNS rebinding) is refused then.

IP-literal hosts are parsed the way browsers and C resolvers read them (WHATWG URL IPv4
parser): ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and ``127.1`` are all 127.0.0.1 to
``getaddrinfo``, so they are all loopback here. IPv6 forms that embed an IPv4 address
(IPv4-mapped ``::ffff:0:0/96``, IPv4-compatible ``::/96``, NAT64 ``64:ff9b::/96`` and 6to4
``2002::/16``) are judged by the address they embed.

Everything here is synchronous and pure except the resolution (:func:`resolve_addresses`).
The flag ``allow_private`` (``ASCEND_WEBHOOKS_ALLOW_PRIVATE_NETWORKS``) lifts the address
checks, for tests and for operators delivering inside their own network.

**Resolution** is the system resolver's (``getaddrinfo``: ``/etc/hosts``, nsswitch, search
domains, as the operator's other tools see them) on threads of this module's own. It blocks,
and an attempt that gives up on it (its deadline) leaves the thread blocked until the resolver
gives up too (by default 5 s per nameserver and try, two tries). On asyncio's default executor,
whose min(32, CPUs + 4) threads everything shares, a few endpoints whose nameserver never
answers took every thread, and a healthy endpoint's lookup waited behind them (SPEC: a dead
endpoint never holds up another). Here:

* callers asking for a host that is being looked up wait for that same lookup, so a dead host
  holds one thread however many attempts ask for it;
* up to ``RESOLVER_THREADS`` (256) hosts are looked up at once, the rest wait in order: a
  hung lookup's thread was measured at 13 KiB of memory, so it takes that many dead hosts at
  once to delay another lookup, and then only until the oldest gives up;
* the threads are daemons (a stopping process does not wait for a dead nameserver), started as
  needed and ended after a minute idle: a thread per lookup cost ~0.2 ms more each, kept
  threads cost what ``loop.getaddrinfo`` does (~0.07 ms for a name in ``/etc/hosts``).

Nothing is cached here: the transport keeps a name's pinned client for ``resolve_ttl``, and
IP-literal hosts never reach the resolver. An asynchronous resolver (aiodns over c-ares) would
need no threads, but c-ares follows only the files and DNS of nsswitch, not its modules (mDNS,
systemd-resolved, myhostname), so a name could resolve here otherwise than everywhere else on
the machine; and it is a compiled dependency more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import threading
import urllib.parse
from collections import deque
from concurrent.futures import Future

__all__ = [
    "RESOLVER_THREADS",
    "RESOLVE_TIMEOUT",
    "ForbiddenURLError",
    "IPAddress",
    "check_endpoint_url",
    "default_port",
    "is_forbidden_address",
    "parse_ip_host",
    "resolve_addresses",
    "validate_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a registration-time lookup may take before the URL is accepted unresolved.
RESOLVE_TIMEOUT = 2.0

#: Hosts looked up at once, each on a thread (see the module's docstring).
RESOLVER_THREADS = 256

# Well-known IPv6 prefixes that carry an IPv4 address in their last 32 bits.
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
# IANA's special-purpose ranges that are not globally reachable (with 64:ff9b:1::/48, RFC
# 8215's operator-local NAT64, and fec0::/10, site-local), written out: Python's own
# tables (``is_global``) differ by release (3.11.7 holds most of 192.0.0.0/24 global, where
# 192.0.0.192 is a cloud's metadata address; 3fff::/20 came in 2024). 192.0.0.0/24 and
# 2001::/23 are refused whole, their few anycast exceptions included: no webhook lives there.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(network)
    for network in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8",
    )
)  # fmt: skip
# A DNS label: letters, digits, hyphens (underscores occur in real names, e.g. SRV-style).
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class ForbiddenURLError(ValueError):
    """The URL may not be used as a webhook endpoint; the message says why.

    ``code`` is ``"forbidden_address"`` when the host is (or resolves to) a non-global
    address, ``"invalid_url"`` for every other reason (scheme, userinfo, port, host syntax).
    """

    def __init__(self, message: str, *, code: str = "invalid_url") -> None:
        super().__init__(message)
        self.code = code


def is_forbidden_address(ip: IPAddress) -> bool:
    """True for any address that is not a global unicast address (SSRF targets).

    Loopback, private, link-local, CGNAT (100.64/10), unique-local (fc00::/7), site-local,
    multicast, reserved, unspecified, broadcast, documentation and benchmarking ranges, and
    IPv6 addresses that embed one of those.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_forbidden_address(embedded)
    if any(ip in network for network in _NOT_GLOBAL):
        return True
    return not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_unspecified


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        # ::/96 also holds :: and ::1, which are judged as themselves (both non-global).
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_ip_host(host: str) -> IPAddress | None:
    """The address an IP-literal host denotes, or None if the host is a name.

    ``host`` is a URL hostname without brackets (as ``SplitResult.hostname`` gives it).
    Raises ForbiddenURLError for a host that looks numeric but is no valid address
    (``1.2.3.4.5``, ``256.0.0.1``): resolvers disagree on those, so they are refused.
    """
    if ":" in host:
        if "%" in host:
            raise ForbiddenURLError("IPv6 zone identifiers are not allowed in endpoint URLs")
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise ForbiddenURLError(f"invalid IPv6 address {host!r}") from None
    return _parse_ipv4(host)


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The WHATWG URL standard's IPv4 parser (what browsers, curl and inet_aton accept)."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()  # one trailing dot: "127.0.0.1." is still 127.0.0.1
    last = parts[-1]
    if not (last.isascii() and last.isdigit()) and _parse_ipv4_number(last) is None:
        return None  # the last label is not a number: a domain name
    if len(parts) > 4:
        raise ForbiddenURLError(f"invalid IPv4 address {host!r}")
    numbers = []
    for part in parts:
        number = _parse_ipv4_number(part)
        if number is None:
            raise ForbiddenURLError(f"invalid IPv4 address {host!r}")
        numbers.append(number)
    *head, tail = numbers
    if any(n > 255 for n in head) or tail >= 256 ** (5 - len(numbers)):
        raise ForbiddenURLError(f"invalid IPv4 address {host!r}")
    value = tail
    for index, n in enumerate(head):
        value += n * 256 ** (3 - index)
    return ipaddress.IPv4Address(value)


def _parse_ipv4_number(part: str) -> int | None:
    if part == "":
        return None
    base = 10
    if part[:2] in ("0x", "0X"):
        part, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        part, base = part[1:], 8
    if part == "":
        return 0  # "0x" alone is zero
    digits = {10: "0123456789", 16: "0123456789abcdefABCDEF", 8: "01234567"}[base]
    if any(c not in digits for c in part):
        return None
    return int(part, base)


def validate_url(url: str, *, allow_http: bool, allow_private: bool) -> urllib.parse.SplitResult:
    """Check an endpoint URL's syntax, scheme, port and IP-literal host; return it split.

    Raises ForbiddenURLError. Names are not resolved here (see :func:`check_endpoint_url`).
    """
    if not isinstance(url, str) or not url:
        raise ForbiddenURLError("the URL must be a non-empty string")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ForbiddenURLError("the URL must not contain whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ForbiddenURLError(f"invalid URL: {exc}") from None
    allowed = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in allowed:
        only = "http:// or https://" if allow_http else "https://"
        raise ForbiddenURLError(f"the URL must start with {only}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ForbiddenURLError("credentials (user:password@) are not allowed in the URL")
    if port == 0:
        raise ForbiddenURLError("port 0 is not a valid port")
    host = parts.hostname
    if not host:
        raise ForbiddenURLError("the URL has no host")
    ip = parse_ip_host(host)
    if ip is None:
        _check_name(host, allow_private=allow_private)
    elif not allow_private and is_forbidden_address(ip):
        raise ForbiddenURLError(f"{ip} is not a public address", code="forbidden_address")
    return parts


def _check_name(host: str, *, allow_private: bool) -> None:
    name = host.rstrip(".")
    if not name or ".." in name or host.endswith(".."):  # one trailing dot at most
        raise ForbiddenURLError(f"invalid host name {host!r}")
    if not name.isascii():
        # IDNA 2003 (Python) and UTS 46 (the HTTP client) encode some names differently; the
        # connect-time pin must name exactly what the client looks up, so only ASCII is taken.
        raise ForbiddenURLError(
            f"write the internationalized host name {host!r} in its ASCII (xn--) form"
        )
    ascii_name = name
    if len(ascii_name) > 253 or not all(_LABEL.match(label) for label in ascii_name.split(".")):
        raise ForbiddenURLError(f"invalid host name {host!r}")
    if not allow_private and (ascii_name == "localhost" or ascii_name.endswith(".localhost")):
        # RFC 6761: resolvers answer loopback for these without asking DNS.
        raise ForbiddenURLError(f"{host!r} is a loopback name", code="forbidden_address")


async def resolve_addresses(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (raises socket.gaierror or OSError).

    Looked up by the system resolver on threads of this module's own (see the module's
    docstring): a name whose nameserver never answers holds up no other name.
    """
    return await _LOOKUPS.resolve(host, port)


class _Lookups:
    """``getaddrinfo`` on daemon threads of its own: one lookup per host at a time (callers
    asking for a host already being looked up wait for that same lookup), at most ``limit``
    at once (the rest wait their turn, in order). A thread is started when no idle one is
    left and ends after ``idle_seconds`` without work.
    """

    def __init__(self, limit: int, idle_seconds: float = 60.0) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        # Lookups are asked for from any thread's event loop, and handed to these threads.
        self._lock = threading.Lock()
        self._work_ready = threading.Condition(self._lock)
        self._by_host: dict[str, Future[list[IPAddress]]] = {}
        self._queued: deque[tuple[str, int, Future[list[IPAddress]]]] = deque()
        self._threads = 0
        self._idle = 0

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        future = self.lookup(host, port)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[list[IPAddress]] = loop.create_future()

        def wake(done: Future[list[IPAddress]]) -> None:
            with contextlib.suppress(RuntimeError):  # that loop has closed meanwhile
                loop.call_soon_threadsafe(_settle, waiter, done)

        # Not asyncio.wrap_future: a caller that gives up would cancel a queued lookup that
        # other callers wait for too.
        future.add_done_callback(wake)
        return list(await waiter)

    def lookup(self, host: str, port: int) -> Future[list[IPAddress]]:
        """The lookup of ``host``: the one in flight, else a new one."""
        with self._lock:
            future = self._by_host.get(host)
            if future is not None:
                return future
            future = self._by_host[host] = Future()
            self._queued.append((host, port, future))
            if self._idle >= len(self._queued):
                self._work_ready.notify()
                return future
            if self._threads >= self.limit:
                return future
            self._threads += 1
        try:
            # Daemon threads: a process told to stop does not wait for a nameserver that
            # never answers (a ThreadPoolExecutor joins its threads at exit).
            threading.Thread(target=self._work, name="ascend-webhooks-dns", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had: this lookup fails, not the caller
            with self._lock:
                self._threads -= 1
                try:
                    self._queued.remove((host, port, future))
                except ValueError:
                    return future  # a busy thread took it meanwhile
            self._end(host, future, OSError(f"cannot start a resolver thread: {exc}"))
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queued:
                    self._idle += 1
                    woken = self._work_ready.wait(self.idle_seconds)
                    self._idle -= 1
                    if not woken and not self._queued:
                        self._threads -= 1
                        return
                host, port, future = self._queued.popleft()
            try:
                result: list[IPAddress] | BaseException = _getaddrinfo(host, port)
            except Exception as exc:  # handed to the callers, who expect OSError and the like
                result = exc
            self._end(host, future, result)

    def _end(
        self, host: str, future: Future[list[IPAddress]], result: list[IPAddress] | BaseException
    ) -> None:
        with self._lock:
            if self._by_host.get(host) is future:
                del self._by_host[host]  # the next caller asks afresh: answers are not kept
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


def _settle(waiter: asyncio.Future[list[IPAddress]], done: Future[list[IPAddress]]) -> None:
    if waiter.done():  # its caller gave up waiting
        return
    error = done.exception()
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(done.result())


def _getaddrinfo(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        text = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 scope id
        address = ipaddress.ip_address(text)
        if address not in addresses:
            addresses.append(address)
    return addresses


_LOOKUPS = _Lookups(RESOLVER_THREADS)


def default_port(parts: urllib.parse.SplitResult) -> int:
    """The port the URL connects to."""
    return parts.port or (443 if parts.scheme == "https" else 80)


async def check_endpoint_url(
    url: str, *, allow_http: bool, allow_private: bool, resolve: bool = True
) -> None:
    """Registration-time check: validate, then refuse a name resolving to a private address.

    A name that does not resolve, or not within RESOLVE_TIMEOUT, is accepted: its DNS may
    not exist yet, and every attempt checks the address again before connecting.
    """
    parts = validate_url(url, allow_http=allow_http, allow_private=allow_private)
    host = parts.hostname
    assert host is not None  # validate_url guarantees a host
    if not resolve or allow_private or parse_ip_host(host) is not None:
        return
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            addresses = await resolve_addresses(host, default_port(parts))
    except (OSError, TimeoutError, UnicodeError):
        return
    for address in addresses:
        if is_forbidden_address(address):
            # Which address is not said: the caller is any organization's token, and the
            # answer would map the service's internal names through its resolver.
            raise ForbiddenURLError(
                f"{host} resolves to a non-public address", code="forbidden_address"
            )
