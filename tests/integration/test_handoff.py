"""New deliveries handed from a publish straight to the worker of the same process.

The store's side (SQLite): what a publish leases to an open hand-off, and what it leaves for
the claim. The worker's side: a caught-up worker attempts new deliveries without claiming,
never lets a new delivery overtake a backlog, and as it stops gives back at once what it was
handed but did not start.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading

import pytest

from ascend_webhooks.delivery.worker import Worker
from ascend_webhooks.ids import new_id
from ascend_webhooks.signature import verify
from ascend_webhooks.store import Store
from ascend_webhooks.store.handoff import HandOff
from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
    NewEvent,
)
from tests.integration.test_worker import (
    SECRET,
    CountingStore,
    decrypt,
    make_settings,
    new_organization,
    running,
    wait_terminal,
    wait_until,
)
from tests.support import receivers as receiver_fixtures
from tests.support.receivers import ReceiverFactory, Reply

receivers = receiver_fixtures.receivers


def _event(ordering_key: str | None = None) -> NewEvent:
    event_id = new_id("evt")
    body = json.dumps({"id": event_id, "type": "invoice.paid", "data": {}}).encode()
    return NewEvent(event_id, "invoice.paid", body, hashlib.sha256(body).digest(), ordering_key)


class Taken:
    """A hand-off's receiving end that keeps what it is given."""

    def __init__(self) -> None:
        self.deliveries: list[ClaimedDelivery] = []

    def __call__(self, deliveries: list[ClaimedDelivery]) -> None:
        self.deliveries.extend(deliveries)


#: Runs a test on the embedded store alone: the hand-off is the in-process path of ``serve``.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_only_the_sqlite_store_hands_off(store: Store) -> None:
    # PostgreSQL serves workers in other processes: nothing to hand over in-process.
    supported = store.hand_off(HandOff("wrk_x", 60.0, Taken()))
    store.hand_off(None)
    assert supported is (type(store).__name__ == "SQLiteStore")


@sqlite_only
async def test_a_publish_leases_what_the_hand_off_has_room_for_and_leaves_the_rest(
    store: Store,
) -> None:
    org = await new_organization(store)
    endpoint = await store.create_endpoint(org, "https://example.com/hook", None, None)
    taken = Taken()
    handoff = HandOff("wrk_handed", 60.0, taken)
    assert store.hand_off(handoff)
    handoff.open(total=10, rooms={endpoint.id: 1}, default=0)

    results = await store.publish(org, [_event(), _event(), _event()])

    # After the commit: one handed over (the endpoint's room), leased, attempt 1.
    ((handed),) = taken.deliveries
    assert handed.endpoint_id == endpoint.id
    assert handed.url == "https://example.com/hook"
    assert (handed.attempt_number, handed.round_attempt) == (1, 1)
    assert handed.body == results[0].event.body
    assert handoff.missed  # the other two were left for the claim
    claimed = await store.claim("wrk_other", 10, 60.0)
    assert {d.id for d in claimed} == {r.event.deliveries[0].id for r in results} - {handed.id}
    # The handed delivery is the hand-off worker's: its outcome is recorded as a claimed one's.
    attempt = Attempt(1, results[0].event.created_at, 3.0, 200, None, None)
    await store.record(
        "wrk_handed", [AttemptOutcome(handed.id, attempt, DeliveryStatus.SUCCEEDED, None)]
    )
    done = await store.get_delivery(org, handed.id)
    assert (done.status, done.attempt_count) == (DeliveryStatus.SUCCEEDED, 1)


@sqlite_only
async def test_a_handed_outcome_is_recorded_when_events_and_deliveries_are_numbered_apart(
    store: Store,
) -> None:
    # Events and deliveries have sequence numbers of their own: an event wanted by no endpoint
    # sets them apart. The handed delivery's outcome must still land (it was looked up by its
    # event's number, matched no row and was dropped: the delivery went out again when its
    # lease ran out, and its attempt was never on record).
    org = await new_organization(store)
    await store.create_endpoint(org, "https://example.com/a", ["invoice.paid"], None)
    body = b'{"id":"evt_none","type":"invoice.created","data":{}}'
    unwanted = NewEvent("evt_none", "invoice.created", body, hashlib.sha256(body).digest())
    await store.publish(org, [unwanted])  # event 1, no delivery
    taken = Taken()
    handoff = HandOff("wrk_handed", 60.0, taken)
    store.hand_off(handoff)
    handoff.open(total=10, rooms={}, default=10)
    (result,) = await store.publish(org, [_event()])
    ((handed),) = taken.deliveries
    assert handed.id == result.event.deliveries[0].id
    attempt = Attempt(1, result.event.created_at, 3.0, 200, None, None)
    await store.record(
        "wrk_handed", [AttemptOutcome(handed.id, attempt, DeliveryStatus.SUCCEEDED, None)]
    )
    done = await store.get_delivery(org, handed.id)
    assert (done.status, done.attempt_count, len(done.attempts)) == (
        DeliveryStatus.SUCCEEDED,
        1,
        1,
    )


@sqlite_only
async def test_a_closed_hand_off_and_a_chain_behind_its_head_are_left_for_the_claim(
    store: Store,
) -> None:
    org = await new_organization(store)
    await store.create_endpoint(org, "https://example.com/hook", None, None)
    taken = Taken()
    handoff = HandOff("wrk_handed", 60.0, taken)
    store.hand_off(handoff)

    await store.publish(org, [_event()])  # never opened: nothing handed
    assert taken.deliveries == []
    assert len(await store.claim("wrk_other", 10, 60.0)) == 1

    handoff.open(total=10, rooms={}, default=10)
    head, behind = await store.publish(org, [_event("cus_1"), _event("cus_1")])
    # The head of the ordering key is handed over; the next waits behind it, blocked.
    assert [d.id for d in taken.deliveries] == [head.event.deliveries[0].id]
    assert taken.deliveries[0].ordering_key == "cus_1"  # (its outcome is recorded at once)
    assert await store.claim("wrk_other", 10, 60.0) == []
    handoff.close()
    await store.publish(org, [_event()])
    assert len(taken.deliveries) == 1
    assert behind.event.deliveries


@sqlite_only
async def test_a_caught_up_worker_attempts_new_deliveries_without_claiming(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(secret=SECRET)
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    counting = CountingStore(store)
    worker = Worker(counting, make_settings(), decrypt)  # type: ignore[arg-type]
    async with running(worker):

        async def caught_up() -> bool:
            return worker._handoff is not None and worker._handoff.is_open

        await wait_until(caught_up, within=5.0, every=0.005)
        results = []
        for _ in range(5):
            results += await store.publish(org, [_event()])
            await asyncio.sleep(0.02)
        ids = [r.event.deliveries[0].id for r in results]
        states = await wait_terminal(store, org, ids)

    assert all(s.status is DeliveryStatus.SUCCEEDED and s.attempt_count == 1 for s in states)
    assert counting.claimed == 0  # every one came from its publish, none through a claim
    assert sorted(r.header("x-ascend-delivery-id") or "" for r in receiver.requests) == sorted(ids)
    for request in receiver.requests:  # signed as any attempt
        assert verify(request.body, dict(request.headers), SECRET).type == "invoice.paid"


@sqlite_only
async def test_new_deliveries_never_overtake_a_backlog(
    store: Store, receivers: ReceiverFactory
) -> None:
    receiver = await receivers(behaviour=Reply(200, delay=0.05))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    backlog = []
    for _ in range(6):
        backlog += await store.publish(org, [_event()])
    # The first claim asks for 5 (a slot and 4 ahead) and gets 3 (the endpoint may hold 3):
    # less than it asked for, with a backlog left behind the endpoint's limit.
    worker = Worker(
        store, make_settings(), decrypt, concurrency=1, per_endpoint_limit=1, prefetch=4
    )
    async with running(worker):
        await wait_until(lambda: _sent(receiver, 1), within=5.0, every=0.005)
        late = await store.publish(org, [_event()])
        ids = [r.event.deliveries[0].id for r in [*backlog, *late]]
        await wait_terminal(store, org, ids)

    # One at a time, oldest first: the new delivery came after the whole backlog.
    assert [r.header("x-ascend-delivery-id") for r in receiver.requests] == ids


async def _sent(receiver: receiver_fixtures.Receiver, count: int) -> bool:
    return len(receiver.requests) >= count


@sqlite_only
async def test_an_endpoint_held_back_by_its_limit_keeps_its_backlog_moving(
    store: Store, receivers: ReceiverFactory
) -> None:
    # Each claim finds less than it asks for (the endpoint may hold 3), yet work is left
    # behind the endpoint's limit: the worker must not take itself for caught up and sleep
    # through freed slots waiting for publishes.
    receiver = await receivers(behaviour=Reply(200, delay=0.01))
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    backlog = []
    for _ in range(80):
        backlog += await store.publish(org, [_event()])
    worker = Worker(
        store, make_settings(), decrypt, concurrency=4, per_endpoint_limit=1, prefetch=8
    )
    started = asyncio.get_running_loop().time()
    async with running(worker):
        ids = [r.event.deliveries[0].id for r in backlog]
        await wait_terminal(store, org, ids, within=20.0)
        elapsed = asyncio.get_running_loop().time() - started
    # One at a time, ~10 ms each: about 1 s. Napping between refills (10 ms polls instead of
    # the freed slot's wake-up) took about three times as long.
    assert elapsed < 2.2


@sqlite_only
async def test_a_delivery_handed_over_as_the_worker_stops_is_given_back_at_once(
    store: Store, receivers: ReceiverFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A publish leases a new delivery to the caught-up worker; stop() comes before its
    # transaction commits, so the hand-over reaches a worker that is on its way out. It must
    # give the delivery back (or attempt it) before run() returns: left leased, it would wait
    # out its lease (a minute) after a restart.
    receiver = await receivers()
    org = await new_organization(store)
    await store.create_endpoint(org, receiver.url, None, None)
    worker = Worker(store, make_settings(), decrypt)
    task = asyncio.create_task(worker.run())
    leased, commit = threading.Event(), threading.Event()
    try:

        async def caught_up() -> bool:
            return worker._handoff is not None and worker._handoff.is_open

        await wait_until(caught_up, within=5.0, every=0.005)
        handoff = worker._handoff
        assert handoff is not None
        take = handoff.take

        def take_and_hold(endpoint_id: str) -> bool:  # on the writer, in the transaction
            took = take(endpoint_id)
            if took:
                leased.set()
                commit.wait(5.0)
            return took

        monkeypatch.setattr(handoff, "take", take_and_hold)
        publishing = asyncio.create_task(store.publish(org, [_event()]))
        assert await asyncio.to_thread(leased.wait, 5.0)
        worker.stop()
        open_while_stopping = handoff.is_open
        await asyncio.sleep(0.1)  # the worker stops meanwhile, as far as it can
        commit.set()
        (result,) = await publishing
        await asyncio.wait_for(task, 5.0)
    finally:
        commit.set()
        await worker.drain()
        await task

    (delivery,) = result.event.deliveries
    assert worker.worker_id not in await store.lease_holders()
    # The next worker claims it at once, unattempted: no lease to wait out.
    assert [d.id for d in await store.claim("wrk_next", 10, 60.0)] == [delivery.id]
    assert (await store.get_delivery(org, delivery.id)).attempt_count == 0
    assert receiver.requests == []
    # From stop() on, the worker takes nothing more from publishes.
    assert not open_while_stopping
