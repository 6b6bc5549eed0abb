"""Crash safety on PostgreSQL: ``kill -9`` of API and worker processes, and a server restart.

SPEC section 3: an event answered 202 is never lost, not on ``kill -9`` of any process, not on
a database restart. Here the API (``serve --no-delivery``) and two ``worker`` processes run as
real subprocesses against one PostgreSQL database while publishers keep sending; processes are
killed with SIGKILL, or the PostgreSQL server itself is restarted, and every accepted event
must reach a real receiver that verifies every signature.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support import postgres as pg
from tests.support.processes import (
    ADMIN,
    Publisher,
    arrivals_of,
    assert_duplicates_only_across_kills,
    delivery_counts,
    postgres_database,
    postgres_started_at,
    processes,
    publishing,
    service_env,
    setup_organization,
)
from tests.support.receivers import Hang, Receiver, RecordedRequest, Reply

pytestmark = pytest.mark.postgres

CONCURRENCY = 8  # attempts in flight per worker process


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url


@pytest.mark.slow
async def test_kill_9_of_a_worker_and_of_the_api_loses_no_accepted_event(
    tmp_path: Path, database_url: str
) -> None:
    env = service_env(
        database_url,
        WORKER_CONCURRENCY=str(CONCURRENCY),
        LEASE_SECONDS="1",  # what a killed worker had leased is taken over a second later
    )
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200, delay=0.01)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        first = await group.worker(env, name="worker-a")
        second = await group.worker(env, name="worker-b")
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, api.base_url, org.id)
        worker_kills: list[float] = []
        server_started = await postgres_started_at()

        async def flowing() -> None:
            """Wait until deliveries arrive again: attempts are in flight."""
            await receiver.wait_for_requests(len(receiver.requests) + 20, within=15)

        async with publishing(publisher):
            await asyncio.sleep(0.5)
            await flowing()
            await first.kill()  # the other worker takes over its leases
            worker_kills.append(time.monotonic())
            await asyncio.sleep(0.3)
            await flowing()
            await api.kill()  # publishes in progress are cut off; they are sent again
            await asyncio.sleep(0.2)
            await api.restart()
            await first.restart()
            await flowing()
            await second.kill()
            worker_kills.append(time.monotonic())
            await asyncio.sleep(0.5)
            await flowing()

        accepted = set(publisher.accepted)
        assert publisher.connection_errors > 0, "no publish ever met the killed API"
        assert len(publisher.answered_202) > 300, len(publisher.answered_202)
        received = await arrivals_of(receiver, accepted, within=30)
        if await postgres_started_at() == server_started:
            # (A restart of the server by another test meanwhile may repeat attempts too.)
            assert_duplicates_only_across_kills(receiver.requests, worker_kills)
            duplicates = sum(received.values()) - len(received)
            assert duplicates <= len(worker_kills) * 3 * CONCURRENCY, duplicates
        counts = await delivery_counts(client, api.base_url)
        assert counts.get("pending", 0) == 0, counts
        assert counts.get("failed", 0) == 0, counts
        assert counts["succeeded"] == len(accepted), counts
        assert org.secret not in group.output()


async def test_another_worker_takes_over_an_attempt_cut_short_by_kill_9(
    tmp_path: Path, database_url: str
) -> None:
    env = service_env(database_url, LEASE_SECONDS="1")
    async with (
        processes(tmp_path) as group,
        Receiver() as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        holder = await group.worker(env, name="worker-a")
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        receiver.script(Hang(), then=Reply(200))  # hold the first attempt: no answer
        publisher = Publisher(client, api.base_url, org.id)
        await publisher.publish({"id": "held", "type": "payout.paid", "data": {"po": "po_1"}})
        (held,) = await receiver.wait_for_requests(1)  # worker-a is mid-attempt
        other = await group.worker(env, name="worker-b")
        await asyncio.sleep(1.5)  # past the lease: worker-a's heartbeat keeps it
        assert len(receiver.requests) == 1

        await holder.kill()
        killed_at = time.monotonic()
        again = (await receiver.wait_for_requests(2, within=15))[1]  # worker-b, after the lease
        assert again.received_at - killed_at < 10
        assert again.verified, again.verify_error
        assert again.body == held.body
        assert again.header("x-ascend-delivery-id") == held.header("x-ascend-delivery-id")
        await eventually_succeeded(client, api.base_url, org.id, again)
        assert other.running


async def test_ordering_keys_keep_their_order_through_kill_9_of_a_worker(
    tmp_path: Path, database_url: str
) -> None:
    env = service_env(database_url, LEASE_SECONDS="1")
    keys, per_key = [f"k{i}" for i in range(1, 6)], 30
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200, delay=0.02)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        doomed = await group.worker(env, name="worker-a")
        await group.worker(env, name="worker-b")
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, api.base_url, org.id)
        await publisher.publish_batch(
            [
                {"id": f"{key}-{n:02}", "type": "invoice.paid", "data": {}, "ordering_key": key}
                for n in range(per_key)
                for key in keys
            ]
        )
        await receiver.wait_for_requests(40, within=15)
        server_started = await postgres_started_at()
        await doomed.kill()  # holding the head of some keys, mid-attempt
        killed_at = time.monotonic()
        received = await arrivals_of(receiver, publisher.accepted, within=30)

        ids = [request.event.id for request in receiver.requests if request.event]
        for key in keys:
            arrived = [event_id for event_id in ids if event_id.startswith(f"{key}-")]
            # An attempt cut off by the kill may be repeated, but nothing overtakes it.
            assert arrived == sorted(arrived), key
        if await postgres_started_at() == server_started:  # (see the test above)
            assert_duplicates_only_across_kills(receiver.requests, [killed_at])
            duplicates = sum(received.values()) - len(received)
            assert duplicates <= len(keys), duplicates  # the head of each key, at most


async def eventually_succeeded(
    client: httpx.AsyncClient, base_url: str, org: str, request: RecordedRequest
) -> None:
    """Wait until the request's delivery is recorded as succeeded."""
    delivery = request.header("x-ascend-delivery-id")
    deadline = time.monotonic() + 10
    while True:
        got = await client.get(
            f"{base_url}/v1/organizations/{org}/deliveries/{delivery}", headers=ADMIN
        )
        if got.json()["status"] == "succeeded":
            return
        assert time.monotonic() < deadline, got.json()
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_postgresql_restart_mid_run_is_survived_by_every_process(
    tmp_path: Path, database_url: str
) -> None:
    found = pg.cluster()
    if found is None:
        pytest.skip("no local PostgreSQL cluster that pg_ctlcluster can restart")
    env = service_env(database_url, WORKER_CONCURRENCY=str(CONCURRENCY), LEASE_SECONDS="10")
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200, delay=0.01)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        api = await group.serve(env, "--no-delivery", name="api")
        workers = [await group.worker(env, name=name) for name in ("worker-a", "worker-b")]
        org = await setup_organization(client, api.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, api.base_url, org.id)
        try:
            async with publishing(publisher):
                await receiver.wait_for_requests(50, within=15)
                restarted_at = time.monotonic()
                await pg.restart_server(*found)  # fast shutdown: every session is cut off
                back_at = time.monotonic()
                before = len(publisher.accepted)
                await receiver.wait_for_requests(len(receiver.requests) + 50, within=30)
                await asyncio.sleep(0.5)
                assert len(publisher.accepted) > before + 20  # publishing works again
        finally:
            await pg.ensure_running(*found)

        group.assert_all_running()  # nothing died of the restart, nothing was restarted
        accepted = set(publisher.accepted)
        received = await arrivals_of(receiver, accepted, within=45)
        # Outcomes that could not be written while the server was down may be sent again
        # (at least once), but only those: nothing else arrives twice.
        for request in receiver.requests:
            assert request.event is not None
            if received[request.event.id] > 1:
                assert restarted_at - 2 < request.received_at, request.event.id
        assert (await api_health(client, api.base_url)) == 200

        # Each worker still delivers on its own: pause one (SIGSTOP), publish, see it arrive.
        for paused, name in ((workers[0], "a"), (workers[1], "b")):
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                await publisher.publish({"id": f"after-{name}", "type": "refund.paid", "data": {}})
                await arrivals_of(receiver, {*accepted, f"after-{name}"}, within=20)
                accepted.add(f"after-{name}")
            finally:
                os.kill(paused.pid, signal.SIGCONT)
        counts = await delivery_counts(client, api.base_url)
        assert counts.get("pending", 0) == 0, counts
        assert counts.get("failed", 0) == 0, counts
        for member in group.members:  # and each stops cleanly, still connected
            assert await member.stop() == 0, member.output()
        print(
            f"restart took {back_at - restarted_at:.1f}s; {publisher.unavailable} publishes "
            f"answered 503, {publisher.connection_errors} connection errors, "
            f"{sum(received.values()) - len(received)} duplicates"
        )


async def api_health(client: httpx.AsyncClient, base_url: str) -> int:
    response = await client.get(f"{base_url}/healthz")
    return response.status_code
