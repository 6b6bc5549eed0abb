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
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..models import ClaimedDelivery
from ._rows import chunks, from_ms, marks, now_ms

__all__ = ["Claimer"]

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
# RETURNING): no list of seqs to bind back one ``UPDATE`` at a time on the writer thread.
_FETCH_AND_LEASE = (
    "UPDATE deliveries SET locked_by = ?, lease_expires_at = ?, next_attempt_at = ?"
    " WHERE seq IN (SELECT seq FROM deliveries INDEXED BY deliveries_ready"
    " WHERE status = 'pending' AND blocked = 0 AND organization_id = ? AND endpoint_id = ?"
    " AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?) RETURNING seq"
)
_DETAILS = (
    "SELECT d.seq, d.id, d.organization_id, e.id, e.type, d.endpoint_id, p.url, e.body,"
    " d.attempt_count + 1, d.attempt_count - d.round_start + 1 FROM deliveries d"
    " JOIN events e ON e.seq = d.event_seq JOIN endpoints p ON p.id = d.endpoint_id"
    " WHERE d.seq IN ({})"
)


@dataclass
class _Organization:
    id: str
    endpoints: list[str] = field(default_factory=list)


class Claimer:
    """Claims for one store; remembers where the round robin stands (writer thread only)."""

    def __init__(self) -> None:
        self._after_org = ""

    def claim(
        self,
        conn: sqlite3.Connection,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        exclude_endpoints: Sequence[str],
    ) -> list[ClaimedDelivery]:
        if limit <= 0:
            return []
        now = now_ms()
        until = now + max(1, round(lease_seconds * 1000))
        due = self._due_organizations(conn, now, frozenset(exclude_endpoints), limit)
        picked: list[int] = []
        served_first_pass: list[str] = []
        first_pass = True
        while due and len(picked) < limit:
            share = max(1, (limit - len(picked)) // len(due))
            for org in list(due):
                want = min(share, limit - len(picked))
                if want <= 0:
                    break
                got = self._take_from(conn, org, want, now, worker_id, until, picked)
                if got and first_pass:
                    served_first_pass.append(org.id)
                if not org.endpoints:
                    due.remove(org)
            first_pass = False
        if served_first_pass:
            self._after_org = served_first_pass[-1]
        return self._details(conn, picked, until)

    def _due_organizations(
        self, conn: sqlite3.Connection, now: int, excluded: frozenset[str], enough: int
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
                if earliest <= now and endpoint not in excluded:
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

    @staticmethod
    def _take_from(
        conn: sqlite3.Connection,
        org: _Organization,
        want: int,
        now: int,
        worker_id: str,
        until: int,
        picked: list[int],
    ) -> int:
        """Lease up to ``want`` rows of ``org``, shared across its endpoints."""
        got = 0
        while org.endpoints and got < want:
            share = max(1, (want - got) // len(org.endpoints))
            for endpoint in list(org.endpoints):
                take = min(share, want - got)
                if take <= 0:
                    break
                # RETURNING gives no order: by seq, the order of acceptance (all are due).
                seqs = sorted(
                    row[0]
                    for row in conn.execute(
                        _FETCH_AND_LEASE, (worker_id, until, until, org.id, endpoint, now, take)
                    )
                )
                if seqs:
                    picked.extend(seqs)
                    got += len(seqs)
                if len(seqs) < take:
                    org.endpoints.remove(endpoint)
        return got

    @staticmethod
    def _details(conn: sqlite3.Connection, picked: list[int], until: int) -> list[ClaimedDelivery]:
        if not picked:
            return []
        rows = {
            row[0]: row
            for part in chunks(picked)
            for row in conn.execute(_DETAILS.format(marks(len(part))), part)
        }
        lease_expires_at = from_ms(until)
        # The columns are ClaimedDelivery's fields in order (attempt_number, round_attempt
        # computed by the query): positional arguments, the cheapest way to build one.
        claimed = []
        for seq in picked:
            _, id_, org, event, kind, endpoint, url, body, number, in_round = rows[seq]
            claimed.append(
                ClaimedDelivery(
                    id_, org, event, kind, endpoint, url, body, number, in_round, lease_expires_at
                )
            )
        return claimed
