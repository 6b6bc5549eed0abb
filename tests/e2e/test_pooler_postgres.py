"""API and worker processes on PostgreSQL through a real PgBouncer in transaction mode.

Every process reaches the database through the pooler (``pooler=transaction``), which lends
its two server sessions per transaction; the workers' wake-up listener goes straight to
PostgreSQL (``listen_host``/``listen_port``). Receivers are real HTTP servers on loopback that
verify every signature.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.pgbouncer import direct_listen, pooled_url, running_pgbouncer
from tests.support.processes import (
    Publisher,
    arrivals_of,
    delivery_counts,
    postgres_database,
    processes,
    service_env,
    setup_organization,
)
from tests.support.receivers import Receiver

pytestmark = pytest.mark.postgres


async def test_api_and_workers_through_a_transaction_pooler_deliver_everything_once(
    tmp_path: Path,
) -> None:
    async with postgres_database() as url:
        with running_pgbouncer("transaction") as port:
            database = url.rsplit("/", 1)[1]
            options = f"pooler=transaction&pool_size=4&{direct_listen()}"
            env = service_env(pooled_url(port, database, options))
            async with (
                processes(tmp_path) as group,
                Receiver() as receiver,
                httpx.AsyncClient(timeout=30) as client,
            ):
                api = await group.serve(env, "--no-delivery", name="api")
                for _ in range(2):
                    await group.worker(env)
                org = await setup_organization(client, api.base_url, receiver.url)
                receiver.secret = org.secret
                publisher = Publisher(client, api.base_url, org.id)
                events = [
                    {"id": f"e{n}", "type": "invoice.paid", "data": {"n": n}} for n in range(300)
                ]
                await asyncio.gather(
                    publisher.publish_batch(events[:150]),
                    *(publisher.publish(event) for event in events[150:]),
                )
                assert sorted(publisher.accepted) == sorted(e["id"] for e in events)
                arrived = await arrivals_of(receiver, publisher.accepted, within=60)
                assert set(arrived.values()) == {1}, Counter(arrived.values())
                # Every outcome recorded (the counts of /metrics are cached for a moment).
                deadline = asyncio.get_running_loop().time() + 30
                while (counts := await delivery_counts(client, api.base_url)) != {
                    "pending": 0, "succeeded": len(events), "failed": 0,
                }:  # fmt: skip
                    assert asyncio.get_running_loop().time() < deadline, counts
                    await asyncio.sleep(0.2)
                group.assert_all_running()
