"""The PostgreSQL store: many API and worker processes, on any number of machines, on one database.

Why it is built this way:

* **asyncpg** with its own pool and prepared-statement cache. ``bench/bench_pg_driver.py``
  measured it against psycopg 3 (async) on this store's statement shapes: asyncpg spent about
  half the client CPU per row on single-row commits (~50 vs ~100 us) and less on batch claims
  (2.0 vs ~3 us), with wall-clock rates within the noise; and it is already a dependency.
* **Set-based statements.** Batches (events of a publish, outcomes of a record, ids of a lease
  extension) are passed as parallel arrays and ``unnest``-ed: one round trip and one cached plan
  whatever the batch size. The SQL lives in ``_postgres_sql.py``.
* **One statement, one round trip per call on the hot paths**, committed as it returns: a
  publish is one call of ``ascend_webhooks_publish`` and a record one of
  ``ascend_webhooks_record`` (PL/pgSQL, migration 0003), whose steps stay separate statements
  inside, each with a fresh snapshot after the locks before it; a claim is one statement. A
  publish had been six round trips (``BEGIN``, three statements, ``COMMIT``, the pool's reset)
  and a record seven: on a busy machine each one is a wake-up of the event loop and of a server
  process. The publish passes the delivery ids it expects to need (the organization's fan-out
  seen last time); when endpoints were added meanwhile it is told how many and runs again.
  Pools skip asyncpg's reset query on release: the store leaves no session state behind.
* **Claim in one statement** (candidates, each locked ``FOR UPDATE SKIP LOCKED`` by primary
  key, then ``UPDATE … RETURNING`` joined with events and endpoints): concurrent workers never
  wait for each other and never get the same row; one left short by racing claimers runs again
  at once. The plan's shape does not depend on statistics (a burst on a fresh database, never
  analyzed, must not turn a claim into a scan of the backlog). Fairness comes from
  a loose index scan over the (organization, endpoint) pairs with ready work; each organization
  contributes its earliest due rows and the batch takes them in turns, so a backlog of a million
  in one organization costs the others nothing but their share. The walk resumes where the last
  claim stopped, so with more pairs than a claim visits, every pair still gets its turn. The
  cost is O(pairs visited + limit) index probes, never O(backlog).
* **Ordering keys** are kept as a ``blocked`` bit on every pending delivery that is not the
  oldest pending one of its (endpoint, key); claim only looks at unblocked rows (a partial
  index), and whatever ends a head unblocks the next in one index lookup. The transitions of one
  (organization, key) are serialized by a transaction-scoped advisory lock, taken before the new
  delivery rows get their ``seq``, so the order of ``seq`` is the order of commits.
* **Leases** move ``next_attempt_at`` to the lease's end: a delivery whose worker died is simply
  due again then, without a sweeper, and the same index serves new work and expired leases.
* **Migrations** are numbered SQL files applied in one transaction under
  ``pg_advisory_xact_lock``: any number of processes may start at once.
* **Group commit** is the server's: concurrent publishes run on separate pooled connections,
  and PostgreSQL flushes the WAL once for every commit waiting at that moment, so throughput
  grows with concurrency without batching calls into shared transactions here (which would
  make one caller's conflict roll back another's events, or need savepoints per call).
* **Wake-ups** go through LISTEN/NOTIFY on a dedicated connection (``_postgres_listen.py``),
  opened by the store's first claim or wait: a process that only serves the API holds none.
  The NOTIFY is sent right after the commit, not inside the transaction: PostgreSQL serializes
  the commits of notifying transactions on one lock, which halved publish throughput; after
  the commit, concurrent wake-ups coalesce into one and cost no publish any time.
* **The worker's writes do not wait for the WAL flush**: claims, outcomes, lease extensions,
  releases and NOTIFYs go through a second pool whose connections run with
  ``synchronous_commit = off`` (a connection option: no ``SET LOCAL``, no transaction block);
  see :meth:`PostgresStore._relaxed` for why at-least-once allows it. Publishes and API writes
  use the first pool and keep the server's setting.
* **Faults**: a connection lost to a restart raises :class:`StoreUnavailableError` for the call
  in flight (nothing half-committed: every write is one transaction); the pool replaces broken
  connections on their next use and the listener reconnects with backoff.

URL: ``postgresql://user@host:port/dbname?pool_size=10&pool_min_size=1`` (libpq ``PG*``
variables fill in what the URL leaves out, as for psql). ``pool_size`` bounds each of the two
pools; the worker's opens connections only when used (a handful in a worker process, one for
NOTIFYs in an API process).

Behind a connection pooler (PgBouncer, pgcat, Supavisor), say which mode it pools in:
``?pooler=session`` or ``?pooler=transaction``. Either way no startup parameter is sent (poolers
refuse unknown ones). In transaction mode asyncpg keeps no prepared statement, the worker's
commits wait for their flush, and the wake-up listener, which needs a session of its own,
connects to ``listen_host``/``listen_port`` (PostgreSQL itself, same user and database), or
without them is not started: idle workers then look for work every ``poll_interval``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

import asyncpg

from ..ids import new_id, new_ids
from . import _postgres_rows as recs
from . import _postgres_sql as sql
from ._checks import endpoint_changes, key_in_flight
from ._postgres_listen import Notifier, WorkSignal
from ._postgres_setup import apply_migrations, parse_url
from .base import (
    EventConflictError,
    InvalidTextError,
    LastActiveKeyError,
    LastAdminTokenError,
    NotFoundError,
    Store,
    StoreError,
    StoreUnavailableError,
)
from .models import (
    ApiToken,
    AttemptOutcome,
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    NewEvent,
    Organization,
    Page,
    PublishResult,
    WebhookKey,
)

__all__ = ["PostgresStore", "apply_migrations", "parse_url"]

# What a connection pooler's refusals (a startup parameter it does not know, a prepared
# statement left on another session) mean for the URL.
_POOLER_HINT = (
    'PostgreSQL answered "{}": the database URL seems to go through a connection pooler;'
    " add pooler=transaction (or pooler=session) to it (docs/production.md, Behind PgBouncer)"
)

T = TypeVar("T")

# A deadlock (or a serialization failure) rolled the whole transaction back: run it again, a
# few times, before calling the database unavailable.
_ROLLED_BACK = asyncpg.exceptions.TransactionRollbackError
_DEADLOCK_TRIES = 3

# Seconds close() waits for each pool's connections to be given back before cutting them.
_CLOSE_WAIT = 5.0

# What a lost or refused connection raises, from the socket up to the server's shutdown notice.
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash, "starting up"
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed" / "pool is closing"
    # "cannot switch to state …; another operation is in progress": asyncpg's state after
    # the server cut the session off mid-operation (a restart); that connection is dropped.
    asyncpg.InternalClientError,
    # A deadlock or serialization failure rolled the whole call back: repeating it is safe.
    asyncpg.exceptions.TransactionRollbackError,
)

_BEHIND_KEY = 1
_ENDPOINT_DISABLED = 2
# A claim takes a few more candidates per pair than it needs (room to skip rows that racing
# claimers locked) and runs again, a few times at most, if it was still left short by them.
_CLAIM_SLACK = 16
_CLAIM_ROUNDS = 8
# A publish passes as many delivery ids as it expects to need (the organization's fan-out seen
# last time); one that needs more is told how many and runs again, a few times at most.
_PUBLISH_TRIES = 4
_FANOUT_MEMORY = 10_000
# How long what a claim saw of the due times may stand in for another look (see _DueView).
_DUE_VIEW_SECONDS = 0.25


@dataclass(slots=True)
class _DueView:
    """What the last claim of this store saw of due times, when it took only a few deliveries
    (``SMALL_CLAIM``) and its walk saw every pair.

    Valid while no work was announced since that claim started (the listener's generation has
    not moved: every write that makes work due sends a NOTIFY after its commit, and this
    store's own writes move it at once), the listener is connected, and for at most
    ``_DUE_VIEW_SECONDS``. Then ``next_due_at`` would say ``next_due``, and another claim would
    find nothing before ``idle_until``: both are answered without a round trip. A worker that
    has just taken the one event published claims again at once, and one that lost the race
    for it asks when work is next due: neither needs the database.
    """

    generation: int
    valid_until: float  # time.monotonic()
    next_due: datetime | None  # the server's clock; None: nothing ready at all
    idle_until: float | None  # time.monotonic(); None: something was due already


async def _commits_relaxed(conn: asyncpg.Connection) -> None:
    """A relaxed pool connection's setting, where it cannot be a startup parameter."""
    await conn.execute("SET synchronous_commit = off")


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's reset on release. The store leaves no session state behind (settings are
    ``SET LOCAL`` or connection options, advisory locks transaction-scoped, no cursors or
    LISTEN outside the listener's own connection), so asyncpg's default reset query (``RESET
    ALL``, ``UNLISTEN *``, …) would be a round trip per use for nothing. An open transaction
    is still rolled back by asyncpg before this is called."""


class PostgresStore(Store):
    """The :class:`Store` on PostgreSQL (see the module docstring for the design)."""

    def __init__(self, url: str, *, claim_pairs: int = 64, poll_interval: float = 1.0) -> None:
        self._options = parse_url(url)
        self._pool: asyncpg.Pool | None = None
        # The worker's writes (claims, outcomes, leases) and NOTIFYs: connections whose commits
        # do not wait for their WAL flush (see _relaxed).
        self._relaxed_pool: asyncpg.Pool | None = None
        # Organization → the most deliveries one of its events made last time (see publish).
        self._fanout: dict[str, int] = {}
        self._signal = WorkSignal(self._connect_listener, poll_interval=poll_interval)
        self._listening = False  # the listener starts with the first claim or wait
        self._notifier = Notifier(self._send_notify)
        self._claim_pairs = claim_pairs
        # Where the next claim's walk over (organization, endpoint) pairs starts.
        self._claim_from: tuple[str, str] = ("", "")
        self._due_view: _DueView | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _driver_options(self) -> dict[str, Any]:
        # Behind a pooler in transaction mode a session is lent per transaction, so a statement
        # asyncpg prepared on one would be missing on the next: none is kept (each is prepared
        # unnamed, in the round trip that runs it).
        return {"statement_cache_size": 0} if self._options.pooler == "transaction" else {}

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._options.dsn, timeout=10, **self._driver_options())

    async def _connect_listener(self) -> asyncpg.Connection:
        return await asyncpg.connect(self._options.listen_dsn or self._options.dsn, timeout=10)

    async def open(self) -> None:
        pooler = self._options.pooler
        try:
            conn = await self._connect()
            try:
                await apply_migrations(conn)
            finally:
                await conn.close()
            common: dict[str, Any] = {
                "max_size": self._options.pool_size,
                "max_inactive_connection_lifetime": 300,
                "timeout": 10,
                # A statement still unanswered after this is cancelled (TimeoutError): a
                # network that silently stopped forwarding fails the call instead of hanging
                # it for as long as the kernel keeps the socket (the migrations above may run
                # longer, and run once).
                "command_timeout": self._options.command_timeout,
                "reset": _keep_session,
                **self._driver_options(),
            }
            self._pool = await asyncpg.create_pool(
                self._options.dsn, min_size=self._options.pool_min_size, **common
            )
            # Opened on first use: an API process only sends NOTIFYs on it. Poolers refuse
            # startup parameters they do not know: in session mode the setting is SET on each
            # new connection (the pooler's reset query clears it for the next client); in
            # transaction mode no session setting would stay with us, and these commits wait
            # for their flush like any other.
            if pooler is None:
                common["server_settings"] = {"synchronous_commit": "off"}
            elif pooler == "session":
                common["init"] = _commits_relaxed
            self._relaxed_pool = await asyncpg.create_pool(self._options.dsn, min_size=0, **common)
        except ssl.SSLCertVerificationError as exc:
            # An OSError like a refused connection, but waiting cannot make it trusted.
            raise StoreError(
                f"cannot connect to PostgreSQL: its TLS certificate is not trusted ({exc})"
            ) from exc
        except asyncpg.exceptions.ClientConfigurationError as exc:
            # An InterfaceError like a closed connection, but waiting cannot fix the URL.
            raise StoreError(f"the database URL is misconfigured: {exc}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailableError(f"cannot reach PostgreSQL: {exc}") from exc

    def _listen(self) -> None:
        """Start the wake-up listener, once: on the first claim or wait, so that a process
        that only serves the API holds no LISTEN session and is not woken by every NOTIFY
        (each one goes to every listening session, and from there to its process)."""
        if self._listening or self._pool is None:  # (None: not open)
            return
        self._listening = True
        if self._options.pooler != "transaction" or self._options.listen_dsn is not None:
            # (a LISTEN through a transaction pooler would hear nothing: waiters poll instead)
            self._signal.start()

    async def _send_notify(self) -> None:
        async with self._relaxed() as conn:
            await conn.execute(sql.NOTIFY)

    async def close(self) -> None:
        await self._notifier.flush()
        await self._signal.stop()
        self._listening = False
        for pool in (self._pool, self._relaxed_pool):
            if pool is not None:
                # A connection still busy (a worker's claim that a stop abandoned, its cancel
                # unanswered) is not waited for past this: a closing pool cut short terminates.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pool.close(), _CLOSE_WAIT)
        self._pool = self._relaxed_pool = None

    async def ping(self) -> bool:
        try:
            async with self._connection() as conn:
                return bool(await conn.fetchval("SELECT 1", timeout=5) == 1)
        except StoreError:
            return False

    def _connection(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection; a lost or refused connection becomes StoreUnavailableError."""
        return self._pooled(self._pool)

    @contextlib.asynccontextmanager
    async def _pooled(self, pool: asyncpg.Pool | None) -> AsyncIterator[asyncpg.Connection]:
        if pool is None:
            raise StoreError("the store is not open: call open() first")
        try:
            async with pool.acquire() as conn:
                try:
                    yield conn  # type: ignore[misc]  # a proxy with the Connection API
                except asyncpg.InternalClientError:
                    conn.terminate()  # unusable: never hand it out again
                    raise
        except asyncpg.CharacterNotInRepertoireError as exc:  # a NUL in a text value
            raise InvalidTextError("text may not contain NUL characters") from exc
        except asyncpg.exceptions.InvalidSQLStatementNameError as exc:
            if self._options.pooler is None and "__asyncpg_stmt_" in str(exc):
                raise StoreError(_POOLER_HINT.format(exc)) from exc  # not retried: misconfigured
            raise
        except asyncpg.exceptions.ClientConfigurationError as exc:  # not retried: misconfigured
            raise StoreError(f"the database URL is misconfigured: {exc}") from exc
        except _UNAVAILABLE as exc:
            if self._options.pooler is None and "unsupported startup parameter" in str(exc):
                raise StoreError(_POOLER_HINT.format(exc)) from exc
            raise StoreUnavailableError(
                f"PostgreSQL is unavailable ({type(exc).__name__}: {exc}); retry the call"
            ) from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def _repeatable(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """``work`` in a transaction, run again when PostgreSQL rolled it back to break a
        deadlock: an API call that changes an endpoint's deliveries locks them in another
        order than a worker's record of their outcomes, and the caller did nothing wrong."""
        tries = _DEADLOCK_TRIES
        while True:
            tries -= 1
            try:
                async with self._connection() as conn, conn.transaction():
                    return await work(conn)
            except StoreUnavailableError as exc:
                if tries == 0 or not isinstance(exc.__cause__, _ROLLED_BACK):
                    raise

    def _relaxed(self) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        """A connection whose commits do not wait for their WAL flush: the worker's writes.

        ``synchronous_commit = off`` as a connection option of a pool of its own, so each
        write is one statement, one round trip (no ``BEGIN``, ``SET LOCAL``, ``COMMIT``). A
        server crash can take back such a commit only if no later commit of any session was
        flushed (a flush covers the WAL before it): a lease or its extension (the delivery is
        claimed again once the lease is over), a release (it waits out its lease), an outcome
        (it is attempted again, and that attempt recorded). At-least-once allows all of them;
        publishes and API writes use the other pool and keep their synchronous commit, so no
        accepted event is ever lost.
        """
        return self._pooled(self._relaxed_pool)

    # -- organizations and API tokens ------------------------------------------------------

    async def create_organization(self, name: str) -> Organization:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING *",
                new_id("org"),
                name,
            )
        assert row is not None
        return recs.organization(row)

    async def get_organization(self, organization_id: str) -> Organization:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT * FROM organizations WHERE id = $1", organization_id)
        if row is None:
            raise NotFoundError(f"organization {organization_id!r} not found")
        return recs.organization(row)

    async def list_organizations(
        self, *, limit: int, after: str | None = None, only: str | None = None
    ) -> Page[Organization]:
        limit = max(limit, 0)  # a page of nothing, as on every backend
        after = recs.id_cursor(after)
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM organizations WHERE id > $1 AND ($2::text IS NULL OR id = $2)"
                " ORDER BY id LIMIT $3",
                after or "",
                only,
                limit + 1,
            )
        items = [recs.organization(row) for row in rows[:limit]]
        return Page(tuple(items), items[-1].id if len(rows) > limit and items else None)

    async def create_token(
        self, organization_id: str | None, token_hash: bytes, name: str | None = None
    ) -> ApiToken:
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO api_tokens (id, organization_id, token_hash, name)"
                    " VALUES ($1, $2, $3, $4) RETURNING *",
                    new_id("tok"),
                    organization_id,
                    token_hash,
                    name,
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError(f"organization {organization_id!r} not found") from None
        except asyncpg.UniqueViolationError:
            raise StoreError("a token with this hash already exists") from None
        assert row is not None
        return recs.token(row)

    async def create_first_admin_token(self, token_hash: bytes, name: str) -> ApiToken | None:
        async with self._transaction() as conn:
            # Serializes first starts: the second waits here, then finds the first one's token.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.FIRST_ADMIN_LOCK)
            if await conn.fetchval(
                "SELECT 1 FROM api_tokens WHERE organization_id IS NULL LIMIT 1"
            ):
                return None
            row = await conn.fetchrow(
                "INSERT INTO api_tokens (id, organization_id, token_hash, name)"
                " VALUES ($1, NULL, $2, $3) RETURNING *",
                new_id("tok"),
                token_hash,
                name,
            )
        assert row is not None
        return recs.token(row)

    async def find_token(self, token_hash: bytes) -> ApiToken | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT * FROM api_tokens WHERE token_hash = $1", token_hash)
        return None if row is None else recs.token(row)

    async def count_admin_tokens(self) -> int:
        async with self._connection() as conn:
            count = await conn.fetchval(
                "SELECT count(*) FROM api_tokens WHERE organization_id IS NULL"
            )
        return int(count)

    async def list_tokens(self, organization_id: str | None) -> list[ApiToken]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM api_tokens WHERE organization_id IS NOT DISTINCT FROM $1"
                " ORDER BY created_at, id",
                organization_id,
            )
        return [recs.token(row) for row in rows]

    async def delete_token(
        self, organization_id: str | None, token_id: str, *, keep_last_admin: bool = False
    ) -> None:
        # ``IS NOT DISTINCT FROM`` matches NULL too: None deletes only an admin token.
        async with self._transaction() as conn:
            if keep_last_admin and organization_id is None:
                # Locks every admin token: a second delete racing this one waits, then sees
                # what this one left (a row deleted meanwhile is skipped, not returned).
                admins = await conn.fetch(
                    "SELECT id FROM api_tokens WHERE organization_id IS NULL FOR UPDATE"
                )
                if any(row["id"] == token_id for row in admins) and len(admins) <= 1:
                    raise LastAdminTokenError(f"token {token_id!r} is the last admin token")
            deleted = await conn.fetchval(
                "DELETE FROM api_tokens WHERE id = $1"
                " AND organization_id IS NOT DISTINCT FROM $2 RETURNING id",
                token_id,
                organization_id,
            )
        if deleted is None:
            raise NotFoundError(f"token {token_id!r} not found")

    # -- webhook keys ----------------------------------------------------------------------

    async def create_key(
        self,
        organization_id: str,
        secret_ciphertext: bytes,
        *,
        activate: bool | Literal["if_first"],
        key_id: str | None = None,
    ) -> WebhookKey:
        try:
            async with self._transaction() as conn:
                await self._lock_keys(conn, organization_id)
                if activate == "if_first":
                    # After the lock: of first keys issued at once, each sees the key that the
                    # one before it activated.
                    activate = not await conn.fetch(sql.ACTIVE_KEYS, organization_id)
                row = await conn.fetchrow(
                    "INSERT INTO webhook_keys (id, organization_id, secret_ciphertext,"
                    " activated_at) VALUES ($1, $2, $3, CASE WHEN $4 THEN"
                    " greatest(now(), (SELECT max(activated_at) + interval '1 microsecond'"
                    " FROM webhook_keys WHERE organization_id = $2)) END) RETURNING *",
                    key_id if key_id is not None else new_id("key"),
                    organization_id,
                    secret_ciphertext,
                    activate,
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError(f"organization {organization_id!r} not found") from None
        assert row is not None
        return recs.key(row)

    async def list_keys(self, organization_id: str) -> list[WebhookKey]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM webhook_keys WHERE organization_id = $1 ORDER BY created_at, id",
                organization_id,
            )
            if not rows:
                await self._require_organization(conn, organization_id)
        return [recs.key(row) for row in rows]

    async def _lock_keys(self, conn: asyncpg.Connection, organization_id: str) -> None:
        """Lock the organization's row, so that changes to its keys take turns: each one then
        reads the keys the one before it committed (a revoke decides whether another key is
        active, a first key whether one is). FOR NO KEY UPDATE: publishes, which hold it FOR
        KEY SHARE, do not wait."""
        await conn.execute(
            "SELECT 1 FROM organizations WHERE id = $1 FOR NO KEY UPDATE", organization_id
        )

    async def activate_key(self, organization_id: str, key_id: str) -> WebhookKey:
        async with self._transaction() as conn:
            await self._lock_keys(conn, organization_id)
            current = await conn.fetchrow(
                "SELECT revoked_at FROM webhook_keys WHERE organization_id = $1 AND id = $2"
                " FOR UPDATE",
                organization_id,
                key_id,
            )
            if current is None:
                raise NotFoundError(f"webhook key {key_id!r} not found")
            if current["revoked_at"] is not None:
                raise StoreError(f"webhook key {key_id!r} is revoked and cannot sign again")
            # Strictly later than any other activation: "most recently activated" is unambiguous.
            row = await conn.fetchrow(
                "UPDATE webhook_keys SET activated_at = greatest(now(),"
                " (SELECT max(activated_at) + interval '1 microsecond' FROM webhook_keys"
                "  WHERE organization_id = $1)) WHERE id = $2 RETURNING *",
                organization_id,
                key_id,
            )
        assert row is not None
        return recs.key(row)

    async def revoke_key(
        self, organization_id: str, key_id: str, *, keep_last_active: bool = False
    ) -> WebhookKey:
        async with self._transaction() as conn:
            await self._lock_keys(conn, organization_id)
            if keep_last_active:
                active = await conn.fetch(sql.ACTIVE_KEYS, organization_id)
                if [row["id"] for row in active] == [key_id]:
                    raise LastActiveKeyError(f"webhook key {key_id!r} is the only active key")
            row = await conn.fetchrow(
                "UPDATE webhook_keys SET revoked_at = coalesce(revoked_at, now())"
                " WHERE organization_id = $1 AND id = $2 RETURNING *",
                organization_id,
                key_id,
            )
        if row is None:
            raise NotFoundError(f"webhook key {key_id!r} not found")
        return recs.key(row)

    async def rewrite_key_ciphertexts(
        self, prefix: bytes, rewrite: Callable[[WebhookKey], bytes | None]
    ) -> int:
        async with self._transaction() as conn:
            # Locked in id order (no deadlock between processes doing this at once); a row
            # another one rewrote meanwhile is read again, no longer matches, and is skipped.
            rows = await conn.fetch(
                "SELECT * FROM webhook_keys"
                " WHERE substr(secret_ciphertext, 1, length($1::bytea)) = $1::bytea"
                " ORDER BY id FOR NO KEY UPDATE",
                prefix,
            )
            ids, old, new = [], [], []
            for row in rows:
                key = recs.key(row)
                rewritten = rewrite(key)
                if rewritten is not None:
                    ids.append(key.id)
                    old.append(key.secret_ciphertext)
                    new.append(rewritten)
            if not ids:
                return 0
            done = await conn.fetch(
                "UPDATE webhook_keys AS k SET secret_ciphertext = c.new"
                " FROM unnest($1::text[], $2::bytea[], $3::bytea[]) AS c (id, old, new)"
                " WHERE k.id = c.id AND k.secret_ciphertext = c.old RETURNING k.id",
                ids,
                old,
                new,
            )
        return len(done)

    async def signing_keys(self, organization_ids: Sequence[str]) -> dict[str, WebhookKey]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (organization_id) * FROM webhook_keys"
                " WHERE organization_id = ANY($1::text[]) AND activated_at IS NOT NULL"
                " AND activated_at <= now() AND revoked_at IS NULL"
                " ORDER BY organization_id, activated_at DESC, created_at DESC, id DESC",
                list(organization_ids),
            )
        return {row["organization_id"]: recs.key(row) for row in rows}

    # -- endpoints -------------------------------------------------------------------------

    async def create_endpoint(
        self,
        organization_id: str,
        url: str,
        event_types: Sequence[str] | None,
        description: str | None,
        enabled: bool = True,
    ) -> Endpoint:
        try:
            async with self._connection() as conn:
                row = await conn.fetchrow(
                    "INSERT INTO endpoints (id, organization_id, url, event_types, description,"
                    " enabled) VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                    new_id("ep"),
                    organization_id,
                    url,
                    None if event_types is None else list(event_types),
                    description,
                    enabled,
                )
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError(f"organization {organization_id!r} not found") from None
        assert row is not None
        return recs.endpoint(row)

    async def get_endpoint(self, organization_id: str, endpoint_id: str) -> Endpoint:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT * FROM endpoints WHERE organization_id = $1 AND id = $2"
                " AND deleted_at IS NULL",
                organization_id,
                endpoint_id,
            )
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_id!r} not found")
        return recs.endpoint(row)

    async def list_endpoints(
        self, organization_id: str, *, limit: int, after: str | None = None
    ) -> Page[Endpoint]:
        limit = max(limit, 0)  # a page of nothing, as on every backend
        after = recs.id_cursor(after)
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM endpoints WHERE organization_id = $1 AND deleted_at IS NULL"
                " AND id > $2 ORDER BY id LIMIT $3",
                organization_id,
                after or "",
                limit + 1,
            )
            if not rows:
                await self._require_organization(conn, organization_id)
        items = [recs.endpoint(row) for row in rows[:limit]]
        return Page(tuple(items), items[-1].id if len(rows) > limit and items else None)

    async def update_endpoint(
        self, organization_id: str, endpoint_id: str, **changes: object
    ) -> Endpoint:
        values = endpoint_changes(changes)

        async def update(conn: asyncpg.Connection) -> tuple[asyncpg.Record, bool]:
            # FOR UPDATE waits for publishes that hold the row FOR KEY SHARE, so none of them
            # can add a claimable delivery after the endpoint was disabled.
            current = await conn.fetchrow(
                "SELECT enabled FROM endpoints WHERE organization_id = $1 AND id = $2"
                " AND deleted_at IS NULL FOR UPDATE",
                organization_id,
                endpoint_id,
            )
            if current is None:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found")
            if not values:
                row = await conn.fetchrow("SELECT * FROM endpoints WHERE id = $1", endpoint_id)
                assert row is not None
                return row, False
            assignments = ", ".join(f"{column} = ${i + 2}" for i, column in enumerate(values))
            row = await conn.fetchrow(
                f"UPDATE endpoints SET {assignments}, updated_at = now()"  # noqa: S608
                " WHERE id = $1 RETURNING *",
                endpoint_id,
                *values.values(),
            )
            assert row is not None
            enabled = values.get("enabled")
            if enabled is not None and enabled != current["enabled"]:
                # A disabled endpoint's pending deliveries wait (unclaimable) until re-enabled.
                operation = "blocked & ~2" if enabled else "blocked | 2"
                await conn.execute(
                    f"UPDATE deliveries SET blocked = {operation}"  # noqa: S608 (constant)
                    " WHERE endpoint_id = $1 AND status = 'pending'",
                    endpoint_id,
                )
            return row, bool(enabled)

        row, enabled = await self._repeatable(update)
        if enabled:
            self._wake_workers()
        return recs.endpoint(row)

    async def delete_endpoint(self, organization_id: str, endpoint_id: str) -> None:
        async def delete(conn: asyncpg.Connection) -> None:
            row = await conn.fetchrow(
                "SELECT 1 FROM endpoints WHERE organization_id = $1 AND id = $2"
                " AND deleted_at IS NULL FOR UPDATE",
                organization_id,
                endpoint_id,
            )
            if row is None:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found")
            await conn.execute(
                "UPDATE endpoints SET deleted_at = now(), enabled = false, updated_at = now()"
                " WHERE id = $1",
                endpoint_id,
            )
            # Every pending delivery of the endpoint ends here: no ordering key to unblock. A
            # lease stays with its worker, whose attempt on its way is recorded (migration 0008).
            await conn.execute(
                "UPDATE deliveries SET status = 'failed', blocked = 0, next_attempt_at = NULL,"
                " updated_at = now() WHERE endpoint_id = $1 AND status = 'pending'",
                endpoint_id,
            )

        await self._repeatable(delete)

    async def _require_organization(self, conn: asyncpg.Connection, organization_id: str) -> None:
        if not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1)", organization_id
        ):
            raise NotFoundError(f"organization {organization_id!r} not found")

    # -- events and deliveries -------------------------------------------------------------

    async def publish(
        self, organization_id: str, events: Sequence[NewEvent]
    ) -> list[PublishResult]:
        unique: dict[str, NewEvent] = {}
        for new in events:
            seen = unique.setdefault(new.id, new)
            if seen.content_hash != new.content_hash:
                raise EventConflictError(new.id)
        if not unique:
            await self.get_organization(organization_id)  # NotFoundError, as for a real batch
            return []
        news = list(unique.values())
        args = (
            organization_id,
            [n.id for n in news],
            [n.type for n in news],
            [n.body for n in news],
            [n.content_hash for n in news],
            [n.ordering_key for n in news],
        )
        wanted = len(news) * self._fanout.get(organization_id, 1)
        try:
            # One statement, committed when it returns (no separate existence check of the
            # organization: the events' foreign key is it).
            async with self._connection() as conn:
                for _ in range(_PUBLISH_TRIES):
                    try:
                        rows = await conn.fetch(sql.PUBLISH, *args, new_ids("dlv", wanted))
                        break
                    except asyncpg.PostgresError as exc:
                        if exc.sqlstate == sql.MORE_DELIVERY_IDS:
                            wanted = int(exc.detail or 0)  # endpoints were added: again
                            continue
                        if exc.sqlstate == sql.EVENT_CONFLICT:
                            raise EventConflictError(str(exc.detail)) from None
                        raise
                else:
                    raise StoreUnavailableError("endpoints kept changing during the publish")
                created: dict[str, asyncpg.Record] = {}
                existing: dict[str, int] = {}
                made: dict[int, list[asyncpg.Record]] = {}
                for row in rows:
                    kind = row[0]
                    if kind == "d":
                        made.setdefault(row[3], []).append(row)
                    elif kind == "e":
                        created[row[1]] = row
                    else:
                        existing[row[1]] = row[2]
                # Read after the commit; an existing event and its deliveries were committed
                # before this call, by whoever published that id first.
                stored = await recs.load_events(conn, list(existing.values())) if existing else {}
        except asyncpg.ForeignKeyViolationError:
            raise NotFoundError(f"organization {organization_id!r} not found") from None
        if created:
            self._remember_fanout(organization_id, made)
        if made:
            self._wake_workers()
        results: list[PublishResult] = []
        reported: set[str] = set()
        for new in events:
            made_row = created.get(new.id)
            if made_row is not None:
                event = recs.new_event(organization_id, new, made_row, made.get(made_row[2], ()))
                results.append(PublishResult(event, created=new.id not in reported))
            else:
                results.append(PublishResult(stored[existing[new.id]], created=False))
            reported.add(new.id)
        return results

    def _remember_fanout(self, organization_id: str, made: dict[int, list[asyncpg.Record]]) -> None:
        """The most deliveries one new event made (0: no endpoint wanted them)."""
        fanout = max((len(rows) for rows in made.values()), default=0)
        if self._fanout.get(organization_id) != fanout:
            if len(self._fanout) >= _FANOUT_MEMORY:
                self._fanout.clear()
            self._fanout[organization_id] = fanout

    async def get_event(self, organization_id: str, event_id: str) -> Event:
        async with self._connection() as conn:
            seq = await conn.fetchval(
                "SELECT seq FROM events WHERE organization_id = $1 AND id = $2",
                organization_id,
                event_id,
            )
            if seq is None:
                raise NotFoundError(f"event {event_id!r} not found")
            return (await recs.load_events(conn, [seq]))[seq]

    async def list_events(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        event_type: str | None = None,
    ) -> Page[Event]:
        limit = max(limit, 0)  # a page of nothing, as on every backend
        where, args = _newest_first_filter("", organization_id, limit, after, type=event_type)
        async with self._connection() as conn:
            seqs = [
                row[0]
                for row in await conn.fetch(
                    f"SELECT seq FROM events WHERE {' AND '.join(where)}"  # noqa: S608
                    " ORDER BY seq DESC LIMIT $2",
                    *args,
                )
            ]
            if not seqs:
                await self._require_organization(conn, organization_id)
            loaded = await recs.load_events(conn, seqs[:limit])
        items = tuple(loaded[seq] for seq in seqs[:limit])
        return Page(items, str(seqs[limit - 1]) if len(seqs) > limit and items else None)

    async def get_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {sql.DELIVERY_COLUMNS} FROM deliveries d"  # noqa: S608
                " JOIN events e ON e.seq = d.event_seq"
                " WHERE d.organization_id = $1 AND d.id = $2",
                organization_id,
                delivery_id,
            )
            if row is None:
                raise NotFoundError(f"delivery {delivery_id!r} not found")
            attempts = await conn.fetch(
                "SELECT * FROM attempts WHERE delivery_seq = $1 ORDER BY number", row["seq"]
            )
        return recs.delivery(row, [recs.attempt(a) for a in attempts])

    async def list_deliveries(
        self,
        organization_id: str,
        *,
        limit: int,
        after: str | None = None,
        status: DeliveryStatus | None = None,
        endpoint_id: str | None = None,
    ) -> Page[Delivery]:
        limit = max(limit, 0)  # a page of nothing, as on every backend
        if status is None and endpoint_id is None:
            # No index is (organization_id, seq) (migration 0006): the newest page is the
            # newest rows of the three status ranges of deliveries_organization_status_seq, a
            # page from each, then found by primary key. Each range as row comparisons, which
            # only that index serves, in its order: with plain equalities the planner walked
            # the primary key backwards through every newer row of other organizations.
            before = recs.seq_cursor(after)
            args: list[Any] = [organization_id, limit + 1]
            if before is None:
                below = "<= ($1, '{0}', 9223372036854775807)"
            else:
                args.append(before)
                below = "< ($1, '{0}', $3)"
            newest = " UNION ALL ".join(
                "(SELECT x.seq FROM deliveries x WHERE"  # noqa: S608 (statuses are ours)
                f" (x.organization_id, x.status, x.seq) >= ($1, '{value.value}', 0) AND"
                f" (x.organization_id, x.status, x.seq) {below.format(value.value)}"
                " ORDER BY x.organization_id DESC, x.status DESC, x.seq DESC LIMIT $2)"
                for value in DeliveryStatus
            )
            where = [f"d.seq = ANY (ARRAY({newest}))"]
        else:
            where, args = _newest_first_filter(
                "d.",
                organization_id,
                limit,
                after,
                status=None if status is None else DeliveryStatus(status).value,
                endpoint_id=endpoint_id,
            )
        async with self._connection() as conn:
            rows = await conn.fetch(
                f"SELECT {sql.DELIVERY_COLUMNS} FROM deliveries d"  # noqa: S608
                f" JOIN events e ON e.seq = d.event_seq WHERE {' AND '.join(where)}"
                " ORDER BY d.seq DESC LIMIT $2",
                *args,
            )
            if not rows:
                await self._require_organization(conn, organization_id)
        items = tuple(recs.delivery(row) for row in rows[:limit])
        return Page(items, str(rows[limit - 1]["seq"]) if len(rows) > limit and items else None)

    async def retry_delivery(self, organization_id: str, delivery_id: str) -> Delivery:
        async def retry(conn: asyncpg.Connection) -> None:
            row = await conn.fetchrow(
                "SELECT d.seq, d.status, d.endpoint_id, d.ordering_key, p.enabled, p.deleted_at"
                " FROM deliveries d JOIN endpoints p ON p.id = d.endpoint_id"
                " WHERE d.organization_id = $1 AND d.id = $2",
                organization_id,
                delivery_id,
            )
            if row is None:
                raise NotFoundError(f"delivery {delivery_id!r} not found")
            if row["status"] != DeliveryStatus.FAILED:
                raise StoreError(
                    f"delivery {delivery_id!r} is {row['status']}: only a failed one can be retried"
                )
            if row["deleted_at"] is not None:
                raise StoreError(f"the endpoint of delivery {delivery_id!r} was deleted")
            key = row["ordering_key"]
            if key is not None:
                await conn.execute(sql.LOCK_ORDERING_KEYS, [organization_id], [key])
                # The key's pending deliveries locked first, so that no claim leases one while
                # this looks: a retried delivery would be the head beside a later one being
                # attempted.
                if await conn.fetchval(sql.KEY_IN_FLIGHT, row["endpoint_id"], key, row["seq"]):
                    raise key_in_flight(delivery_id)
            blocked = (_BEHIND_KEY if key is not None else 0) | (
                0 if row["enabled"] else _ENDPOINT_DISABLED
            )
            status = await conn.execute(
                "UPDATE deliveries SET status = 'pending', round_start = attempt_count,"
                " next_attempt_at = now(), locked_by = NULL, lease_expires_at = NULL,"
                " updated_at = now(), blocked = $2 WHERE seq = $1 AND status = 'failed'",
                row["seq"],
                blocked,
            )
            if status != "UPDATE 1":  # retried concurrently by another caller
                raise StoreError(f"delivery {delivery_id!r} is no longer failed")
            if key is not None:
                # An older delivery coming back makes it the head again: block every other one.
                await conn.execute(
                    "UPDATE deliveries SET blocked = blocked | 1 WHERE status = 'pending'"
                    " AND endpoint_id = $1 AND ordering_key = $2 AND seq <> $3",
                    row["endpoint_id"],
                    key,
                    row["seq"],
                )
                await conn.execute(sql.UNBLOCK_HEADS, [row["endpoint_id"]], [key])

        await self._repeatable(retry)
        self._wake_workers()
        return await self.get_delivery(organization_id, delivery_id)

    # -- the worker's side -----------------------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        *,
        exclude_endpoints: Sequence[str] = (),
        endpoint_room: Mapping[str, int] | None = None,
        per_endpoint: int | None = None,
    ) -> list[ClaimedDelivery]:
        """As :meth:`Store.claim`; also, at most ``endpoint_room[e]`` deliveries of endpoint
        ``e`` and ``per_endpoint`` of any other (None: no bound but ``limit``). A worker that
        passes the room it has for each endpoint gets no delivery it would have to give back
        (``release``) unattempted."""
        self._listen()
        view = self._valid_due_view()
        if view is not None and view.idle_until is not None and time.monotonic() < view.idle_until:
            return []  # nothing was due a moment ago, and nothing was announced since
        rooms = dict(endpoint_room or {})
        claimed: list[ClaimedDelivery] = []
        for attempt in range(_CLAIM_ROUNDS):
            wanted = limit - len(claimed)
            if wanted < 1:
                break
            full = [endpoint for endpoint, room in rooms.items() if room <= 0]
            batch, skipped = await self._claim_once(
                worker_id,
                wanted,
                lease_seconds,
                [*exclude_endpoints, *full] if full else exclude_endpoints,
                rooms,
                per_endpoint,
            )
            claimed.extend(batch)
            if rooms or per_endpoint is not None:
                for delivery in batch:  # a next round has that much less room
                    left = rooms.get(delivery.endpoint_id, per_endpoint)
                    if left is not None:
                        rooms[delivery.endpoint_id] = left - 1
            if not skipped:
                break
            # Candidates were locked by claimers running at this very moment: once they commit,
            # a new statement sees their rows leased and takes the next ones.
            await asyncio.sleep(0.001 * attempt)
        return claimed

    async def _claim_once(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        exclude: Sequence[str],
        rooms: Mapping[str, int] | None = None,
        per_endpoint: int | None = None,
    ) -> tuple[list[ClaimedDelivery], bool]:
        """One claim statement; also says whether due candidates were left to other claimers."""
        start_org, start_ep = self._claim_from
        generation, sent = self._signal.generation, time.monotonic()
        self._due_view = None
        async with self._relaxed() as conn:
            rows = await conn.fetch(
                sql.CLAIM,
                worker_id,
                limit,
                float(lease_seconds),
                start_org,
                start_ep,
                self._claim_pairs,
                list(exclude),
                limit + _CLAIM_SLACK,
                list(rooms or ()),
                [max(0, n) for n in (rooms or {}).values()],
                None if per_endpoint is None else max(0, per_endpoint),
            )
        claimed = [row for row in rows if row["id"] is not None]
        marker = next((row for row in rows if row["id"] is None), None)
        if marker is not None and (marker["walked"] >= self._claim_pairs or not claimed):
            # The walk stopped early (or found nothing to take): go on from where it stopped.
            self._claim_from = (marker["organization_id"], marker["endpoint_id"])
        elif claimed:
            last = max(claimed, key=lambda row: (row["rn"], row["n"]))
            self._claim_from = (last["organization_id"], last["endpoint_id"])
        # Left short by racing claimers, is another round worth it? Only when due rows were
        # left out of this one's view: a pair gave as many candidates as it may (it may have
        # more behind those locked), or the batch's cut left some out. Otherwise every due row
        # was seen, and those not taken are being leased by the racers: a claim that loses
        # the race for the one event just published does not run again for nothing.
        window = limit + _CLAIM_SLACK
        skipped = (
            marker is not None
            and len(claimed) < limit
            and marker["candidates"] > len(claimed)
            and (marker["fullest"] >= window or marker["candidates"] > window)
        )
        if marker is None:  # no pair had ready work, so nothing was claimed either
            self._due_view = _DueView(
                generation, sent + _DUE_VIEW_SECONDS, None, sent + _DUE_VIEW_SECONDS
            )
        elif marker["walked"] < self._claim_pairs and len(claimed) < sql.SMALL_CLAIM:
            # The walk saw every pair and the claim was small (else no next_due was read)
            due: datetime | None = marker["next_due"]
            idle_until: float | None = sent + _DUE_VIEW_SECONDS
            if due is not None:
                ahead = (due - marker["server_now"]).total_seconds()
                idle_until = sent + min(ahead, _DUE_VIEW_SECONDS) if ahead > 0 else None
            self._due_view = _DueView(generation, sent + _DUE_VIEW_SECONDS, due, idle_until)
        result = [
            ClaimedDelivery(
                id=row["id"],
                organization_id=row["organization_id"],
                event_id=row["event_id"],
                event_type=row["event_type"],
                endpoint_id=row["endpoint_id"],
                url=row["url"],
                body=bytes(row["body"]),
                attempt_number=row["attempt_number"],
                round_attempt=row["round_attempt"],
                lease_expires_at=row["lease_expires_at"],
                ordering_key=row["ordering_key"],
            )
            for row in sorted(claimed, key=lambda row: (row["rn"], row["n"]))
        ]
        return result, skipped

    async def record(self, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> None:
        latest = {outcome.delivery_id: outcome for outcome in outcomes}
        if not latest:
            return
        batch = list(latest.values())
        args = (
            worker_id,
            [o.delivery_id for o in batch],
            [o.attempt.number for o in batch],
            [o.attempt.started_at for o in batch],
            [float(o.attempt.duration_ms) for o in batch],
            [o.attempt.status_code for o in batch],
            [_no_nul(o.attempt.error) for o in batch],
            [_no_nul(o.attempt.response_excerpt) for o in batch],
            [DeliveryStatus(o.status).value for o in batch],
            [o.next_attempt_at for o in batch],
        )
        self._due_view = None  # a retry it schedules is due without a NOTIFY
        async with self._relaxed() as conn:
            unblocked = await conn.fetchval(sql.RECORD, *args)
        if unblocked:
            self._wake_workers()  # the next delivery of an ordering key may go now

    async def extend_leases(
        self, worker_id: str, delivery_ids: Sequence[str], lease_seconds: float
    ) -> None:
        if not delivery_ids:
            return
        async with self._relaxed() as conn:
            await conn.execute(
                sql.EXTEND_LEASES, worker_id, list(delivery_ids), float(lease_seconds)
            )

    async def release(self, worker_id: str, delivery_ids: Sequence[str]) -> None:
        if not delivery_ids:
            return
        async with self._relaxed() as conn:
            status = await conn.execute(sql.RELEASE, worker_id, list(delivery_ids))
        if status != "UPDATE 0":
            self._wake_workers()

    async def endpoint_urls(self, endpoint_ids: Sequence[str]) -> dict[str, str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT id, url FROM endpoints"
                " WHERE id = ANY($1::text[]) AND enabled AND deleted_at IS NULL",
                list(endpoint_ids),
            )
        return {row[0]: row[1] for row in rows}

    async def lease_holders(self) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(sql.LEASE_HOLDERS)
        return [row[0] for row in rows]

    async def release_worker(self, worker_id: str) -> int:
        async with self._connection() as conn:
            status = await conn.execute(sql.RELEASE_WORKER, worker_id)
        released = int(status.split()[-1])  # "UPDATE n"
        if released:
            self._wake_workers()
        return released

    def _wake_workers(self) -> None:
        """After a commit that made work due: wake this process now, the others via NOTIFY."""
        self._signal.notify_local()
        self._notifier.kick()

    def _valid_due_view(self) -> _DueView | None:
        view = self._due_view
        if (
            view is None
            or view.generation != self._signal.generation
            or not self._signal.connected
            or time.monotonic() >= view.valid_until
        ):
            return None
        return view

    async def next_due_at(self) -> datetime | None:
        self._listen()
        view = self._valid_due_view()
        if view is not None:
            return view.next_due  # what the claim just before saw, nothing announced since
        async with self._connection() as conn:
            due: datetime | None = await conn.fetchval(sql.NEXT_DUE_AT)
        return due

    async def wait_for_work(self, max_wait: float) -> None:
        self._listen()
        await self._signal.wait(max_wait)

    async def delivery_counts(self) -> dict[DeliveryStatus, int]:
        async with self._connection() as conn:
            rows = await conn.fetch(sql.DELIVERY_COUNTS)
        counts = dict.fromkeys(DeliveryStatus, 0)
        for status, count in rows:
            counts[DeliveryStatus(status)] = int(count)
        return counts


def _no_nul(text: str | None) -> str | None:
    """``text`` with NUL characters as U+FFFD: PostgreSQL's text cannot hold them, and one such
    outcome would fail the record of the whole batch, again on every retry."""
    return text.replace("\0", "\ufffd") if text is not None and "\0" in text else text


def _newest_first_filter(
    prefix: str, organization_id: str, limit: int, after: str | None, **equal: object
) -> tuple[list[str], list[Any]]:
    """WHERE terms and arguments of a newest-first page: ``$1`` the organization, ``$2`` the
    LIMIT (one more than the page, to know whether another follows), then the cursor and each
    ``column = value`` filter that is not None, columns qualified by ``prefix``."""
    where = [f"{prefix}organization_id = $1"]
    args: list[Any] = [organization_id, limit + 1]
    before = recs.seq_cursor(after)
    if before is not None:
        args.append(before)
        where.append(f"{prefix}seq < ${len(args)}")
    for column, value in equal.items():
        if value is not None:
            args.append(value)
            where.append(f"{prefix}{column} = ${len(args)}")
    return where, args
