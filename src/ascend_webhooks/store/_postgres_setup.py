"""Setting up the PostgreSQL store: its URL options and its migrations.

Migrations are the numbered files in ``migrations/postgres`` (``0001_initial.sql``, …), applied
in order, each recorded in ``schema_migrations``, all in one transaction that holds a
transaction-scoped advisory lock: when many processes start at once, the first applies what
is missing and the others then find nothing to do. A database that a newer release migrated
(it has versions this release does not know) is refused, as the SQLite store refuses one:
an older release would otherwise run against tables it does not understand.
"""

from __future__ import annotations

import importlib.resources
import re
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from ._postgres_sql import MIGRATION_LOCK

__all__ = [
    "COMMAND_TIMEOUT",
    "POOL_MODES",
    "Options",
    "SchemaError",
    "apply_migrations",
    "parse_url",
]


class SchemaError(RuntimeError):
    """The database was migrated by a newer version of ascend-webhooks than this one."""


_MIGRATION_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


#: What ``pooler=`` may say: the URL reaches PostgreSQL through a connection pooler (PgBouncer,
#: pgcat, Supavisor) in that pool mode.
POOL_MODES = ("session", "transaction")


#: Default seconds a pooled connection's statement may take (``command_timeout=``).
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Options:
    dsn: str
    pool_size: int = 10
    pool_min_size: int = 1
    #: None: the URL reaches PostgreSQL itself; else the pool mode of the pooler in between.
    pooler: str | None = None
    #: Where the LISTEN connection goes (``listen_host``/``listen_port``); None: ``dsn``.
    listen_dsn: str | None = None
    #: Seconds a statement of the pools may take (``command_timeout``): past it, it is
    #: cancelled and the call fails as unavailable, rather than hang on a silent network.
    command_timeout: float = COMMAND_TIMEOUT


# The driver's options with a fixed set of values (libpq's): checked here, once, since a bad one
# fails each connection attempt with an error that reads like an unreachable server.
_DRIVER_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any",
        "primary",
        "standby",
        "prefer-standby",
        "read-write",
        "read-only",
    ),
    "gsslib": ("gssapi", "sspi"),
}


def parse_url(url: str) -> Options:
    """Split our own options off a ``postgresql://`` URL: ``pool_size``, ``pool_min_size``,
    ``pooler`` (``session`` or ``transaction``), ``listen_host``/``listen_port`` (the
    wake-up listener's server, when the URL names a pooler) and ``command_timeout`` (seconds)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {parts.scheme}://…")
    ours: dict[str, int] = {}
    pooler: str | None = None
    listen: dict[str, str] = {}
    command_timeout = COMMAND_TIMEOUT
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("pool_size", "pool_min_size"):
            if not value.isdigit() or int(value) < (1 if name == "pool_size" else 0):
                raise ValueError(f"database URL option {name}={value!r} must be a whole number")
            ours[name] = int(value)
        elif name == "pooler":
            if value not in POOL_MODES:
                raise ValueError(
                    f"database URL option pooler={value!r} must be one of {', '.join(POOL_MODES)}"
                )
            pooler = value
        elif name == "command_timeout":
            try:
                seconds = float(value)
            except ValueError:
                seconds = 0.0
            if not 0 < seconds < float("inf"):
                raise ValueError(
                    f"database URL option command_timeout={value!r} must be a positive number"
                )
            command_timeout = seconds
        elif name == "listen_host":
            if not value or "/" in value or "@" in value:
                raise ValueError(f"database URL option listen_host={value!r} is not a host name")
            listen["host"] = value
        elif name == "listen_port":
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ValueError(f"database URL option listen_port={value!r} is not a port")
            listen["port"] = value
        else:
            # (asyncpg also takes verify_ca and verify_full, which libpq does not)
            spelled = value.replace("_", "-") if name == "sslmode" else value
            if name in _DRIVER_CHOICES and spelled not in _DRIVER_CHOICES[name]:
                raise ValueError(
                    f"database URL option {name}={value!r} must be one of "
                    + ", ".join(_DRIVER_CHOICES[name])
                )
            rest.append((name, value))
    if listen and "host" not in listen and not parts.hostname:
        raise ValueError("database URL option listen_port needs a host: add listen_host")
    base = parts._replace(scheme="postgresql", query=urlencode(rest))
    listen_dsn = urlunsplit(base._replace(netloc=_netloc(parts, **listen))) if listen else None
    options = Options(
        dsn=urlunsplit(base),
        **ours,
        pooler=pooler,
        listen_dsn=listen_dsn,
        command_timeout=command_timeout,
    )
    if options.pool_min_size > options.pool_size:
        raise ValueError("database URL option pool_min_size must not exceed pool_size")
    return options


def _netloc(parts: SplitResult, host: str | None = None, port: str | None = None) -> str:
    """``parts``' user and password at another host and/or port."""
    user, at, _ = parts.netloc.rpartition("@")
    host = host if host is not None else parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    port = port if port is not None else (str(parts.port) if parts.port else "")
    return f"{user}{at}{host}{':' if port else ''}{port}"


def _migrations() -> list[tuple[int, str, str]]:
    folder = importlib.resources.files("ascend_webhooks.store") / "migrations" / "postgres"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply the migrations this database lacks; returns their versions. Safe to race."""
    applied: list[int] = []
    async with conn.transaction():
        # Serializes concurrent starters: the second one finds everything applied.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in await conn.fetch("SELECT version FROM schema_migrations")}
        migrations = _migrations()
        unknown = sorted(done - {version for version, _, _ in migrations})
        if unknown:
            raise SchemaError(
                f"the database has schema versions {unknown} that this release does not know: "
                "it was migrated by a newer version of ascend-webhooks"
            )
        for version, name, text in migrations:
            if version in done:
                continue
            await conn.execute(text)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied.append(version)
    return applied
