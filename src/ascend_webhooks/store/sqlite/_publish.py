"""Publishing on SQLite: events and their deliveries, many callers per statement.

``publish_group`` runs as a ``GroupJob``: every publish queued for one transaction is checked
on its own (its organization, conflicts with stored events, with its own duplicates and with
the other callers' events in the batch) before any of its rows is staged; then the whole batch
is inserted with a few multi-row INSERTs per table (``statement_sizes``). A caller's mistake is
its own error, and the engine falls back to running the calls one by one if the combined
insert itself fails.

The Python per event is what the writer thread holds the GIL for (the INSERTs themselves run
in SQLite with it released), so the usual call (every event new, each once) takes one pass
with no bookkeeping, the endpoints that want a type are worked out once per batch, and the
result objects are built through their slot descriptors.

A call may carry a worker's :class:`~..handoff.HandOff`: while it is open, each new due
delivery it has room for is inserted already leased to that worker and returned beside the
call's results as a ``ClaimedDelivery``, for the store to hand over once the transaction has
committed. The call names its hand-off (rather than the writer looking it up) so that the
caller, which hands the deliveries over, and the transaction agree on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from functools import cache
from itertools import chain

from ...ids import new_ids
from ..base import EventConflictError, StoreError
from ..handoff import HandOff
from ..models import (
    ClaimedDelivery,
    Delivery,
    DeliveryStatus,
    Endpoint,
    Event,
    NewEvent,
    PublishResult,
)
from . import _reads, _rows
from ._claim import claimed_delivery
from ._rows import chunks, from_ms, marks, now_ms
from ._writes import BEHIND_KEY, require_organization

__all__ = ["PublishCall", "Published", "publish_group"]


#: An organization, its events, and the hand-off (if any) to lease new deliveries to.
PublishCall = tuple[str, tuple[NewEvent, ...], HandOff | None]
#: A call's results, and the new deliveries leased to the hand-off's worker.
Published = tuple[list[PublishResult], list[ClaimedDelivery]]
Known = dict[str, tuple[int, str, str | None]]


def publish_group(
    conn: sqlite3.Connection, calls: list[PublishCall], known: Known | None = None
) -> list[tuple[bool, Published | StoreError]]:
    """Publish many callers' events with one insert per table; a caller's error is its own.

    ``known`` (the claim's ``Leases.known``) learns the rows of handed deliveries, which
    ``record`` then finds as it finds claimed ones.
    """
    batch = _PublishBatch(conn, known)
    outcomes: list[tuple[bool, Published | StoreError]] = []
    for organization_id, events, handoff in calls:
        try:
            results = batch.add(organization_id, events, handoff)
        except StoreError as exc:
            outcomes.append((False, exc))
        else:
            outcomes.append((True, (results, batch.take_handed())))
    batch.flush()
    return outcomes


class _PublishBatch:
    """Rows staged for one transaction. ``add`` validates a call fully before staging any of
    its rows, so a call that raises leaves the batch as it was."""

    def __init__(self, conn: sqlite3.Connection, known: Known | None = None) -> None:
        self._conn = conn
        self._now = now_ms()
        self._created_at = from_ms(self._now)
        self._handoff: HandOff | None = None  # of the call being added
        self._known = known if known is not None else {}
        self._lease_until = 0
        self._lease_expires_at = self._created_at
        self._handed: list[ClaimedDelivery] = []  # of the call being added
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._next_seqs: dict[str, int] = {}  # table -> the next seq it hands out
        self._staged: dict[tuple[str, str], tuple[bytes, Event]] = {}  # (org, id) → hash, event
        self._chains: set[tuple[str, str]] = set()  # (endpoint, key) with a pending delivery
        self._event_rows: list[tuple[object, ...]] = []
        self._delivery_rows: list[tuple[object, ...]] = []
        self._ids: list[str] = []  # delivery ids made in bulk, reserved by ``add``
        self._targets: dict[tuple[str, str], list[Endpoint]] = {}  # (org, type) → endpoints

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
                require_organization(self._conn, organization_id)
            self._endpoints[organization_id] = found
        return found

    def add(
        self, organization_id: str, events: Sequence[NewEvent], handoff: HandOff | None = None
    ) -> list[PublishResult]:
        self._handoff = handoff if handoff is not None and handoff.is_open else None
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
        for event_id, new in unique.items() if self._staged else ():
            staged = self._staged.get((organization_id, event_id))
            if staged is not None:
                if staged[0] != new.content_hash:
                    raise EventConflictError(event_id)
                earlier[event_id] = staged[1]
        # Valid: from here on nothing raises a StoreError.
        wanted = len(unique) * len(endpoints)  # at most one delivery id per event and endpoint
        if len(self._ids) < wanted:
            self._ids.extend(new_ids("dlv", wanted - len(self._ids)))
        stage = self._stage
        if not existing and not earlier and len(unique) == len(events):
            # The usual call: every event new, each once: one pass, no bookkeeping.
            return [_result(stage(organization_id, endpoints, new), True) for new in events]
        created = {
            new.id: stage(organization_id, endpoints, new)
            for new in unique.values()
            if new.id not in existing and new.id not in earlier
        }
        stored = _reads.events_by_seq(self._conn, list(existing.values())) if existing else {}
        results: list[PublishResult] = []
        reported: set[str] = set()
        for new in events:
            if new.id in created:
                results.append(_result(created[new.id], new.id not in reported))
            elif new.id in earlier:
                results.append(_result(earlier[new.id], False))
            else:
                results.append(_result(stored[existing[new.id]], False))
            reported.add(new.id)
        return results

    def _stage(self, organization_id: str, endpoints: Sequence[Endpoint], new: NewEvent) -> Event:
        seq = self._take_seq("events")
        now, created_at = self._now, self._created_at
        self._event_rows.append(
            (seq, new.id, organization_id, new.type, new.body, new.content_hash,
             new.ordering_key, now)
        )  # fmt: skip
        deliveries = []
        targets = self._targets.get((organization_id, new.type))
        if targets is None:
            targets = [endpoint for endpoint in endpoints if endpoint.wants(new.type)]
            self._targets[(organization_id, new.type)] = targets
        for endpoint in targets:
            blocked = 0
            if new.ordering_key is not None:
                chain = (endpoint.id, new.ordering_key)
                if chain in self._chains or _chain_has_pending(self._conn, *chain):
                    blocked = BEHIND_KEY
                self._chains.add(chain)
            delivery_id = self._ids.pop()  # reserved in ``add``
            delivery_seq = self._take_seq("deliveries")
            handoff = self._handoff
            if handoff is not None and not blocked and handoff.take(endpoint.id):
                # Leased to the in-process worker in this transaction: out of the due range
                # until the lease ends, exactly as a claim leaves it.
                until = self._lease(handoff)
                self._delivery_rows.append(
                    (delivery_seq, delivery_id, organization_id, seq, endpoint.id,
                     new.ordering_key, 0, until, now, now, handoff.worker_id, until)
                )  # fmt: skip
                self._handed.append(
                    claimed_delivery(
                        delivery_id, organization_id, new.id, new.type, endpoint.id,
                        endpoint.url, new.body, 1, 1, self._lease_expires_at, new.ordering_key,
                    )
                )  # fmt: skip
                self._known[delivery_id] = (delivery_seq, endpoint.id, new.ordering_key)
            else:
                self._delivery_rows.append(
                    (delivery_seq, delivery_id, organization_id, seq, endpoint.id,
                     new.ordering_key, blocked, now, now, now, None, None)
                )  # fmt: skip
            deliveries.append(
                _new_delivery(delivery_id, organization_id, new.id, endpoint.id, created_at)
            )
        event = _new_event(new, organization_id, created_at, tuple(deliveries))
        self._staged[(organization_id, new.id)] = (new.content_hash, event)
        return event

    def _take_seq(self, table: str) -> int:
        """The next seq of ``table`` (events, deliveries): we hold the write lock, so the next
        values are ours to hand out. Deliveries get theirs here, not from their INSERT: a
        handed delivery's outcome is recorded by its seq (``known``)."""
        seq = self._next_seqs.get(table)
        if seq is None:
            query = f"SELECT COALESCE(MAX(seq), 0) FROM {table}"  # noqa: S608 (a literal)
            seq = int(self._conn.execute(query).fetchone()[0]) + 1
        self._next_seqs[table] = seq + 1
        return seq

    def _lease(self, handoff: HandOff) -> int:
        """The end (ms) of the leases handed over in this transaction."""
        if not self._lease_until:
            self._lease_until = self._now + max(1, round(handoff.lease_seconds * 1000))
            self._lease_expires_at = from_ms(self._lease_until)
        return self._lease_until

    def take_handed(self) -> list[ClaimedDelivery]:
        """The deliveries leased to the hand-off's worker by the last ``add``."""
        handed, self._handed = self._handed, []
        return handed

    def flush(self) -> None:
        if self._event_rows:
            _insert_rows(self._conn, _INSERT_EVENTS, 8, self._event_rows)
        if self._delivery_rows:
            _insert_rows(self._conn, _INSERT_DELIVERIES, 12, self._delivery_rows)
        self._event_rows, self._delivery_rows = [], []


_INSERT_EVENTS = (
    "INSERT INTO events (seq, id, organization_id, type, body, content_hash, ordering_key,"
    " created_at) VALUES "
)
_INSERT_DELIVERIES = (
    "INSERT INTO deliveries (seq, id, organization_id, event_seq, endpoint_id, ordering_key,"
    " blocked, next_attempt_at, created_at, updated_at, locked_by, lease_expires_at) VALUES "
)
# Rows per statement. Each statement is a point where the writer thread lets go of the GIL
# (around sqlite3_step) and must take it back from the event loop, which can keep it for the
# whole switch interval (5 ms): a 1,000-event batch in ten statements per table spent most of
# its time waiting so while the event loop was busy (bench/profile_publish_sqlite.py
# --contended). So one statement carries as many rows as it can: up to _MOST_ROWS, a part of
# _ROUND or more rows rounded down to a multiple of _ROUND, the rest halving (32, 16, ... 1):
# a 1,000-event batch takes three statements per table. Every size is a statement of its own
# in the connection's statement cache (about 1 KB per row of 12 values), so the sizes are
# few: at most 16 + 6 per table, about 15 MB for both tables once every size has been used.
_MOST_ROWS = 1024  # x 12 values: far below SQLite's limit of 32,766 parameters
_ROUND = 64
_REST = (32, 16, 8, 4, 2, 1)


def statement_sizes(total: int) -> list[int]:
    """The rows of each INSERT for ``total`` rows, largest first."""
    sizes = []
    while total >= _ROUND:
        size = min(_MOST_ROWS, total - total % _ROUND)
        sizes.append(size)
        total -= size
    for size in _REST:
        if total >= size:
            sizes.append(size)
            total -= size
    return sizes


@cache
def _values_insert(head: str, width: int, rows: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return head + ",".join([row] * rows)


def _insert_rows(
    conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple[object, ...]]
) -> None:
    """INSERT ``rows`` with as few multi-row statements as ``statement_sizes`` allows."""
    start = 0
    for size in statement_sizes(len(rows)):
        sql = _values_insert(head, width, size)
        conn.execute(sql, list(chain.from_iterable(rows[start : start + size])))
        start += size


# The result objects of a publish, built through their slot descriptors: a frozen dataclass's
# __init__ sets each field with object.__setattr__, which made building them a large part of
# the writer thread's time per event (the writer is what limits the batch route).
_DELIVERY = {f.name: getattr(Delivery, f.name).__set__ for f in fields(Delivery)}
_RESULT = {f.name: getattr(PublishResult, f.name).__set__ for f in fields(PublishResult)}
_EVENT = {f.name: getattr(Event, f.name).__set__ for f in fields(Event)}
_DELIVERY_FIELDS = ["id", "organization_id", "event_id", "endpoint_id", "status", "attempt_count",
                    "next_attempt_at", "created_at", "updated_at", "attempts"]  # fmt: skip
_EVENT_FIELDS = [
    "id",
    "organization_id",
    "type",
    "body",
    "ordering_key",
    "created_at",
    "deliveries",
]
# A field added to the models must be set below too.
if (
    list(_DELIVERY) != _DELIVERY_FIELDS
    or list(_EVENT) != _EVENT_FIELDS
    or list(_RESULT) != ["event", "created"]
):
    raise ImportError(f"the publish builders miss model fields: {list(_DELIVERY)}, {list(_EVENT)}")
_r_event, _r_created = _RESULT.values()
(_d_id, _d_org, _d_event, _d_endpoint, _d_status, _d_count, _d_next, _d_created, _d_updated,
 _d_attempts) = _DELIVERY.values()  # fmt: skip
_e_id, _e_org, _e_type, _e_body, _e_key, _e_created, _e_deliveries = _EVENT.values()


def _new_delivery(
    delivery_id: str, organization_id: str, event_id: str, endpoint_id: str, at: datetime
) -> Delivery:
    """``Delivery(...)`` of a new pending delivery, without the dataclass __init__."""
    d: Delivery = object.__new__(Delivery)
    _d_id(d, delivery_id)
    _d_org(d, organization_id)
    _d_event(d, event_id)
    _d_endpoint(d, endpoint_id)
    _d_status(d, DeliveryStatus.PENDING)
    _d_count(d, 0)
    _d_next(d, at)
    _d_created(d, at)
    _d_updated(d, at)
    _d_attempts(d, ())
    return d


def _new_event(
    new: NewEvent, organization_id: str, at: datetime, deliveries: tuple[Delivery, ...]
) -> Event:
    """``Event(...)`` of an event just staged, without the dataclass __init__."""
    e: Event = object.__new__(Event)
    _e_id(e, new.id)
    _e_org(e, organization_id)
    _e_type(e, new.type)
    _e_body(e, new.body)
    _e_key(e, new.ordering_key)
    _e_created(e, at)
    _e_deliveries(e, deliveries)
    return e


def _result(event: Event, created: bool) -> PublishResult:
    """``PublishResult(event, created)``, without the dataclass __init__."""
    r: PublishResult = object.__new__(PublishResult)
    _r_event(r, event)
    _r_created(r, created)
    return r


def _chain_has_pending(conn: sqlite3.Connection, endpoint_id: str, ordering_key: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_ordering"
        " WHERE status = 'pending' AND endpoint_id = ?"
        " AND ordering_key = ? LIMIT 1",
        (endpoint_id, ordering_key),
    ).fetchone()
    return row is not None
