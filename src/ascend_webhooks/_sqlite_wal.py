"""Switching a SQLite file to WAL mode when other processes may be opening it too.

Shared by the service's store and the receiver's idempotency store: both are opened by several
processes at once (``serve`` and its workers; gunicorn's workers).
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["set_wal"]


def set_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried for up to ``timeout`` seconds while locked.

    Switching to WAL needs a moment of exclusive access; a process opening the file at the
    same time can make it fail at once with SQLITE_BUSY, whatever the busy timeout says.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch the database to WAL mode ({mode})")
        return
