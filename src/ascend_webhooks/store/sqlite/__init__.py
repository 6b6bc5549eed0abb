"""The embedded SQLite store (the default): see ``_store`` for the class, ``_engine`` for why."""

from __future__ import annotations

from ._engine import SchemaError
from ._store import SQLiteStore

__all__ = ["SQLiteStore", "SchemaError"]
