"""The SQLite store's schema migrations: ``store/migrations/sqlite/NNNN_name.sql``, in order.

Each file is applied once, inside the same IMMEDIATE transaction as its record in
``schema_migrations`` (version, name, checksum), so a failed migration leaves no trace and two
processes opening one fresh file serialize on the write lock: the second finds the work done.
A database that was migrated by a newer release, or whose applied files were edited since, is
refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re
import sqlite3
import time
from dataclasses import dataclass

__all__ = ["Migration", "SchemaError", "apply_migrations", "load_migrations", "split_statements"]


class SchemaError(RuntimeError):
    """The database file was migrated by a different (newer or edited) version of the code."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


# Applied files that were later edited in place, as released, by version: a database that recorded
# one of these checksums is accepted, and a later migration brings it to the current schema.
# 0001 as of ec49629, before cf5c04f dropped its deliveries_status index (migration 0004 drops it).
_EARLIER_CHECKSUMS: dict[int, frozenset[str]] = {
    1: frozenset({"333d9fe5a63508312f5c5f0024ee661c45a5d783b3aee599c3ce1f5b9fcf11a4"}),
}

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


def load_migrations() -> list[Migration]:
    """The SQL files of ``store/migrations/sqlite``, in version order."""
    folder = importlib.resources.files("ascend_webhooks.store").joinpath("migrations", "sqlite")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            sql = entry.read_text(encoding="utf-8")
            found.append(Migration(int(match.group(1)), match.group(2), sql))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise SchemaError(f"two SQLite migrations share a version: {versions}")
    return found


def split_statements(sql: str) -> list[str]:
    """Split a script into statements (``executescript`` would COMMIT our transaction)."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            if current.strip():
                statements.append(current.strip())
            current = ""
    if current.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in current.splitlines()
    ):
        raise SchemaError(f"incomplete SQL statement at the end of a migration: {current!r}")
    return statements


def apply_migrations(conn: sqlite3.Connection, migrations: list[Migration]) -> list[int]:
    """Apply the missing migrations in one IMMEDIATE transaction; return the versions applied.

    The write lock is taken before reading ``schema_migrations``, so two processes opening the
    same file at once serialize here: the second finds everything applied and does nothing.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
            " applied_at INTEGER NOT NULL)"
        )
        applied = {
            row[0]: (row[1], row[2])
            for row in conn.execute("SELECT version, name, checksum FROM schema_migrations")
        }
        known = {m.version: m for m in migrations}
        unknown = sorted(set(applied) - set(known))
        if unknown:
            raise SchemaError(
                f"the database has schema versions {unknown} that this release does not know: "
                "it was opened by a newer version of ascend-webhooks"
            )
        done = []
        for migration in migrations:
            if migration.version in applied:
                checksum = applied[migration.version][1]
                earlier = _EARLIER_CHECKSUMS.get(migration.version, frozenset())
                if checksum != migration.checksum and checksum not in earlier:
                    raise SchemaError(
                        f"migration {migration.version} ({migration.name}) changed after it was "
                        "applied to this database"
                    )
                continue
            for statement in split_statements(migration.sql):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (migration.version, migration.name, migration.checksum, int(time.time() * 1000)),
            )
            done.append(migration.version)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return done
