"""Scaling out on PostgreSQL: several ``worker`` processes and one API process, for real.

What running many workers against one database must keep (SPEC section 3, docs/operating.md):

* no delivery is sent twice while no process dies (leases, ``FOR UPDATE SKIP LOCKED``);
* events with one ``ordering_key`` reach an endpoint one at a time, in publish order, even
  when attempts fail and are retried, while different keys go in parallel;
* one organization's backlog does not hold up another organization's events.

Every process is a real subprocess; receivers are real HTTP servers on loopback that verify
every signature.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import (
    ADMIN,
    Publisher,
    arrivals_of,
    delivery_counts,
    postgres_database,
    postgres_started_at,
    processes,
    service_env,
    setup_organization,
)
from tests.support.receivers import Behaviour, Receiver, Reply

pytestmark = pytest.mark.postgres


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


class FailsFirstAttempt(Receiver):
    """A receiver that answers 500 the first time each chosen event arrives.

    It also watches what it answers at once: ``most_at_once`` requests in all, and
    ``same_key_at_once``, the event ids it was answering while another event of the same
    key (the id up to its last ``-``) was still being answered.
    """

    def __init__(self, fail_first: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_first = set(fail_first)
        self.answering: set[str] = set()
        self.most_at_once = 0
        self.same_key_at_once: list[str] = []

    async def _answer(
        self, behaviour: Behaviour, writer: asyncio.StreamWriter, headers: Mapping[str, str]
    ) -> bool:
        event_id = headers.get("x-ascend-event-id", "")
        if event_id in self.fail_first:
            self.fail_first.discard(event_id)
            assert isinstance(behaviour, Reply)
            behaviour = Reply(500, delay=behaviour.delay)
        key = event_id.rpartition("-")[0]
        if any(other.rpartition("-")[0] == key for other in self.answering):
            self.same_key_at_once.append(event_id)
        self.answering.add(event_id)
        self.most_at_once = max(self.most_at_once, len(self.answering))
        try:
            return await super()._answer(behaviour, writer, headers)
        finally:
            self.answering.discard(event_id)


@pytest.mark.slow
async def test_no_delivery_is_sent_twice_by_three_workers(
    tmp_path: Path, database_url: str
) -> None:
    # A lease longer than any server restart another test might cause meanwhile: outcomes
    # that wait for the database are still recorded by the worker that holds the lease.
    env = service_env(database_url, ENDPOINT_CONCURRENCY="32", LEASE_SECONDS="20")
    async with (
        processes(tmp_path) as group,
        Receiver() as first,
        Receiver() as second,
        httpx.AsyncClient(timeout=30) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        for _ in range(3):
            await group.worker(env)
        org = await setup_organization(client, api.base_url, first.url)
        more = await client.post(
            f"{api.base_url}/v1/organizations/{org.id}/endpoints",
            json={"url": second.url},
            headers=ADMIN,
        )
        assert more.status_code == 201, more.text
        first.secret = second.secret = org.secret
        publisher = Publisher(client, api.base_url, org.id)
        events = [{"id": f"e{n}", "type": "invoice.paid", "data": {"n": n}} for n in range(2000)]
        await asyncio.gather(
            *(publisher.publish_batch(events[i : i + 500]) for i in range(0, len(events), 500))
        )
        assert len(publisher.answered_202) == len(events)
        for receiver in (first, second):
            arrived = await arrivals_of(receiver, publisher.accepted, within=60)
            twice = [event_id for event_id, count in arrived.items() if count > 1]
            assert not twice, f"{len(twice)} events sent twice, e.g. {twice[:5]}"
            deliveries = Counter(r.header("x-ascend-delivery-id") for r in receiver.requests)
            assert len(deliveries) == len(events)
            assert set(deliveries.values()) == {1}
        counts = await delivery_counts(client, api.base_url)
        assert counts.get("succeeded") == 2 * len(events), counts
        group.assert_all_running()


KEYS = [f"k{i}" for i in range(1, 6)]
PER_KEY = 12
SLOW = 0.1  # seconds the receiver takes per request


async def test_each_ordering_key_arrives_in_order_and_keys_go_in_parallel(
    tmp_path: Path, database_url: str
) -> None:
    env = service_env(database_url)
    # Every third event of each key fails its first attempt: the key waits for its retry.
    failing = {f"{key}-{n}" for key in KEYS for n in range(PER_KEY) if n % 3 == 1}
    async with (
        processes(tmp_path) as group,
        FailsFirstAttempt(failing, behaviour=Reply(200, delay=SLOW)) as receiver,
        httpx.AsyncClient(timeout=30) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        await group.worker(env)
        await group.worker(env)
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, api.base_url, org.id)

        def event(key: str, n: int) -> dict[str, Any]:
            return {"id": f"{key}-{n}", "type": "invoice.paid", "data": {}, "ordering_key": key}

        server_started = await postgres_started_at()
        started = time.monotonic()
        half = PER_KEY // 2
        # The first half in one batch (its order is the publish order), keys interleaved ...
        await publisher.publish_batch([event(key, n) for n in range(half) for key in KEYS])
        # ... the rest one request at a time, while the first ones are being delivered.
        for n in range(half, PER_KEY):
            for key in KEYS:
                await publisher.publish(event(key, n))
        await arrivals_of(receiver, publisher.accepted, within=30)
        elapsed = receiver.requests[-1].received_at - started

        for key in KEYS:
            arrived = [
                r.event.id
                for r in receiver.requests
                if r.event and r.event.id.startswith(key + "-")
            ]
            # In publish order; a failed first attempt is retried before the next event goes.
            expected = []
            for n in range(PER_KEY):
                expected += [f"{key}-{n}"] * (2 if f"{key}-{n}" in failing else 1)
            assert arrived == expected, key
        # Serially, the requests alone would take this long; one key's share is a fifth of it.
        serial = len(receiver.requests) * SLOW
        if await postgres_started_at() == server_started:  # no restart by another test
            assert elapsed < serial / 2, (elapsed, serial)
        assert receiver.most_at_once >= 3, receiver.most_at_once  # keys did overlap
        assert not receiver.same_key_at_once  # one key: one request at a time
        counts = await delivery_counts(client, api.base_url)
        assert counts == {"pending": 0, "succeeded": len(KEYS) * PER_KEY, "failed": 0}, counts
        print(
            f"ordering: {elapsed:.2f}s, {serial:.1f}s of requests, {receiver.most_at_once} at once"
        )


BACKLOG = 20_000


@pytest.mark.slow
async def test_a_large_backlog_of_one_organization_does_not_delay_another(
    tmp_path: Path, database_url: str
) -> None:
    # One endpoint may take every slot of a worker: only the claim's fairness across
    # organizations can get B's event through ahead of A's backlog.
    env = service_env(database_url, WORKER_CONCURRENCY="32", ENDPOINT_CONCURRENCY="32")
    async with (
        processes(tmp_path) as group,
        Receiver() as busy,
        Receiver() as quiet,
        httpx.AsyncClient(timeout=60) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        a = await setup_organization(client, api.base_url, busy.url, name="A")
        b = await setup_organization(client, api.base_url, quiet.url, name="B")
        busy.secret, quiet.secret = a.secret, b.secret
        backlog = Publisher(client, api.base_url, a.id)
        batches = [
            [{"type": "invoice.paid", "data": {"n": n}} for n in range(i, i + 1000)]
            for i in range(0, BACKLOG, 1000)
        ]
        for pair in range(0, len(batches), 2):
            await asyncio.gather(
                *(backlog.publish_batch(batch) for batch in batches[pair : pair + 2])
            )
        assert len(backlog.answered_202) == BACKLOG
        # The workers start on A's whole backlog (on any machine, however fast) ...
        await group.worker(env)
        await group.worker(env)
        await busy.wait_for_requests(200, within=20)

        publisher = Publisher(client, api.base_url, b.id)
        server_started = await postgres_started_at()
        published_at = time.monotonic()
        await publisher.publish({"id": "b-1", "type": "payout.paid", "data": {}})
        (arrived,) = await quiet.wait_for_requests(1, within=10)
        assert arrived.verified, arrived.verify_error
        waited = arrived.received_at - published_at
        pending = (await delivery_counts(client, api.base_url)).get("pending", 0)
        assert pending > BACKLOG / 4, pending  # ... and it is still there when B's arrives
        if await postgres_started_at() == server_started:  # no restart by another test
            assert waited < 1.0, f"B waited {waited:.2f}s behind {pending} deliveries of A"
        print(f"fairness: B waited {waited * 1000:.0f} ms behind {pending} pending of A")
