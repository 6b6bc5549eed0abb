"""Crash safety on the embedded database: ``kill -9`` of ``serve`` loses no accepted event.

SPEC section 3: an event answered 202 is never lost, not on ``kill -9`` of any process; a
delivery interrupted mid-attempt is attempted again. Here ``ascend-webhooks serve`` (API and
worker in one process, SQLite) runs as a real subprocess and is killed with SIGKILL while
publishers are sending and attempts are in flight at a real receiver that verifies every
signature; it is restarted on the same database file each time. Leases are the default 60 s:
the restarted process gives back at once the leases its killed predecessor held.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.processes import (
    ADMIN,
    Publisher,
    arrivals_of,
    assert_duplicates_only_across_kills,
    delivery_counts,
    event_ids,
    eventually,
    processes,
    publishing,
    service_env,
    setup_organization,
)
from tests.support.receivers import Hang, Receiver, Reply

CONCURRENCY = 8  # attempts in flight in the serve process: bounds the duplicates per kill


@pytest.mark.slow
async def test_every_accepted_event_arrives_across_repeated_kill_9_of_serve(
    tmp_path: Path,
) -> None:
    env = service_env(
        f"sqlite:///{tmp_path / 'crash.db'}",
        WORKER_CONCURRENCY=str(CONCURRENCY),
        ENDPOINT_CONCURRENCY=str(CONCURRENCY),
    )  # the default lease (60 s): the restarted process gives back the killed one's at once
    # Slowish on purpose (10 ms per request): attempts are in flight whenever serve is killed.
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200, delay=0.01)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        serve = await group.serve(env)
        org = await setup_organization(client, serve.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, serve.base_url, org.id)
        kills: list[float] = []
        async with publishing(publisher):
            await asyncio.sleep(1.0)
            for _ in range(3):
                # Deliveries flow again since the last restart: attempts are in flight.
                await receiver.wait_for_requests(len(receiver.requests) + 20, within=10)
                await serve.kill()
                kills.append(time.monotonic())
                await asyncio.sleep(0.2)  # publishers meet a dead port meanwhile
                await serve.restart()
                await asyncio.sleep(0.5)

        accepted = set(publisher.accepted)
        assert publisher.connection_errors > 0, "no publish ever met the killed process"
        assert len(publisher.answered_202) > 300, len(publisher.answered_202)
        received = await arrivals_of(receiver, accepted, within=30)
        assert_duplicates_only_across_kills(receiver.requests, kills)
        duplicates = sum(received.values()) - len(received)
        # Loose bound on the number: the attempts in flight plus the outcomes not yet written
        # when the process died, per kill.
        assert duplicates <= len(kills) * 3 * CONCURRENCY, (duplicates, len(kills))
        counts = await delivery_counts(client, serve.base_url)
        assert counts.get("pending", 0) == 0, counts
        assert counts.get("failed", 0) == 0, counts
        assert counts["succeeded"] == len(accepted), counts
        log = serve.output()
        assert org.secret not in log


async def test_an_attempt_cut_short_by_kill_9_is_made_again_after_restart(
    tmp_path: Path,
) -> None:
    env = service_env(f"sqlite:///{tmp_path / 'held.db'}")  # the default lease: 60 s
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(200)) as receiver,
        httpx.AsyncClient(timeout=10) as client,
    ):
        serve = await group.serve(env)
        org = await setup_organization(client, serve.base_url, receiver.url)
        receiver.secret = org.secret
        receiver.script(Hang(), then=Reply(200))  # hold the first attempt: no answer
        published = await client.post(
            f"{serve.base_url}/v1/organizations/{org.id}/events",
            json={"id": "held", "type": "invoice.paid", "data": {"invoice": "inv_1"}},
            headers=ADMIN,
        )
        assert published.status_code == 202, published.text
        delivery = published.json()["deliveries"][0]["id"]
        (held,) = await receiver.wait_for_requests(1)
        await asyncio.sleep(0.3)
        assert len(receiver.requests) == 1

        await serve.kill()  # mid-attempt: no outcome was recorded, the lease runs for 60 s
        await serve.restart()
        restarted_at = time.monotonic()
        # The new process sees that the lease holder's process is gone and gives its lease
        # back at once, instead of waiting out the 60 s.
        again = (await receiver.wait_for_requests(2, within=15))[1]
        assert again.received_at - restarted_at < 5
        assert again.verified, again.verify_error
        assert again.event is not None
        assert again.event.id == "held"
        assert again.body == held.body  # byte-identical on every attempt
        assert again.header("x-ascend-delivery-id") == delivery

        async with asyncio.timeout(10):
            while True:
                got = await client.get(
                    f"{serve.base_url}/v1/organizations/{org.id}/deliveries/{delivery}",
                    headers=ADMIN,
                )
                if got.json()["status"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
        attempts = got.json()["attempts"]
        assert attempts[-1]["status_code"] == 200
        with contextlib.suppress(TimeoutError):
            await receiver.wait_for_requests(3, within=0.5)
        assert len(receiver.requests) == 2  # succeeded: not attempted a third time


async def test_deliveries_waiting_for_a_retry_survive_kill_9(tmp_path: Path) -> None:
    env = service_env(
        f"sqlite:///{tmp_path / 'retrying.db'}",
        RETRY_SCHEDULE="0.2,0.2,1,1,1,1,1,1,1,1",
    )
    async with (
        processes(tmp_path) as group,
        Receiver(behaviour=Reply(503)) as receiver,  # down: every attempt fails for now
        httpx.AsyncClient(timeout=10) as client,
    ):
        serve = await group.serve(env)
        org = await setup_organization(client, serve.base_url, receiver.url)
        receiver.secret = org.secret
        publisher = Publisher(client, serve.base_url, org.id)
        await publisher.publish_batch(
            [{"id": f"r{n}", "type": "refund.paid", "data": {"n": n}} for n in range(20)]
        )

        # Each event failed three times (at least two recorded): waiting for its next retry.
        def each_failed_three_times() -> bool:
            arrived = Counter(event_ids(receiver.requests))
            return len(arrived) == 20 and min(arrived.values()) >= 3

        await eventually(each_failed_three_times, within=10)
        await serve.kill()
        receiver.respond(Reply(200))  # the endpoint recovers while the service is down
        await serve.restart()

        await arrivals_of(receiver, publisher.accepted, within=30)
        await eventually_counts(client, serve.base_url, succeeded=20)
        listed = await client.get(
            f"{serve.base_url}/v1/organizations/{org.id}/deliveries?limit=50", headers=ADMIN
        )
        assert len(listed.json()["data"]) == 20
        for summary in listed.json()["data"]:
            got = await client.get(
                f"{serve.base_url}/v1/organizations/{org.id}/deliveries/{summary['id']}",
                headers=ADMIN,
            )
            attempts = got.json()["attempts"]
            # The history from before the kill is kept, and numbering goes on from it.
            assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
            assert [a["status_code"] for a in attempts[:-1]] == [503] * (len(attempts) - 1)
            assert attempts[-1]["status_code"] == 200
            assert len(attempts) >= 3, attempts


async def eventually_counts(client: httpx.AsyncClient, base_url: str, **expected: int) -> None:
    """Wait until the delivery counts of /metrics include ``expected`` (status=count)."""
    deadline = time.monotonic() + 15
    while True:
        counts = await delivery_counts(client, base_url)
        if all(counts.get(status, 0) == n for status, n in expected.items()):
            return
        assert time.monotonic() < deadline, counts
        await asyncio.sleep(0.05)
