"""Claiming due deliveries on SQLite: fair across organizations, cheap on any backlog.

Only pending, unblocked deliveries are in the partial index ``deliveries_ready``
``(organization_id, endpoint_id, next_attempt_at)``. A leased delivery's ``next_attempt_at`` is
its lease's end, so "due" (``next_attempt_at <= now``) covers new work, retries and expired
leases with one range.

Why a loose index scan over (organization, endpoint) pairs rather than "the N oldest due rows":
the oldest rows of one organization with a huge backlog would fill every batch and starve
everyone else. Instead each claim

1. walks the distinct pairs with ready work, one index seek per pair (the first entry of each
   pair's range is also its earliest ``next_attempt_at``, so "is anything due here" is free),
   starting after the organization that was served last (round robin across claims), skipping
   excluded endpoints (a slow endpoint the worker has no room for costs one seek, not a scan
   of its backlog);
2. shares ``limit`` out across the organizations with due work, and within each organization
   across its endpoints, in passes until the batch is full or the due work is exhausted;
3. leases each fetched row at once, which moves it out of the due range.

The cost is O((P + limit) · log n) for the P pairs the walk visits, whatever the backlog: the
walk stops once ``limit`` organizations have due work, and is capped at ``_MAX_PAIRS`` pairs
(the round-robin cursor resumes where a capped walk stopped). Ordering keys cost nothing
here: only the head of each key is unblocked. The queries say ``INDEXED BY``: a planner
without statistics once preferred a scan of every pending row.

What the writer thread spends per claimed delivery is Python time the event loop of the same
process waits for (the GIL), so the lease is one statement per endpoint that also returns
everything the worker needs: the event's id, type and body by rowid subqueries in the
``RETURNING`` clause (no second query joining the leased seqs back), the endpoint's URL read
in one query per claim (not per row, and never cached across claims: another process may
change it), and each ``ClaimedDelivery`` built through its slot descriptors rather than the
frozen dataclass's ``__init__``. The claim also remembers each leased delivery's seq (and
ordering key), which never change, so that ``record`` and ``release`` find the rows by their
integer key instead of looking the text ids up again (``Leases``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ..models import ClaimedDelivery
from ._rows import chunks, from_ms, marks, now_ms

__all__ = ["Claimer", "Leases", "claimed_delivery"]

_MAX_PAIRS = 4096

_NEXT_ORG = (
    "SELECT organization_id FROM deliveries INDEXED BY deliveries_ready"
    " WHERE status = 'pending' AND blocked = 0 AND organization_id > ?"
    " ORDER BY organization_id LIMIT 1"
)
_NEXT_PAIR = (
    "SELECT endpoint_id, next_attempt_at FROM deliveries INDEXED BY deliveries_ready"
    " WHERE status = 'pending' AND blocked = 0 AND organization_id = ? AND endpoint_id > ?"
    " ORDER BY endpoint_id, next_attempt_at LIMIT 1"
)
# Fetch and lease an endpoint's earliest due rows in one statement (SQLite >= 3.35 has
# RETURNING), returning with them what the worker needs: the event's columns by rowid lookups
# (cheap C work with the GIL released, unlike a second query binding every seq back).
_FETCH_AND_LEASE = (
    "UPDATE deliveries SET locked_by = ?, lease_expires_at = ?, next_attempt_at = ?"
    " WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_ready"
    " WHERE status = 'pending' AND blocked = 0 AND organization_id = ? AND endpoint_id = ?"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?)"
    " RETURNING seq, id, (SELECT e.id FROM events e WHERE e.seq = event_seq),"
    " (SELECT e.type FROM events e WHERE e.seq = event_seq),"
    " (SELECT e.body FROM events e WHERE e.seq = event_seq),"
    " attempt_count + 1, attempt_count - round_start + 1, ordering_key"
)
_URLS = "SELECT id, url FROM endpoints WHERE id IN ({})"

# Entries ``Leases`` keeps at most; past that it starts afresh (a lookup by id is the fallback).
_MAX_KNOWN = 100_000


class Leases:
    """What a claim learned of each delivery it leased, for ``record`` and ``release``.

    ``delivery id -> (seq, endpoint id, ordering key)``: facts that never change for a
    delivery, so an entry is never wrong, only possibly missing (another store instance
    claimed it, or the map was reset): callers fall back to a lookup by id. Whether the lease
    is still this worker's is checked by every statement that uses the seq, never assumed.
    Used on the writer thread only.
    """

    def __init__(self) -> None:
        self.known: dict[str, tuple[int, str, str | None]] = {}

    def forget(self, delivery_ids: Sequence[str]) -> None:
        pop = self.known.pop
        for delivery_id in delivery_ids:
            pop(delivery_id, None)


# ClaimedDelivery built through its slot descriptors: the frozen dataclass's __init__ sets
# each of its eleven fields with object.__setattr__, twice the cost (checked by the tests).
_SETTERS = [getattr(ClaimedDelivery, f.name).__set__ for f in fields(ClaimedDelivery)]
if [f.name for f in fields(ClaimedDelivery)] != [
    "id", "organization_id", "event_id", "event_type", "endpoint_id", "url", "body",
    "attempt_number", "round_attempt", "lease_expires_at", "ordering_key",
]:  # fmt: skip
    raise ImportError("ClaimedDelivery changed: update _claim's builder")
(_c_id, _c_org, _c_event, _c_type, _c_endpoint, _c_url, _c_body, _c_number, _c_round,
 _c_lease, _c_key) = _SETTERS  # fmt: skip


def claimed_delivery(
    delivery_id: str,
    organization_id: str,
    event_id: str,
    event_type: str,
    endpoint_id: str,
    url: str,
    body: bytes,
    number: int,
    in_round: int,
    lease_expires_at: datetime,
    ordering_key: str | None,
) -> ClaimedDelivery:
    """``ClaimedDelivery(...)`` without the frozen dataclass's ``__init__``."""
    one: ClaimedDelivery = object.__new__(ClaimedDelivery)
    _c_id(one, delivery_id)
    _c_org(one, organization_id)
    _c_event(one, event_id)
    _c_type(one, event_type)
    _c_endpoint(one, endpoint_id)
    _c_url(one, url)
    _c_body(one, body)
    _c_number(one, number)
    _c_round(one, in_round)
    _c_lease(one, lease_expires_at)
    _c_key(one, ordering_key)
    return one


@dataclass
class _Organization:
    id: str
    endpoints: list[str] = field(default_factory=list)


class Claimer:
    """Claims for one store; remembers where the round robin stands (writer thread only)."""

    def __init__(self, leases: Leases | None = None) -> None:
        self._after_org = ""
        self.leases = Leases() if leases is None else leases

    def claim(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        exclude_endpoints: Sequence[str],
        endpoint_room: Mapping[str, int] | None = None,
        per_endpoint: int | None = None,
    ) -> list[ClaimedDelivery]:
        """Lease up to ``limit`` due deliveries; at most ``endpoint_room[e]`` of endpoint ``e``
        and ``per_endpoint`` of any other, when given (what the worker has room for, so that
        it need not give any back unattempted)."""
        if limit <= 0:
            return []
        now = now_ms()
        until = now + max(1, round(lease_seconds * 1000))
        rooms = dict(endpoint_room or {})
        excluded = {*exclude_endpoints, *(e for e, room in rooms.items() if room <= 0)}
        only = None  # per_endpoint 0: only the endpoints given room may be claimed
        if per_endpoint is not None and per_endpoint <= 0:
            only = frozenset(e for e, room in rooms.items() if room > 0)
            if not only:
                return []
        due = self._due_organizations(conn, now, frozenset(excluded), limit, only)
        known = self.leases.known
        if len(known) > _MAX_KNOWN:  # leases recorded elsewhere or expired: start afresh
            known.clear()
        lease = _Lease(conn, worker_id, until, now, rooms, per_endpoint)
        served_first_pass: list[str] = []
        first_pass = True
        while due and lease.count < limit:
            share = max(1, (limit - lease.count) // len(due))
            for org in list(due):
                want = min(share, limit - lease.count)
                if want <= 0:
                    break
                got = lease.take_from(org, want)
                if got and first_pass:
                    served_first_pass.append(org.id)
                if not org.endpoints:
                    due.remove(org)
            first_pass = False
        if served_first_pass:
            self._after_org = served_first_pass[-1]
        return lease.claimed(known)

    def _due_organizations(
        self,
        conn: sqlite3.Connection,
        now: int,
        excluded: frozenset[str],
        enough: int,
        only: frozenset[str] | None = None,
    ) -> list[_Organization]:
        """Organizations with due work, in round-robin order, each with its due endpoints.

        The walk stops at ``enough`` organizations: each gets at least one delivery in the
        first pass, so more could not change the batch (they come first in the next one).
        """
        found: list[_Organization] = []
        visited = 0
        for org_id in self._organizations(conn):
            org = _Organization(org_id)
            endpoint = ""
            while True:
                row = conn.execute(_NEXT_PAIR, (org_id, endpoint)).fetchone()
                if row is None:
                    break
                endpoint, earliest = row
                visited += 1
                if (
                    earliest <= now
                    and endpoint not in excluded
                    and (only is None or endpoint in only)
                ):
                    org.endpoints.append(endpoint)
            if org.endpoints:
                found.append(org)
                if len(found) >= enough:
                    break
            if visited >= _MAX_PAIRS:
                self._after_org = org_id  # resume after this organization next time
                break
        return found

    def _organizations(self, conn: sqlite3.Connection) -> Iterator[str]:
        """Organizations with ready work: those after the cursor, then from the start."""
        start = self._after_org
        current = start
        while (row := conn.execute(_NEXT_ORG, (current,)).fetchone()) is not None:
            current = row[0]
            yield current
        current = ""
        while (row := conn.execute(_NEXT_ORG, (current,)).fetchone()) is not None:
            current = row[0]
            if current > start:
                return
            yield current


class _Lease:
    """One claim's leasing: a statement per endpoint, then the records of what it returned."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        until: int,
        now: int,
        rooms: dict[str, int],
        per_endpoint: int | None,
    ) -> None:
        self.conn = conn
        self.worker_id = worker_id
        self.until = until
        self.now = now
        self.rooms = rooms  # endpoint -> how many more it may get (None: bounded by limit only)
        self.bounded = bool(rooms) or per_endpoint is not None
        self.per_endpoint = per_endpoint
        self.count = 0
        self.parts: list[tuple[str, str, list[tuple[Any, ...]]]] = []  # org, endpoint, rows

    def take_from(self, org: _Organization, want: int) -> int:
        """Lease up to ``want`` rows of ``org``, shared across its endpoints."""
        got = 0
        while org.endpoints and got < want:
            share = max(1, (want - got) // len(org.endpoints))
            for endpoint in list(org.endpoints):
                take = min(share, want - got)
                if take <= 0:
                    break
                room = self.rooms.get(endpoint, self.per_endpoint) if self.bounded else None
                if room is not None and room < take:
                    take = room
                rows = self.conn.execute(
                    _FETCH_AND_LEASE,
                    (self.worker_id, self.until, self.until, org.id, endpoint, self.now, take),
                ).fetchall() if take > 0 else []  # fmt: skip
                if rows:
                    rows.sort()  # RETURNING gives no order: by seq, the order of acceptance
                    self.parts.append((org.id, endpoint, rows))
                    got += len(rows)
                if room is not None:
                    room -= len(rows)
                    self.rooms[endpoint] = room
                if len(rows) < take or (room is not None and room <= 0):
                    org.endpoints.remove(endpoint)  # drained, or no more room for it
        self.count += got
        return got

    def claimed(self, known: dict[str, tuple[int, str, str | None]]) -> list[ClaimedDelivery]:
        """The records of the leased rows, in the order leased; ``known`` learns their seqs."""
        if not self.parts:
            return []
        endpoints = list({endpoint for _, endpoint, _ in self.parts})
        urls: dict[str, str] = {}
        for part in chunks(endpoints):
            urls.update(self.conn.execute(_URLS.format(marks(len(part))), part).fetchall())
        lease_expires_at = from_ms(self.until)
        claimed = []
        for org_id, endpoint, rows in self.parts:
            url = urls.get(endpoint, "")  # (a foreign key: always there)
            for seq, id_, event, kind, body, number, in_round, key in rows:
                claimed.append(
                    claimed_delivery(
                        id_, org_id, event, kind, endpoint, url, body, number, in_round,
                        lease_expires_at, key,
                    )
                )  # fmt: skip
                known[id_] = (seq, endpoint, key)
        return claimed
