"""What only the PostgreSQL store must do: many processes, one database.

Each store here has its own pool (as separate API and worker processes would), on a fresh
database copied from a migrated template. The shared behaviour suite (test_store.py) covers
the contract both backends keep; these tests cover concurrency, wake-ups, fairness at scale,
ordering keys under load, and surviving a server restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from unittest.mock import patch

import asyncpg
import pytest

from ascend_webhooks.store import Store, StoreError, open_store
from ascend_webhooks.store._postgres_setup import SchemaError, _migrations, apply_migrations
from ascend_webhooks.store.base import EventConflictError, StoreUnavailableError
from ascend_webhooks.store.models import (
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    Endpoint,
    NewEvent,
    Page,
    PublishResult,
    WebhookKey,
)
from ascend_webhooks.store.postgres import PostgresStore, parse_url
from tests.support import postgres as pg

pytestmark = pytest.mark.postgres

T = TypeVar("T")


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    url = await pg.create_database()
    try:
        yield url
    finally:
        await pg.drop_database(url)


@pytest.fixture
async def stores(pg_url: str) -> AsyncIterator[Callable[[], Awaitable[PostgresStore]]]:
    """Open as many stores (each with its own pools, and a listener once it waits or claims)
    as a test wants."""
    opened: list[PostgresStore] = []

    async def make() -> PostgresStore:
        store = PostgresStore(pg_url)
        await store.open()
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            await store.close()


event = pg.new_event


def outcome(claimed: ClaimedDelivery, status: DeliveryStatus, later: float = 0) -> AttemptOutcome:
    now = datetime.now(UTC)
    attempt = Attempt(claimed.attempt_number, now, 3.0, 200 if status == "succeeded" else 500,
                      None if status == "succeeded" else "status_500", None)  # fmt: skip
    due = datetime.fromtimestamp(now.timestamp() + later, UTC)
    return AttemptOutcome(claimed.id, attempt, status, due if status == "pending" else None)


async def org_with_endpoint(store: PostgresStore, name: str = "acme") -> tuple[str, str]:
    org = await store.create_organization(name)
    endpoint = await store.create_endpoint(org.id, "https://example.test/hook", None, None)
    return org.id, endpoint.id


async def listening(store: PostgresStore) -> bool:
    """Start the store's wake-up listener (its first wait does) and wait until it listens."""
    await store.wait_for_work(0)
    return await store._signal.wait_connected(5)


async def eventually(call: Callable[[], Awaitable[T]], within: float = 20.0) -> T:
    """Retry a call that may meet StoreUnavailableError until the database is back."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- startup ----------------------------------------------------------------------------------


async def test_concurrent_open_migrates_once() -> None:
    url = await pg.create_database(migrated=False)
    try:
        many = [PostgresStore(url) for _ in range(4)]
        await asyncio.gather(*(store.open() for store in many))
        try:
            org = await many[3].create_organization("after a racing start")
            assert (await many[0].get_organization(org.id)).name == "after a racing start"
        finally:
            await asyncio.gather(*(store.close() for store in many))
        conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        finally:
            await conn.close()
        assert versions == [version for version, _, _ in _migrations()]  # each once
        assert versions[:6] == [1, 2, 3, 4, 5, 6]
    finally:
        await pg.drop_database(url)


async def test_dropping_indexes_gives_up_behind_a_long_query_and_applies_later() -> None:
    """Migration 0006 drops indexes of deliveries, which waits for every transaction on it and
    holds up every new one meanwhile: behind a long query it fails after its lock_timeout
    instead of stalling the service, changes nothing, and applies once run again."""
    url = await pg.create_database(migrated=False)
    name = url.rsplit("/", 1)[1]
    migrate, report = await asyncpg.connect(database=name), await asyncpg.connect(database=name)
    try:
        older = [m for m in _migrations() if m[0] <= 5]
        with patch("ascend_webhooks.store._postgres_setup._migrations", lambda: older):
            assert await apply_migrations(migrate) == [1, 2, 3, 4, 5]
        indexes = "SELECT count(*) FROM pg_indexes WHERE indexname = 'deliveries_status'"
        report_tx = report.transaction()
        await report_tx.start()
        await report.fetchval("SELECT count(*) FROM deliveries")  # a report, still running
        started = time.monotonic()
        with pytest.raises(asyncpg.LockNotAvailableError):
            await apply_migrations(migrate)
        assert 9 < time.monotonic() - started < 30
        assert await migrate.fetchval("SELECT max(version) FROM schema_migrations") == 5
        assert await migrate.fetchval(indexes) == 1
        await report_tx.rollback()
        assert 6 in await apply_migrations(migrate)
        assert await migrate.fetchval(indexes) == 0
    finally:
        await migrate.close()
        await report.close()
        await pg.drop_database(url)


async def test_a_database_made_before_0001_was_edited_loses_the_index_the_edit_dropped() -> None:
    """b69b91a removed deliveries_ready_due from 0001 in place: a database created before it
    still has the index (which makes a claim on a table never analyzed read the whole backlog)
    until a later migration drops it."""
    url = await pg.create_database(migrated=False)
    conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
    try:
        older = [m for m in _migrations() if m[0] <= 1]
        with patch("ascend_webhooks.store._postgres_setup._migrations", lambda: older):
            assert await apply_migrations(conn) == [1]
        await conn.execute(
            "CREATE INDEX deliveries_ready_due ON deliveries (next_attempt_at)"
            " WHERE status = 'pending' AND blocked = 0"
        )
        await apply_migrations(conn)
        indexes = "SELECT count(*) FROM pg_indexes WHERE indexname = 'deliveries_ready_due'"
        assert await conn.fetchval(indexes) == 0
    finally:
        await conn.close()
        await pg.drop_database(url)


async def test_a_database_migrated_by_a_newer_release_is_refused() -> None:
    url = await pg.create_database()
    try:
        conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
        try:
            await conn.execute(
                "INSERT INTO schema_migrations (version, name)"
                " VALUES (9999, '9999_from_the_future.sql')"
            )
        finally:
            await conn.close()
        store = PostgresStore(url)
        with pytest.raises(SchemaError, match=r"\[9999\].*newer version"):
            await store.open()
        await store.close()
    finally:
        await pg.drop_database(url)


def test_url_options_are_ours_and_validated() -> None:
    options = parse_url("postgresql://u@h:5433/db?pool_size=3&sslmode=disable")
    # The driver's own options with a fixed set of values are checked before any connection:
    # asyncpg's complaint about them would read as an unreachable server, retried for a minute.
    for bad in ("sslmode=bogus", "target_session_attrs=writable", "gsslib=kerberos"):
        with pytest.raises(ValueError, match=bad.split("=")[0]):
            parse_url(f"postgresql:///db?{bad}")
    assert parse_url("postgresql:///db?sslmode=verify-full&target_session_attrs=read-write")
    assert parse_url("postgresql:///db?sslmode=verify_ca")
    assert options.pool_size == 3
    assert options.dsn == "postgresql://u@h:5433/db?sslmode=disable"
    with pytest.raises(ValueError, match="pool_size"):
        parse_url("postgresql:///db?pool_size=0")
    pooled = parse_url(
        "postgresql://u:p@pgbouncer:6432/db?pooler=transaction&listen_port=5432&sslmode=require"
    )
    assert pooled.pooler == "transaction"
    assert pooled.dsn == "postgresql://u:p@pgbouncer:6432/db?sslmode=require"
    assert pooled.listen_dsn == "postgresql://u:p@pgbouncer:5432/db?sslmode=require"
    moved = parse_url("postgresql://u@[::1]:6432/db?pooler=session&listen_host=db.internal")
    assert moved.listen_dsn == "postgresql://u@db.internal:6432/db"
    assert parse_url("postgresql://u@h/db").listen_dsn is None
    assert parse_url("postgresql://u@h/db").command_timeout == 30
    timed = parse_url("postgresql://u@h/db?command_timeout=2.5&sslmode=disable")
    assert timed.command_timeout == 2.5
    assert timed.dsn == "postgresql://u@h/db?sslmode=disable"
    for wrong, message in (
        ("command_timeout=0", "command_timeout"),
        ("command_timeout=-1", "command_timeout"),
        ("command_timeout=nan", "command_timeout"),
        ("command_timeout=soon", "command_timeout"),
        ("pooler=statement", "pooler"),
        ("listen_port=0", "listen_port"),
        ("listen_host=a/b", "listen_host"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_url(f"postgresql://u@h/db?{wrong}")
    with pytest.raises(ValueError, match="needs a host"):
        parse_url("postgresql:///db?listen_port=5432")


async def test_calls_on_an_unopened_store_say_so(pg_url: str) -> None:
    with pytest.raises(StoreError, match="open"):
        await PostgresStore(pg_url).create_organization("x")


async def test_a_misconfigured_driver_is_not_called_unavailable(pg_url: str) -> None:
    """asyncpg's ClientConfigurationError is an InterfaceError, as a closed connection is: it
    is not retried as if the server might answer later."""
    store = PostgresStore(pg_url)
    store._options = dataclasses.replace(store._options, dsn=f"{pg_url}?sslmode=bogus")
    with pytest.raises(StoreError, match="misconfigured") as caught:
        await store.open()
    assert not isinstance(caught.value, StoreUnavailableError)
    await store.close()


async def test_an_unreachable_server_is_a_store_unavailable_error() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(StoreUnavailableError):
        await store.open()
    assert await store.ping() is False


async def test_a_statement_past_the_command_timeout_is_a_store_unavailable_error(
    pg_url: str,
) -> None:
    store = PostgresStore(f"{pg_url}?command_timeout=0.5")
    await store.open()
    locker = await asyncpg.connect(database=pg_url.rsplit("/", 1)[1])
    try:
        org_id, _ = await org_with_endpoint(store)
        await store.publish(org_id, [event("evt_locked")])
        async with locker.transaction():  # another session holds the table, as a long job may
            await locker.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="TimeoutError"):
                await store.claim("w1", 10, 60)
            assert time.monotonic() - started < 5
        # The lock gone, the same pool claims again: nothing was left half-done.
        (claimed,) = await store.claim("w1", 10, 60)
        assert claimed.event_id == "evt_locked"
    finally:
        await locker.close()
        await store.close()


# -- claiming from many processes ---------------------------------------------------------------


async def test_concurrent_claimers_on_separate_pools_never_share(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    workers = [await stores() for _ in range(4)]
    org_id, _ = await org_with_endpoint(workers[0])
    _, second = await org_with_endpoint(workers[0], "globex")
    await workers[0].publish(org_id, [event(f"evt_{i}") for i in range(300)])
    seen: list[str] = []

    async def drain(store: PostgresStore, name: str) -> None:
        while batch := await store.claim(name, 7, 60):
            seen.extend(c.id for c in batch)
            await asyncio.sleep(0)

    await asyncio.gather(*(drain(w, f"w{i}-{j}") for i, w in enumerate(workers) for j in range(3)))
    assert len(seen) == 300
    assert len(set(seen)) == 300
    assert second  # another organization's endpoint without work does not disturb the walk


async def test_a_claim_left_short_by_racers_runs_again_only_if_it_missed_due_rows(
    stores: Callable[[], Awaitable[PostgresStore]], pg_url: str
) -> None:
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    await store.publish(org_id, [event("evt_0")])
    rounds = 0
    real = store._claim_once

    async def counted(*args: Any) -> tuple[list[ClaimedDelivery], bool]:
        nonlocal rounds
        rounds += 1
        return await real(*args)

    store._claim_once = counted  # type: ignore[method-assign]
    racer = await asyncpg.connect(pg_url)
    lock = (
        "SELECT 1 FROM deliveries WHERE seq IN (SELECT seq FROM deliveries ORDER BY seq LIMIT $1)"
    )
    try:
        async with racer.transaction():
            # Another worker is leasing the one event just published: this claim saw every due
            # row, so it does not run again.
            await racer.execute(lock + " FOR UPDATE", 1)
            assert await store.claim("w", 5, 30) == []
            assert rounds == 1
        await store.publish(org_id, [event(f"evt_{i}") for i in range(1, 30)])
        rounds = 0
        async with racer.transaction():
            # The racer holds the first 21, as many as this claim looks at in a pair (5 + 16):
            # due rows behind them were not seen, so it runs again, up to its bound.
            await racer.execute(lock + " FOR UPDATE", 21)
            assert await store.claim("w", 5, 30) == []
            assert rounds == 8
        # The racer leased nothing after all: the rows are there for the next claim.
        rounds = 0
        assert len(await store.claim("w", 5, 30)) == 5
        assert rounds == 1
    finally:
        await racer.close()


async def test_a_claim_takes_no_more_of_an_endpoint_than_the_room_given(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    store = await stores()
    org_id, first = await org_with_endpoint(store)
    second = (await store.create_endpoint(org_id, "https://example.test/2", None, None)).id
    other_org, third = await org_with_endpoint(store, "globex")
    await store.publish(org_id, [event(f"evt_{i}") for i in range(40)])
    await store.publish(other_org, [event(f"evt_{i}") for i in range(40)])

    def per_endpoint(batch: list[ClaimedDelivery]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for claimed in batch:
            counts[claimed.endpoint_id] = counts.get(claimed.endpoint_id, 0) + 1
        return counts

    batch = await store.claim("w", 100, 30, endpoint_room={first: 3, third: 0}, per_endpoint=5)
    assert per_endpoint(batch) == {first: 3, second: 5}
    # The oldest of each endpoint, as without a room.
    assert [c.event_id for c in batch if c.endpoint_id == first] == ["evt_0", "evt_1", "evt_2"]
    batch = await store.claim("w", 100, 30, endpoint_room={second: 1})
    assert per_endpoint(batch) == {first: 37, second: 1, third: 40}
    batch = await store.claim("w", 4, 30, per_endpoint=50)
    assert per_endpoint(batch) == {second: 4}


async def test_right_after_a_claim_nothing_due_is_known_without_asking_until_work_is_announced(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    from ascend_webhooks.store import _postgres_sql as sql

    worker, api = await stores(), await stores()
    assert await listening(worker)
    org_id, _ = await org_with_endpoint(api)
    statements: list[str] = []
    real_claim, real_connection = worker._claim_once, worker._connection

    async def claim_once(*args: Any) -> tuple[list[ClaimedDelivery], bool]:
        statements.append("claim")
        return await real_claim(*args)

    def connection() -> Any:
        statements.append("query")
        return real_connection()

    worker._claim_once = claim_once  # type: ignore[method-assign]
    worker._connection = connection  # type: ignore[method-assign]

    async def announced() -> None:
        await worker.wait_for_work(5)
        await asyncio.sleep(0.05)  # the NOTIFY of the second publish of the Notifier, if any

    await worker.wait_for_work(0)  # the wake-up the listener gives as it connects
    await api.publish(org_id, [event("evt_1")])
    await announced()
    [first] = await worker.claim("w", 10, 30)
    # The worker asks again at once, then when work is next due: both known already.
    assert await worker.claim("w", 10, 30) == []
    assert await worker.next_due_at() == first.lease_expires_at
    assert statements == ["claim"]
    # Another process publishes: its NOTIFY makes the next claim look.
    await api.publish(org_id, [event("evt_2")])
    await announced()
    [second] = await worker.claim("w", 10, 30)
    assert second.event_id == "evt_2"
    assert statements == ["claim", "claim"]
    # This store's own write of a retry due at once: looked for, without a NOTIFY.
    await worker.record("w", [outcome(first, DeliveryStatus.PENDING)])
    [again] = await worker.claim("w", 10, 30)
    assert (again.event_id, again.attempt_number) == ("evt_1", 2)
    # A retry due in 0.1 s: known to be ahead, then looked for once it is due.
    await worker.record("w", [outcome(again, DeliveryStatus.PENDING, later=0.1)])
    assert await worker.claim("w", 10, 30) == []
    statements.clear()
    due = await worker.next_due_at()
    assert due is not None
    assert statements == []
    assert await worker.claim("w", 10, 30) == []
    assert statements == []
    await asyncio.sleep(0.15)
    [third] = await worker.claim("w", 10, 30)
    assert (third.event_id, third.attempt_number) == ("evt_1", 3)
    assert statements == ["claim"]
    # A full batch says nothing of what is left: the next claim looks.
    await api.publish(org_id, [event(f"more_{i}") for i in range(3)])
    await announced()
    statements.clear()
    assert len(await worker.claim("w", 2, 30)) == 2
    assert [c.event_id for c in await worker.claim("w", 2, 30)] == ["more_2"]
    assert statements == ["claim", "claim"]
    # Nor does a big one (it reads no next due time: it may have left due rows behind).
    await api.publish(org_id, [event(f"many_{i}") for i in range(sql.SMALL_CLAIM + 1)])
    await announced()
    statements.clear()
    assert len(await worker.claim("w", 100, 30)) == sql.SMALL_CLAIM + 1
    assert await worker.claim("w", 100, 30) == []
    assert statements == ["claim", "claim"]
    # Without a listener, nothing is taken for known: every call asks.
    await worker._signal.stop()
    statements.clear()
    assert await worker.claim("w", 10, 30) == []
    assert await worker.claim("w", 10, 30) == []
    await worker.next_due_at()
    assert statements == ["claim", "claim", "query"]


@contextlib.asynccontextmanager
async def explained(conn: asyncpg.Connection) -> AsyncIterator[list[Any]]:
    """The EXPLAIN ANALYZE plans (JSON) of every statement run on ``conn`` meanwhile, those
    inside functions too (auto_explain), in a list filled as they run."""
    plans: list[Any] = []
    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
        " SET auto_explain.log_analyze = on; SET auto_explain.log_nested_statements = on;"
        " SET auto_explain.log_format = json; SET client_min_messages = log"
    )

    def collect(_conn: object, message: Any) -> None:
        if "Plan" in message.message:
            plans.append(json.loads(message.message[message.message.index("{") :]))

    conn.add_log_listener(collect)
    try:
        yield plans
        await conn.execute("SELECT 1")  # the last notices have arrived
    finally:
        conn.remove_log_listener(collect)
        await conn.execute("RESET ALL")


def most_rows(plan: Any) -> int:
    """The most rows any node of an EXPLAIN ANALYZE plan read, over all its loops: those it
    produced and those its filter removed."""
    read = sum(int(plan.get(key, 0)) for key in ("Actual Rows", "Rows Removed by Filter"))
    rows = read * int(plan.get("Actual Loops", 1))
    return max([rows, *(most_rows(child) for child in plan.get("Plans", []))])


async def test_on_a_backlog_never_analyzed_a_claim_reads_no_more_rows_than_it_takes(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    """The plans' shapes must not depend on statistics: a burst on a fresh database, never
    analyzed, once had every claim read the organization's whole backlog through another index
    (and sort it), then more often the smaller the claims."""
    from ascend_webhooks.store import _postgres_sql as sql

    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    pad = "x" * 900
    for start in range(0, 12000, 2000):
        batch = []
        for i in range(start, start + 2000):
            body = f'{{"id":"evt_{i}","type":"t","data":{{"pad":"{pad}"}}}}'.encode()
            batch.append(NewEvent(f"evt_{i}", "t", body, hashlib.sha256(body).digest()))
        await store.publish(org_id, batch)

    claim_args = ("w", 4, 30.0, "", "", 64, [], 20, [], [], None)  # small: next due probed too
    async with store._connection() as conn:
        for statement, args in ((sql.CLAIM, claim_args), (sql.NEXT_DUE_AT, ())):
            tx = conn.transaction()
            await tx.start()
            try:
                [plan] = json.loads(
                    await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, *args)
                )
            finally:
                await tx.rollback()
            assert most_rows(plan["Plan"]) < 100, statement[:40]


async def test_on_a_backlog_never_analyzed_the_workers_writes_read_only_their_rows(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    """A record, a lease extension and a release find their rows by id, with generic plans made
    while the table was small and kept as it grew: they once read every pending delivery of the
    backlog (a BitmapAnd of deliveries_leased and deliveries_status, or the whole table)."""
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    pad = "x" * 200

    async def writes(ids: list[ClaimedDelivery]) -> None:
        third = len(ids) // 3
        await store.extend_leases("w", [c.id for c in ids[:third]], 60)
        await store.release("w", [c.id for c in ids[third : 2 * third]])
        await store._notifier.flush()  # its NOTIFY goes on this connection too
        await store.record("w", [outcome(c, DeliveryStatus.SUCCEEDED) for c in ids[2 * third :]])

    async with store._connection() as conn:
        with patch.object(store, "_relaxed", lambda: contextlib.nullcontext(conn)):
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            for start in range(0, 8000, 2000):
                if start == 2000:  # this session's plans are made while the table is small
                    await writes(await store.claim("w", 60, 30))
                batch = []
                for i in range(start, start + 2000):
                    body = f'{{"id":"evt_{i}","type":"t","data":{{"pad":"{pad}"}}}}'.encode()
                    batch.append(NewEvent(f"evt_{i}", "t", body, hashlib.sha256(body).digest()))
                await store.publish(org_id, batch)
            claimed = await store.claim("w", 60, 30)
            assert len(claimed) == 60
            # Every statement's plan, those inside ascend_webhooks_record too.
            async with explained(conn) as plans:
                await writes(claimed)
    plans = [p for p in plans if "deliveries" in p["Query Text"] or "_record(" in p["Query Text"]]
    statements = [p["Query Text"] for p in plans]
    assert any("ascend_webhooks_record" in q for q in statements)
    assert any("UPDATE deliveries AS d" in q for q in statements)  # the function's own steps
    for plan in plans:
        assert most_rows(plan["Plan"]) < 100, plan["Query Text"][:80]
    assert (await store.get_delivery(org_id, claimed[59].id)).status == "succeeded"


async def test_the_unfiltered_delivery_list_reads_a_page_per_status_not_the_backlog(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    """No index is (organization_id, seq) any more (migration 0006): the newest page comes from
    the three status ranges of (organization_id, status, seq), a page from each, in seq order."""
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    for start in range(0, 6000, 2000):
        await store.publish(org_id, [event(f"evt_{i}") for i in range(start, start + 2000)])
        claimed = await store.claim("w", 90, 30)  # a third each: succeeded, failed, pending
        await store.record(
            "w",
            [outcome(c, DeliveryStatus.SUCCEEDED) for c in claimed[:30]]
            + [outcome(c, DeliveryStatus.FAILED) for c in claimed[30:60]],
        )
    other, _ = await org_with_endpoint(store, "newer")  # newer rows the list must not read
    await store.publish(other, [event(f"evt_{i}") for i in range(3000)])
    async with store._connection() as conn:
        await conn.execute("ANALYZE deliveries")
        newest = [
            row[0]
            for row in await conn.fetch(
                "SELECT id FROM deliveries WHERE organization_id = $1 ORDER BY seq DESC", org_id
            )
        ]
        async with explained(conn) as plans:
            with patch.object(store, "_connection", lambda: contextlib.nullcontext(conn)):
                pages, cursor = [], None
                for _ in range(3):
                    page = await store.list_deliveries(org_id, limit=40, after=cursor)
                    pages.extend(d.id for d in page.items)
                    cursor = page.next_cursor
    assert pages == newest[:120]  # newest first, every status, across pages
    listed = [p for p in plans if "FROM deliveries" in p["Query Text"]]
    assert len(listed) == 3
    for plan in listed:
        assert most_rows(plan["Plan"]) <= 3 * 41, json.dumps(plan["Plan"])[:400]


async def test_an_outcome_with_nul_characters_is_recorded_not_the_batch_failed(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    """PostgreSQL's text cannot hold NUL: an outcome carrying one (from any transport) once
    failed the record of its whole batch, on every retry."""
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    await store.publish(org_id, [event("evt_1"), event("evt_2")])
    one, two = await store.claim("w", 10, 30)
    odd = Attempt(1, datetime.now(UTC), 1.0, None, "err\0or", "ex\0cerpt")
    await store.record(
        "w",
        [
            AttemptOutcome(one.id, odd, DeliveryStatus.FAILED, None),
            outcome(two, DeliveryStatus.SUCCEEDED),
        ],
    )
    failed = await store.get_delivery(org_id, one.id)
    assert failed.status == DeliveryStatus.FAILED
    assert (failed.attempts[0].error, failed.attempts[0].response_excerpt) == (
        "err\ufffdor",
        "ex\ufffdcerpt",
    )
    assert (await store.get_delivery(org_id, two.id)).status == DeliveryStatus.SUCCEEDED
    with pytest.raises(StoreError):  # a lookup by a value that cannot be stored: 4xx, not 500
        await store.get_organization("org\0x")


async def test_an_expired_lease_is_claimable_and_the_old_worker_is_ignored(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    a, b = await stores(), await stores()
    org_id, _ = await org_with_endpoint(a)
    [published] = await a.publish(org_id, [event("evt_1")])
    [first] = await a.claim("a", 10, 0.2)
    assert await b.claim("b", 10, 30) == []
    await asyncio.sleep(0.3)
    [second] = await b.claim("b", 10, 30)
    assert second.id == first.id
    assert second.attempt_number == 1
    await a.record("a", [outcome(first, DeliveryStatus.SUCCEEDED)])  # lost its lease: ignored
    delivery = await b.get_delivery(org_id, first.id)
    assert delivery.status == "pending"
    assert delivery.attempts == ()
    await b.record("b", [outcome(second, DeliveryStatus.SUCCEEDED)])
    delivery = await b.get_delivery(org_id, first.id)
    assert delivery.status == "succeeded"
    assert len(delivery.attempts) == 1
    assert published.event.deliveries[0].id == first.id


async def test_excluded_endpoints_are_skipped_not_starved(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    store = await stores()
    org_id, slow = await org_with_endpoint(store)
    fast = (await store.create_endpoint(org_id, "https://fast.test/", None, None)).id
    await store.publish(org_id, [event(f"evt_{i}") for i in range(5)])
    batch = await store.claim("w", 100, 30, exclude_endpoints=[slow])
    assert {c.endpoint_id for c in batch} == {fast}
    assert len(batch) == 5
    assert len(await store.claim("w", 100, 30)) == 5


# -- wake-ups -------------------------------------------------------------------------------------


async def _listener_sessions(url: str) -> int:
    return await _sessions(url, "count(*)", listeners=True)


async def test_only_a_store_that_waits_or_claims_listens(
    pg_url: str, stores: Callable[[], Awaitable[PostgresStore]]
) -> None:
    # An API process publishes (and NOTIFYs) but never waits: a LISTEN session of its own
    # would be one more connection per process, woken by every NOTIFY of every publisher.
    api, worker = await stores(), await stores()
    org_id, _ = await org_with_endpoint(api)
    await api.publish(org_id, [event("evt_listeners")])
    await asyncio.sleep(0.2)
    assert await _listener_sessions(pg_url) == 0
    await worker.claim("w", 10, 30)  # a worker's first claim starts its listener
    assert await worker._signal.wait_connected(5)
    assert await _listener_sessions(pg_url) == 1
    assert await listening(api)  # as does a first wait
    assert await _listener_sessions(pg_url) == 2


async def test_a_publish_in_another_pool_wakes_a_waiter_within_milliseconds(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    worker, api = await stores(), await stores()
    org_id, _ = await org_with_endpoint(api)
    assert await listening(worker)
    await worker.wait_for_work(0)  # drop the wake-up the fresh connection gives
    delays = []
    for i in range(5):
        waiter = asyncio.create_task(worker.wait_for_work(10))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        started = time.perf_counter()
        await api.publish(org_id, [event(f"evt_{i}")])
        await waiter
        delays.append(time.perf_counter() - started)
    assert sorted(delays)[2] < 0.05, delays  # the median, from commit to wake-up
    assert max(delays) < 0.5, delays


async def test_without_work_the_wait_lasts_max_wait(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    store = await stores()
    assert await listening(store)
    await store.wait_for_work(0)
    started = time.perf_counter()
    await store.wait_for_work(0.3)
    assert 0.25 < time.perf_counter() - started < 2


async def test_without_a_listener_waiters_poll(pg_url: str) -> None:
    store = PostgresStore(pg_url, poll_interval=0.2)
    await store.open()
    try:
        assert await listening(store)
        await store._signal.stop()  # as while the database is away
        await store.wait_for_work(0)
        started = time.perf_counter()
        await store.wait_for_work(10)
        assert 0.15 < time.perf_counter() - started < 1
    finally:
        await store.close()


# -- fairness -------------------------------------------------------------------------------------


async def _bulk_backlog(url: str, org_id: str, endpoint_id: str, count: int) -> None:
    """A backlog of ``count`` due deliveries, inserted in two statements."""
    conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
    try:
        await conn.execute(
            "INSERT INTO events (id, organization_id, type, body, content_hash)"
            " SELECT 'bulk_' || g, $1, 'invoice.paid', '{}', '\\x00' FROM generate_series(1, $2) g",
            org_id,
            count,
        )
        await conn.execute(
            "INSERT INTO deliveries (id, organization_id, event_seq, endpoint_id,"
            " next_attempt_at) SELECT 'dlv_bulk_' || e.seq, $1, e.seq, $2,"
            " now() - interval '1 hour' FROM events e WHERE e.organization_id = $1",
            org_id,
            endpoint_id,
        )
        await conn.execute("ANALYZE deliveries")
    finally:
        await conn.close()


async def test_a_huge_backlog_does_not_delay_another_organization(
    pg_url: str, stores: Callable[[], Awaitable[PostgresStore]]
) -> None:
    store = await stores()
    big_org, big_endpoint = await org_with_endpoint(store, "big")
    small_org, _ = await org_with_endpoint(store, "small")
    await _bulk_backlog(pg_url, big_org, big_endpoint, 20_000)
    await store.publish(small_org, [event("evt_small")])
    started = time.perf_counter()
    batch = await store.claim("w", 10, 30)
    elapsed = time.perf_counter() - started
    assert len(batch) == 10
    assert "evt_small" in {c.event_id for c in batch}
    assert elapsed < 0.5, f"claim took {elapsed:.3f}s over a backlog of 20k"
    # A fair share, in turns: with two organizations waiting, the small one comes first or second.
    assert [c.event_id for c in batch].index("evt_small") <= 1


async def test_organizations_take_turns_within_a_batch(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    store = await stores()
    orgs = [await org_with_endpoint(store, f"org{i}") for i in range(3)]
    for i, (org_id, _) in enumerate(orgs):
        await store.publish(org_id, [event(f"evt_{i}_{n}") for n in range(20)])
    batch = await store.claim("w", 9, 30)
    per_org: dict[str, int] = {}
    for claimed in batch:
        per_org[claimed.organization_id] = per_org.get(claimed.organization_id, 0) + 1
    assert per_org == {org_id: 3 for org_id, _ in orgs}


async def test_a_small_walk_still_reaches_every_pair_in_turn(pg_url: str) -> None:
    store = PostgresStore(pg_url, claim_pairs=2)
    await store.open()
    try:
        orgs = [await org_with_endpoint(store, f"org{i}") for i in range(5)]
        for i, (org_id, _) in enumerate(orgs):
            await store.publish(org_id, [event(f"evt_{i}_{n}") for n in range(3)])
        served: set[str] = set()
        for _ in range(3):
            served.update(c.organization_id for c in await store.claim("w", 2, 30))
        assert served == {org_id for org_id, _ in orgs}
    finally:
        await store.close()


# -- ordering keys --------------------------------------------------------------------------------


async def test_an_ordering_key_goes_one_at_a_time_keyless_in_parallel(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    await store.publish(
        org_id,
        [event("k1", key="cust_1"), event("free1"), event("k2", key="cust_1"),
         event("other", key="cust_2"), event("k3", key="cust_1"), event("free2")],
    )  # fmt: skip
    first = await store.claim("w", 100, 30)
    assert sorted(c.event_id for c in first) == ["free1", "free2", "k1", "other"]
    by_event = {c.event_id: c for c in first}
    # A retry later keeps the head (and its lease is gone, so it waits for its time).
    await store.record("w", [outcome(by_event["k1"], DeliveryStatus.PENDING, later=0.3)])
    assert await store.claim("w", 100, 30) == []
    await asyncio.sleep(0.35)
    [again] = await store.claim("w", 100, 30)
    assert (again.event_id, again.attempt_number) == ("k1", 2)
    await store.record("w", [outcome(again, DeliveryStatus.FAILED)])
    [second] = await store.claim("w", 100, 30)
    assert second.event_id == "k2"
    # A manual retry of the older one waits for k2's attempt (else two of the key would be in
    # flight), then makes it the head again, ahead of k3.
    with pytest.raises(StoreError, match="being attempted"):
        await store.retry_delivery(org_id, again.id)
    await store.record("w", [outcome(second, DeliveryStatus.SUCCEEDED)])
    await store.retry_delivery(org_id, again.id)
    [retried] = await store.claim("w", 100, 30)
    assert (retried.event_id, retried.round_attempt, retried.attempt_number) == ("k1", 1, 3)
    await store.record("w", [outcome(retried, DeliveryStatus.SUCCEEDED)])
    [last] = await store.claim("w", 100, 30)
    assert last.event_id == "k3"


async def test_concurrent_publishers_of_one_key_keep_commit_order(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    a, b = await stores(), await stores()
    org_id, _ = await org_with_endpoint(a)
    await asyncio.gather(
        *(s.publish(org_id, [event(f"e{s is a}{i}", key="k")]) for i in range(20) for s in (a, b))
    )
    order = []
    while True:
        batch = await a.claim("w", 100, 30)
        if not batch:
            break
        assert len(batch) == 1  # only ever the head of the key
        order.append(batch[0].id)
        await a.record("w", [outcome(batch[0], DeliveryStatus.SUCCEEDED)])
    newest_first = (await a.list_deliveries(org_id, limit=100)).items
    assert order == [d.id for d in reversed(newest_first)]  # one at a time, oldest first


# -- publish races ---------------------------------------------------------------------------


async def test_the_same_event_id_from_two_processes_is_stored_once(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    a, b = await stores(), await stores()
    org_id, _ = await org_with_endpoint(a)
    for i in range(10):
        results = await asyncio.gather(
            a.publish(org_id, [event(f"evt_{i}")]), b.publish(org_id, [event(f"evt_{i}")])
        )
        created = [r[0].created for r in results]
        assert sorted(created) == [False, True]
        assert results[0][0].event.deliveries == results[1][0].event.deliveries
    other = event("evt_0", "invoice.voided")
    outcomes = await asyncio.gather(
        a.publish(org_id, [event("evt_x")]),
        b.publish(org_id, [NewEvent("evt_x", other.type, other.body, other.content_hash)]),
        return_exceptions=True,
    )
    assert sum(isinstance(o, EventConflictError) for o in outcomes) == 1
    assert len((await a.list_deliveries(org_id, limit=100)).items) == 11


async def test_a_publish_passed_too_few_delivery_ids_runs_again_with_enough(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    a, b = await stores(), await stores()
    org_id, first = await org_with_endpoint(a)
    (one,) = await a.publish(org_id, [event("evt_1")])
    assert [d.endpoint_id for d in one.event.deliveries] == [first]
    # Another process adds endpoints: this store still expects one delivery per event.
    more = [
        await b.create_endpoint(org_id, f"https://example.test/{n}", None, None) for n in (2, 3)
    ]
    results = await a.publish(org_id, [event("evt_2"), event("evt_3")])
    for result in results:
        assert result.created
        assert [d.endpoint_id for d in result.event.deliveries] == [first, *(e.id for e in more)]
        assert result.event == await a.get_event(org_id, result.event.id)
    assert len({d.id for r in results for d in r.event.deliveries}) == 6
    # None wanted: no ids passed, none needed.
    none = await a.create_organization("no endpoints")
    (quiet,) = await a.publish(none.id, [event("evt_1")])
    assert quiet.created
    assert quiet.event.deliveries == ()
    (later,) = await a.publish(none.id, [event("evt_2")])
    assert later.created
    assert later.event.deliveries == ()


async def test_publish_claim_and_record_are_one_statement_each(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    """One round trip each, committed as it returns (no BEGIN/COMMIT, no reset on release)."""
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    # Warm up the pools, the fan-out and asyncpg's caches (its first use of a type on a
    # connection asks the server about it).
    await store.publish(org_id, [event("warm", key="k")])
    await store._notifier.flush()
    await store.record(
        "w", [outcome(c, DeliveryStatus.SUCCEEDED) for c in await store.claim("w", 10, 30)]
    )
    sent: list[str] = []
    for pool in (store._pool, store._relaxed_pool):
        assert pool is not None
        for holder in pool._holders:
            if holder._con is not None:
                holder._con.add_query_logger(lambda record: sent.append(record.query))

    def statements() -> list[str]:
        done = [q.split("(")[0].split()[-1] for q in sent if "pg_notify" not in q]
        sent.clear()
        return done

    await store.publish(org_id, [event("evt_1", key="k"), event("evt_2", key="k"), event("evt_3")])
    assert statements() == ["ascend_webhooks_publish"]
    claimed = await store.claim("w", 10, 30)
    assert {c.event_id for c in claimed} == {"evt_1", "evt_3"}
    assert len(statements()) == 1
    await store.record("w", [outcome(c, DeliveryStatus.SUCCEEDED) for c in claimed])
    assert statements() == ["ascend_webhooks_record"]
    [head] = await store.claim("w", 10, 30)
    assert head.event_id == "evt_2"  # recorded in that one statement: the key's next is free


async def test_a_deleted_endpoint_racing_a_publish_leaves_nothing_pending(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    a, b = await stores(), await stores()
    org_id, endpoint_id = await org_with_endpoint(a)
    await asyncio.gather(
        *(a.publish(org_id, [event(f"evt_{i}")]) for i in range(30)),
        b.delete_endpoint(org_id, endpoint_id),
    )
    counts = await a.delivery_counts()
    assert counts[DeliveryStatus.PENDING] == 0
    assert await a.next_due_at() is None


async def _rows_of(conn: asyncpg.Connection, org_id: str) -> dict[str, int]:
    return {
        "events": await conn.fetchval(
            "SELECT count(*) FROM events WHERE organization_id = $1", org_id
        ),
        "deliveries": await conn.fetchval(
            "SELECT count(*) FROM deliveries WHERE organization_id = $1", org_id
        ),
        "attempts": await conn.fetchval(
            "SELECT count(*) FROM attempts AS a JOIN deliveries AS d ON d.seq = a.delivery_seq"
            " WHERE d.organization_id = $1",
            org_id,
        ),
        "orphan attempts": await conn.fetchval(
            "SELECT count(*) FROM attempts AS a"
            " WHERE NOT EXISTS (SELECT FROM deliveries AS d WHERE d.seq = a.delivery_seq)"
        ),
        "endpoints": await conn.fetchval(
            "SELECT count(*) FROM endpoints WHERE organization_id = $1", org_id
        ),
    }


async def test_rows_deleted_by_hand_take_what_referenced_them(
    stores: Callable[[], Awaitable[PostgresStore]], pg_url: str
) -> None:
    """Events, deliveries and attempts carry no per-row foreign key checks (migration 0007):
    what ON DELETE CASCADE did is kept by triggers, for an operator deleting rows by hand."""
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    second = (await store.create_endpoint(org_id, "https://example.test/two", None, None)).id
    other_org, _ = await org_with_endpoint(store, "other")
    await store.publish(org_id, [event(f"evt_{n}") for n in range(3)])
    await store.publish(other_org, [event("evt_other")])
    claimed = await store.claim("w", 100, 30)
    await store.record("w", [outcome(c, DeliveryStatus.FAILED) for c in claimed])
    conn = await asyncpg.connect(database=pg_url.rsplit("/", 1)[1])
    try:
        checked = await conn.fetch(
            "SELECT conname FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid IN ('events'::regclass, 'deliveries'::regclass, 'attempts'::regclass)"
        )
        assert checked == []
        before = {"events": 3, "deliveries": 6, "attempts": 6, "orphan attempts": 0}
        assert await _rows_of(conn, org_id) == {**before, "endpoints": 2}

        await conn.execute("DELETE FROM endpoints WHERE id = $1", second)
        after_endpoint = {"events": 3, "deliveries": 3, "attempts": 3, "orphan attempts": 0}
        assert await _rows_of(conn, org_id) == {**after_endpoint, "endpoints": 1}

        await conn.execute("DELETE FROM events WHERE organization_id = $1 AND id = 'evt_0'", org_id)
        after_event = {"events": 2, "deliveries": 2, "attempts": 2, "orphan attempts": 0}
        assert await _rows_of(conn, org_id) == {**after_event, "endpoints": 1}

        await conn.execute("DELETE FROM organizations WHERE id = $1", org_id)
        gone = {"events": 0, "deliveries": 0, "attempts": 0, "orphan attempts": 0}
        assert await _rows_of(conn, org_id) == {**gone, "endpoints": 0}
        kept = {"events": 1, "deliveries": 1, "attempts": 1, "orphan attempts": 0}
        assert await _rows_of(conn, other_org) == {**kept, "endpoints": 1}
    finally:
        await conn.close()


async def test_a_publish_holds_its_organization_until_it_commits(
    stores: Callable[[], Awaitable[PostgresStore]], pg_url: str
) -> None:
    """The one FOR KEY SHARE lock that replaces the per-row checks: an organization cannot be
    deleted under a publish that is still running, which would leave its events behind. (No
    endpoint here: the publish also locks those, which would hold the deletion up as well.)"""
    store = await stores()
    org_id = (await store.create_organization("acme")).id
    name = pg_url.rsplit("/", 1)[1]
    publisher, operator = await asyncpg.connect(database=name), await asyncpg.connect(database=name)
    try:
        new = event("evt_held")
        transaction = publisher.transaction()
        await transaction.start()
        await publisher.fetch(
            "SELECT * FROM ascend_webhooks_publish($1, $2, $3, $4, $5, $6, $7, 1)",
            org_id, [new.id], [new.type], [new.body], [new.content_hash], [None], ["dlv_held"],
        )  # fmt: skip
        await operator.execute("SET lock_timeout = '300ms'")
        with pytest.raises(asyncpg.LockNotAvailableError):
            await operator.execute("DELETE FROM organizations WHERE id = $1", org_id)
        await transaction.commit()
        await operator.execute("DELETE FROM organizations WHERE id = $1", org_id)
        assert await _rows_of(operator, org_id) == {
            "events": 0, "deliveries": 0, "attempts": 0, "orphan attempts": 0, "endpoints": 0,
        }  # fmt: skip
    finally:
        await publisher.close()
        await operator.close()


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_server_restart_is_survived_without_losing_anything(
    stores: Callable[[], Awaitable[PostgresStore]],
) -> None:
    found = pg.cluster()
    if found is None:
        pytest.skip("no local cluster that pg_ctlcluster can restart")
    worker, api = await stores(), await stores()
    org_id, _ = await org_with_endpoint(api)
    await api.publish(org_id, [event("before")])
    assert await listening(worker)
    try:
        await pg.restart_server(*found)
        # Calls in flight or right after fail clearly (or succeed); none hangs or corrupts.
        with contextlib.suppress(StoreUnavailableError):
            await api.publish(org_id, [event("during")])
        await eventually(lambda: api.publish(org_id, [event("after")]))
    finally:
        await pg.ensure_running(*found)
    assert await eventually(api.ping)
    ids = {e.id for e in (await eventually(lambda: api.list_events(org_id, limit=10))).items}
    assert {"before", "after"} <= ids
    claimed = await eventually(lambda: worker.claim("w", 10, 30))
    assert {"before", "after"} <= {c.event_id for c in claimed}
    # The listener came back by itself and wakes the worker again.
    assert await worker._signal.wait_connected(15)
    assert worker._signal.sessions >= 2
    await worker.wait_for_work(0)
    waiter = asyncio.create_task(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await eventually(lambda: api.publish(org_id, [event("woken")]))
    await waiter
    assert time.perf_counter() - started < 0.5


async def _terminate_sessions(url: str, *, listeners: bool) -> int:
    """Cut off this database's listener (or other) sessions, as a restart would, but ours."""
    return await _sessions(url, "count(pg_terminate_backend(pid))", listeners=listeners)


async def _sessions(url: str, select: str, *, listeners: bool) -> int:
    """``select`` over this database's listener (or other) sessions, ours left out."""
    conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
    try:
        return int(
            await conn.fetchval(
                f"SELECT {select} FROM pg_stat_activity"  # noqa: S608 (the tests' own text)
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND (query LIKE 'LISTEN%') = $1",
                listeners,
            )
        )
    finally:
        await conn.close()


async def test_a_killed_listener_reconnects_and_polling_covers_the_gap(
    pg_url: str, stores: Callable[[], Awaitable[PostgresStore]]
) -> None:
    worker, api = await stores(), await stores()
    org_id, _ = await org_with_endpoint(api)
    assert await listening(worker)
    assert await _terminate_sessions(pg_url, listeners=True) >= 1
    for _ in range(100):
        if worker._signal.sessions >= 2 and worker._signal.connected:
            break
        await asyncio.sleep(0.05)
    assert worker._signal.sessions >= 2
    await worker.wait_for_work(0)
    waiter = asyncio.create_task(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await api.publish(org_id, [event("evt_after_reconnect")])
    await waiter
    assert time.perf_counter() - started < 0.5


async def test_pool_connections_cut_off_are_replaced(
    pg_url: str, stores: Callable[[], Awaitable[PostgresStore]]
) -> None:
    store = await stores()
    org_id, _ = await org_with_endpoint(store)
    await asyncio.gather(*(store.list_endpoints(org_id, limit=5) for _ in range(8)))
    assert await _terminate_sessions(pg_url, listeners=False) >= 1
    # The first calls may meet a dead connection: a clear, retryable error, never anything else.
    outcomes = await asyncio.gather(
        *(store.publish(org_id, [event(f"evt_{i}")]) for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(o, list | StoreUnavailableError) for o in outcomes), outcomes
    await eventually(lambda: store.publish(org_id, [event("evt_later")]), within=5)
    assert await store.ping()
    stored = {e.id for e in (await store.list_events(org_id, limit=20)).items}
    published = {f"evt_{i}" for i, o in enumerate(outcomes) if isinstance(o, list)}
    assert published | {"evt_later"} <= stored


# -- the same answers as the embedded store -----------------------------------------------------


async def _edge_cases(s: Store) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []

    async def t(label: str, coro: Awaitable[object]) -> None:
        try:
            r = await coro
            out.append((label, "ok", norm(r)))
        except Exception as exc:  # the class of error is what is compared
            out.append((label, type(exc).__name__))

    def norm(r: object) -> object:
        if isinstance(r, Page):
            return ("page", len(r.items), r.next_cursor is not None)
        if isinstance(r, list):
            return ("list", len(r), [norm(x) for x in r])
        if isinstance(r, PublishResult):
            return ("pub", r.created, r.event.id, len(r.event.deliveries))
        if isinstance(r, dict):
            return (
                "dict",
                sorted(
                    (str(k), v if isinstance(v, int) else type(v).__name__) for k, v in r.items()
                ),
            )
        if isinstance(r, Delivery):
            return ("dlv", r.status, r.attempt_count, r.next_attempt_at is None, len(r.attempts))
        if isinstance(r, Endpoint):
            return ("ep", r.url, r.event_types, r.enabled, r.description)
        if isinstance(r, WebhookKey):
            return ("key", r.activated_at is None, r.revoked_at is None)
        return type(r).__name__ if r is not None else None

    org = await s.create_organization("a")
    other = await s.create_organization("b")
    await t("list_orgs0", s.list_organizations(limit=0))
    await t("list_orgs1", s.list_organizations(limit=1))
    await t("list_orgs_only", s.list_organizations(limit=10, only=other.id))
    await t("list_orgs_only_missing", s.list_organizations(limit=10, only="org_nope"))
    await t("tok", s.create_token(org.id, b"h1", "n"))
    await t("tok_dup", s.create_token(org.id, b"h1", "n"))
    await t("tok_missing_org", s.create_token("org_nope", b"h2"))
    await t("admin", s.create_token(None, b"h3"))
    await t("count_admin", s.count_admin_tokens())
    await t("find", s.find_token(b"h1"))
    await t("find_none", s.find_token(b"zz"))
    await t("keys_missing_org", s.list_keys("org_nope"))
    await t("keys_empty", s.list_keys(org.id))
    k1 = await s.create_key(org.id, b"c1", activate=True)
    k2 = await s.create_key(org.id, b"c2", activate=False)
    first_key = await s.signing_keys([org.id, other.id])
    out.append(("signing1", list(first_key) == [org.id], first_key[org.id].id == k1.id))
    await t("activate_other_org", s.activate_key(other.id, k2.id))
    await t("activate", s.activate_key(org.id, k2.id))
    sk = await s.signing_keys([org.id])
    out.append(("signing2", sk[org.id].id == k2.id))
    await t("revoke", s.revoke_key(org.id, k2.id))
    await t("revoke_again", s.revoke_key(org.id, k2.id))
    sk = await s.signing_keys([org.id])
    out.append(("signing3", sk[org.id].id == k1.id))
    await t("activate_revoked", s.activate_key(org.id, k2.id))
    await t("key_missing_org", s.create_key("org_nope", b"x", activate=True))
    await t("ep_missing_org", s.create_endpoint("org_nope", "https://x", None, None))
    ep = await s.create_endpoint(org.id, "https://x", ["a"], "d")
    ep2 = await s.create_endpoint(org.id, "https://y", None, None, enabled=False)
    await t("get_ep_other_org", s.get_endpoint(other.id, ep.id))
    await t("list_ep_missing_org", s.list_endpoints("org_nope", limit=5))
    await t("list_ep0", s.list_endpoints(org.id, limit=0))
    await t("list_ep1", s.list_endpoints(org.id, limit=1))
    await t("upd_unknown", s.update_endpoint(org.id, ep.id, color="red"))
    await t("upd_badtype", s.update_endpoint(org.id, ep.id, enabled="yes"))
    await t("upd_types_str", s.update_endpoint(org.id, ep.id, event_types="a"))
    await t("upd_none", s.update_endpoint(org.id, ep.id))
    await t("upd", s.update_endpoint(org.id, ep.id, event_types=None, description=None))
    await t("upd_other_org", s.update_endpoint(other.id, ep.id, url="https://z"))
    await t("pub_empty_missing", s.publish("org_nope", []))
    await t("pub_empty", s.publish(org.id, []))
    await t("pub_missing", s.publish("org_nope", [event("e")]))
    await t("pub", s.publish(org.id, [event("e1"), event("e2", "b"), event("e1")]))
    await t("pub_conflict_in_call", s.publish(org.id, [event("e3"), event("e3", "x")]))
    await t("pub_conflict", s.publish(org.id, [event("e4"), event("e1", "other")]))
    await t("get_e4_after_conflict", s.get_event(org.id, "e4"))
    await t("get_event_other", s.get_event(other.id, "e1"))
    await t("list_events_type", s.list_events(org.id, limit=10, event_type="b"))
    await t("list_events_bad_cursor", s.list_events(org.id, limit=10, after="abc"))
    await t("list_events_0", s.list_events(org.id, limit=0))
    await t("list_deliveries_missing", s.list_deliveries("org_nope", limit=10))
    await t(
        "list_deliveries_pending",
        s.list_deliveries(org.id, limit=10, status=DeliveryStatus.PENDING),
    )
    await t("list_deliveries_ep2", s.list_deliveries(org.id, limit=10, endpoint_id=ep2.id))
    await t("counts", s.delivery_counts())
    d = (await s.list_deliveries(org.id, limit=10)).items
    await t("retry_pending", s.retry_delivery(org.id, d[0].id))
    await t("retry_missing", s.retry_delivery(org.id, "dlv_nope"))
    await t("get_delivery_other", s.get_delivery(other.id, d[0].id))
    await t("release_not_mine", s.release("w", [d[0].id]))
    await t("extend_not_mine", s.extend_leases("w", [d[0].id], 30))
    await t("record_not_mine", s.record("w", []))
    await t("claim0", s.claim("w", 0, 30))
    await t("enable_ep2", s.update_endpoint(org.id, ep2.id, enabled=True))
    await t("pub_after_enable", s.publish(org.id, [event("e5")]))
    await t("disable_ep", s.update_endpoint(org.id, ep.id, enabled=False))
    c = await s.claim("w", 10, 30)
    out.append(
        (
            "claim_after_disable",
            sorted(x.event_id for x in c),
            sorted(x.endpoint_id == ep2.id for x in c),
        )
    )
    await t("delete", s.delete_endpoint(org.id, ep.id))
    await t("delete_again", s.delete_endpoint(org.id, ep.id))
    await t("get_deleted", s.get_endpoint(org.id, ep.id))
    await t("list_ep_after_delete", s.list_endpoints(org.id, limit=10))
    await t("counts2", s.delivery_counts())
    d = (await s.list_deliveries(org.id, limit=10, status=DeliveryStatus.FAILED)).items
    await t("retry_deleted_ep", s.retry_delivery(org.id, d[0].id))
    await t("next_due", s.next_due_at())
    return out


async def test_edge_cases_answer_exactly_like_sqlite(pg_url: str, tmp_path: Path) -> None:
    """Mistakes, limits, other organizations, disabled and deleted endpoints: same outcomes."""
    answers = []
    for url in (f"sqlite:///{tmp_path / 'edge.db'}", pg_url):
        store = open_store(url)
        await store.open()
        try:
            answers.append(await _edge_cases(store))
        finally:
            await store.close()
    sqlite, postgres = answers
    assert len(sqlite) == len(postgres) > 60
    for ours, theirs in zip(postgres, sqlite, strict=True):
        assert ours == theirs


@pytest.mark.parametrize("change", ["delete", "disable"])
async def test_an_endpoint_change_deadlocked_with_a_record_is_repeated_not_refused(
    stores: Callable[[], Awaitable[PostgresStore]], pg_url: str, change: str
) -> None:
    """A worker's record and an endpoint's disabling or deletion lock the same deliveries in
    different orders; when PostgreSQL breaks the deadlock by rolling the change back, the
    store runs it again instead of answering "unavailable" (a 503 from the API)."""
    api, worker = await stores(), await stores()
    org_id, endpoint_id = await org_with_endpoint(api)
    await api.publish(org_id, [event(f"evt_{i}") for i in range(3)])
    claimed = sorted(await worker.claim("w", 10, 60), key=lambda c: c.event_id)
    assert len(claimed) == 3
    first, second, third = claimed
    holder = await asyncpg.connect(pg_url)
    try:
        # Makes the interleaving certain: the record locks `second`, then waits for `third`;
        # the change locks `first` (in its own order), then waits for `second`; `third`
        # let go, the record waits for `first`: a cycle, found by whichever waited longest.
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", third.id)
        record = asyncio.ensure_future(
            worker.record(
                "w", [outcome(c, DeliveryStatus.SUCCEEDED) for c in (second, third, first)]
            )
        )
        await asyncio.sleep(0.3)
        if change == "delete":
            changing = asyncio.ensure_future(api.delete_endpoint(org_id, endpoint_id))
        else:
            changing = asyncio.ensure_future(
                api.update_endpoint(org_id, endpoint_id, enabled=False)
            )
        await asyncio.sleep(0.3)
        await hold.rollback()
        results = await asyncio.gather(changing, record, return_exceptions=True)
    finally:
        await holder.close()
    assert not isinstance(results[0], BaseException), results[0]
    endpoint = await api.get_endpoint(org_id, endpoint_id) if change == "disable" else None
    assert endpoint is None or not endpoint.enabled
