"""Which async PostgreSQL driver for the store: asyncpg or psycopg 3? Measure the store's shapes.

Two workloads, each on a fresh table, same server, same SQL:

* ``insert``: N single-row INSERT + COMMIT in a row (one publish each), then the same N
  spread over 16 concurrent connections (many API requests at once). With a durable commit
  both drivers wait on the disk's fsync and measure the disk, so the database runs with
  ``synchronous_commit=off`` here (``--durable`` to keep it on): the driver's own cost shows.
* ``claim``: drain M queued rows in batches of 100 with the claim's shape
  (``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT 100) RETURNING``), with
  array parameters, as 4 concurrent workers.

Run: ``PGHOST=127.0.0.1 PGUSER=postgres .venv/bin/python bench/bench_pg_driver.py [N] [--durable]``
(psycopg is not a dependency: ``pip install 'psycopg[binary]'`` to include it). Prints rates.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

SCHEMA = """
CREATE TABLE bench_q (id bigserial PRIMARY KEY, org text NOT NULL, body bytea NOT NULL,
                      status text NOT NULL DEFAULT 'pending', locked_by text)
"""
INSERT = "INSERT INTO bench_q (org, body) VALUES ($1, $2)"
CLAIM = """
UPDATE bench_q SET locked_by = $1, status = 'leased'
 WHERE id IN (SELECT id FROM bench_q WHERE status = 'pending' AND org = ANY($2::text[])
              ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING id, org, body
"""
FILL = (
    "INSERT INTO bench_q (org, body) SELECT 'org' || (g % 10), '\\x7b7d'"
    " FROM generate_series(1, $1) g"
)
ORGS = [f"org{i}" for i in range(10)]
BODY = b'{"id":"evt_1","type":"invoice.paid","data":{"amount":100}}'


def _psycopg_sql(query: str) -> str:
    """asyncpg's $n placeholders in psycopg's %s style (each $n appears once, in order here)."""
    for n in range(9, 0, -1):
        query = query.replace(f"${n}", "%s")
    return query


async def timed(label: str, count: int, work: Callable[[], Awaitable[None]]) -> None:
    started, cpu = time.perf_counter(), time.process_time()
    await work()
    elapsed = time.perf_counter() - started
    # Client CPU per row is the driver's own cost, and barely moved by other load on the host.
    per_row = (time.process_time() - cpu) / count * 1e6
    print(f"  {label:<34} {count / elapsed:>8,.0f} /s  {per_row:6.1f} us client CPU/row")


async def bench_asyncpg(dsn: str, n: int) -> None:
    print("asyncpg", asyncpg.__version__)
    pool = await asyncpg.create_pool(dsn, min_size=16, max_size=16)
    try:
        await pool.execute("DROP TABLE IF EXISTS bench_q")
        await pool.execute(SCHEMA)

        async def serial() -> None:
            async with pool.acquire() as conn:
                for i in range(n):
                    await conn.execute(INSERT, ORGS[i % 10], BODY)

        async def concurrent() -> None:
            async def one(k: int) -> None:
                async with pool.acquire() as conn:
                    for i in range(k, n, 16):
                        await conn.execute(INSERT, ORGS[i % 10], BODY)

            await asyncio.gather(*(one(k) for k in range(16)))

        async def claims() -> None:
            async def worker(name: str) -> None:
                async with pool.acquire() as conn:
                    while await conn.fetch(CLAIM, name, ORGS):
                        pass

            await asyncio.gather(*(worker(f"w{k}") for k in range(4)))

        await timed("insert+commit, 1 connection", n, serial)
        await timed("insert+commit, 16 connections", n, concurrent)
        await pool.execute("TRUNCATE bench_q")
        await pool.execute(FILL, n * 5)
        await timed("claim 100/batch, 4 workers (rows)", n * 5, claims)
        await pool.execute("DROP TABLE bench_q")
    finally:
        await pool.close()


async def bench_psycopg(dsn: str, n: int) -> None:
    try:
        import psycopg
        from psycopg_pool import AsyncConnectionPool
    except ImportError:
        print("psycopg (with psycopg_pool) not installed: skipped")
        return
    print("psycopg", psycopg.__version__)
    insert, claim = _psycopg_sql(INSERT), _psycopg_sql(CLAIM)
    async with AsyncConnectionPool(dsn, min_size=16, max_size=16, open=False) as pool:
        await pool.open()
        async with pool.connection() as conn:
            await conn.execute("DROP TABLE IF EXISTS bench_q")
            await conn.execute(SCHEMA)

        async def serial() -> None:
            async with pool.connection() as conn:
                await conn.set_autocommit(True)
                for i in range(n):
                    await conn.execute(insert, (ORGS[i % 10], BODY), prepare=True)

        async def concurrent() -> None:
            async def one(k: int) -> None:
                async with pool.connection() as conn:
                    await conn.set_autocommit(True)
                    for i in range(k, n, 16):
                        await conn.execute(insert, (ORGS[i % 10], BODY), prepare=True)

            await asyncio.gather(*(one(k) for k in range(16)))

        async def claims() -> None:
            async def worker(name: str) -> None:
                async with pool.connection() as conn:
                    await conn.set_autocommit(True)
                    while True:
                        cur = await conn.execute(claim, (name, ORGS), prepare=True)
                        if not await cur.fetchall():
                            return

            await asyncio.gather(*(worker(f"w{k}") for k in range(4)))

        await timed("insert+commit, 1 connection", n, serial)
        await timed("insert+commit, 16 connections", n, concurrent)
        async with pool.connection() as conn:
            await conn.execute("TRUNCATE bench_q")
            await conn.execute(
                "INSERT INTO bench_q (org, body) SELECT 'org' || (g %% 10), '\\x7b7d'"
                " FROM generate_series(1, %s) g",
                (n * 5,),
            )
        await timed("claim 100/batch, 4 workers (rows)", n * 5, claims)
        async with pool.connection() as conn:
            await conn.execute("DROP TABLE bench_q")


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 10_000
    durable = "--durable" in sys.argv
    admin = await asyncpg.connect(database=os.environ.get("PGDATABASE", "postgres"))
    name = f"aw_bench_{uuid.uuid4().hex[:8]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    if not durable:
        await admin.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    try:
        host = os.environ.get("PGHOST", "127.0.0.1")
        user = os.environ.get("PGUSER", "postgres")
        port = os.environ.get("PGPORT", "5432")
        dsn = f"postgresql://{user}@{host}:{port}/{name}"
        await bench_asyncpg(dsn, n)
        await bench_psycopg(dsn, n)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
