"""The SQLite engine commits the worker's writes without an fsync, and every other write with one.

Which ``synchronous`` mode a transaction commits under is read inside it, on the real writer
connection: ``durable=False`` jobs run with NORMAL, durable ones (a publish, an API write) with
the mode the URL asked for, also when both were queued together.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ascend_webhooks.store.sqlite._engine import Engine, GroupJob, parse_url

NORMAL, FULL, EXTRA = 1, 2, 3


def mode(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def started(url: str) -> Engine:
    engine = Engine(parse_url(url))
    await asyncio.to_thread(engine.start)
    return engine


async def test_relaxed_batches_commit_without_fsync_and_durable_ones_with(tmp_path: Path) -> None:
    engine = await started(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        assert await engine.submit(mode) == FULL
        assert await engine.submit(mode, durable=False) == NORMAL
        assert await engine.submit(mode, durable=False) == NORMAL
        assert await engine.submit(mode) == FULL  # back to FULL after relaxed batches
        # Queued together: the relaxed job commits on its own, the durable ones with FULL.
        together = await asyncio.gather(
            engine.submit(mode), engine.submit(mode, durable=False), engine.submit(mode)
        )
        assert together == [FULL, NORMAL, FULL]
    finally:
        await asyncio.to_thread(engine.stop)


async def test_a_url_asking_for_extra_keeps_it_for_durable_writes(tmp_path: Path) -> None:
    engine = await started(f"sqlite:///{tmp_path / 'b.db'}?synchronous=extra")
    try:
        assert await engine.submit(mode, durable=False) == NORMAL
        assert await engine.submit(mode) == EXTRA
    finally:
        await asyncio.to_thread(engine.stop)


async def test_a_url_asking_for_normal_is_never_made_stricter_or_looser(tmp_path: Path) -> None:
    engine = await started(f"sqlite:///{tmp_path / 'c.db'}?synchronous=normal")
    try:
        assert await engine.submit(mode, durable=False) == NORMAL
        assert await engine.submit(mode) == NORMAL
    finally:
        await asyncio.to_thread(engine.stop)


async def test_worker_writes_queued_behind_big_publishes_wait_for_one_transaction_only(
    tmp_path: Path,
) -> None:
    # Durable transactions are cut at about _MAX_WEIGHT rows: a claim queued behind several
    # 1,000-event publishes runs after the first of them, not after all (which held delivery
    # back for as long as a burst of publishes lasted).
    engine = await started(f"sqlite:///{tmp_path / 'd.db'}")
    loop = asyncio.get_running_loop()
    order: list[str] = []
    claimed: asyncio.Future[asyncio.Future[Any]] = loop.create_future()
    gate = threading.Event()

    def submit_claim() -> None:
        claimed.set_result(engine.submit(lambda conn: order.append("claim"), durable=False))

    def run(conn: sqlite3.Connection, args: list[str]) -> list[Any]:
        if not order:  # the first publish is running: the worker asks for a claim now
            loop.call_soon_threadsafe(submit_claim)
            time.sleep(0.05)  # (long enough for the claim to be queued)
        order.extend(args)
        return [(True, None) for _ in args]

    try:
        blocker = engine.submit(lambda conn: gate.wait(5))  # the writer is busy meanwhile
        publishes = [engine.submit(GroupJob(run, f"publish {n}", weight=1_000)) for n in range(3)]
        await asyncio.sleep(0.05)  # all three are queued behind the blocker
        gate.set()
        await asyncio.gather(blocker, *publishes, await claimed)
        assert order == ["publish 0", "claim", "publish 1", "publish 2"]
    finally:
        gate.set()
        await asyncio.to_thread(engine.stop)
