"""The SQLite store's writes, as plain functions run on the writer thread.

Each function takes the write connection first and raises a StoreError for a caller's
mistake; the engine rolls back its savepoint (or its transaction, when it ran alone), so a
failed call leaves no trace.

The worker's ``record`` is the hot one: it finds rows by the seq its claim remembered and
passes a whole call's outcomes as one JSON array to two statements that check the lease
themselves (see ``record``), so that the writer holds the GIL for little per outcome.

Ordering keys are kept with a ``blocked`` bit (1) on every pending delivery that is not the
oldest pending one of its (endpoint, ordering key): claim only ever looks at unblocked rows,
and each transition that ends the head (succeeded, finally failed) unblocks the next one with
one index lookup. Bit 2 holds the pending deliveries of a disabled endpoint.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Literal

from ...ids import new_id
from .._checks import endpoint_changes, key_in_flight
from ..base import LastActiveKeyError, LastAdminTokenError, NotFoundError, StoreError
from ..models import (
    ApiToken,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Organization,
    WebhookKey,
)
from . import _reads, _rows
from ._rows import chunks, from_ms, marks, now_ms, to_ms

__all__ = [
    "BEHIND_KEY",
    "ENDPOINT_DISABLED",
    "activate_key",
    "create_endpoint",
    "create_first_admin_token",
    "create_key",
    "create_organization",
    "create_token",
    "delete_endpoint",
    "delete_token",
    "extend_leases",
    "record",
    "release",
    "release_worker",
    "require_organization",
    "retry_delivery",
    "revoke_key",
    "rewrite_key_ciphertexts",
    "update_endpoint",
]

BEHIND_KEY = 1
ENDPOINT_DISABLED = 2


def require_organization(conn: sqlite3.Connection, organization_id: str) -> None:
    row = conn.execute("SELECT 1 FROM organizations WHERE id = ?", (organization_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"organization {organization_id!r} not found")


# -- organizations, tokens, keys ------------------------------------------------------------


def create_organization(conn: sqlite3.Connection, name: str) -> Organization:
    org = Organization(id=new_id("org"), name=name, created_at=from_ms(now_ms()))
    conn.execute(
        "INSERT INTO organizations (id, name, created_at) VALUES (?, ?, ?)",
        (org.id, org.name, to_ms(org.created_at)),
    )
    return org


def create_token(
    conn: sqlite3.Connection, organization_id: str | None, token_hash: bytes, name: str | None
) -> ApiToken:
    if organization_id is not None:
        require_organization(conn, organization_id)
    now = now_ms()
    token = ApiToken(
        id=new_id("tok"), organization_id=organization_id, name=name, created_at=from_ms(now)
    )
    try:
        conn.execute(
            "INSERT INTO api_tokens (id, organization_id, token_hash, name, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (token.id, organization_id, token_hash, name, now),
        )
    except sqlite3.IntegrityError as exc:
        raise StoreError("a token with this hash already exists") from exc
    return token


def create_first_admin_token(
    conn: sqlite3.Connection, token_hash: bytes, name: str
) -> ApiToken | None:
    # One writer at a time, across processes too (the write lock): check and insert are atomic.
    if _admin_tokens_left(conn):
        return None
    return create_token(conn, None, token_hash, name)


def delete_token(
    conn: sqlite3.Connection, organization_id: str | None, token_id: str, keep_last_admin: bool
) -> None:
    # ``IS`` matches NULL too: None deletes only an admin token.
    deleted = conn.execute(
        "DELETE FROM api_tokens WHERE id = ? AND organization_id IS ?", (token_id, organization_id)
    ).rowcount
    if deleted == 0:
        raise NotFoundError(f"token {token_id!r} not found")
    # In the same transaction (one writer at a time): a raise rolls the delete back.
    if keep_last_admin and organization_id is None and not _admin_tokens_left(conn):
        raise LastAdminTokenError(f"token {token_id!r} is the last admin token")


def _admin_tokens_left(conn: sqlite3.Connection) -> bool:
    found = conn.execute("SELECT 1 FROM api_tokens WHERE organization_id IS NULL LIMIT 1")
    return found.fetchone() is not None


def create_key(
    conn: sqlite3.Connection,
    organization_id: str,
    ciphertext: bytes,
    activate: bool | Literal["if_first"],
    key_id: str | None = None,
) -> WebhookKey:
    require_organization(conn, organization_id)
    if activate == "if_first":
        # In the insert's transaction (one writer at a time): of first keys issued at once,
        # only the one that runs first finds no active key.
        activate = not _has_active_key(conn, organization_id)
    now = now_ms()
    if key_id is None:
        key_id = new_id("key")
    conn.execute(
        "INSERT INTO webhook_keys (id, organization_id, secret_ciphertext, created_at,"
        " activated_at) VALUES (?, ?, ?, ?, ?)",
        (key_id, organization_id, ciphertext, now, now if activate else None),
    )
    return _key(conn, organization_id, key_id)


def _has_active_key(conn: sqlite3.Connection, organization_id: str, *, besides: str = "") -> bool:
    """Whether the organization has an active key (activated, not revoked) other than
    ``besides``; in the caller's transaction (one writer at a time), so it holds until commit."""
    return (
        conn.execute(
            "SELECT 1 FROM webhook_keys WHERE organization_id = ? AND id <> ?"
            " AND activated_at IS NOT NULL AND revoked_at IS NULL LIMIT 1",
            (organization_id, besides),
        ).fetchone()
        is not None
    )


def rewrite_key_ciphertexts(
    conn: sqlite3.Connection, prefix: bytes, rewrite: Callable[[WebhookKey], bytes | None]
) -> int:
    # In the writer's transaction: no other process changes a row between read and update;
    # the update still checks the ciphertext read, as the store's contract says.
    rows = conn.execute(
        f"SELECT {_rows.KEY_COLUMNS} FROM webhook_keys"  # noqa: S608 (fixed column list)
        " WHERE substr(secret_ciphertext, 1, ?) = ? ORDER BY id",
        (len(prefix), prefix),
    ).fetchall()
    replaced = 0
    for row in rows:
        key = _rows.key(row)
        rewritten = rewrite(key)
        if rewritten is not None:
            replaced += conn.execute(
                "UPDATE webhook_keys SET secret_ciphertext = ?"
                " WHERE id = ? AND secret_ciphertext = ?",
                (rewritten, key.id, key.secret_ciphertext),
            ).rowcount
    return replaced


def _key(conn: sqlite3.Connection, organization_id: str, key_id: str) -> WebhookKey:
    row = conn.execute(
        f"SELECT {_rows.KEY_COLUMNS} FROM webhook_keys"  # noqa: S608 (fixed column list)
        " WHERE organization_id = ? AND id = ?",
        (organization_id, key_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"webhook key {key_id!r} not found")
    return _rows.key(row)


def activate_key(conn: sqlite3.Connection, organization_id: str, key_id: str) -> WebhookKey:
    current = _key(conn, organization_id, key_id)
    if current.revoked_at is not None:
        raise StoreError(f"webhook key {key_id!r} is revoked and cannot sign again")
    # Strictly later than any other activation, so "most recently activated" is unambiguous.
    latest = conn.execute(
        "SELECT MAX(activated_at) FROM webhook_keys WHERE organization_id = ?",
        (organization_id,),
    ).fetchone()[0]
    now = max(now_ms(), (latest or 0) + 1)
    conn.execute("UPDATE webhook_keys SET activated_at = ? WHERE id = ?", (now, key_id))
    return _key(conn, organization_id, key_id)


def revoke_key(
    conn: sqlite3.Connection, organization_id: str, key_id: str, keep_last_active: bool
) -> WebhookKey:
    current = _key(conn, organization_id, key_id)
    if current.revoked_at is None:
        # In the revoke's transaction (one writer at a time): two revokes cannot both see
        # the other's key still active.
        if (
            keep_last_active
            and current.activated_at is not None
            and not _has_active_key(conn, organization_id, besides=key_id)
        ):
            raise LastActiveKeyError(f"webhook key {key_id!r} is the only active key")
        conn.execute("UPDATE webhook_keys SET revoked_at = ? WHERE id = ?", (now_ms(), key_id))
    return _key(conn, organization_id, key_id)


# -- endpoints --------------------------------------------------------------------------------


def create_endpoint(
    conn: sqlite3.Connection,
    organization_id: str,
    url: str,
    event_types: Sequence[str] | None,
    description: str | None,
    enabled: bool,
) -> Endpoint:
    require_organization(conn, organization_id)
    now = now_ms()
    endpoint_id = new_id("ep")
    conn.execute(
        "INSERT INTO endpoints (id, organization_id, url, event_types, description, enabled,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            endpoint_id,
            organization_id,
            url,
            _rows.encode_types(event_types),
            description,
            int(enabled),
            now,
            now,
        ),
    )
    return _reads.endpoint(conn, organization_id, endpoint_id)


def update_endpoint(
    conn: sqlite3.Connection, organization_id: str, endpoint_id: str, changes: dict[str, object]
) -> Endpoint:
    values = endpoint_changes(changes)
    current = _reads.endpoint(conn, organization_id, endpoint_id)
    if "event_types" in values:
        values["event_types"] = _rows.encode_types(values["event_types"])  # type: ignore[arg-type]
    if "enabled" in values:
        values["enabled"] = int(bool(values["enabled"]))
    if values:
        values["updated_at"] = now_ms()
        assignments = ", ".join(f"{column} = ?" for column in values)
        conn.execute(
            f"UPDATE endpoints SET {assignments} WHERE id = ?",  # noqa: S608 (fixed column names)
            (*values.values(), endpoint_id),
        )
    if "enabled" in values and bool(values["enabled"]) != current.enabled:
        # A disabled endpoint's pending deliveries wait (unclaimable) until it is enabled again.
        if values["enabled"]:
            sql = "UPDATE deliveries SET blocked = blocked & ~2 WHERE endpoint_id = ?"
        else:
            sql = "UPDATE deliveries SET blocked = blocked | 2 WHERE endpoint_id = ?"
        conn.execute(sql + " AND status = 'pending'", (endpoint_id,))
    return _reads.endpoint(conn, organization_id, endpoint_id)


def delete_endpoint(conn: sqlite3.Connection, organization_id: str, endpoint_id: str) -> None:
    _reads.endpoint(conn, organization_id, endpoint_id)  # NotFoundError, also if deleted
    now = now_ms()
    conn.execute(
        "UPDATE endpoints SET deleted_at = ?, enabled = 0, updated_at = ? WHERE id = ?",
        (now, now, endpoint_id),
    )
    # Every pending delivery of the endpoint ends here, so no ordering key needs unblocking.
    # A lease stays with its worker: the attempt it has on its way is recorded (see record).
    conn.execute(
        "UPDATE deliveries SET status = 'failed', blocked = 0, next_attempt_at = NULL,"
        " updated_at = ? WHERE endpoint_id = ? AND status = 'pending'",
        (now, endpoint_id),
    )


def _unblock_head(conn: sqlite3.Connection, endpoint_id: str, ordering_key: str) -> None:
    """Make the oldest pending delivery of this key the only claimable one."""
    head = conn.execute(
        "SELECT seq FROM deliveries INDEXED BY deliveries_ordering"
        " WHERE status = 'pending' AND endpoint_id = ?"
        " AND ordering_key = ? ORDER BY seq LIMIT 1",
        (endpoint_id, ordering_key),
    ).fetchone()
    if head is not None:
        conn.execute("UPDATE deliveries SET blocked = blocked & ~1 WHERE seq = ?", (head[0],))


# -- retries and the worker's writes ------------------------------------------------------------


def retry_delivery(conn: sqlite3.Connection, organization_id: str, delivery_id: str) -> Delivery:
    row = conn.execute(
        "SELECT d.seq, d.status, d.endpoint_id, d.ordering_key, p.enabled, p.deleted_at"
        " FROM deliveries d JOIN endpoints p ON p.id = d.endpoint_id"
        " WHERE d.organization_id = ? AND d.id = ?",
        (organization_id, delivery_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"delivery {delivery_id!r} not found")
    seq, status, endpoint_id, ordering_key, enabled, deleted_at = row
    if status != DeliveryStatus.FAILED:
        raise StoreError(f"delivery {delivery_id!r} is {status}: only a failed one can be retried")
    if deleted_at is not None:
        raise StoreError(f"the endpoint of delivery {delivery_id!r} was deleted")
    now = now_ms()
    # Only a later delivery of the key in flight refuses: retried, this one would be the head
    # beside it. Behind an earlier one in flight it simply waits its turn.
    if (
        ordering_key is not None
        and conn.execute(
            "SELECT 1 FROM deliveries INDEXED BY deliveries_ordering"
            " WHERE status = 'pending' AND endpoint_id = ? AND ordering_key = ? AND seq > ?"
            " AND locked_by IS NOT NULL AND lease_expires_at > ? LIMIT 1",
            (endpoint_id, ordering_key, seq, now),
        ).fetchone()
    ):
        raise key_in_flight(delivery_id)
    conn.execute(
        "UPDATE deliveries SET status = 'pending', round_start = attempt_count,"
        " next_attempt_at = ?, locked_by = NULL, lease_expires_at = NULL, updated_at = ?,"
        " blocked = ? WHERE seq = ?",
        (now, now, BEHIND_KEY if ordering_key is not None else 0, seq),
    )
    if not enabled:
        conn.execute("UPDATE deliveries SET blocked = blocked | 2 WHERE seq = ?", (seq,))
    if ordering_key is not None:
        # An older delivery coming back makes it the head again: block every other one.
        conn.execute(
            "UPDATE deliveries SET blocked = blocked | 1 WHERE status = 'pending'"
            " AND endpoint_id = ? AND ordering_key = ?",
            (endpoint_id, ordering_key),
        )
        _unblock_head(conn, endpoint_id, ordering_key)
    return _reads.delivery(conn, organization_id, delivery_id)


# Both guarded by the lease: an outcome whose lease went to another worker (or whose delivery
# ended meanwhile) writes nothing. The attempt goes first: its number is the row's count + 1.
# ``id`` is checked beside ``seq`` so that a seq taken from ``Leases`` can never touch another
# delivery, whatever happens to the table. A delivery failed while leased (its endpoint was
# deleted: the lease stays) gets its attempt, and stays failed.
_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_seq, number, started_at, duration_ms, status_code,"
    " error, response_excerpt) SELECT seq, attempt_count + 1, ?, ?, ?, ?, ? FROM deliveries"
    " WHERE seq = ? AND id = ? AND locked_by = ? AND status IN ('pending', 'failed')"
)
_UPDATE_RECORDED = (  # (every expression reads the row as it was: status is the old one)
    "UPDATE deliveries SET status = CASE status WHEN 'failed' THEN 'failed' ELSE ? END,"
    " attempt_count = attempt_count + 1,"
    " next_attempt_at = CASE status WHEN 'failed' THEN NULL ELSE ? END,"
    " locked_by = NULL, lease_expires_at = NULL, updated_at = ?"
    " WHERE seq = ? AND id = ? AND locked_by = ? AND status IN ('pending', 'failed')"
)
# The same two for a whole call's outcomes at once, passed as one JSON array of
# [seq, started_at, duration_ms, status_code, error, excerpt, id, status, next_attempt_at]:
# two statements (and two releases of the GIL) per call instead of one per outcome and table,
# and no Python binding per value. ``CROSS JOIN`` / ``NOT INDEXED`` keep the plan "each array
# element, then its row by rowid" (the planner would rather scan the leases of the worker).
_INSERT_ATTEMPTS_JSON = (
    "INSERT INTO attempts (delivery_seq, number, started_at, duration_ms, status_code, error,"
    " response_excerpt) SELECT d.seq, d.attempt_count + 1, o.value ->> 1, o.value ->> 2,"
    " o.value ->> 3, o.value ->> 4, o.value ->> 5"
    " FROM json_each(?1) o CROSS JOIN deliveries d NOT INDEXED ON d.seq = o.value ->> 0"
    " WHERE d.id = o.value ->> 6 AND d.locked_by = ?2 AND d.status IN ('pending', 'failed')"
)
_UPDATE_RECORDED_JSON = (
    "UPDATE deliveries NOT INDEXED"
    " SET status = CASE status WHEN 'failed' THEN 'failed' ELSE o.value ->> 7 END,"
    " attempt_count = attempt_count + 1,"
    " next_attempt_at = CASE status WHEN 'failed' THEN NULL ELSE o.value ->> 8 END,"
    " locked_by = NULL, lease_expires_at = NULL, updated_at = ?3 FROM json_each(?1) o"
    " WHERE deliveries.seq = o.value ->> 0 AND deliveries.id = o.value ->> 6"
    " AND deliveries.locked_by = ?2 AND deliveries.status IN ('pending', 'failed')"
)
_STATUSES = {status.value: status for status in DeliveryStatus}
_json_path: list[bool] = []  # [whether this SQLite has ->> and json_each], once known
_dumps = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _has_json(conn: sqlite3.Connection) -> bool:
    if not _json_path:
        try:  # SQLite >= 3.38 has ->> and the JSON functions built in
            ok = conn.execute("SELECT json_array(7) ->> 0").fetchone()[0] == 7
        except sqlite3.Error:
            ok = False
        _json_path.append(ok)
    return _json_path[0]


def record(
    conn: sqlite3.Connection,
    worker_id: str,
    outcomes: Sequence[AttemptOutcome],
    known: dict[str, tuple[int, str, str | None]] | None = None,
) -> bool:
    """Apply outcomes of deliveries still leased to ``worker_id``; True if any stays pending.

    Set-based: one statement per table for the whole call (the outcomes as one JSON array;
    ``executemany`` where SQLite lacks JSON, or a text holds a NUL, which JSON text cannot
    carry), whose statements check the lease themselves. The rows are found by seq:
    ``known`` (``Leases.known``, filled by the claim; entries used are removed) or else one
    lookup by id per 500 outcomes. Deliveries with an ordering key go one by one (whether
    their outcome applied decides whether the next of the key is unblocked). Two outcomes for
    one delivery in a call (possible when an earlier record failed and its lease came back)
    are applied one after the other, as the plain loop would.
    """
    if known is None:
        known = {}
    ids = [outcome.delivery_id for outcome in outcomes]
    if len(set(ids)) != len(ids):
        return any([record(conn, worker_id, [outcome], known) for outcome in outcomes])
    found: dict[str, tuple[int, str, str | None]] = {}
    missing = []
    pop = known.pop
    for delivery_id in ids:
        entry = pop(delivery_id, None)
        if entry is None:
            missing.append(delivery_id)
        else:
            found[delivery_id] = entry
    for part in chunks(missing):
        for row in conn.execute(
            "SELECT id, seq, endpoint_id, ordering_key FROM deliveries"  # noqa: S608
            f" WHERE id IN ({marks(len(part))})"
            " AND locked_by = ? AND status IN ('pending', 'failed')",
            (*part, worker_id),
        ):
            found[row[0]] = (row[1], row[2], row[3])
    now = now_ms()
    may_be_pending = False
    plain: list[_Row] = []
    keyed: list[tuple[_Row, str, str]] = []
    nul = False
    for outcome in outcomes:
        delivery_id = outcome.delivery_id
        entry = found.get(delivery_id)
        if entry is None:  # not leased to this worker (any more): nothing to write
            continue
        seq, endpoint_id, ordering_key = entry
        status = outcome.status
        if type(status) is not DeliveryStatus:
            status = _STATUSES.get(status) or DeliveryStatus(status)  # ValueError if unknown
        if status is DeliveryStatus.PENDING:
            due = now if outcome.next_attempt_at is None else to_ms(outcome.next_attempt_at)
        else:
            due = None
        attempt = outcome.attempt
        error, excerpt = attempt.error, attempt.response_excerpt
        row = (seq, to_ms(attempt.started_at), float(attempt.duration_ms), attempt.status_code,
               error, excerpt, delivery_id, status.value, due)  # fmt: skip
        if ordering_key is None:
            plain.append(row)
            if due is not None:
                may_be_pending = True
            if (error is not None and "\0" in error) or (excerpt is not None and "\0" in excerpt):
                nul = True
        else:
            keyed.append((row, endpoint_id, ordering_key))
    any_pending = False
    if plain:
        # True if one that stays pending was in the call, even if its lease was gone: at
        # worst the claim loop wakes once for nothing.
        any_pending = may_be_pending
        document = None
        if not nul and _has_json(conn):
            with contextlib.suppress(ValueError):  # NaN or infinity: not JSON
                document = _dumps(plain)
        if document is not None:
            conn.execute(_INSERT_ATTEMPTS_JSON, (document, worker_id))
            conn.execute(_UPDATE_RECORDED_JSON, (document, worker_id, now))
        else:
            conn.executemany(_INSERT_ATTEMPT, [_attempt_args(row, worker_id) for row in plain])
            conn.executemany(_UPDATE_RECORDED, [_update_args(row, worker_id, now) for row in plain])
    for row, endpoint_id, ordering_key in keyed:
        if conn.execute(_INSERT_ATTEMPT, _attempt_args(row, worker_id)).rowcount == 0:
            continue  # the lease is gone
        conn.execute(_UPDATE_RECORDED, _update_args(row, worker_id, now))
        any_pending = True  # still pending, or the next of its key may go now
        if row[8] is None:
            # It ended: the next delivery of its key may go (blocked = 0 for this one, too,
            # so that a manual retry starts from a clean state).
            conn.execute("UPDATE deliveries SET blocked = 0 WHERE seq = ?", (row[0],))
            _unblock_head(conn, endpoint_id, ordering_key)
    return any_pending


# seq, started_at, duration_ms, status_code, error, excerpt, id, status, next_attempt_at
_Row = tuple[int, int, float, int | None, str | None, str | None, str, str, int | None]


def _attempt_args(row: _Row, worker_id: str) -> tuple[object, ...]:
    return (*row[1:6], row[0], row[6], worker_id)


def _update_args(row: _Row, worker_id: str, now: int) -> tuple[object, ...]:
    return (row[7], row[8], now, row[0], row[6], worker_id)


def extend_leases(
    conn: sqlite3.Connection, worker_id: str, delivery_ids: Sequence[str], lease_seconds: float
) -> None:
    until = now_ms() + round(lease_seconds * 1000)
    for part in chunks(list(delivery_ids)):
        conn.execute(
            "UPDATE deliveries SET lease_expires_at = ?, next_attempt_at = ?"  # noqa: S608
            f" WHERE id IN ({marks(len(part))}) AND locked_by = ? AND status = 'pending'",
            (until, until, *part, worker_id),
        )


def release(conn: sqlite3.Connection, worker_id: str, delivery_ids: Sequence[str]) -> int:
    now = now_ms()
    released = 0
    for part in chunks(list(delivery_ids)):
        cursor = conn.execute(
            "UPDATE deliveries SET locked_by = NULL, lease_expires_at = NULL,"  # noqa: S608
            f" next_attempt_at = ? WHERE id IN ({marks(len(part))}) AND locked_by = ?"
            " AND status = 'pending'",
            (now, *part, worker_id),
        )
        released += cursor.rowcount
    return released


def release_worker(conn: sqlite3.Connection, worker_id: str) -> int:
    """Give back every lease ``worker_id`` holds, due at once; returns how many."""
    now = now_ms()
    cursor = conn.execute(
        "UPDATE deliveries INDEXED BY deliveries_leased SET locked_by = NULL,"
        " lease_expires_at = NULL, next_attempt_at = ?, updated_at = ?"
        " WHERE locked_by = ? AND status = 'pending'",
        (now, now, worker_id),
    )
    return cursor.rowcount
