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

``--publish`` instead times the store's own ``PostgresStore.publish`` of one event (one endpoint,
durable commits as deployed): N calls one after another (wall time per call, p50/p99, and the
client's CPU per call), then N calls 16 at a time, then 200 calls through a counting proxy
that reads the wire protocol and reports the round trips per call (a ``Sync`` or a simple
``Query`` is one wait for the server), pool acquire and release included, and the NOTIFY
that follows a publish. ``--publish-worker`` adds, in the same way, the worker's side: a
``claim`` of what one publish made and the ``record`` of its outcome.
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


def _backend_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by these server processes (this machine's ``/proc``)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class _CountingProxy:
    """A loopback TCP proxy to PostgreSQL that counts the client's round trips.

    After the startup packet every frontend message is a type byte and a length; a ``Sync``
    ('S') ends an extended-protocol exchange and a ``Query`` ('Q') is a simple one: either is
    one wait for the server's ``ReadyForQuery``.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.round_trips = 0
        self.messages: dict[str, int] = {}
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)

        async def upstream() -> None:
            # The startup packet (and an SSL request before it) has no type byte.
            started = False
            while not started:
                head = await reader.readexactly(4)
                length = int.from_bytes(head, "big")
                rest = await reader.readexactly(length - 4)
                up_writer.write(head + rest)
                started = rest[:4] != (80877103).to_bytes(4, "big")  # not an SSLRequest
            while True:
                kind = await reader.readexactly(1)
                head = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(head, "big") - 4)
                name = kind.decode()
                self.messages[name] = self.messages.get(name, 0) + 1
                if kind in (b"S", b"Q"):
                    self.round_trips += 1
                up_writer.write(kind + head + body)
                await up_writer.drain()

        async def downstream() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.close()
        up_writer.close()


async def bench_publish(dsn_of: Callable[[str, str], str], n: int, worker: bool) -> None:
    import hashlib

    from ascend_webhooks.store.models import Attempt, AttemptOutcome, DeliveryStatus, NewEvent
    from ascend_webhooks.store.postgres import PostgresStore

    def event(i: int) -> NewEvent:
        body = b'{"id":"evt_%d","type":"invoice.paid","data":{"amount":%d}}' % (i, i)
        return NewEvent(f"evt_{i}", "invoice.paid", body, hashlib.sha256(body).digest())

    host = os.environ.get("PGHOST", "127.0.0.1")
    port = int(os.environ.get("PGPORT", "5432"))
    store = PostgresStore(dsn_of(host, str(port)) + "?pool_size=16")
    await store.open()
    try:
        org = await store.create_organization("bench")
        await store.create_endpoint(org.id, "http://127.0.0.1:9/hook", None, None)
        for i in range(200):  # warm the pool and the statement caches
            await store.publish(org.id, [event(-1 - i)])
        database = dsn_of(host, str(port)).rsplit("/", 1)[1]
        backends = [
            r[0]
            for r in await store._pool.fetch(  # type: ignore[union-attr]
                "SELECT pid FROM pg_stat_activity WHERE datname = $1", database
            )
        ]
        times = []
        cpu, server = time.process_time(), _backend_cpu(backends)
        for i in range(n):
            started = time.perf_counter()
            await store.publish(org.id, [event(i)])
            times.append(time.perf_counter() - started)
        per_call = (time.process_time() - cpu) / n * 1e6
        server_per_call = (_backend_cpu(backends) - server) / n * 1e6
        times.sort()
        print(
            f"  publish 1 event, one at a time: p50 {times[n // 2] * 1e3:.3f} ms,"
            f" p99 {times[n * 99 // 100] * 1e3:.3f} ms, {per_call:.0f} us client CPU/call,"
            f" {server_per_call:.0f} us server CPU/call (its NOTIFY included)"
        )
        started, cpu = time.perf_counter(), time.process_time()
        base = n
        queue = iter(range(base, base + n))

        async def one() -> None:
            for i in queue:
                await store.publish(org.id, [event(i)])

        await asyncio.gather(*(one() for _ in range(16)))
        elapsed = time.perf_counter() - started
        per_call = (time.process_time() - cpu) / n * 1e6
        print(f"  publish 1 event, 16 at a time: {n / elapsed:,.0f}/s, {per_call:.0f} us CPU/call")
        await store.close()
    finally:
        await store.close()

    proxy = _CountingProxy(host, port)
    proxy_port = await proxy.start()
    store = PostgresStore(dsn_of("127.0.0.1", str(proxy_port)) + "?pool_size=4")
    await store.open()
    try:
        for i in range(20):
            await store.publish(org.id, [event(3 * n + i)])
        await asyncio.sleep(0.2)
        calls = 200
        before, kinds = proxy.round_trips, dict(proxy.messages)
        for i in range(calls):
            await store.publish(org.id, [event(3 * n + 100 + i)])
            await asyncio.sleep(0.005)  # let the NOTIFY after each commit go out
        trips = (proxy.round_trips - before) / calls
        sent = {k: round((v - kinds.get(k, 0)) / calls, 2) for k, v in proxy.messages.items()}
        print(f"  publish 1 event: {trips:.2f} round trips per call (NOTIFY included); {sent}")
        if worker:
            before = proxy.round_trips
            for i in range(calls):
                await store.publish(org.id, [event(4 * n + i)])
                got = await store.claim("wrk_bench", 8, 60.0)
                now = time.time()
                from datetime import UTC, datetime

                await store.record(
                    "wrk_bench",
                    [
                        AttemptOutcome(
                            d.id,
                            Attempt(
                                d.attempt_number,
                                datetime.fromtimestamp(now, UTC),
                                1.0,
                                200,
                                None,
                                "ok",
                            ),
                            DeliveryStatus.SUCCEEDED,
                            None,
                        )
                        for d in got
                    ],
                )
                await asyncio.sleep(0.005)
            trips = (proxy.round_trips - before) / calls
            print(f"  publish + claim + record: {trips:.2f} round trips per event")
    finally:
        await store.close()
        await proxy.close()


async def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 10_000
    durable = "--durable" in sys.argv or "--publish" in sys.argv or "--publish-worker" in sys.argv
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
        if "--publish" in sys.argv or "--publish-worker" in sys.argv:
            await bench_publish(
                lambda h, p: f"postgresql://{user}@{h}:{p}/{name}",
                n,
                "--publish-worker" in sys.argv,
            )
            return
        await bench_asyncpg(dsn, n)
        await bench_psycopg(dsn, n)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
