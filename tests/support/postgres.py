"""Throw-away PostgreSQL databases for tests, found through the libpq variables.

``PGHOST``, ``PGPORT``, ``PGUSER`` (and friends) say where the server is, as for psql. Where
none answers, tests that need it are skipped with the reason, except under ``CI=true``, where
a missing PostgreSQL fails the run.

Speed: migrating a fresh database costs far more than copying one, so the first test migrates a
template database named after a hash of the migration files, and every test gets
``CREATE DATABASE … TEMPLATE`` of it. The template outlives the run (a later run with the same
migrations reuses it; changed migrations get a new name), and is published by a rename only once
fully migrated, so concurrent test runs never see a half-built one.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import os
import shutil
import subprocess
import uuid

import asyncpg
import pytest

from ascend_webhooks.store.models import NewEvent

_ADMIN_DB = os.environ.get("PGDATABASE", "postgres")


def url_for(database: str) -> str:
    """A ``postgresql://`` URL for ``database`` on the server the libpq variables name."""
    return f"postgresql:///{database}"


async def admin_connection() -> asyncpg.Connection:
    """A connection to the maintenance database; skips (or fails under CI) if none answers."""
    try:
        return await asyncpg.connect(database=_ADMIN_DB, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        reason = f"PostgreSQL is not reachable through the libpq variables: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


def _template_name() -> str:
    folder = importlib.resources.files("ascend_webhooks.store") / "migrations" / "postgres"
    digest = hashlib.sha256()
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            digest.update(entry.name.encode() + b"\0" + entry.read_bytes())
    return f"aw_template_{digest.hexdigest()[:16]}"


async def _ensure_template(conn: asyncpg.Connection) -> str:
    name = _template_name()
    if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
        return name
    from ascend_webhooks.store.postgres import PostgresStore

    building = f"{name}_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE DATABASE "{building}"')
    store = PostgresStore(url_for(building))
    await store.open()
    await store.close()
    try:
        await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    except asyncpg.DuplicateDatabaseError:  # another run published it first
        await conn.execute(f'DROP DATABASE "{building}" WITH (FORCE)')
    return name


async def create_database(*, migrated: bool = True) -> str:
    """Create a database (migrated, from the template, unless ``migrated=False``); its URL."""
    name = f"aw_test_{uuid.uuid4().hex[:12]}"
    conn = await admin_connection()
    try:
        if migrated:
            template = await _ensure_template(conn)
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url_for(name)


async def drop_database(url: str) -> None:
    """Drop a database made by :func:`create_database`, closing its remaining sessions."""
    name = url.rsplit("/", 1)[1]
    conn = await admin_connection()
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# -- restarting the server (for the fault tests) ---------------------------------------------


def cluster() -> tuple[str, str] | None:
    """(version, name) of the local cluster on the test server's port, if we may control it."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return None
    if os.environ.get("PGHOST", "localhost") not in ("localhost", "127.0.0.1", "::1"):
        return None
    port = os.environ.get("PGPORT", "5432")
    listing = subprocess.run(
        ["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False
    )
    for line in listing.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == port:
            return fields[0], fields[1]
    return None


def _ctl(action: str, version: str, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


async def restart_server(version: str, name: str) -> None:
    """Restart the cluster (fast shutdown: every session is cut off)."""
    done = await asyncio.to_thread(_ctl, "restart", version, name)
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctlcluster restart failed: {done.stderr.strip()}")


async def ensure_running(version: str, name: str) -> None:
    """Start the cluster if a failed test left it down, and wait until it answers."""
    status = await asyncio.to_thread(_ctl, "status", version, name)
    if status.returncode != 0:
        await asyncio.to_thread(_ctl, "start", version, name)
    for _ in range(100):
        try:
            conn = await asyncpg.connect(database=_ADMIN_DB, timeout=2)
        except (OSError, asyncpg.PostgresError):
            await asyncio.sleep(0.1)
            continue
        await conn.close()
        return
    raise RuntimeError("PostgreSQL did not come back")


def new_event(event_id: str, event_type: str = "invoice.paid", key: str | None = None) -> NewEvent:
    """An event with empty data, as the PostgreSQL store tests publish them."""
    body = f'{{"id":"{event_id}","type":"{event_type}","data":{{}}}}'.encode()
    return NewEvent(event_id, event_type, body, hashlib.sha256(body).digest(), key)
