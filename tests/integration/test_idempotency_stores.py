"""One behaviour suite for every idempotency store, on real SQLite files and a real Redis.

Redis is found at 127.0.0.1:6379; where none answers the Redis cases are skipped with the
reason, except under ``CI=true``, where a missing Redis is a failure. Each test uses its own key
prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from ascend_webhooks.receiver import (
    AsyncRedisIdempotencyStore,
    Claim,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
    SQLiteIdempotencyStore,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip() -> Any:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        reason = f"no Redis at {REDIS_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return client


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    client = _redis_or_skip()
    prefix = f"ascend-webhooks-test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


class Backend:
    """Builds stores on one shared backend and moves its time forward."""

    def __init__(
        self,
        make: Callable[..., IdempotencyStore],
        advance: Callable[[float], None],
        close: Callable[[], None],
    ) -> None:
        self._make = make
        self.advance = advance
        self._close = close
        self._stores: list[IdempotencyStore] = []

    def store(self, **options: Any) -> IdempotencyStore:
        store = self._make(**options)
        self._stores.append(store)
        return store

    def close(self) -> None:
        for store in self._stores:
            close = getattr(store, "close", None)
            if close is not None:
                close()
        self._close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every store."""
    yield from _backend(request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The stores that several processes share."""
    yield from _backend(request, tmp_path)


def _backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        clock = Clock()
        # Memory is one process: every "store object" of the backend is the same store.
        shared: dict[str, MemoryIdempotencyStore] = {}

        def make_memory(**options: Any) -> IdempotencyStore:
            if "store" not in shared:
                shared["store"] = MemoryIdempotencyStore(clock=clock, **options)
            return shared["store"]

        backend = Backend(make_memory, clock.advance, lambda: None)
    elif request.param == "sqlite":
        clock = Clock()
        path = tmp_path / "idempotency.db"
        backend = Backend(
            lambda **o: SQLiteIdempotencyStore(path, clock=clock, **o), clock.advance, lambda: None
        )
    else:
        import redis

        prefix = request.getfixturevalue("redis_prefix")

        def make_redis(**options: Any) -> IdempotencyStore:
            return RedisIdempotencyStore(redis.Redis.from_url(REDIS_URL), prefix=prefix, **options)

        # Redis keeps time itself: expiry is real, so the suite uses sub-second limits.
        backend = Backend(make_redis, time.sleep, lambda: None)
    try:
        yield backend
    finally:
        backend.close()


def _makers(tmp_path: Path) -> dict[str, Callable[..., object]]:
    """Each kind of store, made with the options given. (No Redis server is needed while the
    clients are not used.)"""
    import redis
    import redis.asyncio

    return {
        "memory": MemoryIdempotencyStore,
        "sqlite": lambda **o: SQLiteIdempotencyStore(tmp_path / "idempotency.db", **o),
        "redis": lambda **o: RedisIdempotencyStore(redis.Redis.from_url(REDIS_URL), **o),
        "async redis": lambda **o: AsyncRedisIdempotencyStore(
            redis.asyncio.Redis.from_url(REDIS_URL), **o
        ),
    }


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("name", ["processing_ttl", "done_ttl"])
@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "async redis"])
def test_every_store_refuses_a_limit_that_is_not_a_finite_number(
    kind: str, name: str, value: float, tmp_path: Path
) -> None:
    # An infinite done_ttl worked in memory and in SQLite, and was an OverflowError in Redis
    # (a whole number of milliseconds): now every store refuses it alike.
    make = _makers(tmp_path)
    message = f"{name} must be a positive, finite number of seconds, not {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        make[kind](**{name: value})
    assert not (tmp_path / "idempotency.db").exists()  # refused before anything was made


@pytest.mark.parametrize("kind", ["memory", "sqlite", "redis", "async redis"])
def test_every_store_refuses_a_limit_beyond_a_century(kind: str, tmp_path: Path) -> None:
    # 1e16 s was taken by every store, and Redis refused its expiry only when the first event
    # was completed (milliseconds past 64 bits): the handled event stayed "processing".
    make = _makers(tmp_path)
    with pytest.raises(ValueError, match=r"done_ttl must be at most 100 years"):
        make[kind](done_ttl=1e16)
    make[kind](done_ttl=100 * 365.25 * 86400)  # a century exactly is taken


# -- the behaviour suite ------------------------------------------------------------------


def test_a_claimed_id_is_in_progress_then_done(backend: Backend) -> None:
    store = backend.store()
    assert store.claim("evt_1") is Claim.ACQUIRED
    assert store.claim("evt_1") is Claim.IN_PROGRESS
    store.complete("evt_1")
    assert store.claim("evt_1") is Claim.DONE
    assert store.claim("evt_2") is Claim.ACQUIRED


def test_release_lets_the_retry_run_again(backend: Backend) -> None:
    store = backend.store()
    assert store.claim("evt_1")
    store.release("evt_1")
    assert store.claim("evt_1") is Claim.ACQUIRED
    store.complete("evt_1")
    store.release("evt_1")  # releasing a handled event changes nothing
    assert store.claim("evt_1") is Claim.DONE


def test_a_second_store_object_sees_the_first_ones_claims(backend: Backend) -> None:
    first, second = backend.store(), backend.store()
    assert first.claim("evt_1")
    assert second.claim("evt_1") is Claim.IN_PROGRESS
    first.complete("evt_1")
    assert second.claim("evt_1") is Claim.DONE


def test_an_abandoned_claim_expires(backend: Backend) -> None:
    store = backend.store(processing_ttl=0.3, done_ttl=60)
    assert store.claim("evt_1")
    assert store.claim("evt_1") is Claim.IN_PROGRESS
    backend.advance(0.5)
    assert store.claim("evt_1") is Claim.ACQUIRED


def test_done_is_remembered_for_done_ttl_only(backend: Backend) -> None:
    store = backend.store(processing_ttl=60, done_ttl=0.3)
    assert store.claim("evt_1")
    store.complete("evt_1")
    assert store.claim("evt_1") is Claim.DONE
    backend.advance(0.5)
    assert store.claim("evt_1") is Claim.ACQUIRED


def test_a_late_release_never_erases_a_newer_claim(shared_backend: Backend) -> None:
    slow = shared_backend.store(processing_ttl=0.3, done_ttl=60)
    other = shared_backend.store(processing_ttl=60, done_ttl=60)
    assert slow.claim("evt_1")
    shared_backend.advance(0.5)  # slow's lease ran out while its handler was still running ...
    assert other.claim("evt_1") is Claim.ACQUIRED  # ... and a retry took the event over
    slow.release("evt_1")  # slow's handler fails: it must not free other's claim
    assert other.claim("evt_1") is Claim.IN_PROGRESS


def test_a_late_release_never_erases_a_newer_claim_of_the_same_store(backend: Backend) -> None:
    # The receiver shares one store among all its requests: the first delivery's lease ran
    # out while its handler still ran, a retry took the event over through the same store
    # object, then the first handler failed. Its release must leave the retry's claim, or a
    # third delivery would run the handlers beside the retry's.
    store = backend.store(processing_ttl=0.3, done_ttl=60)
    assert store.claim("evt_1")  # the first delivery
    backend.advance(0.5)
    assert store.claim("evt_1") is Claim.ACQUIRED  # the retry, its lease still running
    store.release("evt_1")  # the first delivery's handler fails
    assert store.claim("evt_1") is Claim.IN_PROGRESS  # a third delivery waits
    store.release("evt_1")  # the retry fails too: now the event is free again
    assert store.claim("evt_1") is Claim.ACQUIRED


_FORKED = """
import os, sys
from ascend_webhooks.receiver import Claim, SQLiteIdempotencyStore
store = SQLiteIdempotencyStore(sys.argv[1])  # made before the workers fork (--preload)
store.claim("evt_0")  # the parent uses its connection too
def worker(step):
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            code = step()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]
def first():  # takes the event, and is still handling it
    return 0 if store.claim("evt_1") is Claim.ACQUIRED else 1
def second():  # a retry: in progress elsewhere; then it gives up and releases
    if store.claim("evt_1") is not Claim.IN_PROGRESS:
        return 2
    store.release("evt_1")
    return 0
def third():  # the first worker's claim still stands
    return 0 if store.claim("evt_1") is Claim.IN_PROGRESS else 3
print([worker(step) for step in (first, second, third)])
"""


def test_workers_forked_from_one_store_keep_their_claims_apart(tmp_path: Path) -> None:
    # gunicorn --preload builds the app, and so the store, before forking its workers: each
    # worker opens a connection of its own, and a release in one never frees another's claim.
    out = subprocess.run(
        [sys.executable, "-c", _FORKED, str(tmp_path / "forked.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[0, 0, 0]", out.stderr


def test_many_threads_one_winner_per_id(backend: Backend) -> None:
    stores = [backend.store() for _ in range(4)]
    barrier = threading.Barrier(4)

    def contend(store: IdempotencyStore) -> list[Claim]:
        barrier.wait()
        return [store.claim(f"evt_{n}") for n in range(100)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(contend, stores))
    for n in range(100):
        assert [r[n] for r in results].count(Claim.ACQUIRED) == 1


# -- SQLite specifics ------------------------------------------------------------------------

_CLAIMER = """
import json, os, sys, time
from ascend_webhooks.receiver import SQLiteIdempotencyStore
path, go, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLiteIdempotencyStore(path)
while not os.path.exists(go):
    time.sleep(0.005)
won = []
for n in range(count):
    if store.claim(f"evt_{n}"):
        won.append(n)
        store.complete(f"evt_{n}")
store.close()
print(json.dumps(won))
"""


def test_sqlite_processes_sharing_a_file_never_claim_one_id_twice(tmp_path: Path) -> None:
    path, go = tmp_path / "shared.db", tmp_path / "go"
    # No store has opened the file yet: the three also race to create it.
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLAIMER, str(path), str(go), "150"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    time.sleep(0.3)  # let all three start before any claims
    go.touch()
    won: list[int] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        won.extend(json.loads(out))
    assert sorted(won) == list(range(150))
    with SQLiteIdempotencyStore(path) as store:
        assert store.claim("evt_42") is Claim.DONE


_OPENER = """
import os, sys, time
from ascend_webhooks.receiver import SQLiteIdempotencyStore
folder, rounds = sys.argv[1], int(sys.argv[2])
for n in range(rounds):
    while not os.path.exists(os.path.join(folder, f"go-{n}")):
        time.sleep(0.001)
    SQLiteIdempotencyStore(os.path.join(folder, f"new-{n}.db")).close()
"""


def test_sqlite_workers_opening_a_new_file_at_once_all_start(tmp_path: Path) -> None:
    # gunicorn's workers each open the store as they boot: the first ones race to switch the
    # new file to WAL, which SQLite can refuse at once ("database is locked") whatever the
    # busy timeout; a worker failing there fails to boot. Twelve workers, ten new files.
    rounds = 10
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _OPENER, str(tmp_path), str(rounds)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(12)
    ]
    time.sleep(1.0)  # every worker started and waiting
    for n in range(rounds):
        (tmp_path / f"go-{n}").touch()
        time.sleep(0.2)
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err


def test_sqlite_uses_wal_and_purges_expired_rows(tmp_path: Path) -> None:
    import sqlite3

    clock = Clock()
    path = tmp_path / "wal.db"
    with SQLiteIdempotencyStore(path, processing_ttl=1, done_ttl=1, clock=clock) as store:
        for n in range(5):
            store.claim(f"evt_{n}")
        clock.advance(2)
        assert store.purge() == 5
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()


def test_sqlite_refuses_a_table_name_that_is_not_an_identifier(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="identifier"):
        SQLiteIdempotencyStore(tmp_path / "x.db", table="events; DROP TABLE users")


# -- Redis, async ----------------------------------------------------------------------------


@pytest.fixture
async def async_redis_stores(redis_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[AsyncRedisIdempotencyStore] = []

    def make(**options: Any) -> AsyncRedisIdempotencyStore:
        store = AsyncRedisIdempotencyStore.from_url(REDIS_URL, prefix=redis_prefix, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


async def test_async_redis_store_follows_the_protocol(
    async_redis_stores: Callable[..., AsyncRedisIdempotencyStore],
) -> None:
    store, other = async_redis_stores(), async_redis_stores()
    assert await store.claim("evt_1") is Claim.ACQUIRED
    assert await other.claim("evt_1") is Claim.IN_PROGRESS
    await other.release("evt_1")  # not other's claim: nothing changes
    assert await store.claim("evt_1") is Claim.IN_PROGRESS
    await store.release("evt_1")
    assert await other.claim("evt_1") is Claim.ACQUIRED
    await other.complete("evt_1")
    assert await store.claim("evt_1") is Claim.DONE


async def test_async_redis_claims_expire(
    async_redis_stores: Callable[..., AsyncRedisIdempotencyStore],
) -> None:
    store = async_redis_stores(processing_ttl=0.2)
    assert await store.claim("evt_1")
    await asyncio.sleep(0.3)  # Redis expires the key on its own clock
    assert await store.claim("evt_1") is Claim.ACQUIRED
    await store.release("evt_1")  # the first, late: the retry's claim stands
    assert await store.claim("evt_1") is Claim.IN_PROGRESS


def test_redis_keys_live_under_the_prefix_with_a_ttl(redis_prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        store = RedisIdempotencyStore(client, prefix=redis_prefix, processing_ttl=30, done_ttl=90)
        store.claim("evt_1")
        assert 0 < client.pttl(redis_prefix + "evt_1") <= 30_000
        store.complete("evt_1")
        assert 30_000 < client.pttl(redis_prefix + "evt_1") <= 90_000
    finally:
        client.close()
