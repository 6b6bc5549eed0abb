"""How the SQLite store talks to its file: one writer thread with group commit, reader threads.

Why this shape, and not aiosqlite or an ORM:

* SQLite admits one writer at a time per file anyway. A dedicated thread owns the single write
  connection; coroutines hand it small closures (``submit``) and await a future, so the event
  loop never blocks on disk I/O or on the file lock.
* **Group commit.** Whatever callers queued while the previous transaction was committing is
  drained and run in ONE transaction, with one fsync for all of them. Each closure runs inside
  its own SAVEPOINT, so one caller's failure (an ``EventConflictError``, say) rolls back only
  that caller's changes; the others still commit. A closure alone in its transaction (the
  worker's claims and outcomes mostly are) runs without one: its failure rolls back the
  transaction, which holds nothing else, and the two statements a SAVEPOINT costs are saved.
  Futures are resolved only after COMMIT returned: a ``publish`` that returned is on disk.
  aiosqlite runs each call as its own round-trip on its own thread with no way to batch
  transactions across callers, and an ORM adds per-row object overhead we do not want on a
  path meant for thousands of publishes a second.
* Publishes queued together go further: they are validated one by one (a conflict fails
  only its caller, before anything is written) and then inserted with a few multi-row INSERTs
  per table for the whole batch (``GroupJob``), so a publish costs a few microseconds of Python
  rather than a handful of statements.
* Reads run on a small pool of reader threads, each with its own connection. In WAL mode they
  read the last committed snapshot beside the writer without waiting for it.

Migrations are in ``_migrate``. PRAGMAs:

* ``journal_mode=WAL``: readers beside the writer, sequential appends.
* ``synchronous=FULL`` by default: the WAL is fsynced at every commit, so an accepted event
  survives a power cut, not just a process crash. ``?synchronous=normal`` in the URL trades
  that for speed (still safe when a process crashes; an OS crash or power cut may lose the
  last commits). Group commit is what keeps FULL affordable: one fsync per batch.
  Jobs submitted with ``durable=False`` (the worker's claims, outcomes, lease changes) are
  committed apart from the others, first, with ``synchronous=NORMAL``: no fsync of their own. That
  is safe because every durable commit (a publish, any API write) fsyncs the WAL up to its end,
  and with it every relaxed commit before it; an OS crash or power cut can lose only relaxed
  commits made after the last durable one, never an accepted event. Losing those means a delivery
  is claimed and attempted again (at-least-once allows a repeat; the receiver's idempotency by
  event id absorbs it), never that an event is lost. A process crash loses nothing either way: the
  WAL is in the OS's page cache.
* ``busy_timeout`` (``?busy_timeout=MS``, default 30 s) makes a second process wait for the
  file lock instead of failing; ``foreign_keys`` keeps references honest.
* ``temp_store=MEMORY`` on the writer: the statement journal of a grouped transaction's
  SAVEPOINT stays in memory. By default SQLite created and unlinked a file for it in the
  temporary directory in almost every such transaction.

**Processes writing one file** (``serve --delivery-processes``, workers beside ``serve``): SQLite
makes a writer that finds the file locked sleep and try again, 1, 2, 5, 10 … up to 100 ms at
a time, so a claim queued behind another process's 1,000-event publish slept for several
times as long as that publish held the lock (measured: a delivery process spent half its time
in ``BEGIN IMMEDIATE``). Each writer thread therefore first takes an exclusive ``flock`` on
``<database>-writer``: the kernel wakes the next writer the moment the lock is free, and SQLite
then finds the file unlocked. One process alone pays two uncontended system calls per
transaction. Where ``flock`` does not exist (Windows), SQLite's own waiting remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qsl, urlsplit

from ..._sqlite_wal import set_wal
from ._migrate import apply_migrations, load_migrations

__all__ = [
    "Engine",
    "EngineClosedError",
    "GroupJob",
    "SQLiteOptions",
    "connect",
    "parse_url",
]

T = TypeVar("T")

_SYNCHRONOUS = {"off": "OFF", "normal": "NORMAL", "full": "FULL", "extra": "EXTRA"}
_DEFAULT_BUSY_TIMEOUT_MS = 30_000
_MAX_BATCH = 2_000  # closures per transaction: bounds the latency one commit adds to others
# Rows (GroupJob.weight, 1 for a plain closure) per durable transaction. Between two, the
# worker's queued claims and outcomes run: four 1,000-event publishes in one transaction held
# them back for ~100 ms at a time, and delivery all but stopped while a burst was published.
_MAX_WEIGHT = 1_000
_READERS = 2


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, if it does not exist yet.

    It holds every organization's events, endpoint URLs (often with credentials in them) and
    receivers' answers; sqlite3 would create it under the process's umask (usually readable by
    every user of the machine). SQLite gives its -wal and -shm files the database's mode. An
    existing file keeps the mode its owner chose; any other failure (no such folder, no right
    to write there) is left for sqlite3 to report as it always has.
    """
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))


class EngineClosedError(RuntimeError):
    """A call reached the store before ``open()`` or after ``close()``."""


@dataclass(frozen=True, slots=True)
class SQLiteOptions:
    """What a ``sqlite:///PATH?synchronous=normal&busy_timeout=MS`` URL says."""

    path: str
    synchronous: str = "FULL"
    busy_timeout_ms: int = _DEFAULT_BUSY_TIMEOUT_MS


def parse_url(url: str) -> SQLiteOptions:
    """Parse a ``sqlite:///PATH`` URL; raises ValueError naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not parts.path.startswith("/"):
        raise ValueError(f"not a SQLite URL {url!r}: use sqlite:///relative/path or sqlite:////abs")
    path = parts.path[1:]
    if not path or path == ":memory:":
        raise ValueError("the SQLite store needs a file path (several connections share it)")
    synchronous, busy = "FULL", _DEFAULT_BUSY_TIMEOUT_MS
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "synchronous" and value.lower() in _SYNCHRONOUS:
            synchronous = _SYNCHRONOUS[value.lower()]
        elif name == "busy_timeout" and value.isdigit():
            busy = int(value)
        else:
            raise ValueError(
                f"unsupported SQLite URL option {name}={value!r}: "
                "use synchronous=full|normal|extra or busy_timeout=MILLISECONDS"
            )
    return SQLiteOptions(path=path, synchronous=synchronous, busy_timeout_ms=busy)


def connect(options: SQLiteOptions, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection in manual-transaction mode with the store's PRAGMAs applied."""
    if not readonly:
        _create_private(options.path)
    conn = sqlite3.connect(
        options.path,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # each connection is used by one thread at a time
        cached_statements=256,
        timeout=options.busy_timeout_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {options.busy_timeout_ms}")
    set_wal(conn, options.busy_timeout_ms / 1000)
    conn.execute(f"PRAGMA synchronous = {options.synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    # After a checkpoint, shrink a WAL that a burst made large instead of keeping it on disk.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        # (temp_store, see above: five system calls fewer per grouped transaction; single
        # publishes +5-22 % in bench/profile_publish.py, every round)
        conn.execute("PRAGMA temp_store = MEMORY")
    return conn


class _WriterLock:
    """An exclusive ``flock`` that the writer threads of every process on one file take in turn.

    Free, it is taken at once (one system call). Held by another process, a waiter thread
    blocks in ``flock`` for it, so that the kernel wakes it the moment the lock is let go,
    while the writer waits at most the busy timeout, as SQLite would have made it: then its
    transaction fails with "database is locked" instead of hanging behind a process that is
    stopped, and the waiter lets go of the lock as soon as it gets it.
    """

    def __init__(self, database_path: str, timeout: float) -> None:
        self._fd: int | None = None
        self._timeout = timeout
        self._waits: queue.SimpleQueue[_LockWait] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: SQLite's busy waiting alone
            return
        self._flock = fcntl.flock
        self._exclusive, self._unlock = fcntl.LOCK_EX, fcntl.LOCK_UN
        self._nonblocking = fcntl.LOCK_EX | fcntl.LOCK_NB
        self._fd = os.open(f"{database_path}-writer", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def acquire(self) -> None:
        """Take the lock; sqlite3.OperationalError if another process held it too long."""
        fd = self._fd
        if fd is None:
            return
        try:
            self._flock(fd, self._nonblocking)
            return
        except BlockingIOError:
            pass
        if self._waiter is None:
            self._waiter = threading.Thread(
                target=self._wait_loop, name="ascend-webhooks-sqlite-lock", daemon=True
            )
            self._waiter.start()
        wait = _LockWait()
        self._waits.put(wait)
        if wait.taken.wait(self._timeout):
            return
        with wait.guard:
            if wait.taken.is_set():
                return
            wait.abandoned = True
        raise sqlite3.OperationalError(
            f"database is locked (another process's writer held it over {self._timeout:g} s)"
        )

    def release(self) -> None:
        if self._fd is not None:
            self._flock(self._fd, self._unlock)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # (closing also releases a lock still held)
            self._fd = None
        if self._waiter is not None:
            self._waits.put(_LockWait())  # wakes the waiter thread, which sees the lock closed
            self._waiter = None

    def _wait_loop(self) -> None:
        while True:
            wait = self._waits.get()
            fd = self._fd
            if fd is None:
                return
            try:
                self._flock(fd, self._exclusive)  # blocks with the GIL released
            except OSError:  # closed meanwhile: the store is stopping
                return
            with wait.guard:
                if wait.abandoned:
                    self._flock(fd, self._unlock)
                else:
                    wait.taken.set()


@dataclass(slots=True)
class _LockWait:
    taken: threading.Event = field(default_factory=threading.Event)
    guard: threading.Lock = field(default_factory=threading.Lock)
    abandoned: bool = False


# -- the engine ------------------------------------------------------------------------------

A = TypeVar("A")


@dataclass(frozen=True, slots=True)
class GroupJob(Generic[A]):
    """A write that may run together with the queued writes of the same ``run_group``.

    ``run_group(conn, args)`` returns ``(True, result)`` or ``(False, StoreError)`` per
    argument, and must write nothing for an argument it fails. If it raises, its writes are
    rolled back and each job runs alone, as a plain call.
    """

    run_group: Callable[[sqlite3.Connection, list[A]], list[tuple[bool, Any]]]
    arg: A
    weight: int = 1  # rows it writes, about: durable transactions are cut at _MAX_WEIGHT

    def __call__(self, conn: sqlite3.Connection) -> Any:
        ((ok, value),) = self.run_group(conn, [self.arg])
        if not ok:
            raise value
        return value


_Job = tuple[
    Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop, bool
]


class Engine:
    """The writer thread (group commit) and the reader pool of one database file."""

    def __init__(self, options: SQLiteOptions) -> None:
        self.options = options
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._write_conn: sqlite3.Connection | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._watch: sqlite3.Connection | None = None
        self._watch_lock = threading.Lock()
        self._writer_lock: _WriterLock | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Open the write connection, migrate, start the writer thread (call in a thread)."""
        conn = connect(self.options)
        try:
            apply_migrations(conn, load_migrations())
        except BaseException:
            conn.close()
            raise
        self._write_conn = conn
        self._writer_lock = _WriterLock(self.options.path, self.options.busy_timeout_ms / 1000)
        self._writer = threading.Thread(
            target=self._run_writer, name="ascend-webhooks-sqlite-writer", daemon=True
        )
        self._writer.start()
        self._readers = ThreadPoolExecutor(_READERS, thread_name_prefix="ascend-webhooks-sqlite")

    def stop(self) -> None:
        """Finish queued writes, then close every connection (call in a thread)."""
        writer, self._writer = self._writer, None  # new writes fail from here on
        if writer is not None:
            self._jobs.put(None)
            writer.join()
            # A write queued in the instant between its check and the stop: fail it, never hang.
            closed = EngineClosedError("the SQLite store closed before this write ran")
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    with contextlib.suppress(RuntimeError):
                        job[2].call_soon_threadsafe(_resolve_all, [(job[1], False, closed)])
        readers, self._readers = self._readers, None
        if readers is not None:
            readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._write_conn is not None:
            with contextlib.suppress(sqlite3.Error):  # refresh planner statistics, cheaply
                self._write_conn.execute("PRAGMA optimize")
            self._write_conn.close()
            self._write_conn = None
        if self._writer_lock is not None:
            self._writer_lock.close()
            self._writer_lock = None

    # -- writes ------------------------------------------------------------------------------

    def submit(
        self, job: Callable[[sqlite3.Connection], T], *, durable: bool = True
    ) -> asyncio.Future[T]:
        """Queue ``job`` for the writer; the future resolves after its transaction commits.

        ``durable=False``: the job may commit without an fsync of its own (see the module
        docstring); only for writes whose loss at a power cut means a repeated attempt.
        """
        if self._writer is None:
            raise EngineClosedError("the SQLite store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, future, loop, durable))
        return future

    def _run_writer(self) -> None:
        conn, lock = self._write_conn, self._writer_lock
        assert conn is not None
        assert lock is not None
        relaxable = self.options.synchronous in ("FULL", "EXTRA")
        relaxed = False
        durable: deque[_Job] = deque()  # queued durable jobs, in order of arrival
        stop = False
        while True:
            if not durable and not stop:
                first = self._jobs.get()
                if first is None:
                    return
                incoming = [first]
            else:
                incoming = []
            while not stop and len(incoming) < _MAX_BATCH:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                incoming.append(job)
            # Relaxed jobs (the worker's) first, in a transaction of their own: a claim never
            # waits for the fsync of the publishes queued beside it, nor for more than one
            # durable transaction of at most _MAX_WEIGHT rows.
            light = [queued for queued in incoming if not queued[3]]
            durable.extend(queued for queued in incoming if queued[3])
            parts: list[tuple[list[_Job], bool]] = [(light, False)]
            if durable:
                chunk = [durable.popleft()]
                weight = _weight(chunk[0])
                while durable and weight + _weight(durable[0]) <= _MAX_WEIGHT:
                    weight += _weight(durable[0])
                    chunk.append(durable.popleft())
                parts.append((chunk, True))
            for jobs, is_durable in parts:
                if not jobs:
                    continue
                if relaxable and is_durable == relaxed:  # switch only when the kind changes
                    try:
                        mode = self.options.synchronous if is_durable else "NORMAL"
                        conn.execute(f"PRAGMA synchronous = {mode}")
                        relaxed = not is_durable
                    except sqlite3.Error as exc:
                        if is_durable:  # never commit a durable write without its fsync
                            _fail_all(jobs, exc)
                            continue
                        # (staying fully synchronous for a relaxed batch only costs time)
                try:
                    lock.acquire()
                except sqlite3.OperationalError as exc:
                    _fail_all(jobs, exc)
                    continue
                try:
                    self._run_batch(conn, jobs)
                finally:
                    lock.release()
            if stop and not durable:
                return

    @staticmethod
    def _run_batch(conn: sqlite3.Connection, batch: list[_Job]) -> None:
        # (False, None) stands for "cancelled": its caller is gone, nobody would see a result.
        results: list[tuple[bool, Any]] = [(False, None)] * len(batch)
        try:
            conn.execute("BEGIN IMMEDIATE")
            if len(batch) == 1:
                # Alone in its transaction (the worker's claims and outcomes usually are): no
                # SAVEPOINT; a failure rolls back the transaction, which holds nothing else.
                job, future = batch[0][0], batch[0][1]
                try:
                    if not future.cancelled():
                        results[0] = (True, job(conn))
                except Exception as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    results[0] = (False, exc)
                else:
                    conn.execute("COMMIT")  # (raises if SQLite ended the transaction itself)
            else:
                _run_jobs(conn, batch, results)
                conn.execute("COMMIT")
        except Exception as exc:  # BEGIN or COMMIT failed: nothing of this batch is stored
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            results = [(False, exc)] * len(batch)
        _hand_back(batch, results)

    # -- reads -------------------------------------------------------------------------------

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``query`` in one read transaction (one consistent snapshot) on a reader thread."""
        readers = self._readers
        if readers is None:
            raise EngineClosedError("the SQLite store is not open")
        try:
            future = asyncio.get_running_loop().run_in_executor(readers, self._read, query)
        except RuntimeError as exc:  # shut down between the check and here
            raise EngineClosedError("the SQLite store is closing") from exc
        return await future

    def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.options, readonly=True)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return query(conn)
        finally:
            conn.execute("COMMIT")

    async def data_version(self) -> int:
        """``PRAGMA data_version`` of one dedicated connection: it changes on others' commits."""
        readers = self._readers
        if readers is None:
            raise EngineClosedError("the SQLite store is not open")
        try:
            future = asyncio.get_running_loop().run_in_executor(readers, self._data_version)
        except RuntimeError as exc:  # shut down between the check and here
            raise EngineClosedError("the SQLite store is closing") from exc
        return await future

    def _data_version(self) -> int:
        with self._watch_lock:
            if self._watch is None:
                self._watch = connect(self.options, readonly=True)
            return int(self._watch.execute("PRAGMA data_version").fetchone()[0])


def _weight(job: _Job) -> int:
    call = job[0]
    return max(1, call.weight) if isinstance(call, GroupJob) else 1


def _run_single(conn: sqlite3.Connection, job: Callable[[sqlite3.Connection], Any]) -> Any:
    conn.execute("SAVEPOINT job")
    try:
        value = job(conn)
    except Exception as exc:
        conn.execute("ROLLBACK TO job")
        conn.execute("RELEASE job")
        return (False, exc)
    conn.execute("RELEASE job")
    return (True, value)


def _run_group(
    conn: sqlite3.Connection,
    run_group: Callable[[sqlite3.Connection, list[Any]], list[tuple[bool, Any]]],
    batch: list[_Job],
    members: list[int],
    results: list[tuple[bool, Any]],
) -> bool:
    """Run same-kind jobs in one go; False (and nothing written) if they must go one by one."""
    conn.execute("SAVEPOINT grp")
    try:
        outcomes = run_group(conn, [cast(GroupJob[Any], batch[index][0]).arg for index in members])
    except Exception:
        conn.execute("ROLLBACK TO grp")
        conn.execute("RELEASE grp")
        return False
    conn.execute("RELEASE grp")
    for index, outcome in zip(members, outcomes, strict=True):
        results[index] = outcome
    return True


def _run_jobs(conn: sqlite3.Connection, batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
    """Several jobs in one transaction: same-kind groups together, each other job alone."""
    singles: list[int] = []
    groups: dict[Any, list[int]] = {}
    for index, (job, future, _loop, _durable) in enumerate(batch):
        if future.cancelled():
            continue
        if isinstance(job, GroupJob):
            groups.setdefault(job.run_group, []).append(index)
        else:
            singles.append(index)
    for run_group, members in groups.items():
        if len(members) == 1 or not _run_group(conn, run_group, batch, members, results):
            singles.extend(members)
    for index in sorted(singles):
        results[index] = _run_single(conn, batch[index][0])


def _hand_back(batch: list[_Job], results: list[tuple[bool, Any]]) -> None:
    """Resolve the batch's futures: one wake-up per event loop, not one per caller."""
    if len(batch) == 1:
        _job, future, loop, _durable = batch[0]
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed
            loop.call_soon_threadsafe(_resolve_all, [(future, *results[0])])
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for (_job, future, loop, _durable), (ok, value) in zip(batch, results, strict=True):
        by_loop.setdefault(loop, []).append((future, ok, value))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed
            loop.call_soon_threadsafe(_resolve_all, outcomes)


def _fail_all(batch: list[_Job], exc: Exception) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
    for _job, future, loop, _durable in batch:
        by_loop.setdefault(loop, []).append((future, False, exc))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed
            loop.call_soon_threadsafe(_resolve_all, outcomes)


def _resolve_all(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in outcomes:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        elif value is None:
            future.cancel()
        else:
            future.set_exception(value)
