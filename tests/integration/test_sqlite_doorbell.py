"""Wake-ups between processes on one SQLite file: a commit that makes work due rings the
doorbells of the other stores waiting on the same file, which then wake at once instead of at
their next ``data_version`` poll."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import pytest

from ascend_webhooks.store.models import NewEvent
from ascend_webhooks.store.sqlite import SQLiteStore, _doorbell, _store
from ascend_webhooks.store.sqlite._doorbell import doorbell_directory


def event(event_id: str) -> NewEvent:
    body = json.dumps({"id": event_id}).encode()
    return NewEvent(event_id, "invoice.paid", body, hashlib.sha256(body).digest(), None)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    # A poll this slow means that a waiter woken within milliseconds was rung.
    monkeypatch.setattr(_store, "_POLL_SECONDS", 30.0)
    return str(tmp_path / "bell.db")


async def test_a_publish_rings_a_store_waiting_on_the_same_file(database: str) -> None:
    waiter, publisher = SQLiteStore(f"sqlite:///{database}"), SQLiteStore(f"sqlite:///{database}")
    await waiter.open()
    await publisher.open()
    try:
        org = await publisher.create_organization("acme")
        await publisher.create_endpoint(org.id, "https://example.test/hook", None, None)
        await waiter.wait_for_work(0)  # its first wait hangs its doorbell
        delays = []
        for n in range(5):
            waiting = asyncio.create_task(waiter.wait_for_work(10))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            started = time.perf_counter()
            await publisher.publish(org.id, [event(f"evt_{n}")])
            await waiting
            delays.append(time.perf_counter() - started)
        assert statistics.median(delays) < 0.05, delays
        assert max(delays) < 2, delays
        # Nothing else rings: without work, the wait lasts until its end.
        started = time.perf_counter()
        await waiter.wait_for_work(0.3)
        assert time.perf_counter() - started >= 0.25
    finally:
        await waiter.close()
        await publisher.close()
    assert not doorbell_directory(database).exists()  # each took its doorbell away, the last
    # one the folder too


async def test_a_doorbell_nobody_answers_any_more_is_taken_away(database: str) -> None:
    # A process killed outright leaves its socket file: ringing it is refused, and it goes.
    directory = doorbell_directory(database)
    directory.mkdir(parents=True, exist_ok=True)
    stale = directory / "999999999.1"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(stale))
    dead.close()
    assert stale.exists()
    store = SQLiteStore(f"sqlite:///{database}")
    await store.open()
    try:
        org = await store.create_organization("acme")
        await store.create_endpoint(org.id, "https://example.test/hook", None, None)
        await store.publish(org.id, [event("evt_1")])
        assert not stale.exists()
        assert not directory.exists()  # it was the last one there
    finally:
        await store.close()


async def test_stores_of_other_files_are_not_rung(tmp_path: Path, database: str) -> None:
    other = SQLiteStore(f"sqlite:///{tmp_path / 'other.db'}")
    store = SQLiteStore(f"sqlite:///{database}")
    await other.open()
    await store.open()
    try:
        await other.wait_for_work(0)
        org = await store.create_organization("acme")
        await store.create_endpoint(org.id, "https://example.test/hook", None, None)
        waiting = asyncio.create_task(other.wait_for_work(0.5))
        await asyncio.sleep(0.05)
        await store.publish(org.id, [event("evt_1")])
        await asyncio.sleep(0.1)
        assert not waiting.done()
        await waiting
    finally:
        await other.close()
        await store.close()


async def test_a_doorbell_folder_that_is_a_link_is_not_used(
    tmp_path: Path, database: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Someone else may have made the folder first, pointing it elsewhere: then only polling.
    directory = doorbell_directory(database)
    directory.parent.mkdir(parents=True, exist_ok=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    directory.symlink_to(elsewhere, target_is_directory=True)
    store = SQLiteStore(f"sqlite:///{database}")
    await store.open()
    try:
        await store.wait_for_work(0)
        assert list(elsewhere.iterdir()) == []
        assert "is not a folder of ours" in caplog.text
    finally:
        await store.close()
        directory.unlink()


async def test_a_ring_that_cannot_be_sent_fails_no_publish(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    waiter, publisher = SQLiteStore(f"sqlite:///{database}"), SQLiteStore(f"sqlite:///{database}")
    await waiter.open()
    await publisher.open()
    try:
        await waiter.wait_for_work(0)  # a doorbell to ring
        org = await publisher.create_organization("acme")
        await publisher.create_endpoint(org.id, "https://example.test/hook", None, None)

        def no_socket(*args: object) -> socket.socket:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(_doorbell.socket, "socket", no_socket)
        (result,) = await publisher.publish(org.id, [event("evt_1")])
        assert result.created  # committed, and said so: the ring is only a hint
    finally:
        monkeypatch.undo()
        await waiter.close()
        await publisher.close()


async def test_a_folder_taken_away_while_opening_is_made_again(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last store of another process removes the folder as it closes; one opening at that
    # moment finds it checked but gone when it binds.
    bell = _doorbell.Doorbell(database)
    made = bell._make_directory
    first = [True]

    def checked_then_gone() -> bool:
        if first[0]:
            first[0] = False
            assert made()
            doorbell_directory(database).rmdir()
            return True
        return made()

    monkeypatch.setattr(bell, "_make_directory", checked_then_gone)
    assert bell.open(lambda: None)
    try:
        assert len(list(doorbell_directory(database).iterdir())) == 1
    finally:
        bell.close()


async def test_a_store_that_just_began_to_wait_is_rung_by_the_next_commit(database: str) -> None:
    # The publisher rings before any doorbell hangs (no folder yet), then with the first one
    # only, its list read well after that doorbell was hung (so trusted for a while); each
    # newcomer is rung by the very next commit all the same, not once that list has aged.
    publisher = SQLiteStore(f"sqlite:///{database}")
    first, second = SQLiteStore(f"sqlite:///{database}"), SQLiteStore(f"sqlite:///{database}")
    await publisher.open()
    await first.open()
    await second.open()
    try:
        org = await publisher.create_organization("acme")
        await publisher.create_endpoint(org.id, "https://example.test/hook", None, None)
        await publisher.publish(org.id, [event("evt_0")])
        for n, waiter in enumerate((first, second), start=1):
            await waiter.wait_for_work(0)  # hangs its doorbell
            waiting = asyncio.create_task(waiter.wait_for_work(10))
            await asyncio.sleep(0.1)  # longer than _doorbell._SETTLED_NS
            started = time.perf_counter()
            await publisher.publish(org.id, [event(f"evt_{n}")])
            await asyncio.wait_for(waiting, 0.5)
            assert time.perf_counter() - started < 0.5
    finally:
        await publisher.close()
        await first.close()
        await second.close()


def _hang(path: Path) -> socket.socket:
    path.parent.mkdir(parents=True, exist_ok=True)
    bell = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    bell.bind(str(path))
    return bell


async def test_a_doorbell_that_opens_removes_those_killed_processes_left_elsewhere(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Folders of databases nobody uses any more keep the sockets of processes killed outright:
    # the next doorbell to open, of any database, removes them (and the folders left empty),
    # but never a live one, which it does not wake either.
    root = Path(tempfile.mkdtemp(prefix="aw", dir="/tmp"))  # (a socket's path is short)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    users = doorbell_directory(database).parent
    killed = users / ("a" * 24) / "4242.1"
    _hang(killed).close()  # bound, then its process gone
    live = _hang(users / ("b" * 24) / "4243.1")
    live.setblocking(False)
    empty = users / ("c" * 24)
    empty.mkdir()
    try:
        bell = _doorbell.Doorbell(database)
        assert bell.open(lambda: None)
        try:
            assert not killed.parent.exists()
            assert not empty.exists()
            assert (users / ("b" * 24) / "4243.1").exists()
            with pytest.raises(BlockingIOError):
                live.recv(1)  # not rung by the look
            assert len(list(doorbell_directory(database).iterdir())) == 1  # its own
        finally:
            bell.close()
    finally:
        live.close()
        shutil.rmtree(root)
