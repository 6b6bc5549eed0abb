"""Storage backends behind one interface (:class:`Store`), chosen by the database URL."""

from __future__ import annotations

from .base import EventConflictError, NotFoundError, Store, StoreError

__all__ = ["EventConflictError", "NotFoundError", "Store", "StoreError", "open_store"]


def open_store(database_url: str) -> Store:
    """The store for ``sqlite:///PATH`` or ``postgresql://...`` (not yet opened)."""
    if database_url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(database_url)
    if database_url.startswith(("postgresql:", "postgres:")):
        from .postgres import PostgresStore

        return PostgresStore(database_url)
    raise ValueError(f"unsupported database URL {database_url!r}: use sqlite:/// or postgresql://")
