"""Fairness: with a million-event backlog in one organization, how soon is another's event claimed?

The requirement (scale-out on PostgreSQL): one organization's backlog of a million events must
not delay another organization's next event by more than a second. For each store this script

1. opens a fresh store (SQLite in a temporary directory; PostgreSQL in a throw-away database
   found through the libpq variables, as the tests do),
2. creates organization A and organization B with one endpoint each, through the store API,
3. builds A's backlog of ``--backlog`` pending deliveries: the first batches through
   ``store.publish`` (1,000 events a call); when that pace would take more than ~90 s for the
   whole backlog, the rest is inserted with SQL in the store's own schema, row for row what
   publish writes (same bodies, ids, content hashes, times, ``blocked`` 0),
4. runs a claim loop like a worker's: claims of 128 with a 30 s lease, each claimed delivery
   recorded as succeeded at once,
5. after the loop has run ~2 s, publishes ONE event for B and measures from that publish's
   return until a claim returns B's delivery; five times, A's backlog still large each time.

It reports min/median/max of those delays and the claim call's median duration with the
backlog, and writes ``bench/results/fairness.json``::

    .venv/bin/python bench/fairness.py [--backlog N] [--store sqlite|postgres|both]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from harness import EVENT_TYPE, event_data, run_tag, warn_if_busy, write_result

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.support.postgres: the tests' throw-away databases

from ascend_webhooks.ids import new_ids  # noqa: E402
from ascend_webhooks.store import Store, open_store  # noqa: E402
from ascend_webhooks.store.models import (  # noqa: E402
    Attempt,
    AttemptOutcome,
    ClaimedDelivery,
    DeliveryStatus,
    NewEvent,
)

PUBLISH_BATCH = 1_000
PUBLISH_PROBE_BATCHES = 5  # published through the API to measure its pace before deciding
PUBLISH_BUDGET_S = 90.0
CLAIM_LIMIT = 128
LEASE_S = 30.0
WARMUP_S = 2.0
BETWEEN_S = 1.0
REPEATS = 5
WAIT_LIMIT_S = 30.0  # a B event not claimed within this is reported as such, not waited on
TARGET_S = 1.0
SQL_CHUNK = 50_000
WORKER = "bench-fairness"


# -- the events, exactly as the events route makes them -----------------------------------------


def new_event(run: str, index: int) -> NewEvent:
    """Event ``index`` of a run as ``POST /v1/events`` would store it (body, content hash)."""
    event_id = f"evt_fair_{run}_{index:08d}"
    data = event_data(index)
    body = orjson.dumps({"id": event_id, "type": EVENT_TYPE, "data": data})
    canonical = orjson.dumps(
        {"type": EVENT_TYPE, "data": data, "ordering_key": None}, option=orjson.OPT_SORT_KEYS
    )
    return NewEvent(
        id=event_id, type=EVENT_TYPE, body=body, content_hash=hashlib.sha256(canonical).digest()
    )


# The two places an event differs from another (its id and its invoice number), as markers a
# bulk insert replaces (no digit, so one never matches inside the other's replacement): the
# index's digits are exactly the width the formats above give them.
_ID_MARK, _INV_MARK = "@" * 8, "#" * 10


def templates(run: str) -> tuple[str, str]:
    """(body, canonical) of a marker event: ``_ID_MARK`` and ``_INV_MARK`` stand for the index."""
    data = event_data(0)
    data["invoice_id"] = f"inv_{_INV_MARK}"  # the padding does not depend on the index
    body = orjson.dumps({"id": f"evt_fair_{run}_{_ID_MARK}", "type": EVENT_TYPE, "data": data})
    canonical = orjson.dumps(
        {"type": EVENT_TYPE, "data": data, "ordering_key": None}, option=orjson.OPT_SORT_KEYS
    )
    return body.decode(), canonical.decode()


def _check_templates(run: str) -> None:
    """The marker templates give the same bytes as ``new_event`` (a drift would skew rows)."""
    body, canonical = templates(run)
    for index in (1, 123_456, 99_999_999):
        event = new_event(run, index)
        made = body.replace(_ID_MARK, f"{index:08d}").replace(_INV_MARK, f"{index:010d}")
        hashed = canonical.replace(_INV_MARK, f"{index:010d}")
        assert made.encode() == event.body, "body template drifted from the events route"
        assert hashlib.sha256(hashed.encode()).digest() == event.content_hash


# -- building the backlog -------------------------------------------------------------------------


async def publish_probe(store: Store, org: str, run: str, backlog: int) -> tuple[int, float]:
    """Publish the first batches through the API; (events published, events per second)."""
    published, started = 0, time.perf_counter()
    for _ in range(PUBLISH_PROBE_BATCHES):
        count = min(PUBLISH_BATCH, backlog - published)
        if count <= 0:
            break
        await store.publish(org, [new_event(run, published + n + 1) for n in range(count)])
        published += count
    elapsed = time.perf_counter() - started
    return published, published / elapsed if elapsed > 0 else float("inf")


async def publish_rest(store: Store, org: str, run: str, start: int, backlog: int) -> None:
    for first in range(start, backlog, PUBLISH_BATCH):
        count = min(PUBLISH_BATCH, backlog - first)
        await store.publish(org, [new_event(run, first + n + 1) for n in range(count)])


def sqlite_bulk(path: str, org: str, endpoint: str, run: str, start: int, backlog: int) -> None:
    """Events ``start+1 .. backlog`` and their deliveries, as ``_publish.py`` writes them.

    One transaction per 50,000 events through a connection of its own (the store is idle
    meanwhile); ``synchronous=OFF`` because a crash here only loses a benchmark's setup.
    """
    body, canonical = templates(run)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA busy_timeout=10000")
        for first in range(start, backlog, SQL_CHUNK):
            last = min(first + SQL_CHUNK, backlog)
            now = time.time_ns() // 1_000_000
            conn.execute("BEGIN IMMEDIATE")
            (top,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            ids = new_ids("dlv", last - first)

            def events(top: int, first: int, last: int, now: int) -> Iterator[tuple[Any, ...]]:
                for index in range(first + 1, last + 1):
                    n8, n10 = f"{index:08d}", f"{index:010d}"
                    yield (
                        top + index - first,
                        f"evt_fair_{run}_{n8}",
                        org,
                        EVENT_TYPE,
                        body.replace(_ID_MARK, n8).replace(_INV_MARK, n10).encode(),
                        hashlib.sha256(canonical.replace(_INV_MARK, n10).encode()).digest(),
                        None,
                        now,
                    )

            conn.executemany(
                "INSERT INTO events (seq, id, organization_id, type, body, content_hash,"
                " ordering_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                events(top, first, last, now),
            )
            conn.executemany(
                "INSERT INTO deliveries (id, organization_id, event_seq, endpoint_id,"
                " ordering_key, blocked, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (ids[n], org, top + n + 1, endpoint, None, 0, now, now, now)
                    for n in range(last - first)
                ),
            )
            conn.execute("COMMIT")
        conn.execute("ANALYZE")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def postgres_bulk(
    url: str, org: str, endpoint: str, run: str, start: int, backlog: int
) -> None:
    """Events ``start+1 .. backlog`` and their deliveries, as ``INSERT_EVENTS`` and
    ``INSERT_DELIVERIES`` write them: bodies and hashes made from the templates in SQL,
    delivery ids from ``new_ids`` like publish's."""
    import asyncpg

    body, canonical = templates(run)
    conn = await asyncpg.connect(database=url.rsplit("/", 1)[1])
    try:
        await conn.execute("SET synchronous_commit = off")
        for first in range(start, backlog, 200_000):
            last = min(first + 200_000, backlog)
            async with conn.transaction():
                # One statement each; seq order follows g, which the join below relies on.
                await conn.execute(
                    "INSERT INTO events (organization_id, id, type, body, content_hash)"
                    " SELECT $1, 'evt_fair_' || $2 || '_' || lpad(g::text, 8, '0'), $3,"
                    "  convert_to(replace(replace($4, $6, lpad(g::text, 8, '0')),"
                    "                     $7, lpad(g::text, 10, '0')), 'UTF8'),"
                    "  sha256(convert_to(replace($5, $7, lpad(g::text, 10, '0')), 'UTF8'))"
                    " FROM generate_series($8::int, $9::int) g ORDER BY g",
                    org, run, EVENT_TYPE, body, canonical, _ID_MARK, _INV_MARK,
                    first + 1, last,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO deliveries (id, organization_id, event_seq, endpoint_id,"
                    " ordering_key, next_attempt_at, blocked)"
                    " SELECT d.id, $1, e.seq, $2, NULL, now(), 0"
                    " FROM unnest($3::text[]) WITH ORDINALITY AS d(id, n)"
                    " JOIN events e ON e.organization_id = $1"
                    "  AND e.id = 'evt_fair_' || $4 || '_' || lpad((d.n + $5)::text, 8, '0')"
                    " ORDER BY d.n",
                    org, endpoint, new_ids("dlv", last - first), run, first,
                )  # fmt: skip
        await conn.execute("ANALYZE events")
        await conn.execute("ANALYZE deliveries")
    finally:
        await conn.close()


# -- the worker and the measurement ------------------------------------------------------------


class Worker:
    """A claim loop like the delivery worker's: claim, "send" instantly, record success."""

    def __init__(self, store: Store, org_b: str) -> None:
        self.store = store
        self.claim_seconds: list[float] = []
        self.claimed = 0
        self.org_b = org_b
        # B's deliveries, by id, with when the claim that returned them returned: kept for any
        # claim, so one claimed while publish was still returning is not missed.
        self.b_claimed: dict[str, float] = {}
        self.b_seen = asyncio.Event()
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            started = time.perf_counter()
            batch = await self.store.claim(WORKER, CLAIM_LIMIT, LEASE_S)
            returned = time.perf_counter()
            self.claim_seconds.append(returned - started)
            self.claimed += len(batch)
            for claimed in batch:
                if claimed.organization_id == self.org_b:
                    self.b_claimed[claimed.id] = returned
                    self.b_seen.set()
            if batch:
                await self.store.record(WORKER, [succeeded(c) for c in batch])
            else:
                await self.store.wait_for_work(0.05)


def succeeded(claimed: ClaimedDelivery) -> AttemptOutcome:
    attempt = Attempt(
        number=claimed.attempt_number,
        started_at=datetime.now(UTC),
        duration_ms=1.0,
        status_code=200,
        error=None,
        response_excerpt=None,
    )
    return AttemptOutcome(claimed.id, attempt, DeliveryStatus.SUCCEEDED, None)


async def measure(store: Store, org_b: str, run: str) -> tuple[list[float | None], Worker]:
    """Five delays (seconds; None when not claimed within the wait limit) with the loop running."""
    worker = Worker(store, org_b)
    loop_task = asyncio.create_task(worker.run())
    delays: list[float | None] = []
    try:
        await asyncio.sleep(WARMUP_S)
        for n in range(REPEATS):
            published = await store.publish(org_b, [new_event(f"b{run}", n + 1)])
            delivery_id = published[0].event.deliveries[0].id
            after_publish = time.perf_counter()
            delays.append(await claimed_after(worker, delivery_id, after_publish))
            if loop_task.done():
                loop_task.result()  # the worker failed: say why
            await asyncio.sleep(BETWEEN_S)
    finally:
        worker.stopping = True
        await loop_task
    return delays, worker


async def claimed_after(worker: Worker, delivery_id: str, since: float) -> float | None:
    """Seconds from ``since`` until a claim returned the delivery (0 if one returned it while
    its publish was still returning); None if none did within the wait limit."""
    deadline = since + WAIT_LIMIT_S
    while delivery_id not in worker.b_claimed:
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        worker.b_seen.clear()
        try:
            await asyncio.wait_for(worker.b_seen.wait(), left)
        except TimeoutError:
            return None
    return max(0.0, worker.b_claimed[delivery_id] - since)


async def pending_of(store: Store) -> int:
    counts = await store.delivery_counts()
    return counts.get(DeliveryStatus.PENDING, 0)


async def run_store(kind: str, backlog: int, budget: float) -> dict[str, Any]:
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if kind == "sqlite":
        tmp = tempfile.TemporaryDirectory(prefix="fairness-")
        url = f"sqlite:///{tmp.name}/fairness.db"
    else:
        from tests.support.postgres import create_database

        url = await create_database()
    store = open_store(url)
    await store.open()
    run = run_tag()
    try:
        org_a = (await store.create_organization("backlogged")).id
        endpoint_a = (
            await store.create_endpoint(org_a, "http://127.0.0.1:9/a", None, "backlog")
        ).id
        org_b = (await store.create_organization("quiet")).id
        await store.create_endpoint(org_b, "http://127.0.0.1:9/b", None, "next event")

        started = time.perf_counter()
        probed, rate = await publish_probe(store, org_a, run, backlog)
        projected = backlog / rate
        if probed >= backlog:
            method = "publish"
        elif projected <= budget:
            method = "publish"
            await publish_rest(store, org_a, run, probed, backlog)
        elif kind == "sqlite":
            method = "sql"
            path = url.removeprefix("sqlite:///")
            await asyncio.to_thread(sqlite_bulk, path, org_a, endpoint_a, run, probed, backlog)
        else:
            method = "sql"
            await postgres_bulk(url, org_a, endpoint_a, run, probed, backlog)
        build_s = time.perf_counter() - started
        pending_before = await pending_of(store)
        print(
            f"{kind}: backlog of {pending_before:,} pending built in {build_s:.1f} s "
            f"({probed:,} published at {rate:,.0f}/s, projected {projected:.0f} s; "
            f"rest by {method})",
            file=sys.stderr,
        )

        delays, worker = await measure(store, org_b, run)
        pending_after = await pending_of(store)
    finally:
        await store.close()
        if kind == "postgres":
            from tests.support.postgres import drop_database

            await drop_database(url)
        if tmp is not None:
            tmp.cleanup()

    measured = [d for d in delays if d is not None]
    met = len(measured) == len(delays) and all(d < TARGET_S for d in measured)
    result = {
        "backlog": backlog,
        "backlog_built_by": method,
        "published_through_api": probed,
        "publish_rate_per_s": round(rate),
        "build_seconds": round(build_s, 1),
        "pending_before": pending_before,
        "pending_after": pending_after,
        "delays_ms": [None if d is None else round(d * 1000, 1) for d in delays],
        "delay_min_ms": round(min(measured) * 1000, 1) if measured else None,
        "delay_median_ms": round(statistics.median(measured) * 1000, 1) if measured else None,
        "delay_max_ms": round(max(measured) * 1000, 1) if measured else None,
        "not_claimed_within_s": WAIT_LIMIT_S if len(measured) < len(delays) else None,
        "claims": len(worker.claim_seconds),
        "claimed": worker.claimed,
        "claim_median_ms": round(statistics.median(worker.claim_seconds) * 1000, 1),
        "claim_max_ms": round(max(worker.claim_seconds) * 1000, 1),
        "met": met,
    }
    print(
        f"{kind}: delay min/median/max {result['delay_min_ms']}/{result['delay_median_ms']}/"
        f"{result['delay_max_ms']} ms over {REPEATS} events; claim median "
        f"{result['claim_median_ms']} ms ({len(worker.claim_seconds)} claims, "
        f"{worker.claimed:,} claimed); {'met' if met else 'NOT met'}",
        file=sys.stderr,
    )
    return result


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    cli.add_argument("--backlog", type=int, default=1_000_000, help="A's pending deliveries")
    cli.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    cli.add_argument(
        "--publish-budget",
        type=float,
        default=PUBLISH_BUDGET_S,
        help="seconds publishing the whole backlog may take before SQL inserts the rest"
        f" (default {PUBLISH_BUDGET_S:.0f}; 0 always inserts by SQL after the first batches)",
    )
    args = cli.parse_args()
    if args.backlog < 1:
        cli.error("--backlog must be at least 1")
    os.environ.setdefault("PGHOST", "127.0.0.1")
    os.environ.setdefault("PGUSER", "postgres")
    _check_templates("abcd1234")
    warn_if_busy("fairness")
    kinds = ["sqlite", "postgres"] if args.store == "both" else [args.store]
    figures: dict[str, Any] = {
        "target_ms": TARGET_S * 1000,
        "claim_limit": CLAIM_LIMIT,
        "repeats": REPEATS,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "stores": {},
    }
    for kind in kinds:
        figures["stores"][kind] = asyncio.run(run_store(kind, args.backlog, args.publish_budget))
    figures["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_result("fairness", figures)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
