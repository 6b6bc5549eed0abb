"""The PostgreSQL store behind a real PgBouncer, in transaction and in session mode.

The pooler lends each client one of two server sessions (fewer than the store's pools hold):
in transaction mode a new one for every transaction, so a prepared statement or a session
setting left by one call would be missing, or wrong, on the next.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from ascend_webhooks.store.base import StoreError, StoreUnavailableError
from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
)
from ascend_webhooks.store.postgres import PostgresStore
from tests.support import postgres as pg
from tests.support.pgbouncer import direct_listen, pooled_url, running_pgbouncer
from tests.support.processes import postgres_database

pytestmark = pytest.mark.postgres


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with postgres_database() as url:
        yield url.rsplit("/", 1)[1]


def _through(port: int, database: str, options: str) -> str:
    return pooled_url(port, database, f"pool_size=4&{options}")


async def _exercise(api: PostgresStore, worker: PostgresStore) -> None:
    """Publishes, claims and records from two stores, many calls in flight at once."""
    org = await api.create_organization("pooled")
    await api.create_endpoint(org.id, "https://example.test/hook", None, None)
    await asyncio.gather(*(api.publish(org.id, [pg.new_event(f"evt_{n}")]) for n in range(40)))
    [again] = await api.publish(org.id, [pg.new_event("evt_0")])  # the same id: the stored event
    assert not again.created
    claimed: list[ClaimedDelivery] = []
    while len(claimed) < 40:
        batches = await asyncio.gather(*(worker.claim("w", 7, 30) for _ in range(3)))
        assert any(batches), f"only {len(claimed)} of 40 claimed"
        claimed += [c for batch in batches for c in batch]
    assert len({c.id for c in claimed}) == 40
    at = datetime.now(UTC)
    outcomes = [
        AttemptOutcome(c.id, Attempt(1, at, 2.0, 200, None, None), DeliveryStatus.SUCCEEDED, None)
        for c in claimed
    ]
    await asyncio.gather(*(worker.record("w", outcomes[n : n + 8]) for n in range(0, 40, 8)))
    counts = await api.delivery_counts()
    assert counts[DeliveryStatus.SUCCEEDED] == 40, counts
    assert len((await api.list_events(org.id, limit=100)).items) == 40


async def _woken_after_a_publish(api: PostgresStore, worker: PostgresStore, event_id: str) -> float:
    """Seconds from a publish (to a new organization) until the idle worker's wait returns."""
    org = await api.create_organization(event_id)
    await api.create_endpoint(org.id, "https://example.test/hook", None, None)
    await worker.wait_for_work(0)
    waiting = asyncio.create_task(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await api.publish(org.id, [pg.new_event(event_id)])
    await waiting
    return time.perf_counter() - started


async def _setting(pool: asyncpg.Pool | None, name: str) -> str:
    assert pool is not None
    async with pool.acquire() as conn:
        value: str = await conn.fetchval(f"SHOW {name}")
        return value


async def test_through_a_transaction_pooler_everything_works_and_idle_workers_poll(
    database: str,
) -> None:
    with running_pgbouncer("transaction") as port:
        url = _through(port, database, "pooler=transaction")
        api = PostgresStore(url)
        worker = PostgresStore(url, poll_interval=0.3)
        await api.open()
        await worker.open()
        try:
            await _exercise(api, worker)
            assert not worker._signal.connected  # no LISTEN through the pooler
            assert await _setting(worker._relaxed_pool, "synchronous_commit") == "on"
            # An idle worker finds new work by looking again, within its poll interval.
            assert await _woken_after_a_publish(api, worker, "evt_later") < 1.5
            assert [c.event_id for c in await worker.claim("w", 10, 30)] == ["evt_later"]
        finally:
            await api.close()
            await worker.close()


async def test_without_the_option_a_pooler_is_named_as_the_cause_not_retried(
    database: str,
) -> None:
    """What ``pooler=`` is for: without it the worker's calls fail through the same pooler,
    with an error that names the fix (not "unavailable, retry", which would never end)."""
    with running_pgbouncer("transaction") as port:
        api = PostgresStore(_through(port, database, "sslmode=disable"))
        await api.open()
        try:
            org = await api.create_organization("plain")
            await api.create_endpoint(org.id, "https://example.test/hook", None, None)
            with pytest.raises(StoreError, match="pooler=transaction") as refused:
                await api.claim("w", 10, 30)  # its relaxed pool asks for synchronous_commit
            assert not isinstance(refused.value, StoreUnavailableError)
            assert "startup parameter" in str(refused.value)
        finally:
            await api.close()


async def test_with_a_listen_port_idle_workers_are_woken_at_once(database: str) -> None:
    with running_pgbouncer("transaction") as port:
        url = _through(port, database, f"pooler=transaction&{direct_listen()}")
        api, worker = PostgresStore(url), PostgresStore(url, poll_interval=30)
        await api.open()
        await worker.open()
        try:
            await worker.wait_for_work(0)  # (its first wait starts the listener)
            assert await worker._signal.wait_connected(5)
            # the NOTIFY, not a poll (every 30 s)
            assert await _woken_after_a_publish(api, worker, "evt_woken") < 0.5
        finally:
            await api.close()
            await worker.close()


async def test_through_a_session_pooler_the_worker_commits_stay_relaxed(database: str) -> None:
    with running_pgbouncer("session", server_connections=20) as port:
        url = _through(port, database, "pooler=session")
        api, worker = PostgresStore(url), PostgresStore(url)
        await api.open()
        await worker.open()
        try:
            await _exercise(api, worker)
            assert await worker._signal.wait_connected(5)  # a session holds the LISTEN
            assert await _setting(worker._relaxed_pool, "synchronous_commit") == "off"
            assert await _setting(worker._pool, "synchronous_commit") == "on"
        finally:
            await api.close()
            await worker.close()
