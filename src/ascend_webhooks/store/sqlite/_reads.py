"""The SQLite store's queries, as plain functions on a connection (reader or writer).

Every organization-scoped query filters on ``organization_id``: another organization's id
looks exactly like a missing one (NotFoundError).
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Sequence

from ..base import NotFoundError, StoreError
from ..models import (
    ApiToken,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    Organization,
    Page,
    WebhookKey,
)
from . import _rows
from ._rows import DELIVERY_COLUMNS, EVENT_COLUMNS, chunks, marks, now_ms, parse_seq_cursor

__all__ = [
    "count_admin_tokens",
    "delivery",
    "delivery_counts",
    "endpoint",
    "event",
    "events_by_seq",
    "find_token",
    "lease_holders",
    "list_deliveries",
    "list_endpoints",
    "list_events",
    "list_keys",
    "list_organizations",
    "list_tokens",
    "next_due_at",
    "organization",
    "signing_keys",
]


def organization(conn: sqlite3.Connection, organization_id: str) -> Organization:
    row = conn.execute(
        "SELECT id, name, created_at FROM organizations WHERE id = ?", (organization_id,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"organization {organization_id!r} not found")
    return _rows.organization(row)


def list_organizations(
    conn: sqlite3.Connection, limit: int, after: str | None, only: str | None
) -> Page[Organization]:
    clauses, params = [], []
    if after is not None:
        clauses.append("id > ?")
        params.append(after)
    if only is not None:
        clauses.append("id = ?")
        params.append(only)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(
        f"SELECT id, name, created_at FROM organizations {where} ORDER BY id LIMIT ?",  # noqa: S608
        (*params, max(limit, 0) + 1),
    ).fetchall()
    items = [_rows.organization(row) for row in rows[: max(limit, 0)]]
    more = len(rows) > limit and items
    return Page(tuple(items), items[-1].id if more else None)


def find_token(conn: sqlite3.Connection, token_hash: bytes) -> ApiToken | None:
    row = conn.execute(
        "SELECT id, organization_id, name, created_at FROM api_tokens WHERE token_hash = ?",
        (token_hash,),
    ).fetchone()
    if row is None:
        return None
    return ApiToken(
        id=row[0], organization_id=row[1], name=row[2], created_at=_rows.from_ms(row[3])
    )


def count_admin_tokens(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COUNT(*) FROM api_tokens WHERE organization_id IS NULL").fetchone()
    return int(row[0])


def list_tokens(conn: sqlite3.Connection, organization_id: str | None) -> list[ApiToken]:
    # ``IS`` matches NULL too: None lists the admin tokens.
    rows = conn.execute(
        "SELECT id, organization_id, name, created_at FROM api_tokens"
        " WHERE organization_id IS ? ORDER BY created_at, id",
        (organization_id,),
    ).fetchall()
    return [
        ApiToken(id=r[0], organization_id=r[1], name=r[2], created_at=_rows.from_ms(r[3]))
        for r in rows
    ]


def list_keys(conn: sqlite3.Connection, organization_id: str) -> list[WebhookKey]:
    organization(conn, organization_id)
    return [
        _rows.key(row)
        for row in conn.execute(
            f"SELECT {_rows.KEY_COLUMNS} FROM webhook_keys"  # noqa: S608
            " WHERE organization_id = ? ORDER BY seq",
            (organization_id,),
        )
    ]


def signing_keys(
    conn: sqlite3.Connection, organization_ids: Sequence[str]
) -> dict[str, WebhookKey]:
    found: dict[str, WebhookKey] = {}
    for part in chunks(list(dict.fromkeys(organization_ids))):
        # Per organization, the most recently activated key that is not revoked.
        rows = conn.execute(
            f"SELECT {_rows.KEY_COLUMNS} FROM webhook_keys"  # noqa: S608
            f" WHERE organization_id IN ({marks(len(part))})"
            " AND activated_at IS NOT NULL AND revoked_at IS NULL"
            " ORDER BY organization_id, activated_at, seq",
            tuple(part),
        )
        for row in rows:
            found[row[1]] = _rows.key(row)  # later rows win
    return found


def endpoint_urls(conn: sqlite3.Connection, endpoint_ids: Sequence[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in chunks(list(dict.fromkeys(endpoint_ids))):
        found.update(
            conn.execute(
                "SELECT id, url FROM endpoints"  # noqa: S608
                f" WHERE id IN ({marks(len(part))}) AND enabled AND deleted_at IS NULL",
                tuple(part),
            ).fetchall()
        )
    return found


def endpoint(conn: sqlite3.Connection, organization_id: str, endpoint_id: str) -> Endpoint:
    row = conn.execute(
        f"SELECT {_rows.ENDPOINT_COLUMNS} FROM endpoints"  # noqa: S608
        " WHERE organization_id = ? AND id = ? AND deleted_at IS NULL",
        (organization_id, endpoint_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"endpoint {endpoint_id!r} not found")
    return _rows.endpoint(row)


def list_endpoints(
    conn: sqlite3.Connection, organization_id: str, limit: int, after: str | None
) -> Page[Endpoint]:
    organization(conn, organization_id)
    rows = conn.execute(
        f"SELECT {_rows.ENDPOINT_COLUMNS} FROM endpoints"  # noqa: S608
        " WHERE organization_id = ? AND deleted_at IS NULL AND id > ? ORDER BY id LIMIT ?",
        (organization_id, after or "", max(limit, 0) + 1),
    ).fetchall()
    items = [_rows.endpoint(row) for row in rows[: max(limit, 0)]]
    more = len(rows) > limit and items
    return Page(tuple(items), items[-1].id if more else None)


# -- events and deliveries ----------------------------------------------------------------------


def _deliveries_of(
    conn: sqlite3.Connection, event_seqs: Sequence[int]
) -> dict[int, list[Delivery]]:
    by_event: dict[int, list[Delivery]] = defaultdict(list)
    for part in chunks(list(event_seqs)):
        for row in conn.execute(
            f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq"  # noqa: S608
            f" WHERE d.event_seq IN ({marks(len(part))}) ORDER BY d.seq",
            tuple(part),
        ):
            by_event[row[10]].append(_rows.delivery(row))
    return by_event


def events_by_seq(conn: sqlite3.Connection, seqs: Sequence[int]) -> dict[int, Event]:
    rows = []
    for part in chunks(list(seqs)):
        rows.extend(
            conn.execute(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE seq IN ({marks(len(part))})",  # noqa: S608
                tuple(part),
            ).fetchall()
        )
    deliveries = _deliveries_of(conn, [row[0] for row in rows])
    return {row[0]: _rows.event(row, deliveries.get(row[0], ())) for row in rows}


def event(conn: sqlite3.Connection, organization_id: str, event_id: str) -> Event:
    row = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE organization_id = ? AND id = ?",  # noqa: S608
        (organization_id, event_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"event {event_id!r} not found")
    return _rows.event(row, _deliveries_of(conn, [row[0]]).get(row[0], ()))


def list_events(
    conn: sqlite3.Connection,
    organization_id: str,
    limit: int,
    after: str | None,
    event_type: str | None,
) -> Page[Event]:
    organization(conn, organization_id)
    before = parse_seq_cursor(after)
    clauses, params = ["organization_id = ?"], list[object]([organization_id])
    if before is not None:
        clauses.append("seq < ?")
        params.append(before)
    if event_type is not None:
        clauses.append("type = ?")
        params.append(event_type)
    rows = conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)}"  # noqa: S608
        " ORDER BY seq DESC LIMIT ?",
        (*params, max(limit, 0) + 1),
    ).fetchall()
    page = rows[: max(limit, 0)]
    deliveries = _deliveries_of(conn, [row[0] for row in page])
    items = tuple(_rows.event(row, deliveries.get(row[0], ())) for row in page)
    more = len(rows) > limit and page
    return Page(items, str(page[-1][0]) if more else None)


def delivery(conn: sqlite3.Connection, organization_id: str, delivery_id: str) -> Delivery:
    row = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq"  # noqa: S608
        " WHERE d.organization_id = ? AND d.id = ?",
        (organization_id, delivery_id),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"delivery {delivery_id!r} not found")
    attempts = [
        _rows.attempt(attempt)
        for attempt in conn.execute(
            "SELECT number, started_at, duration_ms, status_code, error, response_excerpt"
            " FROM attempts WHERE delivery_seq = ? ORDER BY number",
            (row[0],),
        )
    ]
    return _rows.delivery(row, attempts)


def list_deliveries(
    conn: sqlite3.Connection,
    organization_id: str,
    limit: int,
    after: str | None,
    status: DeliveryStatus | None,
    endpoint_id: str | None,
) -> Page[Delivery]:
    organization(conn, organization_id)
    before = parse_seq_cursor(after)
    clauses, params = ["d.organization_id = ?"], list[object]([organization_id])
    if before is not None:
        clauses.append("d.seq < ?")
        params.append(before)
    if status is not None:
        clauses.append("d.status = ?")
        try:
            params.append(DeliveryStatus(status).value)
        except ValueError:
            raise StoreError(f"unknown delivery status {status!r}") from None
    if endpoint_id is not None:
        clauses.append("d.endpoint_id = ?")
        params.append(endpoint_id)
    if status is None and endpoint_id is None:
        # No index is (organization_id, seq): the newest page is the newest rows of the
        # (organization_id, status, seq) ranges of the three statuses, one page from each.
        newest = " UNION ALL ".join(
            f"SELECT seq FROM (SELECT seq FROM deliveries d WHERE {' AND '.join(clauses)}"  # noqa: S608
            f" AND d.status = '{value.value}' ORDER BY d.seq DESC LIMIT ?)"
            for value in DeliveryStatus
        )
        clauses = [f"d.seq IN ({newest})"]
        params = [value for _ in DeliveryStatus for value in (*params, max(limit, 0) + 1)]
    rows = conn.execute(
        f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN events e ON e.seq = d.event_seq"  # noqa: S608
        f" WHERE {' AND '.join(clauses)} ORDER BY d.seq DESC LIMIT ?",
        (*params, max(limit, 0) + 1),
    ).fetchall()
    page = rows[: max(limit, 0)]
    items = tuple(_rows.delivery(row) for row in page)
    more = len(rows) > limit and page
    return Page(items, str(page[-1][0]) if more else None)


def next_due_at(conn: sqlite3.Connection) -> int | None:
    # The first entry of each (organization, endpoint) range of deliveries_ready is that
    # endpoint's earliest: one seek per endpoint, rather than an index of its own that every
    # publish, claim and outcome would have to keep up to date on the writer.
    row = conn.execute(
        "SELECT MIN((SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_ready"
        " WHERE status = 'pending' AND blocked = 0 AND organization_id = p.organization_id"
        " AND endpoint_id = p.id ORDER BY next_attempt_at LIMIT 1)) FROM endpoints p"
    ).fetchone()
    return None if row[0] is None else int(row[0])


def lease_holders(conn: sqlite3.Connection) -> list[str]:
    """The workers holding a lease that has not expired, by the partial index of leases."""
    rows = conn.execute(
        "SELECT DISTINCT locked_by FROM deliveries INDEXED BY deliveries_leased"
        " WHERE locked_by IS NOT NULL AND lease_expires_at > ? AND status = 'pending'"
        " ORDER BY locked_by",
        (now_ms(),),
    )
    return [row[0] for row in rows]


def delivery_counts(conn: sqlite3.Connection) -> dict[DeliveryStatus, int]:
    counts = dict.fromkeys(DeliveryStatus, 0)
    for status, count in conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
        counts[DeliveryStatus(status)] = int(count)
    return counts
