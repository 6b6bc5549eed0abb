"""On PostgreSQL, the worker's claims and outcomes commit without waiting for their WAL flush.

Read on real connections of the store's two pools: ``synchronous_commit`` is off on the
worker's (a connection option, so each write stays one statement) and on for everything else
(publishes and API writes keep their synchronous commit), use after use.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from ascend_webhooks.store.models import Attempt, AttemptOutcome, DeliveryStatus, NewEvent
from ascend_webhooks.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres


@pytest.fixture
async def pg_store() -> AsyncIterator[PostgresStore]:
    from tests.support.postgres import create_database, drop_database

    url = await create_database()
    store = PostgresStore(url + ("&" if "?" in url else "?") + "pool_size=1")
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop_database(url)


async def test_only_the_workers_transactions_skip_the_flush_wait(pg_store: PostgresStore) -> None:
    for _ in range(2):
        async with pg_store._transaction() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        async with pg_store._connection() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
        async with pg_store._relaxed() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
    # The worker's writes go through the relaxed pool; the publish through the other one.
    org = await pg_store.create_organization("acme")
    await pg_store.create_endpoint(org.id, "https://example.test/hook", None, None)
    seen: dict[str, list[str]] = {"on": [], "off": []}
    for setting, pool in (("on", pg_store._pool), ("off", pg_store._relaxed_pool)):
        assert pool is not None
        for holder in pool._holders:
            if holder._con is not None:
                holder._con.add_query_logger(lambda r, into=seen[setting]: into.append(r.query))
    (published,) = await pg_store.publish(org.id, [NewEvent("evt_1", "t", b"{}", b"h")])
    [claimed] = await pg_store.claim("w", 10, 30)
    await pg_store.extend_leases("w", [claimed.id], 30)
    await pg_store.release("w", [claimed.id])
    [claimed] = await pg_store.claim("w", 10, 30)
    now = datetime.now(UTC)
    attempt = Attempt(claimed.attempt_number, now, 1.0, 200, None, None)
    await pg_store.record(
        "w", [AttemptOutcome(claimed.id, attempt, DeliveryStatus.SUCCEEDED, None)]
    )
    await pg_store._notifier.flush()

    def names(queries: list[str]) -> list[str]:
        return [" ".join(q.split())[:40] for q in queries]

    assert any("ascend_webhooks_publish" in q for q in seen["on"])
    assert not any("ascend_webhooks_publish" in q for q in seen["off"])
    relaxed = names(seen["off"])
    assert sum("ascend_webhooks_record" in q for q in relaxed) == 1, relaxed
    assert sum(q.startswith("WITH RECURSIVE walk") for q in relaxed) == 2, relaxed
    assert sum(q.startswith("UPDATE deliveries") for q in relaxed) == 2, relaxed  # extend, release
    assert any("pg_notify" in q for q in relaxed), relaxed
    assert not any(q.startswith("WITH RECURSIVE walk") for q in names(seen["on"]))
    assert (await pg_store.get_delivery(org.id, published.event.deliveries[0].id)).status == (
        DeliveryStatus.SUCCEEDED
    )
