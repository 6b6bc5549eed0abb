"""What the SQLite writer costs per delivery to claim it and to record its outcome.

No HTTP, no event loop: a fresh database with the real schema, one organization, one endpoint
and ``--events`` pending deliveries of ~1 KB events; then the store's own claim (128 at a time,
as the worker asks) and record (every attempt succeeded) as the writer thread runs them, each
call in a transaction of its own. Figures are the median CPU time of this thread per delivery,
so that other processes on the machine count less. ``bench/profile_publish_sqlite.py`` gives
the same for a publish.

::

    .venv/bin/python bench/profile_sqlite_writer.py [--events 40000]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from ascend_webhooks.store.models import Attempt, AttemptOutcome, DeliveryStatus
from ascend_webhooks.store.sqlite import _writes
from ascend_webhooks.store.sqlite._claim import Claimer
from ascend_webhooks.store.sqlite._migrate import apply_migrations, load_migrations

_BATCH = 128


def _fill(conn: sqlite3.Connection, events: int) -> None:
    conn.execute("INSERT INTO organizations VALUES ('org_1', 'bench', 0)")
    conn.execute(
        "INSERT INTO endpoints (id, organization_id, url, created_at, updated_at)"
        " VALUES ('ep_1', 'org_1', 'http://127.0.0.1/', 0, 0)"
    )
    body = b"x" * 1024
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO events (seq, id, organization_id, type, body, content_hash, created_at)"
        " VALUES (?, ?, 'org_1', 'invoice.paid', ?, ?, 0)",
        [(n, f"evt_{n}", body, os.urandom(32)) for n in range(1, events + 1)],
    )
    conn.executemany(
        "INSERT INTO deliveries (id, organization_id, event_seq, endpoint_id, next_attempt_at,"
        " created_at, updated_at) VALUES (?, 'org_1', ?, 'ep_1', 0, 0, 0)",
        [(f"dlv_{os.urandom(10).hex()}", n) for n in range(1, events + 1)],
    )
    conn.execute("COMMIT")


def measure(events: int) -> tuple[float, float]:
    """Median CPU microseconds per delivery: (claim, record)."""
    with tempfile.TemporaryDirectory() as folder:
        conn = sqlite3.connect(Path(folder) / "bench.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # as the worker's writes commit
        conn.execute("PRAGMA foreign_keys = ON")
        apply_migrations(conn, load_migrations())
        _fill(conn, events)
        claimer = Claimer()
        attempt = Attempt(1, datetime.now(UTC), 1.0, 200, None, None)
        claims, records = [], []
        while True:
            conn.execute("BEGIN")
            started = time.thread_time()
            claimed = claimer.claim(conn, "bench-worker", _BATCH, 30.0, ())
            elapsed = time.thread_time() - started
            conn.execute("COMMIT")
            if not claimed:
                break
            claims.append(elapsed / len(claimed))
            outcomes = [
                AttemptOutcome(c.id, attempt, DeliveryStatus.SUCCEEDED, None) for c in claimed
            ]
            conn.execute("BEGIN")
            started = time.thread_time()
            _writes.record(conn, "bench-worker", outcomes)
            records.append((time.thread_time() - started) / len(claimed))
            conn.execute("COMMIT")
        conn.close()
    return statistics.median(claims) * 1e6, statistics.median(records) * 1e6


def main(argv: list[str] | None = None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--events", type=int, default=40_000)
    args = cli.parse_args(argv)
    claim_us, record_us = measure(args.events)
    print(f"== SQLite writer cost per delivery, {args.events:,} pending, {_BATCH} per claim ==")
    print(f"  claim   {claim_us:6.2f} us CPU")
    print(f"  record  {record_us:6.2f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
