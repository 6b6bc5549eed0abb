"""Throw-away PostgreSQL databases for tests, found through the libpq variables.

``PGHOST``, ``PGPORT``, ``PGUSER`` (and friends) say where the server is, as for psql. Where
none answers, tests that need it are skipped with the reason, except under ``CI=true``, where
a missing PostgreSQL fails the run.
"""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest

_ADMIN_DB = os.environ.get("PGDATABASE", "postgres")


def url_for(database: str) -> str:
    """A ``postgresql://`` URL for ``database`` on the server the libpq variables name."""
    return f"postgresql:///{database}"


async def _admin() -> asyncpg.Connection:
    try:
        return await asyncpg.connect(database=_ADMIN_DB, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL is not reachable through the libpq variables: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


async def create_database() -> str:
    """Create an empty database and return its URL."""
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    conn = await _admin()
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url_for(name)


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`, closing its remaining sessions."""
    name = url.rsplit("/", 1)[1]
    conn = await _admin()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
