"""Real webhook receivers on loopback, for tests: HTTP or HTTPS, well-behaved or not.

A :class:`Receiver` is a small HTTP/1.1 server on ``127.0.0.1`` with an ephemeral port, running
in the test's event loop. It records every request (raw body and headers, and, given a secret,
whether the Ascend signature verifies) and answers according to its *behaviour*:

* ``Reply(status, body, headers, delay)``: an ordinary response (200, 201, 204, 3xx, 4xx, 5xx…);
* ``Hang()``: reads the request and never answers (a dead endpoint);
* ``Stall(status)``: sends the head and part of a body, then never finishes it;
* ``Stream(status)``: answers with an endless chunked body (a receiver streaming megabytes);
* ``Close()``: closes the connection without answering; ``Reset()``: aborts it with a TCP RST.

Behaviours can be scripted: ``receiver.script(Reply(500), Hang(), then=Reply(200))`` plays the
given ones for the next requests in order and ``then`` for every later one;
``receiver.fail_times(3)`` is "recover after 3 failures"; ``receiver.respond_with(fn)`` answers
each request with ``fn(request)`` (say, 401 unless ``request.verified``).

It is written on bare ``asyncio`` streams rather than a web framework on purpose: the interesting
cases are socket-level misbehaviour (hang, half a body, close, reset) that frameworks hide.

Use it as fixtures, bound to names in the test module (a plain ``from … import receivers``
would make ruff see every test argument as a redefinition)::

    from tests.support import receivers as receiver_fixtures
    from tests.support.receivers import ReceiverFactory, Reply, TLSFiles

    receivers = receiver_fixtures.receivers
    tls = receiver_fixtures.tls

    async def test_x(receivers: ReceiverFactory, tls: TLSFiles) -> None:
        plain = await receivers(secret="whsec_test")
        secure = await receivers(tls=tls, behaviour=Reply(204))
        ...
        await plain.wait_for_requests(1)

or directly: ``async with Receiver(secret=...) as receiver: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from socket import SO_LINGER, SOL_SOCKET
from typing import Any, Protocol

import pytest
import trustme

from ascend_webhooks import Event, WebhookError, verify

__all__ = [
    "Behaviour",
    "Close",
    "Hang",
    "Receiver",
    "ReceiverFactory",
    "RecordedRequest",
    "Reply",
    "Reset",
    "Stall",
    "Stream",
    "TLSFiles",
    "make_tls",
    "receivers",
    "tls",
]

_MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Reply:
    """Answer with this status, body and headers, after ``delay`` seconds."""

    status: int = 200
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Read the request, never answer; the connection stays open until the receiver closes."""


@dataclass(frozen=True)
class Stall:
    """Send the status line and the first bytes of a body that never completes."""

    status: int = 200


@dataclass(frozen=True)
class Stream:
    """Answer ``status`` with an endless chunked body, until the client goes away."""

    status: int = 200
    chunk: bytes = b"x" * 16384


@dataclass(frozen=True)
class Close:
    """Close the connection after reading the request, without a response."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST after reading the request."""


Behaviour = Reply | Hang | Stall | Stream | Close | Reset


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: raw body, headers (names lower-cased), verification result."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes
    received_at: float  # time.monotonic()
    verified: bool | None  # None when the receiver has no secret
    verify_error: str | None
    event: Event | None

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name."""
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class TLSFiles:
    """A throwaway certificate authority and a server certificate for 127.0.0.1/localhost."""

    ca: Any  # trustme.CA
    ca_file: Path  # PEM of the CA: what a client must trust
    server_context: ssl.SSLContext


def make_tls(directory: Path) -> TLSFiles:
    """Create a CA (written to ``directory/ca.pem``) and a server context it signed."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return TLSFiles(ca=ca, ca_file=ca_file, server_context=context)


class Receiver:
    """A webhook receiver on 127.0.0.1: records requests and answers per its behaviour."""

    def __init__(
        self,
        *,
        secret: str | Sequence[str] | None = None,
        behaviour: Behaviour | None = None,
        tls: TLSFiles | None = None,
        path: str = "/hook",
        tolerance: int | None = 300,
    ) -> None:
        self.secret = secret
        self.tls = tls
        self.path = path
        self.tolerance = tolerance
        self.requests: list[RecordedRequest] = []
        self.connections_opened = 0
        self._default: Behaviour = behaviour or Reply(200)
        self._script: list[Behaviour] = []
        self._chooser: Callable[[RecordedRequest], Behaviour] | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._arrived = asyncio.Condition()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Receiver:
        """Listen on an ephemeral port; returns self."""
        self._server = await asyncio.start_server(
            self._serve,
            "127.0.0.1",
            0,
            ssl=self.tls.server_context if self.tls else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening, drop every open connection (hanging ones included)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- configuration ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The endpoint URL to register (``http(s)://127.0.0.1:PORT/hook``)."""
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    def respond(self, behaviour: Behaviour) -> None:
        """Answer every later request this way (clears any script)."""
        self._script.clear()
        self._chooser = None
        self._default = behaviour

    def script(self, *behaviours: Behaviour, then: Behaviour | None = None) -> None:
        """Answer the next requests with ``behaviours`` in order, then with ``then``."""
        self._script = list(behaviours)
        if then is not None:
            self._default = then

    def respond_with(self, choose: Callable[[RecordedRequest], Behaviour]) -> None:
        """Answer each later request with ``choose(request)``, e.g. 401 unless verified."""
        self._script.clear()
        self._chooser = choose

    def fail_times(self, count: int, failure: Behaviour | None = None) -> None:
        """Fail the next ``count`` requests (default: 500), then answer 200."""
        self.script(*[failure or Reply(500)] * count, then=Reply(200))

    # -- what arrived ----------------------------------------------------------------------

    @property
    def verified_requests(self) -> list[RecordedRequest]:
        """The requests whose signature verified with the receiver's secret."""
        return [r for r in self.requests if r.verified]

    async def wait_for_requests(self, count: int, within: float = 10.0) -> list[RecordedRequest]:
        """Wait until at least ``count`` requests arrived; raises TimeoutError otherwise."""
        async with asyncio.timeout(within), self._arrived:
            await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    # -- the server ------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections_opened += 1
        try:
            while await self._one_exchange(reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError, asyncio.IncompleteReadError):
            # CancelledError is swallowed on purpose: the receiver cancels its own handlers on
            # close, and asyncio (3.11) logs a spurious error for a cancelled handler task.
            pass
        except (asyncio.LimitOverrunError, ValueError, ssl.SSLError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    async def _one_exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request on a kept-alive connection; False when the connection is done."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        if len(head) > _MAX_HEAD:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(reader, headers)
        request = await self._record(method, target, headers, body)
        if self._script:
            behaviour = self._script.pop(0)
        elif self._chooser is not None:
            behaviour = self._chooser(request)
        else:
            behaviour = self._default
        return await self._answer(behaviour, writer, headers)

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        return await reader.readexactly(int(headers.get("content-length", "0")))

    async def _record(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> RecordedRequest:
        verified: bool | None = None
        error: str | None = None
        event: Event | None = None
        if self.secret is not None:
            try:
                event = verify(body, headers, self.secret, tolerance=self.tolerance)
                verified = True
            except WebhookError as exc:
                verified, error = False, f"{type(exc).__name__}: {exc}"
        request = RecordedRequest(
            method, target, headers, body, time.monotonic(), verified, error, event
        )
        async with self._arrived:
            self.requests.append(request)
            self._arrived.notify_all()
        return request

    async def _answer(
        self, behaviour: Behaviour, writer: asyncio.StreamWriter, headers: Mapping[str, str]
    ) -> bool:
        if isinstance(behaviour, Reply):
            if behaviour.delay:
                await asyncio.sleep(behaviour.delay)
            writer.write(_head(behaviour.status, behaviour.headers, behaviour.body))
            writer.write(behaviour.body)
            await writer.drain()
            return headers.get("connection", "").lower() != "close"
        if isinstance(behaviour, Hang):
            await asyncio.Event().wait()  # until close() cancels this handler
        elif isinstance(behaviour, Stall):
            writer.write(_status_line(behaviour.status) + b"Content-Length: 1000\r\n\r\npartial")
            await writer.drain()
            await asyncio.Event().wait()
        elif isinstance(behaviour, Stream):
            writer.write(_status_line(behaviour.status) + b"Transfer-Encoding: chunked\r\n\r\n")
            frame = b"%x\r\n%s\r\n" % (len(behaviour.chunk), behaviour.chunk)
            while not writer.is_closing():
                writer.write(frame)
                await writer.drain()
        elif isinstance(behaviour, Reset):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(SOL_SOCKET, SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        return False  # Close, and every other misbehaviour, ends the connection


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")


def _head(status: int, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"{name}: {value}\r\n" for name, value in headers.items()]
    if status >= 200 and status not in (204, 304):
        lines.append(f"Content-Length: {len(body)}\r\n")
    if not any(name.lower() == "content-type" for name in headers):
        lines.append("Content-Type: text/plain\r\n")
    return _status_line(status) + "".join(lines).encode("latin-1") + b"\r\n"


class ReceiverFactory(Protocol):
    """``await receivers(secret=..., behaviour=..., tls=...)``: a started Receiver."""

    def __call__(self, **kwargs: Any) -> Awaitable[Receiver]: ...


@pytest.fixture
def tls(tmp_path: Path) -> TLSFiles:
    """A fresh test CA (``tls.ca_file`` to trust) and a server certificate for 127.0.0.1."""
    return make_tls(tmp_path)


@pytest.fixture
async def receivers() -> AsyncIterator[ReceiverFactory]:
    """Start receivers with ``await receivers(**kwargs)``; all are closed after the test."""
    started: list[Receiver] = []

    async def start(**kwargs: Any) -> Receiver:
        receiver = await Receiver(**kwargs).start()
        started.append(receiver)
        return receiver

    try:
        yield start
    finally:
        for receiver in started:
            with contextlib.suppress(Exception):
                await receiver.close()
