"""Switching a SQLite file to WAL mode while another process holds it for a moment."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from ascend_webhooks._sqlite_wal import set_wal


class _Connection:
    """Refuses the switch ``busy`` times, as SQLite does at once while another opens the file."""

    def __init__(self, busy: int, mode: str = "wal") -> None:
        self.busy, self.mode, self.tries = busy, mode, 0

    def execute(self, sql: str) -> Any:
        assert sql == "PRAGMA journal_mode = WAL"
        self.tries += 1
        if self.tries <= self.busy:
            raise sqlite3.OperationalError("database is locked")
        return self

    def fetchone(self) -> tuple[str]:
        return (self.mode,)


def test_a_locked_switch_is_tried_again() -> None:
    conn = _Connection(busy=3)
    set_wal(conn, timeout=5)  # type: ignore[arg-type]
    assert conn.tries == 4


def test_still_locked_after_the_timeout_raises() -> None:
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        set_wal(_Connection(busy=10**9), timeout=0.05)  # type: ignore[arg-type]


def test_a_file_that_stays_out_of_wal_mode_raises() -> None:
    with pytest.raises(sqlite3.OperationalError, match="cannot switch"):
        set_wal(_Connection(busy=0, mode="memory"), timeout=1)  # type: ignore[arg-type]
