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
    # Only the scheme is repeated: the rest may hold a password, and this reaches the terminal.
    scheme = database_url.partition(":")[0] if ":" in database_url else database_url[:20]
    raise ValueError(
        f"unsupported database URL (scheme {scheme!r}): use sqlite:/// or postgresql://"
    )
