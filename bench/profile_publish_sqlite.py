"""What the SQLite writer itself costs per published event: the floor under the batch route.

No HTTP, no event loop: the store's own ``publish_group`` (the code the writer thread runs for a
publish) on a fresh database with the real schema, one organization and one endpoint, timing
batches of 1,000 events of ~1 KB, each batch one transaction as the writer commits it. Three
figures per event, each the median of the batches, in CPU time of this thread (so that other
processes on the machine count less) and wall time:

* ``insert only``: the two ``executemany`` INSERTs (events, deliveries) of the staged rows;
* ``publish_group``: checks, staging (ids, result objects) and the INSERTs;
* ``+ COMMIT``: the same with the commit (``synchronous=FULL``: the WAL is fsynced).

``--contended`` runs a thread of pure Python beside it, as the event loop of ``serve`` is
while it parses the next batches: the writer lets go of the GIL around every statement and
waits to take it back, up to the switch interval (5 ms) each time, so there the wall time per
event counts how many statements a batch takes, and CPU time hardly changes::

    .venv/bin/python bench/profile_publish_sqlite.py [--batches 20] [--contended]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from ascend_webhooks.store.models import NewEvent
from ascend_webhooks.store.sqlite import _publish
from ascend_webhooks.store.sqlite._engine import SQLiteOptions, connect
from ascend_webhooks.store.sqlite._migrate import apply_migrations, load_migrations
from harness import EVENT_TYPE, event_data

BATCH = 1_000


def _events(run: int) -> tuple[NewEvent, ...]:
    out = []
    for n in range(BATCH):
        event_id = f"evt_{run}_{n}"
        data = event_data(n)
        body = orjson.dumps({"id": event_id, "type": EVENT_TYPE, "data": data})
        canonical = orjson.dumps(
            {"type": EVENT_TYPE, "data": data, "ordering_key": None}, option=orjson.OPT_SORT_KEYS
        )
        out.append(
            NewEvent(
                id=event_id,
                type=EVENT_TYPE,
                body=body,
                content_hash=hashlib.sha256(canonical).digest(),
                ordering_key=None,
            )
        )
    return tuple(out)


def main() -> int:
    cli = argparse.ArgumentParser(description="SQLite cost per published event (no HTTP).")
    cli.add_argument("--batches", type=int, default=20)
    cli.add_argument(
        "--contended", action="store_true", help="a thread of pure Python runs meanwhile"
    )
    args = cli.parse_args()
    stop = threading.Event()
    if args.contended:
        threading.Thread(target=_busy, args=(stop,), daemon=True).start()
    try:
        return _measure(args.batches, args.contended)
    finally:
        stop.set()


def _busy(stop: threading.Event) -> None:
    """Pure Python, holding the GIL but for the interpreter's forced switches."""
    while not stop.is_set():
        sum(range(1_000))


def _measure(batches: int, contended: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="ascend-sqlite-floor-") as tmp:
        conn = connect(SQLiteOptions(path=str(Path(tmp) / "floor.db")))
        apply_migrations(conn, load_migrations())
        now = 1_700_000_000_000
        conn.execute(
            "INSERT INTO organizations (id, name, created_at) VALUES ('org_1', 'o', ?)", (now,)
        )
        conn.execute(
            "INSERT INTO endpoints (id, organization_id, url, created_at, updated_at)"
            " VALUES ('ep_1', 'org_1', 'http://127.0.0.1:9/', ?, ?)",
            (now, now),
        )
        figures: dict[str, list[tuple[float, float]]] = {
            "insert only": [],
            "publish_group": [],
            "publish_group + COMMIT": [],
        }
        for run in range(batches):
            events = _events(run)
            labels = list(figures)
            for label in labels[run % 3 :] + labels[: run % 3]:  # rotate: no order advantage
                # Each variant publishes its own copy of the events (fresh ids).
                tag = f"_{labels.index(label)}"
                copy = tuple(
                    NewEvent(e.id + tag, e.type, e.body, e.content_hash, None) for e in events
                )
                conn.execute("BEGIN IMMEDIATE")
                batch = _publish._PublishBatch(conn)
                if label == "insert only":
                    batch.add("org_1", copy)  # staging, not timed
                    cpu, wall = time.thread_time(), time.perf_counter()
                    batch.flush()
                else:
                    cpu, wall = time.thread_time(), time.perf_counter()
                    _publish.publish_group(conn, [("org_1", copy, None)])
                if label.endswith("COMMIT"):
                    conn.execute("COMMIT")
                cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
                if conn.in_transaction:
                    conn.execute("COMMIT")
                figures[label].append((cpu * 1e6 / BATCH, wall * 1e6 / BATCH))
        conn.close()
    beside = ", a busy Python thread beside" if contended else ""
    print(f"== SQLite cost per event, batches of {BATCH:,}, median of {batches}{beside} ==")
    for label, values in figures.items():
        cpu = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        print(f"  {label:<24} {cpu:6.1f} us CPU  {wall:6.1f} us wall  (<= {1e6 / wall:,.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
