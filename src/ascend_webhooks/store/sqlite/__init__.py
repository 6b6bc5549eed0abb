"""The embedded SQLite store: the default database, one file, no server to run.

``SQLiteStore("sqlite:///PATH")`` implements :class:`~ascend_webhooks.store.base.Store` with
the standard library's ``sqlite3`` only. The modules:

* ``_engine``: the one writer thread with group commit, the reader threads, PRAGMAs and URL
  options. Why no aiosqlite or ORM is explained there.
* ``_migrate``: ``store/migrations/sqlite/NNNN_name.sql``, applied in order under the write
  lock and recorded with a checksum in ``schema_migrations``.
* ``_claim``: fair, backlog-independent claiming (a loose index scan, round robin).
* ``_publish``: events and their deliveries, many callers' publishes per statement.
* ``_doorbell``: wake-ups for idle workers of other processes on the same file.
* ``_writes`` / ``_reads``: every other operation as a plain function on a connection.
* ``_rows``: rows to records. Times are stored as INTEGER Unix milliseconds (cheap to compare
  and index) and come back as aware UTC datetimes.

Internal INTEGER ``seq`` columns order events and deliveries; list cursors are that seq as
decimal text. Deliveries keep their endpoint's id after the endpoint is deleted (soft delete),
so their history stays readable.
"""

from __future__ import annotations

from ._migrate import SchemaError
from ._store import SQLiteStore

__all__ = ["SQLiteStore", "SchemaError"]
