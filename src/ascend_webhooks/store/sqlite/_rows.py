"""Conversions between SQLite rows and the store's records (times are Unix milliseconds)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ..base import InvalidCursorError
from ..models import (
    Attempt,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    Organization,
    WebhookKey,
)

__all__ = [
    "DELIVERY_COLUMNS",
    "ENDPOINT_COLUMNS",
    "EVENT_COLUMNS",
    "KEY_COLUMNS",
    "attempt",
    "chunks",
    "delivery",
    "encode_types",
    "endpoint",
    "event",
    "from_ms",
    "key",
    "marks",
    "now_ms",
    "opt_ms",
    "organization",
    "parse_seq_cursor",
    "to_ms",
]

# SQLite limits bound parameters per statement (32766 since 3.32); stay well below.
_CHUNK = 500


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch, rounded down; a naive datetime is taken as UTC.

    Down, never to nearest: a retry scheduled for "now" must be due now, not 0.5 ms later.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def opt_ms(ms: int | None) -> datetime | None:
    return None if ms is None else from_ms(ms)


def chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def marks(count: int) -> str:
    return ",".join("?" * count)


def parse_seq_cursor(cursor: str | None) -> int | None:
    """A cursor of a newest-first list is the seq of the last item shown, as decimal text."""
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 19:
        raise InvalidCursorError(cursor)
    return int(cursor)


def organization(row: sqlite3.Row | tuple[Any, ...]) -> Organization:
    return Organization(id=row[0], name=row[1], created_at=from_ms(row[2]))


KEY_COLUMNS = "id, organization_id, secret_ciphertext, created_at, activated_at, revoked_at"


def key(row: sqlite3.Row | tuple[Any, ...]) -> WebhookKey:
    return WebhookKey(
        id=row[0],
        organization_id=row[1],
        secret_ciphertext=bytes(row[2]),
        created_at=from_ms(row[3]),
        activated_at=opt_ms(row[4]),
        revoked_at=opt_ms(row[5]),
    )


ENDPOINT_COLUMNS = (
    "id, organization_id, url, event_types, description, enabled, created_at, updated_at"
)


def encode_types(event_types: Sequence[str] | None) -> str | None:
    return None if event_types is None else json.dumps(list(event_types))


def endpoint(row: sqlite3.Row | tuple[Any, ...]) -> Endpoint:
    types = None if row[3] is None else tuple(json.loads(row[3]))
    return Endpoint(
        id=row[0],
        organization_id=row[1],
        url=row[2],
        event_types=types,
        description=row[4],
        enabled=bool(row[5]),
        created_at=from_ms(row[6]),
        updated_at=from_ms(row[7]),
    )


EVENT_COLUMNS = "seq, id, organization_id, type, body, ordering_key, created_at"


def event(row: sqlite3.Row | tuple[Any, ...], deliveries: Sequence[Delivery] = ()) -> Event:
    return Event(
        id=row[1],
        organization_id=row[2],
        type=row[3],
        body=bytes(row[4]),
        ordering_key=row[5],
        created_at=from_ms(row[6]),
        deliveries=tuple(deliveries),
    )


# Selected FROM deliveries d JOIN events e ON e.seq = d.event_seq.
DELIVERY_COLUMNS = (
    "d.seq, d.id, d.organization_id, e.id, d.endpoint_id, d.status, d.attempt_count,"
    " d.next_attempt_at, d.created_at, d.updated_at, d.event_seq"
)


def delivery(row: sqlite3.Row | tuple[Any, ...], attempts: Sequence[Attempt] = ()) -> Delivery:
    return Delivery(
        id=row[1],
        organization_id=row[2],
        event_id=row[3],
        endpoint_id=row[4],
        status=DeliveryStatus(row[5]),
        attempt_count=row[6],
        next_attempt_at=opt_ms(row[7]),
        created_at=from_ms(row[8]),
        updated_at=from_ms(row[9]),
        attempts=tuple(attempts),
    )


def attempt(row: sqlite3.Row | tuple[Any, ...]) -> Attempt:
    return Attempt(
        number=row[0],
        started_at=from_ms(row[1]),
        duration_ms=row[2],
        status_code=row[3],
        error=row[4],
        response_excerpt=row[5],
    )
