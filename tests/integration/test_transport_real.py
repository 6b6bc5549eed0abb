"""The real transport over loopback: connect-time SSRF pinning, DNS rebinding, pooling, TLS.

Names are resolved through a test resolver (there is no DNS here); what it returns is checked
by an address policy that treats 127.0.0.1 as the one "public" address, so the pinning code
runs exactly as it does in production with real DNS and the real policy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

import pytest

from ascend_webhooks.delivery.ssrf import IPAddress
from ascend_webhooks.delivery.transport import PyreqwestTransport
from tests.support import dns as dns_fixtures
from tests.support import receivers as receiver_fixtures
from tests.support.dns import HEALTHY, HungDNS
from tests.support.receivers import Receiver, ReceiverFactory, TLSFiles

hung_dns = dns_fixtures.hung_dns
receivers = receiver_fixtures.receivers
tls = receiver_fixtures.tls

NAME = "receiver.example.test"
PUBLIC = ipaddress.ip_address("127.0.0.1")  # stands for a public address in these tests
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{}}'


class FakeDNS:
    """A resolver whose answers the test changes; counts lookups."""

    def __init__(self, *answers: str) -> None:
        self.answers = [ipaddress.ip_address(a) for a in answers]
        self.lookups = 0

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups += 1
        if host != NAME:
            raise OSError(f"unknown host {host}")
        if not self.answers:
            raise OSError("no such name")
        return list(self.answers)


def only_public(address: IPAddress) -> bool:
    """The address policy of these tests: everything but 127.0.0.1 is forbidden."""
    return address != PUBLIC


def pinned_transport(dns: FakeDNS, **kwargs: object) -> PyreqwestTransport:
    return PyreqwestTransport(
        allow_http=True,
        allow_private=False,
        resolver=dns,
        is_forbidden=only_public,
        **kwargs,  # type: ignore[arg-type]
    )


def named_url(receiver: Receiver) -> str:
    scheme = "https" if receiver.tls else "http"
    return f"{scheme}://{NAME}:{receiver.port}/hook"


async def test_a_name_is_sent_to_the_address_it_was_validated_at(
    receivers: ReceiverFactory,
) -> None:
    receiver = await receivers()
    dns = FakeDNS("127.0.0.1")
    transport = pinned_transport(dns)
    try:
        response = await transport.post(named_url(receiver), BODY, {}, 5.0)
    finally:
        await transport.close()
    # The name exists nowhere but in FakeDNS: reaching the receiver proves the pin was used.
    assert (response.status_code, response.error) == (200, None)
    assert receiver.requests[0].header("host") == f"{NAME}:{receiver.port}"
    assert dns.lookups == 1


async def test_the_absolute_form_of_a_name_is_pinned_too(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    dns = FakeDNS("127.0.0.1")
    transport = pinned_transport(dns)
    try:
        url = f"http://{NAME}.:{receiver.port}/hook"  # trailing dot: the same name, absolute
        response = await transport.post(url, BODY, {}, 5.0)
    finally:
        await transport.close()
    # Had the pin missed, the system resolver would have been asked (and failed: no DNS).
    assert (response.status_code, response.error) == (200, None)
    assert dns.lookups == 1


async def test_a_name_resolving_to_any_forbidden_address_is_refused(
    receivers: ReceiverFactory,
) -> None:
    receiver = await receivers()
    transport = pinned_transport(FakeDNS("127.0.0.1", "10.0.0.1"))
    try:
        response = await transport.post(named_url(receiver), BODY, {}, 5.0)
    finally:
        await transport.close()
    assert (response.status_code, response.error) == (None, "forbidden_address")
    assert receiver.requests == []


async def test_dns_rebinding_is_caught_when_the_pin_expires(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    dns = FakeDNS("127.0.0.1")
    transport = pinned_transport(dns, resolve_ttl=0.2)
    try:
        first = await transport.post(named_url(receiver), BODY, {}, 5.0)
        dns.answers = [ipaddress.ip_address("169.254.169.254")]  # the name now points inside
        cached = await transport.post(named_url(receiver), BODY, {}, 5.0)
        assert dns.lookups == 1  # still within the TTL: the validated pin is reused
        await asyncio.sleep(0.25)
        rebound = await transport.post(named_url(receiver), BODY, {}, 5.0)
    finally:
        await transport.close()
    assert first.status_code == cached.status_code == 200
    assert (rebound.status_code, rebound.error) == (None, "forbidden_address")
    assert dns.lookups == 2
    assert len(receiver.requests) == 2


async def test_an_unchanged_address_keeps_the_warm_connection(
    receivers: ReceiverFactory,
) -> None:
    receiver = await receivers()
    dns = FakeDNS("127.0.0.1")
    transport = pinned_transport(dns, resolve_ttl=0.05)
    try:
        for _ in range(5):
            response = await transport.post(named_url(receiver), BODY, {}, 5.0)
            assert response.status_code == 200
            await asyncio.sleep(0.06)
    finally:
        await transport.close()
    assert dns.lookups == 5
    assert receiver.connections_opened == 1


async def test_a_name_that_stops_resolving_is_a_dns_error(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    dns = FakeDNS()
    transport = pinned_transport(dns)
    try:
        response = await transport.post(named_url(receiver), BODY, {}, 5.0)
    finally:
        await transport.close()
    assert (response.status_code, response.error) == (None, "dns_error")


async def test_https_to_a_pinned_name_verifies_the_certificate_for_the_name(
    receivers: ReceiverFactory, tls: TLSFiles
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.ca.issue_cert(NAME).configure_cert(context)
    named_tls = TLSFiles(ca=tls.ca, ca_file=tls.ca_file, server_context=context)
    receiver = await receivers(tls=named_tls)
    transport = pinned_transport(FakeDNS("127.0.0.1"), ca_file=tls.ca_file)
    wrong_name = PyreqwestTransport(allow_private=True, ca_file=tls.ca_file)
    try:
        response = await transport.post(named_url(receiver), BODY, {}, 5.0)
        # The certificate names NAME, not the address: by IP the name check fails.
        mismatch = await wrong_name.post(f"https://127.0.0.1:{receiver.port}/hook", BODY, {}, 5.0)
    finally:
        await transport.close()
        await wrong_name.close()
    assert (response.status_code, response.error) == (200, None)
    assert (mismatch.status_code, mismatch.error) == (None, "tls_error")


async def test_keep_alive_pools_connections(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    transport = PyreqwestTransport(allow_http=True, allow_private=True)
    try:
        for _ in range(20):
            response = await transport.post(receiver.url, BODY, {}, 5.0)
            assert response.status_code == 200
    finally:
        await transport.close()
    assert receiver.connections_opened == 1


async def test_concurrent_posts_each_arrive_byte_identical(receivers: ReceiverFactory) -> None:
    receiver = await receivers()
    transport = PyreqwestTransport(allow_http=True, allow_private=True)
    bodies = [b'{"id":"evt_%d","type":"t","data":{"n":%d}}' % (n, n) for n in range(64)]
    try:
        responses = await asyncio.gather(
            *(
                transport.post(receiver.url, body, {"X-Ascend-Event-Id": f"evt_{n}"}, 5.0)
                for n, body in enumerate(bodies)
            )
        )
    finally:
        await transport.close()
    assert {r.status_code for r in responses} == {200}
    received = {r.header("x-ascend-event-id"): r.body for r in receiver.requests}
    assert received == {f"evt_{n}": body for n, body in enumerate(bodies)}


@pytest.mark.parametrize("allow_private", [False, True])
async def test_ip_literal_hosts_skip_resolution(
    receivers: ReceiverFactory, allow_private: bool
) -> None:
    receiver = await receivers()
    dns = FakeDNS("127.0.0.1")
    transport = PyreqwestTransport(
        allow_http=True, allow_private=allow_private, resolver=dns, is_forbidden=only_public
    )
    try:
        response = await transport.post(receiver.url, BODY, {}, 5.0)
    finally:
        await transport.close()
    # validate_url judges IP literals with the real policy: loopback needs allow_private.
    expected = (200, None) if allow_private else (None, "forbidden_address")
    assert (response.status_code, response.error) == expected
    assert dns.lookups == 0


async def test_endpoints_whose_dns_hangs_do_not_hold_up_another(
    receivers: ReceiverFactory, hung_dns: HungDNS
) -> None:
    """The system resolver (patched: some nameservers never answer) with the real transport:
    attempts to endpoints whose lookups hang, more than asyncio's default pool has threads,
    and a healthy endpoint is still delivered to within its timeout."""
    receiver = await receivers()
    transport = PyreqwestTransport(allow_http=True, allow_private=False, is_forbidden=only_public)
    dead = [
        asyncio.create_task(
            transport.post(f"http://{hung_dns.dead(i)}:{receiver.port}/hook", BODY, {}, 30.0)
        )
        for i in range(40)
    ]
    await asyncio.sleep(0)  # every dead lookup is asked for first
    try:
        healthy = await transport.post(f"http://{HEALTHY}:{receiver.port}/hook", BODY, {}, 2.0)
        assert not any(task.done() for task in dead)  # still hanging meanwhile
    finally:
        for task in dead:
            task.cancel()
        await asyncio.gather(*dead, return_exceptions=True)
        await transport.close()
    assert (healthy.status_code, healthy.error) == (200, None)
    assert [r.header("host") for r in receiver.requests] == [f"{HEALTHY}:{receiver.port}"]
