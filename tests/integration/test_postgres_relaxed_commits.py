"""On PostgreSQL, the worker's claims and outcomes commit without waiting for their WAL flush.

Read from inside the store's relaxed transaction and from a plain one, on real connections of
its pool: ``synchronous_commit`` is off for the first only, and the setting does not leak
into the next use of the connection (publishes and API writes keep their synchronous commit).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

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
    async with pg_store._transaction() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
    async with pg_store._relaxed() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "off"
    # The same pooled connection (pool of one) is back to the server's setting.
    async with pg_store._transaction() as conn:
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
