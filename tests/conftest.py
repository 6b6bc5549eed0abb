"""Fixtures shared by every test layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ascend_webhooks.store import Store, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each backend: one behaviour suite runs against every store."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    from tests.support.postgres import create_database, drop_database

    url = await create_database()
    try:
        yield url
    finally:
        await drop_database(url)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """An opened (migrated) store on a fresh database, closed after the test."""
    opened = open_store(database_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh embedded database, for tests that need only one backend."""
    return f"sqlite:///{tmp_path / 'test.db'}"
