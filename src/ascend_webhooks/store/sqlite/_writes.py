"""The SQLite store's writes, as plain functions run on the writer thread inside a SAVEPOINT.

Each function takes the write connection first and raises a StoreError for a caller's
mistake; the engine rolls back to the savepoint, so a failed call leaves no trace.

Ordering keys are kept with a ``blocked`` bit (1) on every pending delivery that is not the
oldest pending one of its (endpoint, ordering key): claim only ever looks at unblocked rows,
and each transition that ends the head (succeeded, finally failed) unblocks the next one with
one index lookup. Bit 2 holds the pending deliveries of a disabled endpoint.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ...ids import new_id
from ..base import EventConflictError, NotFoundError, StoreError
from ..models import (
    ApiToken,
    AttemptOutcome,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    NewEvent,
    Organization,
    PublishResult,
    WebhookKey,
)
from . import _reads, _rows
from ._rows import chunks, from_ms, marks, now_ms, to_ms

__all__ = [
    "activate_key",
    "create_endpoint",
    "create_key",
    "create_organization",
    "create_token",
    "delete_endpoint",
    "extend_leases",
    "publish_group",
    "record",
    "release",
    "retry_delivery",
    "revoke_key",
    "update_endpoint",
]

BEHIND_KEY = 1
ENDPOINT_DISABLED = 2

_ENDPOINT_FIELDS = frozenset({"url", "event_types", "description", "enabled"})


def _require_organization(conn: sqlite3.Connection, organization_id: str) -> None:
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
        _require_organization(conn, organization_id)
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


def create_key(
    conn: sqlite3.Connection, organization_id: str, ciphertext: bytes, activate: bool
) -> WebhookKey:
    _require_organization(conn, organization_id)
    now = now_ms()
    key_id = new_id("key")
    conn.execute(
        "INSERT INTO webhook_keys (id, organization_id, secret_ciphertext, created_at,"
        " activated_at) VALUES (?, ?, ?, ?, ?)",
        (key_id, organization_id, ciphertext, now, now if activate else None),
    )
    return _key(conn, organization_id, key_id)


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


def revoke_key(conn: sqlite3.Connection, organization_id: str, key_id: str) -> WebhookKey:
    current = _key(conn, organization_id, key_id)
    if current.revoked_at is None:
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
    _require_organization(conn, organization_id)
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
    unknown = set(changes) - _ENDPOINT_FIELDS
    if unknown:
        raise StoreError(f"cannot change {sorted(unknown)} of an endpoint")
    current = _reads.endpoint(conn, organization_id, endpoint_id)
    values: dict[str, object] = {}
    if "url" in changes:
        if not isinstance(changes["url"], str):
            raise StoreError("url must be a string")
        values["url"] = changes["url"]
    if "event_types" in changes:
        types = changes["event_types"]
        if types is not None and (
            isinstance(types, str | bytes)
            or not isinstance(types, Sequence)
            or not all(isinstance(t, str) for t in types)
        ):
            raise StoreError("event_types must be a list of strings or None")
        values["event_types"] = _rows.encode_types(types)
    if "description" in changes:
        if changes["description"] is not None and not isinstance(changes["description"], str):
            raise StoreError("description must be a string or None")
        values["description"] = changes["description"]
    if "enabled" in changes:
        if not isinstance(changes["enabled"], bool):
            raise StoreError("enabled must be true or false")
        values["enabled"] = int(changes["enabled"])
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
    conn.execute(
        "UPDATE deliveries SET status = 'failed', blocked = 0, next_attempt_at = NULL,"
        " locked_by = NULL, lease_expires_at = NULL, updated_at = ?"
        " WHERE endpoint_id = ? AND status = 'pending'",
        (now, endpoint_id),
    )


# -- publish ----------------------------------------------------------------------------------


PublishCall = tuple[str, tuple[NewEvent, ...]]


def publish_group(
    conn: sqlite3.Connection, calls: list[PublishCall]
) -> list[tuple[bool, list[PublishResult] | StoreError]]:
    """Publish many callers' events with one insert per table; a caller's error is its own."""
    batch = _PublishBatch(conn)
    outcomes: list[tuple[bool, list[PublishResult] | StoreError]] = []
    for organization_id, events in calls:
        try:
            outcomes.append((True, batch.add(organization_id, events)))
        except StoreError as exc:
            outcomes.append((False, exc))
    batch.flush()
    return outcomes


class _PublishBatch:
    """Rows staged for one transaction. ``add`` validates a call fully before staging any of
    its rows, so a call that raises leaves the batch as it was."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._now = now_ms()
        self._created_at = from_ms(self._now)
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._next_seq: int | None = None
        self._staged: dict[tuple[str, str], tuple[bytes, Event]] = {}  # (org, id) → hash, event
        self._chains: set[tuple[str, str]] = set()  # (endpoint, key) with a pending delivery
        self._event_rows: list[tuple[object, ...]] = []
        self._delivery_rows: list[tuple[object, ...]] = []

    def _endpoints_of(self, organization_id: str) -> list[Endpoint]:
        found = self._endpoints.get(organization_id)
        if found is None:
            found = [
                _rows.endpoint(row)
                for row in self._conn.execute(
                    f"SELECT {_rows.ENDPOINT_COLUMNS} FROM endpoints"  # noqa: S608
                    " WHERE organization_id = ? AND enabled = 1 AND deleted_at IS NULL",
                    (organization_id,),
                )
            ]
            if not found:  # an endpoint proves the organization exists: one query fewer
                _require_organization(self._conn, organization_id)
            self._endpoints[organization_id] = found
        return found

    def add(self, organization_id: str, events: Sequence[NewEvent]) -> list[PublishResult]:
        endpoints = self._endpoints_of(organization_id)
        unique: dict[str, NewEvent] = {}
        for new in events:
            seen = unique.setdefault(new.id, new)
            if seen.content_hash != new.content_hash:
                raise EventConflictError(new.id)
        existing: dict[str, int] = {}
        ids = list(unique)
        for part in chunks(ids):
            for seq, event_id, content_hash in self._conn.execute(
                "SELECT seq, id, content_hash FROM events"  # noqa: S608 (placeholders only)
                f" WHERE organization_id = ? AND id IN ({marks(len(part))})",
                (organization_id, *part),
            ):
                if bytes(content_hash) != unique[event_id].content_hash:
                    raise EventConflictError(event_id)
                existing[event_id] = seq
        earlier: dict[str, Event] = {}  # staged by another call of this batch
        for event_id, new in unique.items():
            staged = self._staged.get((organization_id, event_id))
            if staged is not None:
                if staged[0] != new.content_hash:
                    raise EventConflictError(event_id)
                earlier[event_id] = staged[1]
        # Valid: from here on nothing raises a StoreError.
        created = {
            new.id: self._stage(organization_id, endpoints, new)
            for new in unique.values()
            if new.id not in existing and new.id not in earlier
        }
        stored = _reads.events_by_seq(self._conn, list(existing.values())) if existing else {}
        results: list[PublishResult] = []
        reported: set[str] = set()
        for new in events:
            if new.id in created:
                results.append(PublishResult(created[new.id], created=new.id not in reported))
            elif new.id in earlier:
                results.append(PublishResult(earlier[new.id], created=False))
            else:
                results.append(PublishResult(stored[existing[new.id]], created=False))
            reported.add(new.id)
        return results

    def _stage(self, organization_id: str, endpoints: Sequence[Endpoint], new: NewEvent) -> Event:
        if self._next_seq is None:
            # We hold the write lock, so the next seq values are ours to hand out.
            row = self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            self._next_seq = int(row[0]) + 1
        seq = self._next_seq
        self._next_seq += 1
        now, created_at = self._now, self._created_at
        self._event_rows.append(
            (seq, new.id, organization_id, new.type, new.body, new.content_hash,
             new.ordering_key, now)
        )  # fmt: skip
        deliveries = []
        for endpoint in endpoints:
            if not endpoint.wants(new.type):
                continue
            blocked = 0
            if new.ordering_key is not None:
                chain = (endpoint.id, new.ordering_key)
                if chain in self._chains or _chain_has_pending(self._conn, *chain):
                    blocked = BEHIND_KEY
                self._chains.add(chain)
            delivery_id = new_id("dlv")
            self._delivery_rows.append(
                (delivery_id, organization_id, seq, endpoint.id, new.ordering_key, blocked,
                 now, now, now)
            )  # fmt: skip
            deliveries.append(
                Delivery(
                    id=delivery_id,
                    organization_id=organization_id,
                    event_id=new.id,
                    endpoint_id=endpoint.id,
                    status=DeliveryStatus.PENDING,
                    attempt_count=0,
                    next_attempt_at=created_at,
                    created_at=created_at,
                    updated_at=created_at,
                )
            )
        event = Event(
            id=new.id,
            organization_id=organization_id,
            type=new.type,
            body=new.body,
            ordering_key=new.ordering_key,
            created_at=created_at,
            deliveries=tuple(deliveries),
        )
        self._staged[(organization_id, new.id)] = (new.content_hash, event)
        return event

    def flush(self) -> None:
        if self._event_rows:
            self._conn.executemany(
                "INSERT INTO events (seq, id, organization_id, type, body, content_hash,"
                " ordering_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                self._event_rows,
            )
        if self._delivery_rows:
            self._conn.executemany(
                "INSERT INTO deliveries (id, organization_id, event_seq, endpoint_id,"
                " ordering_key, blocked, next_attempt_at, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                self._delivery_rows,
            )
        self._event_rows, self._delivery_rows = [], []


def _chain_has_pending(conn: sqlite3.Connection, endpoint_id: str, ordering_key: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_ordering"
        " WHERE status = 'pending' AND endpoint_id = ?"
        " AND ordering_key = ? LIMIT 1",
        (endpoint_id, ordering_key),
    ).fetchone()
    return row is not None


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


def record(conn: sqlite3.Connection, worker_id: str, outcomes: Sequence[AttemptOutcome]) -> bool:
    """Apply outcomes of deliveries still leased to ``worker_id``; True if any stays pending."""
    now = now_ms()
    any_pending = False
    for outcome in outcomes:
        row = conn.execute(
            "SELECT seq, attempt_count, endpoint_id, ordering_key FROM deliveries"
            " WHERE id = ? AND locked_by = ? AND status = 'pending'",
            (outcome.delivery_id, worker_id),
        ).fetchone()
        if row is None:  # the lease went to another worker, or the delivery ended meanwhile
            continue
        seq, attempt_count, endpoint_id, ordering_key = row
        attempt = outcome.attempt
        conn.execute(
            "INSERT INTO attempts (delivery_seq, number, started_at, duration_ms, status_code,"
            " error, response_excerpt) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                attempt_count + 1,
                to_ms(attempt.started_at),
                float(attempt.duration_ms),
                attempt.status_code,
                attempt.error,
                attempt.response_excerpt,
            ),
        )
        status = DeliveryStatus(outcome.status)
        if status is DeliveryStatus.PENDING:
            any_pending = True
            due = now if outcome.next_attempt_at is None else to_ms(outcome.next_attempt_at)
        else:
            due = None
        conn.execute(
            "UPDATE deliveries SET status = ?, attempt_count = attempt_count + 1,"
            " next_attempt_at = ?, locked_by = NULL, lease_expires_at = NULL, updated_at = ?"
            " WHERE seq = ?",
            (status.value, due, now, seq),
        )
        if status is not DeliveryStatus.PENDING and ordering_key is not None:
            conn.execute("UPDATE deliveries SET blocked = 0 WHERE seq = ?", (seq,))
            _unblock_head(conn, endpoint_id, ordering_key)
            any_pending = True
    return any_pending


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
