"""Rows of the PostgreSQL store to the records of ``models``, and back (cursors, changes)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from . import _postgres_sql as sql
from .base import InvalidCursorError
from .models import (
    ApiToken,
    Attempt,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    NewEvent,
    Organization,
    WebhookKey,
)


def organization(row: asyncpg.Record) -> Organization:
    return Organization(id=row["id"], name=row["name"], created_at=row["created_at"])


def token(row: asyncpg.Record) -> ApiToken:
    return ApiToken(
        id=row["id"],
        organization_id=row["organization_id"],
        name=row["name"],
        created_at=row["created_at"],
    )


def key(row: asyncpg.Record) -> WebhookKey:
    return WebhookKey(
        id=row["id"],
        organization_id=row["organization_id"],
        secret_ciphertext=bytes(row["secret_ciphertext"]),
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        revoked_at=row["revoked_at"],
    )


def endpoint(row: asyncpg.Record) -> Endpoint:
    types = row["event_types"]
    return Endpoint(
        id=row["id"],
        organization_id=row["organization_id"],
        url=row["url"],
        event_types=None if types is None else tuple(types),
        description=row["description"],
        enabled=row["enabled"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def delivery(row: asyncpg.Record, attempts: Sequence[Attempt] = ()) -> Delivery:
    return Delivery(
        id=row["id"],
        organization_id=row["organization_id"],
        event_id=row["event_id"],
        endpoint_id=row["endpoint_id"],
        status=DeliveryStatus(row["status"]),
        attempt_count=row["attempt_count"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempts=tuple(attempts),
    )


def event(row: asyncpg.Record, deliveries: Sequence[Delivery] = ()) -> Event:
    return Event(
        id=row["id"],
        organization_id=row["organization_id"],
        type=row["type"],
        body=bytes(row["body"]),
        ordering_key=row["ordering_key"],
        created_at=row["created_at"],
        deliveries=tuple(deliveries),
    )


def attempt(row: asyncpg.Record) -> Attempt:
    return Attempt(
        number=row["number"],
        started_at=row["started_at"],
        duration_ms=row["duration_ms"],
        status_code=row["status_code"],
        error=row["error"],
        response_excerpt=row["response_excerpt"],
    )


def seq_cursor(cursor: str | None) -> int | None:
    """A cursor of a newest-first list is the seq of the last item shown, as decimal text."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 18:
        raise InvalidCursorError(cursor)
    return int(cursor)


def id_cursor(cursor: str | None) -> str | None:
    if cursor is not None and (not cursor.isascii() or not cursor.isprintable()):
        raise InvalidCursorError(cursor)
    return cursor


def new_event(
    organization_id: str,
    new: NewEvent,
    row: asyncpg.Record,
    made: Sequence[asyncpg.Record] = (),
) -> Event:
    """A just-published event from ``ascend_webhooks_publish``'s rows: ``row`` its 'e' row,
    ``made`` its 'd' rows. A new delivery is pending, never attempted, and due, updated and
    created at the transaction's time (``o_at``)."""
    deliveries = tuple(
        Delivery(
            id=d[1],
            organization_id=organization_id,
            event_id=new.id,
            endpoint_id=d[4],
            status=DeliveryStatus.PENDING,
            attempt_count=0,
            next_attempt_at=d[5],
            created_at=d[5],
            updated_at=d[5],
        )
        for d in made
    )
    return Event(
        id=new.id,
        organization_id=organization_id,
        type=new.type,
        body=new.body,
        ordering_key=new.ordering_key,
        created_at=row[5],
        deliveries=deliveries,
    )


async def load_events(conn: asyncpg.Connection, seqs: Sequence[int]) -> dict[int, Event]:
    """Events by seq, each with its deliveries (oldest first)."""
    if not seqs:
        return {}
    rows = await conn.fetch(sql.EVENTS_BY_SEQ, list(seqs))
    deliveries: dict[int, list[Delivery]] = {}
    for row in await conn.fetch(sql.DELIVERIES_OF_EVENTS, list(seqs)):
        deliveries.setdefault(row["event_seq"], []).append(delivery(row))
    return {row["seq"]: event(row, deliveries.get(row["seq"], ())) for row in rows}
