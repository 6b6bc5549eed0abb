"""The delivery worker end to end: real stores, the real transport, real receivers.

Every test runs against each backend (the ``store`` fixture of ``tests/conftest.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from ascend_webhooks.delivery.retry import RetryPolicy
from ascend_webhooks.delivery.transport import PyreqwestTransport, Response
from ascend_webhooks.delivery.worker import Worker, _InFlight
from ascend_webhooks.ids import new_id
from ascend_webhooks.metrics import BatchHistogram
from ascend_webhooks.service.crypto import SecretBox, sqlite_path
from ascend_webhooks.service.settings import Settings
from ascend_webhooks.signature import sign
from ascend_webhooks.store import Store
from ascend_webhooks.store.base import StoreUnavailableError
from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    NewEvent,
    WebhookKey,
)
from tests.support import receivers as receiver_fixtures
from tests.support.receivers import Close, Hang, Receiver, ReceiverFactory, Reply

receivers = receiver_fixtures.receivers

SECRET = "whsec_integration_secret"
TINY = (0.01,) * 10  # ten retries, right away


def decrypt(ciphertext: bytes, *, organization_id: str, key_id: str) -> str:
    # The store keeps whatever bytes it is given; these tests store the secret as is.
    return ciphertext.decode("utf-8")


def make_settings(**changes: Any) -> Settings:
    base: dict[str, Any] = {
        "retry_schedule": (0.01,),
        "retry_jitter": 0.0,
        "attempt_timeout": 2.0,
        "allow_http": True,
        "allow_private_networks": True,
    }
    base.update(changes)
    return Settings(**base)


async def new_organization(store: Store, secret: str | None = SECRET) -> str:
    organization = await store.create_organization(f"org {new_id('t')}")
    if secret is not None:
        await store.create_key(organization.id, secret.encode(), activate=True)
    return organization.id


async def publish(store: Store, organization_id: str, count: int = 1) -> list[Delivery]:
    events = []
    for _ in range(count):
        event_id = new_id("evt")
        body = json.dumps(
            {"id": event_id, "type": "invoice.paid", "data": {"amount": 1200, "note": "café"}},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()
        events.append(NewEvent(event_id, "invoice.paid", body, hashlib.sha256(body).digest()))
    results = await store.publish(organization_id, events)
    return [d for result in results for d in result.event.deliveries]


async def wait_until(
    check: Callable[[], Awaitable[bool]], within: float = 10.0, every: float = 0.02
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


async def wait_terminal(
    store: Store, organization_id: str, delivery_ids: Sequence[str], within: float = 10.0
) -> list[Delivery]:
    async def all_done() -> bool:
        for delivery_id in delivery_ids:
            delivery = await store.get_delivery(organization_id, delivery_id)
            if delivery.status is DeliveryStatus.PENDING:
                return False
        return True

    await wait_until(all_done, within)
    return [await store.get_delivery(organization_id, i) for i in delivery_ids]


async def wait_holding(worker: Worker, *, in_flight: int, buffered: int) -> None:
    """Wait until ``worker`` has ``in_flight`` attempts going and ``buffered`` claimed ahead."""

    async def holding() -> bool:
        return worker.in_flight == in_flight and worker.buffered == buffered

    await wait_until(holding, within=5.0, every=0.005)


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        await worker.drain()
        await task


def attempts_counter(outcome: str) -> float:
    value = REGISTRY.get_sample_value("ascend_webhooks_attempts_total", {"outcome": outcome})
    return value or 0.0


def attempt_seconds_count() -> float:
    value = REGISTRY.get_sample_value("ascend_webhooks_attempt_duration_seconds_count")
    return value or 0.0


async def test_a_signed_delivery_verifies_on_the_receiver(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    succeeded_before = attempts_counter("succeeded")
    observed_before = attempt_seconds_count()

    async with running(Worker(store, make_settings(), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.attempt_count == 1
    (attempt,) = done.attempts
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 200, None)
    (request,) = receiver.requests
    assert request.verified, request.verify_error
    timestamp = request.header("x-ascend-request-timestamp") or ""
    # Byte for byte what the public signing function makes for this body and timestamp.
    assert (
        request.header("x-ascend-signature")
        == sign(request.body, SECRET, int(timestamp))["X-Ascend-Signature"]
    )
    event = await store.get_event(org, delivery.event_id)
    assert request.body == event.body
    assert request.event is not None
    assert request.event.id == event.id
    assert request.header("content-type") == "application/json"
    assert request.header("x-ascend-event-id") == event.id
    assert request.header("x-ascend-event-type") == "invoice.paid"
    assert request.header("x-ascend-delivery-id") == delivery.id
    assert request.header("x-ascend-attempt") == "1"
    assert (request.header("user-agent") or "").startswith("ascend-webhooks/")
    assert done.endpoint_id == endpoint.id
    assert attempts_counter("succeeded") == succeeded_before + 1
    assert attempt_seconds_count() == observed_before + 1


async def test_an_ordering_keys_outcome_is_recorded_at_once_others_wait_for_the_batch(
    store: Store, receivers: ReceiverFactory
) -> None:
    # The next delivery of a key waits for the outcome of the one before: with a long flush
    # interval, a chain of four would take three intervals if keyed outcomes waited too.
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    keyed = []
    for n in range(4):
        body = json.dumps({"id": f"evt_k{n}", "type": "invoice.paid", "data": {}}).encode()
        keyed.append(
            NewEvent(f"evt_k{n}", "invoice.paid", body, hashlib.sha256(body).digest(), "k")
        )
    await store.publish(org, keyed)
    worker = Worker(store, make_settings(), decrypt, flush_interval=2.0, poll_interval=0.05)

    async def received(count: int) -> bool:
        return len(receiver.requests) >= count

    started = time.monotonic()
    async with running(worker):
        await wait_until(lambda: received(4), within=10)
        chain = time.monotonic() - started
        (plain,) = await publish(store, org)  # no key: its outcome waits for the interval
        await wait_until(lambda: received(5), within=10)
        sent = time.monotonic()
        await wait_terminal(store, org, [plain.id], within=10)
        recorded_after = time.monotonic() - sent
    assert [r.event.id for r in receiver.requests[:4] if r.event] == [e.id for e in keyed]
    assert chain < 1.5, chain
    assert recorded_after > 1.0, recorded_after


async def test_an_answer_with_nul_bytes_is_recorded_with_its_excerpt_readable(
    store: Store, receivers: ReceiverFactory
) -> None:
    # PostgreSQL's text refuses NUL: such an excerpt once failed the whole batch of outcomes,
    # on every retry, so that nothing the worker attempted was recorded any more.
    receiver = await receivers(secret=SECRET)
    receiver.respond(Reply(200, b"ok\x00\xffbinary"))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    first, second = await publish(store, org, count=2)
    async with running(Worker(store, make_settings(), decrypt)):
        done = await wait_terminal(store, org, [first.id, second.id])
    assert [d.status for d in done] == [DeliveryStatus.SUCCEEDED] * 2
    assert [d.attempts[0].response_excerpt for d in done] == ["ok\ufffd\ufffdbinary"] * 2


def test_an_endpoint_is_full_at_its_limit_in_whole_attempts() -> None:
    worker = Worker(
        None,  # type: ignore[arg-type]
        make_settings(),
        decrypt,
        per_endpoint_limit=2,
        max_per_endpoint=8,
        prefetch=0,
    )
    worker._limits.update({"halved": 2.5, "grown": 4.0})
    worker._per_endpoint.update({"halved": 2, "grown": 3, "base": 2, "free": 1})
    assert [worker.endpoint_limit(e) for e in ("halved", "grown", "base")] == [2, 4, 2]
    assert sorted(worker._full_endpoints()) == ["base", "halved"]
    assert worker._endpoint_room() == {"halved": 0, "grown": 1, "base": 0, "free": 1}


def _claimed(number: int, endpoint: str) -> ClaimedDelivery:
    return ClaimedDelivery(
        f"dlv_{number}", "org", "evt", "t", endpoint, "http://x/", b"{}", 1, 1, datetime.now(UTC)
    )


def test_claiming_ahead_holds_up_to_three_limits_of_a_healthy_endpoint_and_one_of_a_slow() -> None:
    worker = Worker(None, make_settings(), decrypt, per_endpoint_limit=2, max_per_endpoint=8)  # type: ignore[arg-type]
    assert worker.prefetch == 2 * worker.concurrency
    now = time.monotonic()
    worker._per_endpoint.update({"full": 2, "room": 2, "slow": 2})
    worker._ready["full"] = deque((_claimed(n, "full"), now) for n in range(4))
    worker._ready["room"] = deque((_claimed(n, "room"), now) for n in range(10, 13))
    worker._slow_per_endpoint["slow"] = 1
    # In flight up to its limit (2), and up to twice that waiting: 6 held in all.
    assert sorted(worker._full_endpoints()) == ["full", "slow"]
    assert worker._endpoint_room() == {"full": 0, "room": 1, "slow": 0}
    assert worker._per_endpoint_claim() == 6
    # A freed slot of "room" is taken by its own next delivery, in claim order.
    worker._per_endpoint["room"] = 1
    follow = worker._next_ready("room")
    assert follow is not None
    assert follow[0].id == "dlv_10"
    # Nothing may start where every endpoint with buffered work is at its limit.
    worker._per_endpoint["room"] = 2
    assert worker._next_ready("room") is None


def test_slow_attempts_stop_counting_and_hold_their_endpoint_at_the_base() -> None:
    worker = Worker(
        None,  # type: ignore[arg-type]
        make_settings(),
        decrypt,
        concurrency=4,
        per_endpoint_limit=2,
        max_per_endpoint=8,
        slow_after=1.0,
    )
    now = time.monotonic()

    def start(number: int, endpoint: str, age: float) -> ClaimedDelivery:
        delivery = ClaimedDelivery(
            f"dlv_{number}",
            "org",
            "evt",
            "t",
            endpoint,
            "http://x/",
            b"{}",
            1,
            1,
            datetime.now(UTC),
        )
        flight = _InFlight(delivery, now - age, now - age)
        worker._inflight[delivery.id] = flight
        worker._started.append(flight)  # in start order, as _start appends
        worker._per_endpoint[endpoint] += 1
        return delivery

    worker._limits["hung"] = 6.0
    slow = start(1, "hung", 5.0)
    working = start(2, "ok", 0.5)
    start(3, "ok", 0.2)
    fast = start(4, "hung", 0.1)
    free, recheck = worker._capacity()
    assert free == 4 - 3  # the slow attempt no longer counts
    assert 0.4 < recheck <= 0.5  # when the oldest working attempt turns slow
    assert worker.endpoint_limit("hung") == 2  # struggling: back to the base at once
    # A fast answer at full use would grow the limit, but not while an attempt hangs there.
    worker._adapt("hung", Attempt(1, datetime.now(UTC), 1.0, 200, None, None), full=True)
    assert worker.endpoint_limit("hung") == 2
    worker._free_slot(fast, abandoned=False)
    worker._free_slot(working, abandoned=False)
    assert worker._capacity()[0] == 4 - 1
    worker._free_slot(slow, abandoned=False)
    assert (worker._slow, dict(worker._slow_per_endpoint)) == (0, {})
    assert worker._capacity()[0] == 4 - 1
    worker._adapt("hung", Attempt(1, datetime.now(UTC), 1.0, 200, None, None), full=False)
    assert worker.endpoint_limit("hung") == 2  # not in flight at full use: no growth


def test_observing_many_durations_at_once_equals_observing_each() -> None:
    values = [0.0, 0.004, 0.005, 0.0051, 0.3, 1.0, 29.0, 30.0, 31.0, 120.0, 0.0049]
    buckets = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)
    one_by_one = BatchHistogram("one_by_one_seconds", "each", buckets=buckets, registry=None)
    batched = BatchHistogram("batched_seconds", "batched", buckets=buckets, registry=None)
    for value in values:
        one_by_one.observe(value)
    batched.observe_many(values[:4])
    batched.observe_many([])
    batched.observe_many(values[4:])

    def samples(histogram: BatchHistogram) -> list[tuple[str, dict[str, str], float]]:
        (metric,) = histogram.collect()
        return [
            (s.name.split("_seconds")[1], s.labels, round(s.value, 9))
            for s in metric.samples
            if not s.name.endswith("_created")
        ]

    assert samples(batched) == samples(one_by_one)


@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        (Reply(201), "status_201"),
        (Reply(202), "status_202"),
        (Reply(204), "status_204"),
        (Reply(301, headers={"Location": "http://127.0.0.1:9/"}), "status_301"),
        (Reply(302, headers={"Location": "http://127.0.0.1:9/"}), "status_302"),
        (Reply(400), "status_400"),
        (Reply(404), "status_404"),
        (Reply(500), "status_500"),
        (Reply(503), "status_503"),
        (Hang(), "timeout"),
        (Close(), "connection_reset"),
    ],
    ids=lambda value: type(value).__name__ + str(getattr(value, "status", "")),
)
async def test_anything_but_200_fails_and_is_retried(
    store: Store, receivers: ReceiverFactory, behaviour: Any, error: str
) -> None:
    receiver = await receivers(secret=SECRET, behaviour=behaviour)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    settings = make_settings(retry_schedule=(0.01, 0.01), attempt_timeout=0.3)

    async with running(Worker(store, settings, decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.FAILED
    assert [a.error for a in done.attempts] == [error] * 3
    assert len(receiver.requests) == 3
    assert all(r.verified for r in receiver.requests)


async def test_connection_refused_fails_and_is_retried(store: Store) -> None:
    receiver = await Receiver().start()
    url = receiver.url
    await receiver.close()  # nothing listens there any more
    org = await new_organization(store)
    await store.create_endpoint(org, url, None, None)
    (delivery,) = await publish(store, org)

    async with running(Worker(store, make_settings(retry_schedule=(0.01,)), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.FAILED
    assert [a.error for a in done.attempts] == ["connect_refused"] * 2


async def test_ten_retries_then_failed_with_identical_bodies(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET, behaviour=Reply(500, body=b"down"))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    retrying_before, failed_before = attempts_counter("retrying"), attempts_counter("failed")

    async with running(Worker(store, make_settings(retry_schedule=TINY), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])
        await asyncio.sleep(0.1)  # nothing more may arrive after the failure

    assert done.status is DeliveryStatus.FAILED
    assert done.attempt_count == 11
    assert done.next_attempt_at is None
    assert [a.number for a in done.attempts] == list(range(1, 12))
    assert {a.response_excerpt for a in done.attempts} == {"down"}
    assert len(receiver.requests) == 11
    assert attempts_counter("retrying") == retrying_before + 10
    assert attempts_counter("failed") == failed_before + 1
    assert len({r.body for r in receiver.requests}) == 1
    assert [r.header("x-ascend-attempt") for r in receiver.requests] == [
        str(n) for n in range(1, 12)
    ]
    assert all(r.verified for r in receiver.requests)


async def test_each_attempt_is_signed_with_a_fresh_timestamp(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    receiver.fail_times(1)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    # The timestamp has whole seconds: wait a little over one between the two attempts.
    async with running(Worker(store, make_settings(retry_schedule=(1.05,)), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    first, second = receiver.requests
    assert first.body == second.body
    assert first.verified
    assert second.verified
    t1 = int(first.header("x-ascend-request-timestamp") or 0)
    t2 = int(second.header("x-ascend-request-timestamp") or 0)
    assert t2 >= t1 + 1
    assert first.header("x-ascend-signature") != second.header("x-ascend-signature")


async def test_a_receiver_that_recovers_gets_the_event(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    receiver.fail_times(3, Reply(503))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    async with running(Worker(store, make_settings(retry_schedule=TINY), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    assert [a.status_code for a in done.attempts] == [503, 503, 503, 200]
    assert len(receiver.verified_requests) == 4


async def test_hanging_endpoints_do_not_delay_a_healthy_one(
    store: Store, receivers: ReceiverFactory
) -> None:
    dead = [await receivers(behaviour=Hang()) for _ in range(3)]
    healthy = await receivers(secret=SECRET)
    org = await new_organization(store)
    for receiver in dead:
        await store.create_endpoint(org, receiver.url, None, None)
    healthy_endpoint = await store.create_endpoint(org, healthy.url, None, None)
    deliveries = await publish(store, org, 30)
    healthy_ids = [d.id for d in deliveries if d.endpoint_id == healthy_endpoint.id]
    assert len(healthy_ids) == 30
    # Three dead endpoints with two slots each could fill a worker of concurrency 4 if it
    # counted them; they time out only after 10 s, far past the bound asserted below.
    worker = Worker(
        store,
        make_settings(attempt_timeout=10.0),
        decrypt,
        concurrency=4,
        per_endpoint_limit=2,
        slow_after=0.2,
    )
    started = time.monotonic()
    async with running(worker):
        await wait_terminal(store, org, healthy_ids, within=8.0)
        elapsed = time.monotonic() - started
        stuck = sum(len(r.requests) for r in dead)
        for receiver in dead:  # cut the hanging connections so that draining is quick
            await receiver.close()

    assert elapsed < 3.0, f"healthy deliveries took {elapsed:.2f}s"
    assert len(healthy.verified_requests) == 30
    assert stuck == 6  # each dead endpoint held exactly its own two slots


async def test_per_endpoint_limit_bounds_concurrent_attempts(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.1))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 12)
    peak = count_concurrency(receiver)
    worker = Worker(store, make_settings(), decrypt, concurrency=16, per_endpoint_limit=3)
    async with running(worker):
        await wait_terminal(store, org, [d.id for d in deliveries])

    assert peak() == 3


def count_concurrency(receiver: Receiver) -> Callable[[], int]:
    """Wrap the receiver's answers; the returned function gives the peak of concurrent ones."""
    active = 0
    peak = 0
    original = receiver._answer

    async def counting(*args: Any) -> bool:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            return await original(*args)
        finally:
            active -= 1

    receiver._answer = counting  # type: ignore[method-assign]
    return lambda: peak


async def test_a_fast_endpoint_gets_more_than_the_base_limit(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.02))
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 300)
    peak = count_concurrency(receiver)
    worker = Worker(
        store, make_settings(), decrypt, concurrency=24, per_endpoint_limit=2, max_per_endpoint=16
    )
    raised = 0
    async with running(worker):

        async def done() -> bool:
            nonlocal raised
            raised = max(raised, worker.endpoint_limit(endpoint.id))
            counts = await store.delivery_counts()
            return counts.get(DeliveryStatus.PENDING, 0) == 0

        await wait_until(done, within=20.0, every=0.01)
    states = await wait_terminal(store, org, [d.id for d in deliveries])

    assert all(s.status is DeliveryStatus.SUCCEEDED for s in states)
    assert 2 < raised <= 16
    assert 2 < peak() <= 16  # more than the base at once, never past the maximum


async def test_a_fast_endpoints_limit_doubles_per_round_trip(
    store: Store, receivers: ReceiverFactory
) -> None:
    # Slow start: every fast answer to an attempt that was in flight while the endpoint used
    # its whole limit adds a slot, so a round trip of a full limit doubles it. Growing by one
    # per round trip instead, 1.5 s of 50 ms round trips could not pass 2 + 30 = 32.
    receiver = await receivers(behaviour=Reply(200, delay=0.05))
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, receiver.url, None, None)
    await publish(store, org, 1_500)
    worker = Worker(
        store, make_settings(), decrypt, concurrency=64, per_endpoint_limit=2, max_per_endpoint=64
    )
    raised = 0
    async with running(worker):

        async def at_maximum() -> bool:
            nonlocal raised
            raised = max(raised, worker.endpoint_limit(endpoint.id))
            return raised >= 64

        with contextlib.suppress(TimeoutError):
            await wait_until(at_maximum, within=1.5, every=0.005)
    assert raised >= 48


async def test_a_worker_claims_ahead_and_gives_back_what_it_did_not_start_when_it_stops(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.5))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    published = {d.id for d in await publish(store, org, 10)}
    worker = Worker(
        store, make_settings(), decrypt, concurrency=2, per_endpoint_limit=2, prefetch=4
    )
    async with running(worker):
        await wait_holding(worker, in_flight=2, buffered=4)
        buffered = set(worker._ready_ids)
        # Six are leased to the worker: another one finds only the other four.
        other = await store.claim("other-worker", 100, 60.0)
        assert len(other) == 4
        assert not buffered & {d.id for d in other}
        await store.release("other-worker", [d.id for d in other])
    # Stopped: the two in flight were sent and recorded; what waited in the buffer was given
    # back, unattempted, for any worker to claim at once.
    sent = {r.header("x-ascend-delivery-id") for r in receiver.requests}
    assert not buffered & sent
    assert sent <= published
    for delivery_id in buffered:
        delivery = await store.get_delivery(org, delivery_id)
        assert (delivery.status, delivery.attempt_count) == (DeliveryStatus.PENDING, 0)
    again = await store.claim("other-worker", 100, 60.0)
    assert buffered <= {d.id for d in again}


async def test_claimed_ahead_deliveries_are_each_sent_once_as_slots_free(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.002))
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 400)
    worker = Worker(
        store, make_settings(), decrypt, concurrency=8, per_endpoint_limit=2, max_per_endpoint=8
    )
    most_buffered = 0
    async with running(worker):

        async def done() -> bool:
            nonlocal most_buffered
            most_buffered = max(most_buffered, worker.buffered)
            assert worker._per_endpoint.get(endpoint.id, 0) <= worker.endpoint_limit(endpoint.id)
            counts = await store.delivery_counts()
            return counts.get(DeliveryStatus.PENDING, 0) == 0

        await wait_until(done, within=30.0, every=0.002)
    states = await wait_terminal(store, org, [d.id for d in deliveries])
    assert all(s.status is DeliveryStatus.SUCCEEDED and s.attempt_count == 1 for s in states)
    sent = [r.header("x-ascend-delivery-id") for r in receiver.requests]
    assert sorted(sent) == sorted(d.id for d in deliveries)  # each once, none twice
    assert 0 < most_buffered <= 16  # claimed ahead, within twice the concurrency


async def test_a_slow_endpoints_buffered_deliveries_are_given_back(
    store: Store, receivers: ReceiverFactory
) -> None:
    dead = await receivers(behaviour=Hang())
    org = await new_organization(store)
    await store.create_endpoint(org, dead.url, None, None)
    await publish(store, org, 8)
    worker = Worker(
        store,
        make_settings(attempt_timeout=10.0),
        decrypt,
        concurrency=4,
        per_endpoint_limit=2,
        prefetch=4,
        slow_after=0.3,
    )
    async with running(worker):
        await wait_holding(worker, in_flight=2, buffered=4)
        held = set(worker._ready_ids)

        async def given_back() -> bool:
            return worker.buffered == 0 and not worker._give_back

        await wait_until(given_back, within=5.0, every=0.01)
        await asyncio.sleep(0.2)  # a claim meanwhile must not take them back
        assert worker.buffered == 0
        other = await store.claim("other-worker", 100, 60.0)
        assert held <= {d.id for d in other}
        await store.release("other-worker", [d.id for d in other])
        await dead.close()


@pytest.mark.parametrize("change", ["disable", "delete", "new url"])
async def test_an_endpoint_changed_sends_none_of_what_was_claimed_ahead_for_it(
    store: Store, receivers: ReceiverFactory, change: str
) -> None:
    """Once an endpoint is disabled, deleted or pointed elsewhere, the deliveries a worker had
    claimed ahead for it are not sent there: only the attempts already in flight end."""
    old = await receivers(secret=SECRET, behaviour=Reply(200, delay=1.0))
    new = await receivers(secret=SECRET)
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, old.url, None, None)
    deliveries = await publish(store, org, 6)
    worker = Worker(
        store,
        make_settings(attempt_timeout=10.0),
        decrypt,
        concurrency=4,
        per_endpoint_limit=2,
        prefetch=4,
        slow_after=5.0,  # (an answer in a second is not slow here: the buffer stays)
        recheck_interval=0.1,
    )
    async with running(worker):
        await wait_holding(worker, in_flight=2, buffered=4)
        if change == "disable":
            await store.update_endpoint(org, endpoint.id, enabled=False)
        elif change == "delete":
            await store.delete_endpoint(org, endpoint.id)
        else:
            await store.update_endpoint(org, endpoint.id, url=new.url)
        await asyncio.sleep(2.5)  # the two in flight end after 1 s; the rest would follow
        assert len(old.requests) == 2
        if change == "new url":
            await new.wait_for_requests(4)
            states = await wait_terminal(store, org, [d.id for d in deliveries])
            assert all(s.status is DeliveryStatus.SUCCEEDED for s in states)
        elif change == "disable":
            pending = [await store.get_delivery(org, d.id) for d in deliveries]
            assert sum(d.status is DeliveryStatus.PENDING for d in pending) == 4
        else:  # the two attempts on their way were made: each is in its delivery's history
            await worker.drain()
            sent = {r.header("X-Ascend-Delivery-Id") for r in old.requests}
            for delivery in deliveries:
                state = await store.get_delivery(org, delivery.id)
                assert state.status is DeliveryStatus.FAILED
                made = [(a.number, a.status_code) for a in state.attempts]
                assert made == ([(1, 200)] if delivery.id in sent else []), delivery.id


async def test_a_hanging_endpoint_never_gets_more_than_the_base_limit(
    store: Store, receivers: ReceiverFactory
) -> None:
    dead = await receivers(behaviour=Hang())
    fast = await receivers(behaviour=Reply(200))
    org = await new_organization(store)
    dead_endpoint = await store.create_endpoint(org, dead.url, None, None)
    fast_endpoint = await store.create_endpoint(org, fast.url, None, None)
    deliveries = await publish(store, org, 150)  # 150 to each endpoint
    fast_ids = [d.id for d in deliveries if d.endpoint_id == fast_endpoint.id]
    worker = Worker(
        store,
        make_settings(attempt_timeout=0.6),
        decrypt,
        concurrency=32,
        per_endpoint_limit=2,
        max_per_endpoint=32,
        slow_after=0.2,
    )
    dead_limits: list[int] = []
    async with running(worker):

        async def fast_done() -> bool:
            dead_limits.append(worker.endpoint_limit(dead_endpoint.id))
            return len(fast.requests) >= len(fast_ids)

        await wait_until(fast_done, within=15.0, every=0.01)
        # Let the dead endpoint's attempts time out a few times (0.6 s each) meanwhile.
        await asyncio.sleep(1.5)
        dead_limits.append(worker.endpoint_limit(dead_endpoint.id))
        in_flight_dead = sum(
            1 for f in worker._inflight.values() if f.delivery.endpoint_id == dead_endpoint.id
        )
        await dead.close()

    assert max(dead_limits) == 2
    assert in_flight_dead <= 2
    # Each round of the dead endpoint holds at most its two slots: 2 per 0.6 s timeout.
    assert len(dead.requests) <= 2 * (1 + 15 / 0.6)
    assert len(fast.requests) >= 150


async def test_an_endpoint_that_starts_hanging_falls_back_to_the_base_limit(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.01))
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, receiver.url, None, None)
    await publish(store, org, 400)
    worker = Worker(
        store,
        make_settings(attempt_timeout=5.0),
        decrypt,
        concurrency=32,
        per_endpoint_limit=2,
        max_per_endpoint=32,
        slow_after=0.2,
    )
    async with running(worker):

        async def raised() -> bool:
            return worker.endpoint_limit(endpoint.id) >= 8

        await wait_until(raised, within=10.0, every=0.005)
        receiver.respond(Hang())
        hung_at = time.monotonic()

        async def back_to_base() -> bool:
            return worker.endpoint_limit(endpoint.id) == 2

        await wait_until(back_to_base, within=5.0, every=0.01)
        fell_back_after = time.monotonic() - hung_at
        await asyncio.sleep(0.5)
        hanging_requests = len(receiver.requests)
        await asyncio.sleep(0.5)  # no new attempts start while the in-flight ones hang
        assert len(receiver.requests) == hanging_requests
        await receiver.close()

    # Once its attempts wait past slow_after (checked at the worker's next look, within its
    # 1 s poll), not when they time out after 5 s.
    assert fell_back_after < 2.5


async def test_a_delivery_whose_worker_died_is_attempted_again(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    # A worker claims it and dies without recording anything.
    claimed = await store.claim("dead-worker", 10, 0.5)
    assert [c.id for c in claimed] == [delivery.id]
    died_at = time.monotonic()

    async with running(Worker(store, make_settings(), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    (request,) = receiver.requests
    assert request.received_at - died_at >= 0.45  # not before the dead worker's lease ended
    assert request.verified


async def test_stop_drains_in_flight_attempts_and_releases_the_rest(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET, behaviour=Reply(200, delay=0.4))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 3)
    worker = Worker(store, make_settings(), decrypt, per_endpoint_limit=1)
    task = asyncio.create_task(worker.run())
    await receiver.wait_for_requests(1)

    stopped_at = time.monotonic()
    await worker.drain()
    await task
    drain_seconds = time.monotonic() - stopped_at

    assert drain_seconds < 1.0
    assert worker.in_flight == 0
    states = [await store.get_delivery(org, d.id) for d in deliveries]
    assert sorted(s.status for s in states) == [
        DeliveryStatus.PENDING,
        DeliveryStatus.PENDING,
        DeliveryStatus.SUCCEEDED,
    ]
    assert len(receiver.requests) == 1
    # Nothing is left leased to the stopped worker: another worker can claim the rest now.
    reclaimed = await store.claim("next-worker", 10, 30)
    assert {c.id for c in reclaimed} == {s.id for s in states if s.status == "pending"}


async def test_no_signing_key_is_recorded_and_retried_never_sent_unsigned(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store, secret=None)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    settings = make_settings(retry_schedule=(0.01, 0.5, 0.5))

    async with running(Worker(store, settings, decrypt, key_cache_seconds=0.05)):

        async def first_attempt_recorded() -> bool:
            return (await store.get_delivery(org, delivery.id)).attempt_count >= 1

        await wait_until(first_attempt_recorded)
        await store.create_key(org, SECRET.encode(), activate=True)
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.attempts[0].error == "no_signing_key"
    assert done.attempts[0].status_code is None
    assert done.attempts[-1].status_code == 200
    assert all(r.verified for r in receiver.requests)
    assert len(receiver.requests) == 1


async def test_key_rotation_takes_effect_within_the_cache_time(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret="whsec_new")
    org = await new_organization(store, secret="whsec_old")
    await store.create_endpoint(org, receiver.url, None, None)
    worker = Worker(store, make_settings(), decrypt, key_cache_seconds=0.1)

    async with running(worker):
        (first,) = await publish(store, org)
        await wait_terminal(store, org, [first.id])
        await store.create_key(org, b"whsec_new", activate=True)
        await asyncio.sleep(0.15)
        (second,) = await publish(store, org)
        await wait_terminal(store, org, [second.id])

    old, new = receiver.requests
    assert not old.verified  # signed with the old key
    assert new.verified


class FlakyStore:
    """Wraps a store; its claim and record fail a few times, like a restarting database."""

    def __init__(self, inner: Store, failures: int, error: type[Exception] = ConnectionError):
        self._inner = inner
        self.claim_failures = failures
        self.record_failures = failures
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        if self.claim_failures > 0:
            self.claim_failures -= 1
            raise self.error("database restarting")
        return await self._inner.claim(*args, **kwargs)

    async def record(self, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> None:
        if self.record_failures > 0:
            self.record_failures -= 1
            raise self.error("database restarting")
        await self._inner.record(worker_id, outcomes)


class CountingStore:
    """Wraps a store; remembers what was claimed and what was given back unattempted."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.claimed = 0
        self.released: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        claimed = await self._inner.claim(*args, **kwargs)
        self.claimed += len(claimed)
        return claimed

    async def release(self, worker_id: str, delivery_ids: Sequence[str]) -> None:
        self.released.extend(delivery_ids)
        await self._inner.release(worker_id, delivery_ids)


@pytest.mark.parametrize("adaptive", [False, True])
async def test_the_claim_asks_only_for_what_each_endpoint_has_room_for(
    store: Store, receivers: ReceiverFactory, adaptive: bool
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.01))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 80)
    counting = CountingStore(store)
    worker = Worker(
        counting,  # type: ignore[arg-type]
        make_settings(),
        decrypt,
        concurrency=16,
        per_endpoint_limit=2,
        max_per_endpoint=16 if adaptive else None,
    )
    async with running(worker):
        states = await wait_terminal(store, org, [d.id for d in deliveries], within=20.0)

    assert all(s.status is DeliveryStatus.SUCCEEDED for s in states)
    assert counting.released == []  # nothing leased that had to be given back
    assert counting.claimed == 80


async def test_store_errors_are_retried_and_do_not_kill_the_worker(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    flaky = FlakyStore(store, failures=3)

    worker = Worker(flaky, make_settings(), decrypt)  # type: ignore[arg-type]
    async with running(worker) as task:
        (done,) = await wait_terminal(store, org, [delivery.id])
        assert not task.done()

    assert done.status is DeliveryStatus.SUCCEEDED
    assert flaky.claim_failures == flaky.record_failures == 0
    assert len(receiver.requests) == 1


@pytest.mark.parametrize("error", [StoreUnavailableError, RuntimeError])
async def test_store_errors_log_one_line_each_unexpected_ones_their_traceback(
    store: Store,
    receivers: ReceiverFactory,
    caplog: pytest.LogCaptureFixture,
    error: type[Exception],
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    flaky = FlakyStore(store, failures=2, error=error)
    caplog.set_level("INFO", logger="ascend_webhooks")

    worker = Worker(flaky, make_settings(), decrypt)  # type: ignore[arg-type]
    async with running(worker):
        await wait_terminal(store, org, [delivery.id])

    troubles = [r for r in caplog.records if "database restarting" in r.getMessage()]
    if error is RuntimeError:  # unexpected: as before, with its traceback
        troubles = [r for r in caplog.records if r.exc_info and r.exc_info[0] is error]
        assert len(troubles) == 4
        return
    assert len(troubles) == 4  # two failed claims, two failed records
    for record in troubles:
        assert not record.exc_info  # (the traceback: at DEBUG only)
        assert "\n" not in record.getMessage()
        assert "(StoreUnavailableError: database restarting)" in record.getMessage()
    assert "Traceback" not in caplog.text


class HangingStore:
    """Wraps a store; its claim (or next_due_at) waits until ``answer`` is set, as behind a
    table lock or a network that stopped answering, then claims."""

    def __init__(self, inner: Store, *, claim: bool = True) -> None:
        self._inner = inner
        self.hang_claim = claim
        self.answer = asyncio.Event()
        self.waiting = asyncio.Event()
        self.answered = asyncio.Event()
        self.claimed: list[ClaimedDelivery] = []
        self.released: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _hang(self) -> None:
        self.waiting.set()
        await self.answer.wait()

    async def claim(self, *args: Any, **kwargs: Any) -> list[ClaimedDelivery]:
        if self.hang_claim:
            await self._hang()
        claimed = await self._inner.claim(*args, **kwargs)
        self.claimed += claimed
        self.answered.set()
        return claimed

    async def next_due_at(self) -> datetime | None:
        if not self.hang_claim:
            await self._hang()
        return await self._inner.next_due_at()

    async def release(self, worker_id: str, delivery_ids: Sequence[str]) -> None:
        self.released += delivery_ids
        await self._inner.release(worker_id, delivery_ids)

    def hand_off(self, handoff: object) -> bool:
        return False  # every delivery goes through the claim


@pytest.mark.parametrize("claim", [True, False], ids=["claim", "next_due_at"])
async def test_a_worker_stops_at_once_while_the_store_hangs(store: Store, claim: bool) -> None:
    hanging = HangingStore(store, claim=claim)
    worker = Worker(hanging, make_settings(), decrypt)  # type: ignore[arg-type]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(hanging.waiting.wait(), 5)

    started = time.monotonic()
    await asyncio.wait_for(worker.drain(), 1)
    await asyncio.wait_for(task, 1)
    assert time.monotonic() - started < 1


async def test_a_claim_abandoned_at_stop_gives_back_what_it_leased_during_the_drain(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    hanging = HangingStore(store)
    settings = make_settings()
    worker = Worker(hanging, settings, decrypt)  # type: ignore[arg-type]
    drained = asyncio.Event()

    async def slow_drain() -> list[str]:  # the drain lasts until the claim has answered
        drained.set()
        hanging.answer.set()
        await hanging.answered.wait()
        return []

    worker._drain_attempts = slow_drain  # type: ignore[method-assign]
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(hanging.waiting.wait(), 5)
    await asyncio.wait_for(worker.drain(), 5)
    await task

    assert drained.is_set()
    assert [d.id for d in hanging.claimed] == [delivery.id]
    assert hanging.released == [delivery.id]  # given back, not left to its lease
    assert receiver.requests == []
    (again,) = await store.claim("wrk_next", 1, 60)  # free at once
    assert again.id == delivery.id


class RecordDownStore:
    """Wraps a store; its record (and, if asked, the extension of leases) fails until
    ``until`` (time.monotonic()), claims work."""

    def __init__(self, inner: Store, until: float, *, extend_too: bool = False) -> None:
        self._inner = inner
        self.until = until
        self.extend_too = extend_too

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def record(self, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> None:
        if time.monotonic() < self.until:
            raise self.error("database restarting")
        await self._inner.record(worker_id, outcomes)

    async def extend_leases(self, *args: Any) -> None:
        if self.extend_too and time.monotonic() < self.until:
            raise self.error("database restarting")
        await self._inner.extend_leases(*args)


@pytest.mark.parametrize("extend_too", [False, True], ids=["record-down", "leases-lost-too"])
async def test_an_outcome_waiting_to_be_recorded_keeps_its_lease_and_is_not_sent_again(
    store: Store, receivers: ReceiverFactory, extend_too: bool
) -> None:
    """While the record of an outcome fails for longer than the lease, the delivery stays this
    worker's (its lease extended; or, lost, claimed back): not attempted a second time under
    the same number."""
    receiver = await receivers(secret=SECRET)
    receiver.fail_times(1)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    down = RecordDownStore(store, until=time.monotonic() + 3.0, extend_too=extend_too)
    worker = Worker(
        down,  # type: ignore[arg-type]
        make_settings(retry_schedule=(0.05,)),
        decrypt,
        lease_seconds=0.9,
        poll_interval=0.05,
    )
    async with running(worker):
        (done,) = await wait_terminal(store, org, [delivery.id], within=15.0)

    assert [r.verified for r in receiver.requests] == [True, True]  # the 500, then the 200
    assert done.status is DeliveryStatus.SUCCEEDED
    assert [(a.number, a.status_code) for a in done.attempts] == [(1, 500), (2, 200)]


class IdleDownStore:
    """Wraps a store; ``next_due_at`` fails ``failures`` times, when ``now()`` says so."""

    def __init__(self, inner: Store, failures: int, now: Callable[[], bool]) -> None:
        self._inner = inner
        self.failures = failures
        self.now = now

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def next_due_at(self) -> datetime | None:
        if self.failures > 0 and self.now():
            self.failures -= 1
            raise StoreUnavailableError("database restarting")
        return await self._inner.next_due_at()


async def test_a_store_error_while_caught_up_does_not_end_the_worker(
    store: Store, receivers: ReceiverFactory
) -> None:
    # Caught up (on SQLite: waiting for deliveries handed over by their publishes), the worker
    # asks when the next retry is due; an error there ended run() instead of being retried.
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    worker: Worker
    down = IdleDownStore(store, 1, lambda: worker._caught_up_idle)
    worker = Worker(down, make_settings(), decrypt, poll_interval=0.05)  # type: ignore[arg-type]
    async with running(worker) as task:
        first = await publish(store, org)
        await wait_terminal(store, org, [d.id for d in first])
        if worker._handoff is not None:  # (only a store that hands off has that state)
            await wait_until(lambda: _true(down.failures == 0), within=10.0)
        later = await publish(store, org)
        (done,) = await wait_terminal(store, org, [d.id for d in later])
        assert not task.done()
    assert done.status is DeliveryStatus.SUCCEEDED


async def _true(value: bool) -> bool:
    return value


async def test_long_attempts_keep_their_lease(store: Store, receivers: ReceiverFactory) -> None:
    """An attempt longer than the lease is not handed to a second worker meanwhile."""
    receiver = await receivers(secret=SECRET, behaviour=Reply(200, delay=1.2))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    settings = make_settings(attempt_timeout=5.0)
    first = Worker(store, settings, decrypt, lease_seconds=0.6, poll_interval=0.05)
    second = Worker(store, settings, decrypt, lease_seconds=0.6, poll_interval=0.05)

    async with running(first):
        await receiver.wait_for_requests(1)
        async with running(second):
            (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    assert done.attempt_count == 1
    assert len(receiver.requests) == 1


async def test_an_undecryptable_key_is_recorded_never_sent_and_never_logged(
    store: Store, receivers: ReceiverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    def broken_decrypt(ciphertext: bytes, **_: str) -> str:
        raise ValueError(f"bad tag for {ciphertext!r}")  # quotes the key material

    caplog.set_level("DEBUG", logger="ascend_webhooks")
    async with running(Worker(store, make_settings(), broken_decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.FAILED
    assert [a.error for a in done.attempts] == ["key_error", "key_error"]
    assert receiver.requests == []
    assert "key_error" in caplog.text or "cannot decrypt" in caplog.text
    assert SECRET not in caplog.text


async def set_ciphertext(database_url: str, key_id: str, ciphertext: bytes) -> None:
    """Write a key row's ciphertext by SQL, as whoever can write to the database could."""
    path = sqlite_path(database_url)
    if path is not None:
        with contextlib.closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "UPDATE webhook_keys SET secret_ciphertext = ? WHERE id = ?", (ciphertext, key_id)
            )
        return
    conn = await asyncpg.connect(database=database_url.rsplit("/", 1)[1])
    try:
        await conn.execute(
            "UPDATE webhook_keys SET secret_ciphertext = $1 WHERE id = $2", ciphertext, key_id
        )
    finally:
        await conn.close()


async def issue_key(store: Store, box: SecretBox, organization_id: str, secret: str) -> WebhookKey:
    """A key as the API issues it: its secret encrypted for its organization and id."""
    key_id = new_id("key")
    ciphertext = box.encrypt(secret, organization_id=organization_id, key_id=key_id)
    return await store.create_key(organization_id, ciphertext, activate=True, key_id=key_id)


@pytest.mark.parametrize("source", ["other-organization", "revoked-key"])
async def test_a_ciphertext_moved_to_another_key_row_is_a_key_error_never_sent(
    store: Store,
    database_url: str,
    receivers: ReceiverFactory,
    caplog: pytest.LogCaptureFixture,
    source: str,
) -> None:
    # Whoever can write to the database but has no master key copies another key's ciphertext
    # into this organization's signing key: another organization's (to have events of their
    # choosing signed with its secret) or a revoked key's of the same one (to bring it back).
    box = SecretBox.generate()
    org = await new_organization(store, secret=None)
    if source == "other-organization":
        other = await new_organization(store, secret=None)
        moved = await issue_key(store, box, other, "whsec_moved")
    else:
        moved = await issue_key(store, box, org, "whsec_moved")
        await store.revoke_key(org, moved.id)
    mine = await issue_key(store, box, org, SECRET)
    receiver = await receivers(secret=["whsec_moved", SECRET])
    await store.create_endpoint(org, receiver.url, None, None)
    await set_ciphertext(database_url, mine.id, moved.secret_ciphertext)
    (delivery,) = await publish(store, org)

    caplog.set_level("DEBUG", logger="ascend_webhooks")
    async with running(Worker(store, make_settings(), box.decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.FAILED
    assert [a.error for a in done.attempts] == ["key_error", "key_error"]
    assert receiver.requests == []  # signed with no secret, the moved one least of all
    assert f"cannot decrypt key {mine.id} of {org} (MasterKeyError)" in caplog.text
    assert "whsec_moved" not in caplog.text


async def test_a_ciphertext_in_its_own_row_signs(store: Store, receivers: ReceiverFactory) -> None:
    box = SecretBox.generate()
    org = await new_organization(store, secret=None)
    await issue_key(store, box, org, SECRET)
    receiver = await receivers(secret=SECRET)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    async with running(Worker(store, make_settings(), box.decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    assert [r.verified for r in receiver.requests] == [True]


@pytest.mark.parametrize("secret", ["", "whsec_\udcff"], ids=["empty", "not-utf8"])
async def test_a_secret_that_cannot_sign_is_a_key_error_never_sent(
    store: Store, receivers: ReceiverFactory, secret: str
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    async with running(Worker(store, make_settings(), lambda _, **__: secret)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert [a.error for a in done.attempts] == ["key_error", "key_error"]
    assert receiver.requests == []


async def test_attempt_runners_are_reused_and_end_with_the_worker(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 60)
    worker = Worker(store, make_settings(), decrypt, concurrency=4, per_endpoint_limit=4)
    async with running(worker):
        states = await wait_terminal(store, org, [d.id for d in deliveries])
        runners = len(worker._tasks)

    assert all(s.status is DeliveryStatus.SUCCEEDED for s in states)
    assert len(receiver.requests) == 60
    assert 1 <= runners <= 4  # one runner per slot, not one task per attempt
    assert worker._tasks == set()
    assert worker._idle_slots == []
    assert worker.in_flight == 0


class CrashingTransport:
    """Raises (a bug in a transport) on the first ``crashes`` posts, then really sends."""

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.inner = PyreqwestTransport(allow_http=True, allow_private=True)

    async def post(self, *args: Any) -> Response:
        if self.crashes > 0:
            self.crashes -= 1
            raise RuntimeError("transport bug")
        return await self.inner.post(*args)

    async def close(self) -> None:
        await self.inner.close()


async def test_an_attempt_that_crashes_is_recorded_and_retried(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    deliveries = await publish(store, org, 3)
    transport = CrashingTransport(crashes=2)
    worker = Worker(store, make_settings(), decrypt, transport=transport, concurrency=2)
    try:
        async with running(worker):
            states = await wait_terminal(store, org, [d.id for d in deliveries])
    finally:
        await transport.close()

    assert all(s.status is DeliveryStatus.SUCCEEDED for s in states)
    errors = sorted(str(a.error) for s in states for a in s.attempts)
    assert errors == ["None", "None", "None", "internal_error", "internal_error"]
    assert len(receiver.requests) == 3
    assert worker.in_flight == 0


class OverflowingPolicy(RetryPolicy):
    """Delays past what a date can hold (as a 1e12 s schedule was): deciding a retry raises."""

    def delay(self, retry_number: int) -> float:
        return 1e12


async def test_an_attempt_whose_retry_cannot_be_decided_is_recorded_and_not_left_leased(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET, behaviour=Reply(500))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)
    worker = Worker(store, make_settings(), decrypt, lease_seconds=1.0)
    worker.policy = OverflowingPolicy((0.01,), jitter=0.0)
    async with running(worker) as task:
        (done,) = await wait_terminal(store, org, [delivery.id])
        assert not task.done()
        assert worker.in_flight == 0
        assert await store.lease_holders() == []

    # Deciding failed twice (the attempt, then its crash handler): the delivery is failed, with
    # its attempt on record, rather than leased to a runner that died.
    assert done.status is DeliveryStatus.FAILED
    assert [(a.status_code, a.error) for a in done.attempts] == [(None, "internal_error")]
    assert len(receiver.requests) == 1


async def test_secrets_never_reach_the_logs(
    store: Store, receivers: ReceiverFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = await receivers(secret=SECRET, behaviour=Reply(500))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    (delivery,) = await publish(store, org)

    caplog.set_level("DEBUG")
    async with running(Worker(store, make_settings(retry_schedule=(0.01, 0.01)), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.attempt_count == 3
    assert delivery.id in caplog.text  # failures are logged...
    assert SECRET not in caplog.text  # ...without the key


async def test_ids_and_types_that_are_no_header_values_are_still_delivered(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    body = '{"id":"évt\\n1","type":"facture.payée","data":{}}'.encode()
    (result,) = await store.publish(
        org, [NewEvent("évt\n1", "facture.payée", body, hashlib.sha256(body).digest())]
    )
    (delivery,) = result.event.deliveries

    async with running(Worker(store, make_settings(), decrypt)):
        (done,) = await wait_terminal(store, org, [delivery.id])

    assert done.status is DeliveryStatus.SUCCEEDED
    (request,) = receiver.requests
    assert request.body == body
    assert request.verified
    assert request.header("x-ascend-event-type") is None
    assert request.header("x-ascend-event-id") is None
