"""The SQLite engine commits the worker's writes without an fsync, and every other write with one.

Which ``synchronous`` mode a transaction commits under is read inside it, on the real writer
connection: ``durable=False`` jobs run with NORMAL, durable ones (a publish, an API write) with
the mode the URL asked for, also when both were queued together.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from ascend_webhooks.store.sqlite._engine import Engine, parse_url

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
