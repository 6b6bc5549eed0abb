"""Transport classification against real loopback receivers: what each outcome becomes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ascend_webhooks.delivery.transport import EXCERPT_BYTES, USER_AGENT, PyreqwestTransport
from tests.support import receivers as receiver_fixtures
from tests.support.receivers import (
    Close,
    Hang,
    ReceiverFactory,
    Reply,
    Reset,
    Stall,
    Stream,
    TLSFiles,
)

receivers = receiver_fixtures.receivers
tls = receiver_fixtures.tls

BODY = b'{"id":"evt_1","type":"invoice.paid","data":{"amount":1200,"note":"caf\xc3\xa9"}}'


@pytest.fixture
async def transport() -> AsyncIterator[PyreqwestTransport]:
    opened = PyreqwestTransport(allow_http=True, allow_private=True)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("status", [200, 201, 202, 204, 400, 404, 410, 500, 502, 503])
async def test_any_status_is_reported_not_an_error(
    transport: PyreqwestTransport, receivers: ReceiverFactory, status: int
) -> None:
    receiver = await receivers(behaviour=Reply(status))
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert (response.status_code, response.error) == (status, None)
    assert response.duration_ms > 0


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(
    transport: PyreqwestTransport, receivers: ReceiverFactory, status: int
) -> None:
    target = await receivers()
    receiver = await receivers(behaviour=Reply(status, headers={"Location": target.url}))
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert (response.status_code, response.error) == (status, None)
    assert len(receiver.requests) == 1
    assert target.requests == []


async def test_body_and_headers_arrive_byte_identical(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers()
    headers = {"Content-Type": "application/json", "X-Ascend-Signature": "t=1,v1=" + "a" * 64}
    response = await transport.post(receiver.url, BODY, headers, 5.0)
    assert response.status_code == 200
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.target == "/hook"
    assert request.body == BODY
    assert request.header("content-type") == "application/json"
    assert request.header("x-ascend-signature") == headers["X-Ascend-Signature"]
    assert request.header("user-agent") == USER_AGENT


async def test_a_hanging_receiver_times_out_within_the_timeout(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Hang())
    started = time.monotonic()
    response = await transport.post(receiver.url, BODY, {}, 0.5)
    elapsed = time.monotonic() - started
    assert response.error == "timeout"
    assert 0.45 <= elapsed < 1.5
    assert len(receiver.requests) == 1


async def test_a_body_that_never_completes_times_out(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Stall(200))
    started = time.monotonic()
    response = await transport.post(receiver.url, BODY, {}, 0.5)
    assert response.error == "timeout"
    assert time.monotonic() - started < 1.5


async def test_a_slow_reply_inside_the_timeout_succeeds(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.2))
    response = await transport.post(receiver.url, BODY, {}, 2.0)
    assert (response.status_code, response.error) == (200, None)
    assert response.duration_ms >= 190


async def test_connection_refused(transport: PyreqwestTransport) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    response = await transport.post(f"http://127.0.0.1:{port}/hook", BODY, {}, 2.0)
    assert (response.status_code, response.error) == (None, "connect_refused")


@pytest.mark.parametrize("behaviour", [Close(), Reset()])
async def test_connection_dropped_without_answer(
    transport: PyreqwestTransport, receivers: ReceiverFactory, behaviour: Close | Reset
) -> None:
    receiver = await receivers(behaviour=behaviour)
    response = await transport.post(receiver.url, BODY, {}, 2.0)
    assert (response.status_code, response.error) == (None, "connection_reset")


async def test_response_excerpt_is_capped(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(500, body=b"e" * 100_000))
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert response.status_code == 500
    assert response.excerpt == "e" * EXCERPT_BYTES


async def test_endless_body_is_not_read_to_the_end(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Stream(200))
    started = time.monotonic()
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert (response.status_code, response.error) == (200, None)
    assert response.excerpt is not None
    assert len(response.excerpt) == EXCERPT_BYTES
    assert time.monotonic() - started < 2


async def test_small_excerpt_kept_whole_and_invalid_utf8_replaced(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(400, body=b"bad \xff request"))
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert response.excerpt == "bad \ufffd request"


async def test_https_with_the_trusted_test_ca(receivers: ReceiverFactory, tls: TLSFiles) -> None:
    receiver = await receivers(tls=tls)
    transport = PyreqwestTransport(allow_private=True, ca_file=tls.ca_file)
    try:
        response = await transport.post(receiver.url, BODY, {}, 5.0)
    finally:
        await transport.close()
    assert receiver.url.startswith("https://")
    assert (response.status_code, response.error) == (200, None)
    assert receiver.requests[0].body == BODY


async def test_https_with_an_untrusted_certificate_is_a_tls_error(
    receivers: ReceiverFactory, tls: TLSFiles, tmp_path: Path
) -> None:
    receiver = await receivers(tls=tls)
    transport = PyreqwestTransport(allow_private=True)  # the test CA is not trusted
    try:
        response = await transport.post(receiver.url, BODY, {}, 5.0)
    finally:
        await transport.close()
    assert (response.status_code, response.error) == (None, "tls_error")
    assert receiver.requests == []


async def test_https_to_a_plain_http_server_is_a_tls_error() -> None:
    async def plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # What a plain HTTP server says to a TLS ClientHello.
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = PyreqwestTransport(allow_private=True)
    try:
        response = await transport.post(f"https://127.0.0.1:{port}/hook", BODY, {}, 5.0)
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
    assert (response.status_code, response.error) == (None, "tls_error")


async def test_ssrf_guard_refuses_before_connecting(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    transport = PyreqwestTransport(allow_http=True, allow_private=False)
    try:
        by_ip = await transport.post(receiver.url, BODY, {}, 5.0)
        by_name = await transport.post(f"http://localhost:{receiver.port}/", BODY, {}, 5.0)
        by_trick = await transport.post(f"http://2130706433:{receiver.port}/", BODY, {}, 5.0)
    finally:
        await transport.close()
    assert by_ip.error == by_name.error == by_trick.error == "forbidden_address"
    assert receiver.requests == []


async def test_http_refused_unless_allowed(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    transport = PyreqwestTransport(allow_http=False, allow_private=True)
    try:
        response = await transport.post(receiver.url, BODY, {}, 5.0)
    finally:
        await transport.close()
    assert response.error == "invalid_url"
    assert receiver.requests == []


async def test_unresolvable_name_is_a_dns_error() -> None:
    transport = PyreqwestTransport(allow_http=True)
    try:
        response = await transport.post("https://receiver.invalid/hook", BODY, {}, 5.0)
    finally:
        await transport.close()
    assert (response.status_code, response.error) == (None, "dns_error")


async def test_receiver_can_answer_by_request(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    from ascend_webhooks import sign

    receiver = await receivers(secret="whsec_k")
    receiver.respond_with(lambda request: Reply(200 if request.verified else 401))
    good = await transport.post(receiver.url, BODY, sign(BODY, "whsec_k"), 5.0)
    bad = await transport.post(receiver.url, BODY, sign(BODY, "whsec_other"), 5.0)
    assert (good.status_code, bad.status_code) == (200, 401)
    assert [r.verified for r in receiver.requests] == [True, False]


def test_a_bad_ca_file_is_refused_at_start(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"missing\.pem"):
        PyreqwestTransport(ca_file=missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=r"garbage\.pem"):
        PyreqwestTransport(ca_file=garbage)


async def test_a_url_accepted_under_other_settings_is_still_checked(
    transport: PyreqwestTransport, receivers: ReceiverFactory
) -> None:
    """Validated URLs are cached per URL *and* settings: a stricter transport checks anew."""
    receiver = await receivers()
    assert (await transport.post(receiver.url, BODY, {}, 5.0)).status_code == 200
    no_private = PyreqwestTransport(allow_http=True, allow_private=False)
    https_only = PyreqwestTransport(allow_http=False, allow_private=True)
    try:
        for _ in range(2):  # the refusal is not cached away either
            refused = await no_private.post(receiver.url, BODY, {}, 5.0)
            assert refused.error == "forbidden_address"
            assert (await https_only.post(receiver.url, BODY, {}, 5.0)).error == "invalid_url"
    finally:
        await no_private.close()
        await https_only.close()
    assert len(receiver.requests) == 1


async def test_a_medium_body_is_capped_by_the_excerpt_size_too(receivers: ReceiverFactory) -> None:
    receiver = await receivers(behaviour=Reply(500, body=b"m" * 3000))
    transport = PyreqwestTransport(allow_http=True, allow_private=True, excerpt_bytes=1000)
    try:
        response = await transport.post(receiver.url, BODY, {}, 5.0)
        empty = await transport.post(receiver.url, BODY, {}, 5.0)
    finally:
        await transport.close()
    assert response.excerpt == "m" * 1000
    assert empty.excerpt == "m" * 1000  # the connection, cut or reused, still works


class _Reader:
    """A body reader handing out fixed chunks (then None), for the short-read path."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []

    async def read(self, amount: int) -> bytes | None:
        self.asked.append(amount)
        if not self.chunks:
            return None
        chunk = self.chunks.pop(0)
        if len(chunk) > amount:  # as pyreqwest: never more than asked, the rest kept
            chunk, rest = chunk[:amount], chunk[amount:]
            self.chunks.insert(0, rest)
        return chunk


async def test_a_short_first_read_is_completed_up_to_the_cap() -> None:
    from pyreqwest.bytes import Bytes

    reader = _Reader(b"cd", b"efgh", b"never read")
    kept = await PyreqwestTransport._read_more(reader, Bytes(b"ab"), 6)  # type: ignore[arg-type]
    assert bytes(kept) == b"abcdef"
    assert reader.asked == [4, 2]
    assert reader.chunks == [b"gh", b"never read"]


async def test_a_short_body_ends_the_reads() -> None:
    from pyreqwest.bytes import Bytes

    reader = _Reader(b"cd")
    kept = await PyreqwestTransport._read_more(reader, Bytes(b"ab"), 4096)  # type: ignore[arg-type]
    assert bytes(kept) == b"abcd"
    assert reader.asked == [4094, 4092]


async def test_a_url_reqwest_cannot_parse_is_an_invalid_url(
    transport: PyreqwestTransport,
) -> None:
    # Valid to the SSRF guard (ASCII labels), not to reqwest's IDNA check: refused, no raise.
    response = await transport.post("http://xn--abc.example/hook", BODY, {}, 5.0)
    assert (response.status_code, response.error) == (None, "invalid_url")


async def test_parsed_urls_are_kept_boundedly(
    transport: PyreqwestTransport, receivers: ReceiverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ascend_webhooks.delivery import transport as module

    monkeypatch.setattr(module, "_MAX_PARSED_URLS", 2)
    receiver = await receivers()
    for path in ("a", "b", "c", "a"):
        response = await transport.post(f"{receiver.url}/{path}", BODY, {}, 5.0)
        assert response.status_code == 200
        assert len(transport._urls) <= 2
    assert [r.target.rsplit("/", 1)[1] for r in receiver.requests] == ["a", "b", "c", "a"]


@pytest.mark.parametrize("size", [1, EXCERPT_BYTES - 1, EXCERPT_BYTES, EXCERPT_BYTES + 1])
async def test_excerpt_at_the_boundary_of_the_cap(
    transport: PyreqwestTransport, receivers: ReceiverFactory, size: int
) -> None:
    # Up to the cap the body is taken whole (one read); past it, exactly the cap is read.
    receiver = await receivers(behaviour=Reply(503, body=b"b" * size))
    response = await transport.post(receiver.url, BODY, {}, 5.0)
    assert response.status_code == 503
    assert response.excerpt == "b" * min(size, EXCERPT_BYTES)
