"""Idempotency on one machine: a SQLite file shared by every process that opens it.

Standard library only (``sqlite3``). The file is in WAL mode so readers never block the writer,
and each claim is one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`` inside a
``BEGIN IMMEDIATE`` transaction, so two processes can never both take the same id. Expired rows
are swept now and then by the claims themselves (or by :meth:`purge`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from types import TracebackType

from .._sqlite_wal import set_wal
from ._claims import DEFAULT_DONE_TTL, DEFAULT_PROCESSING_TTL, Claim, ClaimTokens, check_ttls

__all__ = ["SQLiteIdempotencyStore"]

# The table name is the only text spliced into SQL (the "noqa: S608" below): it is checked
# against this pattern; every value is a bound parameter.
_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SWEEP_EVERY = 1000  # claims between two sweeps of expired rows


class SQLiteIdempotencyStore:
    """Event ids in a SQLite file: safe across the threads and processes of one machine."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        processing_ttl: float = DEFAULT_PROCESSING_TTL,
        done_ttl: float = DEFAULT_DONE_TTL,
        table: str = "ascend_webhook_events",
        busy_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_ttls(processing_ttl, done_ttl)
        if not _TABLE_NAME.match(table):
            raise ValueError(f"table must be a plain SQL identifier, not {table!r}")
        self._processing_ttl = processing_ttl
        self._done_ttl = done_ttl
        self._table = table
        # Wall-clock time: the expiry times are shared with other processes.
        self._clock = clock
        self._tokens = ClaimTokens()
        self._claims = 0
        # One connection, serialised by a lock: each operation is a few microseconds, and a
        # sqlite3 connection must not be used by two threads at once.
        self._path, self._busy_timeout = os.fspath(path), busy_timeout
        self._lock = threading.Lock()
        self._inherited: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            set_wal(db, self._busy_timeout)  # (retried: gunicorn's workers open it at once)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {self._table} ("
                " event_id TEXT PRIMARY KEY,"
                " state TEXT NOT NULL CHECK (state IN ('processing', 'done')),"
                " owner TEXT,"
                " expires_at REAL NOT NULL)"
            )
            db.execute(
                f"CREATE INDEX IF NOT EXISTS {self._table}_expires_at ON {self._table} (expires_at)"
            )
        except BaseException:
            db.close()
            raise
        return db

    def _conn(self) -> sqlite3.Connection:
        """This process's connection (with the lock held). A store made before a fork
        (``gunicorn --preload`` builds the app, and the store, in its master) holds the
        parent's connection, which SQLite forbids a child to use (its locks are the
        parent's): the child leaves it alone, not even closed, and opens its own."""
        if self._pid != os.getpid():
            self._inherited.append(self._db)
            self._db = self._open()
            self._pid = os.getpid()
        return self._db

    def claim(self, event_id: str) -> Claim:
        """Atomically take ``event_id`` if nobody holds it and it was not handled."""
        token = self._tokens.new(event_id)
        try:
            claim = self._claim(event_id, token)
        except BaseException:
            self._tokens.forget(event_id, token)
            raise
        if claim is not Claim.ACQUIRED:
            self._tokens.forget(event_id, token)
        return claim

    def _claim(self, event_id: str, token: str) -> Claim:
        now = self._clock()
        t = self._table
        with self._lock, _transaction(db := self._conn()):
            cursor = db.execute(
                f"INSERT INTO {t} (event_id, state, owner, expires_at)"  # noqa: S608
                " VALUES (?, 'processing', ?, ?)"
                " ON CONFLICT (event_id) DO UPDATE"
                " SET state = 'processing', owner = excluded.owner,"
                " expires_at = excluded.expires_at"
                f" WHERE {t}.expires_at <= ?",
                (event_id, token, now + self._processing_ttl, now),
            )
            if cursor.rowcount == 1:
                self._claims += 1
                if self._claims % _SWEEP_EVERY == 0:
                    db.execute(f"DELETE FROM {t} WHERE expires_at <= ?", (now,))  # noqa: S608
                return Claim.ACQUIRED
            row = db.execute(
                f"SELECT state FROM {t} WHERE event_id = ?",  # noqa: S608
                (event_id,),
            ).fetchone()
        return Claim.DONE if row is not None and row[0] == "done" else Claim.IN_PROGRESS

    def complete(self, event_id: str) -> None:
        """Mark ``event_id`` handled: later claims return :attr:`Claim.DONE`."""
        self._tokens.end(event_id)
        with self._lock:
            self._conn().execute(
                f"INSERT INTO {self._table} (event_id, state, owner, expires_at)"  # noqa: S608
                " VALUES (?, 'done', NULL, ?)"
                " ON CONFLICT (event_id) DO UPDATE"
                " SET state = 'done', owner = NULL, expires_at = excluded.expires_at",
                (event_id, self._clock() + self._done_ttl),
            )

    def release(self, event_id: str) -> None:
        """Drop this store's oldest "processing" claim on ``event_id`` (if it still holds it)
        so a retry can take it."""
        token = self._tokens.end(event_id)
        if token is None:
            return
        with self._lock:
            self._conn().execute(
                f"DELETE FROM {self._table}"  # noqa: S608
                " WHERE event_id = ? AND state = 'processing' AND owner = ?",
                (event_id, token),
            )

    def purge(self) -> int:
        """Delete every expired row now; returns how many went."""
        with self._lock:
            cursor = self._conn().execute(
                f"DELETE FROM {self._table} WHERE expires_at <= ?",  # noqa: S608
                (self._clock(),),
            )
            return cursor.rowcount

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SQLiteIdempotencyStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK``): takes the write lock up front."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
