"""The HTTP side of an attempt: POST the signed body, classify what happened.

:class:`Transport` is the seam the worker calls (tests may pass their own); the real one,
:class:`PyreqwestTransport`, is built on **pyreqwest** (Rust reqwest/hyper behind an asyncio
API), chosen by measurement: ``bench/bench_http_clients.py`` sends 64 concurrent signed POSTs to
a local sink, and pyreqwest sustains a multiple of aiohttp's rate on the same two cores.

What every attempt gets:

* pooled keep-alive connections (one pool per client, see below); redirects are **never**
  followed (a 3xx is a failed attempt, SPEC section 1); no proxy from the environment (the
  SSRF pinning below must decide where the connection goes); no response decompression;
* one timeout from connect to the last byte read (``Settings.attempt_timeout``), enforced by
  reqwest itself (an ``asyncio.timeout`` around every request cost ~20 µs of timer bookkeeping
  per attempt, measurable at thousands per second); our own name lookup counts against the
  same deadline;
* at most ``excerpt_bytes`` (4 KiB) of the response body are read and kept as the excerpt; the
  rest is never read, the connection is dropped instead, so a receiver streaming megabytes
  costs nothing (reqwest's own read-ahead per response is held to about the excerpt too,
  instead of its default 64 KiB);
* failures classified into short strings stored with the attempt: ``timeout``,
  ``connect_refused``, ``connect_error``, ``tls_error``, ``dns_error``, ``connection_reset``
  (reset, or closed before a complete response), ``protocol_error`` (not valid HTTP),
  ``forbidden_address`` / ``invalid_url`` (SSRF guard). A response with any status is not an
  error: ``status_code`` carries it, and the retry policy decides.

**SSRF at connect time.** reqwest resolves names itself and offers no hook to veto an address,
but ``ClientBuilder.resolve(domain, ip)`` pins a name to an address. So for a named host the
transport resolves the name itself (:func:`~ascend_webhooks.delivery.ssrf.resolve_addresses`:
the system resolver, on threads of its own that a few names whose DNS hangs cannot fill),
refuses the attempt if *any* address is non-global
(:func:`~ascend_webhooks.delivery.ssrf.is_forbidden_address`), and sends through a client
pinned to a validated address. Pinned clients are cached per (scheme, host, port) for
``resolve_ttl`` seconds (30 s): after that the name is resolved again, so a name that starts
resolving to a private address (DNS rebinding) is refused within that time. When the address is
unchanged the cached client (and its warm connections) is kept. IP-literal hosts are validated
directly and share one unpinned client. With ``allow_private`` (tests, private deployments)
every host shares the unpinned client and reqwest resolves as usual.

HTTPS verifies certificates against the system roots plus, optionally, the PEM bundle
``ca_file`` (``ASCEND_WEBHOOKS_CA_FILE``: private CAs, and the tests' throwaway CA).

**Cost per POST.** A worker posts thousands of times a second from one event loop, so the
common path stays lean (``bench/bench_transport.py`` holds it against a bare pyreqwest loop):
the URL's validation is cached per (URL, ``allow_http``, ``allow_private``) and still looked up
on every attempt, a client whose pin is fresh is picked without a coroutine, the URL is kept
parsed for reqwest (bounded), an empty body is not read at all and a short one in one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple, Protocol

from pyreqwest.bytes import Bytes
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import DecodeError, PyreqwestError, RequestError
from pyreqwest.http import Url
from pyreqwest.response import ResponseBodyReader

from .. import __version__
from .ssrf import (
    ForbiddenURLError,
    IPAddress,
    default_port,
    is_forbidden_address,
    parse_ip_host,
    resolve_addresses,
    validate_url,
)

__all__ = [
    "EXCERPT_BYTES",
    "USER_AGENT",
    "PyreqwestTransport",
    "Resolver",
    "Response",
    "Transport",
    "classify_error",
]

USER_AGENT = f"ascend-webhooks/{__version__}"
EXCERPT_BYTES = 4096
_MAX_PARSED_URLS = 4096  # endpoint URLs kept parsed
logger = logging.getLogger(__name__)

#: Resolves (host, port) to addresses; raises OSError when the name does not resolve.
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class Response(NamedTuple):
    """What one POST produced: a status, or an error class (never both absent).

    Immutable; a named tuple rather than a frozen dataclass, which costs twice as much to
    build (one per attempt).
    """

    status_code: int | None
    error: str | None
    excerpt: str | None
    duration_ms: float


class Transport(Protocol):
    """Sends one attempt. Must not raise for anything the network or the receiver does."""

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - the attempt's deadline is part of the call's contract
    ) -> Response: ...

    async def close(self) -> None: ...


class _AttemptRefused(Exception):
    """The attempt may not be sent; ``code`` is the error class to record."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Pinned:
    client: Client
    address: IPAddress
    expires_at: float


class PyreqwestTransport:
    """The production transport: pooled, no redirects, SSRF-pinned, capped body reads."""

    def __init__(
        self,
        *,
        allow_http: bool = False,
        allow_private: bool = False,
        ca_file: str | Path | None = None,
        excerpt_bytes: int = EXCERPT_BYTES,
        resolve_ttl: float = 30.0,
        max_pinned_hosts: int = 512,
        max_idle_per_host: int = 512,
        user_agent: str = USER_AGENT,
        resolver: Resolver = resolve_addresses,
        is_forbidden: Callable[[IPAddress], bool] = is_forbidden_address,
    ) -> None:
        self.allow_http = allow_http
        self.allow_private = allow_private
        self.excerpt_bytes = excerpt_bytes
        # What reqwest reads ahead of us into memory per response (its default is 64 KiB):
        # about the excerpt, so that a thousand attempts in flight cannot hold 64 MiB.
        self._read_buffer = max(excerpt_bytes, 1024)
        self.resolve_ttl = resolve_ttl
        self.max_pinned_hosts = max_pinned_hosts
        # Kept at least as large as the attempts a worker may have in flight to one endpoint:
        # with fewer, every request beyond the idle cap opens a new connection and closes it.
        self.max_idle_per_host = max_idle_per_host
        self.user_agent = user_agent
        # Seams for tests (a fake DNS) and for deployments with their own address policy.
        self._resolver = resolver
        self._is_forbidden = is_forbidden
        self._ca_pem = _read_ca_file(ca_file) if ca_file else None
        self._shared: Client | None = None
        self._urls: dict[str, Url] = {}
        self._pinned: OrderedDict[tuple[str, str, int], _Pinned] = OrderedDict()
        self._locks: dict[tuple[str, str, int], asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired: set[Client] = set()  # replaced clients not closed yet
        self._linger = 60.0  # how long a replaced client may still serve in-flight attempts

    # -- the attempt -----------------------------------------------------------------------

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeout: float,  # noqa: ASYNC109 - see Transport.post
    ) -> Response:
        """POST ``body`` to ``url``; every outcome becomes a Response, nothing raises."""
        started = time.perf_counter()
        status: int | None = None
        excerpt: str | None = None
        error: str | None = None
        if timeout + 5 > self._linger:
            self._linger = timeout + 5
        try:
            client = self._ready_client(url)
            if client is None:  # a name to (re)resolve: that counts against the deadline
                client = await self._client_for(url, timeout)
                spent = time.perf_counter() - started
                limit = _timedelta(timeout if spent < 0.001 else max(timeout - spent, 0.001))
            else:
                limit = _timedelta(timeout)  # one timedelta per timeout, reused
            request = (
                client.post(self._urls.get(url) or self._parse(url))
                .headers(headers if type(headers) is dict else dict(headers))
                .body_bytes(body)
                .timeout(limit)
                .streamed_read_buffer_limit(self._read_buffer)
                .build_streamed()
            )
            async with request as response:
                status = response.status
                # No read at all for an empty body (the usual answer to a webhook), and none
                # past a Content-Length already read.
                length = response.get_header("content-length")
                if length == "0":
                    pass
                elif (
                    length is not None
                    and len(length) < 10
                    and length.isdigit()
                    and int(length) <= self.excerpt_bytes
                ):
                    # The whole body is no longer than the excerpt (HTTP framing ends it
                    # there), and reqwest has read it ahead already: one call.
                    whole = await response.bytes()
                    excerpt = _text(whole) if whole else None
                else:  # longer, or of unknown length: read the excerpt's worth, no more
                    wanted = self.excerpt_bytes
                    reader = response.body_reader
                    chunk = await reader.read(wanted)  # the whole excerpt, as a rule
                    if chunk is not None:
                        data: Bytes | bytearray = chunk
                        if len(chunk) < wanted:
                            data = await self._read_more(reader, chunk, wanted)
                        excerpt = _text(data)
        except _AttemptRefused as exc:
            error = exc.code
            logger.info("attempt refused: %s", exc)
        except TimeoutError:  # the lookup's deadline, and pyreqwest's timeout errors
            error = "timeout"
        except PyreqwestError as exc:
            error = classify_error(exc)
        duration_ms = (time.perf_counter() - started) * 1000
        return Response(status, error, excerpt, duration_ms)

    def _parse(self, url: str) -> Url:
        """``url`` parsed for reqwest, kept for the next attempts (reqwest parses a string
        on every request). Only called once the URL has passed the SSRF checks."""
        try:
            parsed = Url(url)
        except ValueError as exc:  # valid to us, not to reqwest's parser: never sent
            raise _AttemptRefused("invalid_url", f"invalid URL {url!r}: {exc}") from None
        if len(self._urls) >= _MAX_PARSED_URLS:
            del self._urls[next(iter(self._urls))]  # the oldest
        self._urls[url] = parsed
        return parsed

    @staticmethod
    async def _read_more(reader: ResponseBodyReader, first: Bytes, wanted: int) -> bytearray:
        """Read on after a short first read, up to ``wanted`` bytes in all, or to the end."""
        kept = bytearray(first)
        while len(kept) < wanted:
            chunk = await reader.read(wanted - len(kept))
            if chunk is None:
                break
            kept += chunk
        return kept

    # -- clients ---------------------------------------------------------------------------

    def _ready_client(self, url: str) -> Client | None:
        """The client for ``url`` if no name has to be resolved first, else None.

        The URL is validated (a cached result: pure, per URL and settings) on every call,
        and a pinned client is used only while its resolution is fresh.
        """
        try:
            scheme, host, port, is_ip = _target(url, self.allow_http, self.allow_private)
        except ForbiddenURLError as exc:
            raise _AttemptRefused(exc.code, str(exc)) from None
        if self.allow_private or is_ip:
            return self._shared or self._shared_client()
        key = (scheme, host, port)
        entry = self._pinned.get(key)
        if entry is not None and entry.expires_at > time.monotonic():
            self._pinned.move_to_end(key)
            return entry.client
        return None

    async def _client_for(self, url: str, timeout: float) -> Client:  # noqa: ASYNC109
        try:
            scheme, host, port, is_ip = _target(url, self.allow_http, self.allow_private)
        except ForbiddenURLError as exc:
            raise _AttemptRefused(exc.code, str(exc)) from None
        if self.allow_private or is_ip:
            return self._shared_client()
        # reqwest times the request itself; the name lookup needs its own deadline.
        async with asyncio.timeout(timeout):
            return await self._pinned_client(scheme, host, port)

    def _shared_client(self) -> Client:
        if self._shared is None:
            self._shared = self._build()
        return self._shared

    async def _pinned_client(self, scheme: str, host: str, port: int) -> Client:
        key = (scheme, host, port)
        entry = self._pinned.get(key)
        if entry is not None and entry.expires_at > time.monotonic():
            self._pinned.move_to_end(key)
            return entry.client
        # One resolution per host at a time: concurrent attempts wait for it.
        async with self._locks.setdefault(key, asyncio.Lock()):
            entry = self._pinned.get(key)
            if entry is not None and entry.expires_at > time.monotonic():
                return entry.client
            addresses = await self._resolve(host, port)
            forbidden = [a for a in addresses if self._is_forbidden(a)]
            if forbidden:
                self._forget(key)
                raise _AttemptRefused(
                    "forbidden_address", f"{host} resolves to non-global {forbidden[0]}"
                )
            expires_at = time.monotonic() + self.resolve_ttl
            if entry is not None and entry.address in addresses:
                entry.expires_at = expires_at
                return entry.client
            self._forget(key)
            client = self._build(pin=(host, addresses[0]))
            self._pinned[key] = _Pinned(client, addresses[0], expires_at)
            while len(self._pinned) > self.max_pinned_hosts:
                self._forget(next(iter(self._pinned)))
            return client

    async def _resolve(self, host: str, port: int) -> list[IPAddress]:
        try:
            addresses = await self._resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise _AttemptRefused("dns_error", f"cannot resolve {host}: {exc}") from None
        if not addresses:
            raise _AttemptRefused("dns_error", f"{host} has no address")
        return addresses

    def _forget(self, key: tuple[str, str, int]) -> None:
        entry = self._pinned.pop(key, None)
        if entry is not None:
            self._retire(entry.client)

    def _retire(self, client: Client) -> None:
        """Close a replaced client once attempts still using it have had time to finish."""

        async def close_later() -> None:
            await asyncio.sleep(self._linger)
            self._retired.discard(client)
            await client.close()

        self._retired.add(client)
        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _build(self, pin: tuple[str, IPAddress] | None = None) -> Client:
        builder = (
            ClientBuilder()
            .follow_redirects(False)
            .user_agent(self.user_agent)
            .no_proxy()
            .referer(False)
            .gzip(False)
            .brotli(False)
            .zstd(False)
            .deflate(False)
            .pool_idle_timeout(timedelta(seconds=60))
            .pool_max_idle_per_host(self.max_idle_per_host)
        )
        if self._ca_pem is not None:
            builder = builder.add_root_certificate_pem(self._ca_pem)
        if pin is not None:
            # Port 0: connect to the port of the URL. reqwest looks the name up as written in
            # the URL, so the absolute form (trailing dot) is pinned too: a name that misses
            # the pin would go to the system resolver unchecked.
            name, address = pin
            builder = builder.resolve(name, str(address), 0).resolve(name + ".", str(address), 0)
        return builder.build()

    async def close(self) -> None:
        """Close every client (in-flight attempts are cut)."""
        clients = [entry.client for entry in self._pinned.values()]
        self._pinned.clear()
        if self._shared is not None:
            clients.append(self._shared)
            self._shared = None
        for task in list(self._retiring):
            task.cancel()
        clients.extend(self._retired)
        self._retired.clear()
        for client in clients:
            with contextlib.suppress(PyreqwestError):
                await client.close()


def _read_ca_file(path: str | Path) -> bytes:
    """The PEM bundle at ``path``; ValueError naming the file if it is missing or no CA bundle.

    Checked at start: reqwest silently ignores a bundle it cannot parse, which would only show
    later as every HTTPS attempt failing with ``tls_error``.
    """
    try:
        pem = Path(path).read_bytes()
        ssl.create_default_context().load_verify_locations(cadata=pem.decode("ascii"))
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise ValueError(f"the CA file {str(path)!r} is not a readable PEM bundle: {exc}") from None
    return pem


@functools.lru_cache(maxsize=4096)
def _target(url: str, allow_http: bool, allow_private: bool) -> tuple[str, str, int, bool]:
    """(scheme, ASCII host, port, host is an IP literal) of a valid URL; raises otherwise.

    Cached: validation is pure, and the same endpoint URLs come back attempt after attempt
    (a ForbiddenURLError is not cached, so refused URLs are checked every time).
    """
    parts = validate_url(url, allow_http=allow_http, allow_private=allow_private)
    host = parts.hostname
    assert host is not None  # validate_url guarantees a host
    is_ip = parse_ip_host(host) is not None
    return parts.scheme, host.rstrip("."), default_port(parts), is_ip


@functools.lru_cache(maxsize=1024)
def _timedelta(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


def _text(data: Bytes | bytearray) -> str:
    """A response excerpt as text: invalid UTF-8 and NUL characters (which PostgreSQL's text
    refuses, failing the whole record of outcomes) become U+FFFD."""
    text = str(data, "utf-8", "replace")
    return text.replace("\0", "\ufffd") if "\0" in text else text


def classify_error(exc: PyreqwestError) -> str:
    """The short error class of a pyreqwest failure (its chain of causes, matched by words)."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    causes = getattr(exc, "details", None) or {}
    text = " | ".join(
        [exc.message] + [c.get("message", "") for c in causes.get("causes") or []]
    ).lower()
    if "dns error" in text or "failed to lookup address" in text:
        return "dns_error"
    if "connection refused" in text:
        return "connect_refused"
    if any(
        word in text
        for word in ("certificate", "tls", "ssl", "handshake", "corrupt message", "alert")
    ):
        return "tls_error"
    if "timed out" in text:
        return "timeout"
    if any(
        word in text
        for word in ("reset", "closed before", "broken pipe", "connection closed", "eof")
    ):
        return "connection_reset"
    if isinstance(exc, DecodeError) or "parse" in text or "invalid" in text:
        return "protocol_error"
    if isinstance(exc, RequestError) and "(connect)" in text:
        return "connect_error"
    return "connection_reset" if "(sendrequest)" in text else "connect_error"
