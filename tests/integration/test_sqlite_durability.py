"""The embedded store's durability: group commit; what ``publish`` returned survives kill -9.

Real subprocesses on a real file: one publishes and prints each event id once ``publish``
returned, and is killed with SIGKILL mid-stream; others open the same fresh file at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from ascend_webhooks.store import EventConflictError, NotFoundError
from ascend_webhooks.store.base import StoreUnavailableError
from ascend_webhooks.store.models import DeliveryStatus, NewEvent
from ascend_webhooks.store.sqlite import SQLiteStore
from ascend_webhooks.store.sqlite._engine import Engine

PUBLISHER = textwrap.dedent(
    """
    import asyncio, hashlib, sys
    from ascend_webhooks.store.sqlite import SQLiteStore
    from ascend_webhooks.store.models import NewEvent

    async def main(url):
        store = SQLiteStore(url)
        await store.open()
        org = await store.create_organization("durable")
        await store.create_endpoint(org.id, "https://example.com/hook", None, None)
        print("org", org.id, flush=True)

        async def one(n):
            body = b'{"id":"evt_%d","type":"t","data":{}}' % n
            event = NewEvent(f"evt_{n}", "t", body, hashlib.sha256(body).digest())
            await store.publish(org.id, [event])
            print("published", event.id, flush=True)  # only after publish returned

        n = 0
        while True:  # publish until killed, in concurrent groups (group commit)
            await asyncio.gather(*(one(n + k) for k in range(8)))
            n += 8
            if n == 16:
                (claimed,) = await store.claim("doomed-worker", 1, 0.3)
                print("claimed", claimed.id, flush=True)

    asyncio.run(main(sys.argv[1]))
    """
)

OPENER = textwrap.dedent(
    """
    import asyncio, sys, time
    from ascend_webhooks.store.sqlite import SQLiteStore

    async def main(url, start):
        time.sleep(max(0.0, start - time.time()))  # all processes open at the same moment
        store = SQLiteStore(url)
        await store.open()
        org = await store.create_organization(sys.argv[3])
        await store.close()
        print(org.id)

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


async def test_published_events_survive_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PUBLISHER, url, stdout=asyncio.subprocess.PIPE, env=_env()
    )
    assert child.stdout is not None
    published: list[str] = []
    org = claimed = None
    try:
        async with asyncio.timeout(30):
            while len(published) < 300:
                line = (await child.stdout.readline()).decode()
                if not line:
                    break
                kind, value = line.split()
                if kind == "org":
                    org = value
                elif kind == "claimed":
                    claimed = value
                else:
                    published.append(value)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    assert org is not None
    assert claimed is not None
    assert len(published) >= 300

    store = SQLiteStore(url)
    await store.open()
    try:
        for event_id in published:
            event = await store.get_event(org, event_id)
            assert len(event.deliveries) == 1
        # The attempt that died with its worker is handed out again once its lease ran out.
        await asyncio.sleep(0.4)
        again = await store.claim("survivor", 100_000, 30)
        assert claimed in {c.id for c in again}
        assert len(again) >= len(published)
        counts = await store.delivery_counts()
        assert counts[DeliveryStatus.PENDING] >= len(published)
        with pytest.raises(NotFoundError):
            await store.get_event(org, "evt_never")
    finally:
        await store.close()


def test_concurrent_open_from_several_processes_is_safe(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    start = time.time() + 1.0
    children = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, url, str(start), f"org-{n}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for n in range(4)
    ]
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (_out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
    conn = sqlite3.connect(tmp_path / "aw.db")
    try:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_migrations")]
        assert sorted(versions) == list(range(1, len(versions) + 1))
        assert conn.execute("SELECT COUNT(*) FROM organizations").fetchone()[0] == 4
    finally:
        conn.close()


async def test_reopening_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    for name in ("first", "second", "third"):
        store = SQLiteStore(url)
        await store.open()
        try:
            await store.create_organization(name)
            page = await store.list_organizations(limit=10)
        finally:
            await store.close()
    assert sorted(o.name for o in page.items) == ["first", "second", "third"]


async def test_concurrent_writes_share_one_commit_and_fail_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    run_batch = Engine._run_batch

    def counting(conn: sqlite3.Connection, batch: list[Any]) -> None:
        batches.append(len(batch))
        run_batch(conn, batch)

    monkeypatch.setattr(Engine, "_run_batch", staticmethod(counting))
    store = SQLiteStore(f"sqlite:///{tmp_path / 'aw.db'}")
    await store.open()
    try:
        org = await store.create_organization("busy")
        await store.create_endpoint(org.id, "https://example.com/hook", None, None)
        taken = NewEvent("evt_taken", "t", b"{}", b"one")
        await store.publish(org.id, [taken])
        batches.clear()
        calls = [
            store.publish(org.id, [NewEvent(f"evt_{n}", "t", b"{}", b"h")]) for n in range(200)
        ]
        calls.insert(100, store.publish(org.id, [NewEvent("evt_taken", "t", b"{}", b"two")]))
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await store.close()
    assert sum(batches) == 201
    assert len(batches) < 20, batches  # many callers per transaction, one fsync each
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], EventConflictError)
    assert sum(1 for r in results if isinstance(r, list) and r[0].created) == 200


async def test_work_published_by_another_connection_wakes_a_waiting_worker(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'aw.db'}"
    api, worker = SQLiteStore(url), SQLiteStore(url)  # as two processes would: own connections
    await api.open()
    await worker.open()
    try:
        org = await api.create_organization("elsewhere")
        await api.create_endpoint(org.id, "https://example.com/hook", None, None)
        waiting = asyncio.create_task(worker.wait_for_work(10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        started = time.monotonic()
        await api.publish(org.id, [NewEvent("evt_1", "t", b"{}", b"h")])
        await asyncio.wait_for(waiting, 2)
        assert time.monotonic() - started < 1.0  # the 0.25 s poll, not the 10 s timeout
        assert len(await worker.claim("w", 10, 30)) == 1
    finally:
        await worker.close()
        await api.close()


async def test_a_locked_file_is_reported_unavailable_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "aw.db"
    store = SQLiteStore(f"sqlite:///{path}?busy_timeout=100")
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holding the write lock too long
        with pytest.raises(StoreUnavailableError):
            await store.create_organization("blocked")
        assert await store.ping() is True  # reads go on beside the writer in WAL mode
        other.execute("ROLLBACK")
        org = await store.create_organization("after")
        assert (await store.get_organization(org.id)).name == "after"
    finally:
        other.close()
        await store.close()


async def test_close_wakes_waiting_workers_and_refuses_later_calls(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'aw.db'}")
    await store.open()
    waiting = asyncio.create_task(store.wait_for_work(30))
    await asyncio.sleep(0.3)
    await store.close()
    await asyncio.wait_for(waiting, 1)
    # A request still running during shutdown gets a clear "unavailable", never a hang.
    with pytest.raises(StoreUnavailableError):
        await store.create_organization("too late")
    with pytest.raises(StoreUnavailableError):
        await store.list_organizations(limit=1)
    assert await store.ping() is False
