"""The SQLite store's migrations and URL: versioned files applied once, in order, recorded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ascend_webhooks.store.sqlite import SchemaError, SQLiteStore
from ascend_webhooks.store.sqlite._engine import parse_url
from ascend_webhooks.store.sqlite._migrate import (
    Migration,
    apply_migrations,
    load_migrations,
    split_statements,
)

TABLES = {
    "organizations",
    "api_tokens",
    "webhook_keys",
    "endpoints",
    "events",
    "deliveries",
    "attempts",
    "schema_migrations",
}


def tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows}


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    assert migrations[0].name == "initial"


def test_apply_once_then_nothing(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrations = load_migrations()
    assert apply_migrations(conn, migrations) == [m.version for m in migrations]
    assert tables(conn) >= TABLES
    assert apply_migrations(conn, migrations) == []
    recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
    assert recorded.fetchall() == [(m.version, m.name) for m in migrations]


def test_later_migrations_apply_in_order(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    base = load_migrations()
    apply_migrations(conn, base)
    extra = [
        Migration(len(base) + 2, "second", "ALTER TABLE probe ADD COLUMN b TEXT;"),
        Migration(len(base) + 1, "first", "CREATE TABLE probe (a TEXT);"),
    ]
    ordered = sorted(base + extra, key=lambda m: m.version)
    assert apply_migrations(conn, ordered) == [len(base) + 1, len(base) + 2]
    assert [row[1] for row in conn.execute("PRAGMA table_info(probe)")] == ["a", "b"]


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    broken = [*load_migrations(), Migration(99, "broken", "CREATE TABLE x (a);\nNOT SQL;")]
    with pytest.raises(sqlite3.OperationalError):
        apply_migrations(conn, broken)
    assert "organizations" not in tables(conn)
    assert not conn.in_transaction


def test_edited_or_unknown_migrations_are_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db", isolation_level=None)
    migrations = load_migrations()
    apply_migrations(conn, migrations)
    edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in migrations]
    with pytest.raises(SchemaError, match="changed"):
        apply_migrations(conn, edited)
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
        " VALUES (999, 'future', 'x', 0)"
    )
    with pytest.raises(SchemaError, match="newer version"):
        apply_migrations(conn, migrations)


def test_split_statements_keeps_triggers_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE a (x INTEGER);
    CREATE TRIGGER t AFTER INSERT ON a BEGIN
        UPDATE a SET x = 1;
    END;
    -- trailing comment
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].startswith("CREATE TRIGGER")
    assert statements[1].endswith("END;")
    with pytest.raises(SchemaError):
        split_statements("CREATE TABLE b (x")


def test_parse_url() -> None:
    assert parse_url("sqlite:///./ascend-webhooks.db").path == "./ascend-webhooks.db"
    absolute = parse_url("sqlite:////var/lib/aw.db")
    assert absolute.path == "/var/lib/aw.db"
    assert absolute.synchronous == "FULL"
    relaxed = parse_url("sqlite:///aw.db?synchronous=normal&busy_timeout=500")
    assert relaxed.synchronous == "NORMAL"
    assert relaxed.busy_timeout_ms == 500
    for bad in (
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite://host/aw.db",
        "postgresql:///aw",
        "sqlite:///aw.db?synchronous=maybe",
        "sqlite:///aw.db?cache=shared",
    ):
        with pytest.raises(ValueError, match=r"SQLite|sqlite|file path"):
            parse_url(bad)


@pytest.mark.parametrize(("query", "level"), [("", 2), ("?synchronous=normal", 1)])
async def test_store_connections_use_wal_and_the_chosen_sync_level(
    tmp_path: Path, query: str, level: int
) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path / 'aw.db'}{query}")
    await store.open()
    try:
        conn = store._engine._write_conn
        assert conn is not None
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    finally:
        await store.close()
    await store.close()  # closing twice is harmless


def schema(path: Path) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT type, name, coalesce(sql, '') FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' AND name != 'schema_migrations'"
        )
        return set(rows)
    finally:
        conn.close()


async def test_a_database_made_before_0001_was_edited_opens_with_the_current_schema(
    tmp_path: Path,
) -> None:
    # 0001 as released at ec49629, before cf5c04f removed an index from it in place (a copy:
    # the file as it shipped, byte for byte, since its checksum is what the database recorded).
    earlier = (Path(__file__).parent / "data" / "sqlite_0001_initial_ec49629.sql").read_text()
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    apply_migrations(conn, [Migration(1, "initial", earlier)])
    conn.close()
    assert ("index", "deliveries_status") in {(t, n) for t, n, _ in schema(old)}

    new = tmp_path / "new.db"
    for path in (old, new):
        store = SQLiteStore(f"sqlite:///{path}")
        await store.open()
        await store.close()
    assert schema(old) == schema(new)
    assert "deliveries_status" not in {name for _, name, _ in schema(old)}
