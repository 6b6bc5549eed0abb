"""The SQL of the PostgreSQL store, one named statement per operation.

Kept apart from the Python that runs them so each can be read (and EXPLAINed) whole. Batch
statements take parallel arrays and ``unnest`` them: one round trip, one plan, whatever the size.
Every value travels as a bind parameter; the f-strings only splice constants of this module.
"""

# ruff: noqa: S608

from __future__ import annotations

# The NOTIFY channel workers LISTEN on; the payload is empty (a hint, not a message).
CHANNEL = "ascend_webhooks_work"

# Any fixed 64-bit number: the advisory lock that serializes migrations across processes.
MIGRATION_LOCK = 0x61736365_6E64_7768
# Taken while the first admin token is created, so that processes starting together make one.
FIRST_ADMIN_LOCK = MIGRATION_LOCK + 1

# Advisory locks per (organization, ordering key) use this seed in hashtextextended.
ORDERING_LOCK_SEED = 0x6F72_6465_72

DELIVERY_COLUMNS = """
    d.id, d.organization_id, e.id AS event_id, d.endpoint_id, d.status, d.attempt_count,
    d.next_attempt_at, d.created_at, d.updated_at, d.seq, d.event_seq
"""

# A whole publish, one statement (migration 0003): the new events, the conflict check of the
# others, a delivery per matching endpoint (delivery ids passed in, $7), ordering-key locks.
# Rows: 'e' a new event (id, seq, created_at), 'x' an existing one (id, seq), 'd' a new delivery
# (id, seq, event_seq, endpoint_id, created_at: also its next_attempt_at and updated_at).
PUBLISH = f"""
SELECT o_kind, o_id, o_seq, o_event_seq, o_endpoint_id, o_at
  FROM ascend_webhooks_publish($1, $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                               $6::text[], $7::text[], {ORDERING_LOCK_SEED})
"""
# The SQLSTATEs ascend_webhooks_publish raises: an id stored with another body (DETAIL: the
# id); too few delivery ids passed (DETAIL: how many it needs).
EVENT_CONFLICT = "AWC01"
MORE_DELIVERY_IDS = "AWC02"

# Sorted, so two transactions locking overlapping keys cannot deadlock.
LOCK_ORDERING_KEYS = f"""
SELECT pg_advisory_xact_lock(h) FROM (
    SELECT DISTINCT hashtextextended(k.org || chr(1) || k.key, {ORDERING_LOCK_SEED}) AS h
      FROM unnest($1::text[], $2::text[]) AS k(org, key)
     ORDER BY h
) AS locks
"""

# Its own tiny transaction, after the data's commit, on a connection whose commits do not wait
# for their flush: listeners hear it at commit, and a hint needs no fsync (the work it points
# at is already durable).
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"

# The organization's active keys (activated, not revoked), read after _lock_keys: a key's
# first activation and the refusal to revoke the last active one are decided on them.
ACTIVE_KEYS = """
SELECT id FROM webhook_keys
 WHERE organization_id = $1 AND activated_at IS NOT NULL AND revoked_at IS NULL
"""

EVENTS_BY_SEQ = """
SELECT seq, id, organization_id, type, body, ordering_key, created_at
  FROM events WHERE seq = ANY($1::bigint[])
"""

DELIVERIES_OF_EVENTS = f"""
SELECT {DELIVERY_COLUMNS}
  FROM deliveries d JOIN events e ON e.seq = d.event_seq
 WHERE d.event_seq = ANY($1::bigint[])
 ORDER BY d.seq
"""

# -- claim ----------------------------------------------------------------------------------
#
# 1. walk: a loose index scan over the distinct (organization, endpoint) pairs that have ready
#    work (pending, not blocked by an ordering key), starting just after the pair where the
#    previous claim stopped and wrapping around, at most $6 pairs. Each step is one index probe,
#    however many rows a pair has: a backlog of a million costs what a backlog of one does.
# 2. cand: from each pair, its earliest due rows (at most $8: a few more than the batch, so that
#    a claimer racing others finds rows to take past the ones they locked; with a room for the
#    pair's endpoint, that room plus the same few), ranked within their organization. The room
#    of an endpoint is in $9/$10, $11 for any other (NULL: the batch, $2).
# 3. top, picked, capped: the candidates by (rank in organization, walk order): organizations
#    take turns row by row, so each gets an equal share of the batch whatever its backlog. The
#    first $2 that can be locked (SKIP LOCKED) are taken, at most its room from each pair:
#    racing claimers take the next ones.
# 4. The lease: next_attempt_at moves to the lease's end, so a delivery whose worker died is
#    simply due again when the lease runs out (no sweeper needed).
# 5. A last row (id NULL) says where the walk stopped, how many candidates there were and the
#    most any one pair gave (whether another claim may find rows that racers did not lock),
#    and, when the walk saw every pair and the claim was small, when the next delivery is due
#    (no row at all: nothing is ready). Not after a big claim: more may well be due, and
#    stepping over the rows it leased would cost a drain per delivery.
_NEXT_PAIR = """
    SELECT x.organization_id AS org, x.endpoint_id AS ep FROM (
        (SELECT organization_id, endpoint_id FROM deliveries
          WHERE status = 'pending' AND blocked = 0
            AND (organization_id, endpoint_id) > ({org}, {ep})
          ORDER BY organization_id, endpoint_id LIMIT 1)
        UNION ALL
        (SELECT organization_id, endpoint_id FROM deliveries
          WHERE status = 'pending' AND blocked = 0
          ORDER BY organization_id, endpoint_id LIMIT 1)
    ) AS x LIMIT 1
"""

# A claim that takes fewer rows than this also says when the next one is due (see CLAIM's 5.).
SMALL_CLAIM = 8

# The rows of the walk's pair (w) due at or before {upto}, as a range of deliveries_ready.
_PAIR_RANGE = """(d.organization_id, d.endpoint_id, d.next_attempt_at)
                   BETWEEN (w.org, w.ep, '-infinity'::timestamptz) AND (w.org, w.ep, {upto})"""

CLAIM = f"""
WITH RECURSIVE walk(org, ep, n, first_org, first_ep) AS (
    SELECT s.org, s.ep, 1, s.org, s.ep
      FROM ({_NEXT_PAIR.format(org="$4::text", ep="$5::text")}) AS s
    UNION ALL
    SELECT nx.org, nx.ep, w.n + 1, w.first_org, w.first_ep
      FROM walk AS w
     CROSS JOIN LATERAL ({_NEXT_PAIR.format(org="w.org", ep="w.ep")}) AS nx
     WHERE w.n < $6 AND (nx.org, nx.ep) <> (w.first_org, w.first_ep)
),
cand AS (
    SELECT c.seq, w.n, room.n AS room,
           row_number() OVER (PARTITION BY w.org ORDER BY c.next_attempt_at, c.seq) AS rn
      FROM walk AS w
     CROSS JOIN LATERAL (
        SELECT coalesce((SELECT r.room FROM unnest($9::text[], $10::int[]) AS r(ep, room)
                          WHERE r.ep = w.ep LIMIT 1), $11, $2) AS n
     ) AS room
     CROSS JOIN LATERAL (
        -- The pair's range as row comparisons, which only deliveries_ready can serve, in its
        -- order: with plain equalities the planner, on a table not analyzed yet, read the
        -- organization's whole backlog through deliveries_organization_status_seq and sorted
        -- it, on every claim. The inner LIMIT is a plain parameter for the same reason; the
        -- room cuts outside.
        SELECT * FROM (
            SELECT d.seq, d.next_attempt_at FROM deliveries AS d
             WHERE {_PAIR_RANGE.format(upto="now()")}
               AND d.status = 'pending' AND d.blocked = 0
             ORDER BY d.organization_id, d.endpoint_id, d.next_attempt_at, d.seq
             LIMIT $8
        ) AS due
        LIMIT least($8, room.n + $8 - $2)
     ) AS c
     WHERE w.ep <> ALL($7::text[])
),
top AS (
    SELECT seq, rn, n, room FROM cand ORDER BY rn, n LIMIT $8
),
-- Each candidate in turn, locked by primary key inside its own sub-select: a row locked by a
-- racing claimer is skipped, and the LIMIT stops locking once the batch is full. The shape
-- (candidates outside, one key lookup inside) holds whatever the table's statistics say.
picked AS (
    SELECT x.seq, top.rn, top.n, top.room
      FROM top
     CROSS JOIN LATERAL (
        SELECT d.seq FROM deliveries AS d
         WHERE d.seq = top.seq
           -- re-checked on the newest row version; CASE keeps partial indexes out of the plan
           AND CASE WHEN d.status = 'pending' AND d.blocked = 0 AND d.next_attempt_at <= now()
                    THEN true ELSE false END
           FOR UPDATE SKIP LOCKED
     ) AS x
     LIMIT $2
),
-- No more of a pair than the room the caller has for its endpoint.
capped AS (
    SELECT seq, rn, n FROM (
        SELECT picked.*, row_number() OVER (PARTITION BY n ORDER BY rn) AS k FROM picked
    ) AS p
     WHERE p.k <= p.room
),
claimed AS (
    UPDATE deliveries AS d
       SET locked_by = $1,
           lease_expires_at = now() + $3 * interval '1 second',
           next_attempt_at = now() + $3 * interval '1 second',
           updated_at = now()
      FROM capped AS p, events AS e, endpoints AS en
     -- = ANY of the keys: found by primary key whatever the table's size (a plain join let a
     -- small table be read whole and hashed, on every claim)
     WHERE d.seq = ANY (ARRAY(SELECT seq FROM capped)) AND d.seq = p.seq
       AND e.seq = d.event_seq AND en.id = d.endpoint_id
    RETURNING d.id, d.organization_id, e.id AS event_id, e.type AS event_type, d.endpoint_id,
              en.url, e.body, d.attempt_count + 1 AS attempt_number,
              d.attempt_count + 1 - d.round_start AS round_attempt, d.lease_expires_at,
              p.rn, p.n, d.ordering_key
)
SELECT id, organization_id, event_id, event_type, endpoint_id, url, body, attempt_number,
       round_attempt, lease_expires_at, rn, n, NULL::bigint AS walked,
       NULL::bigint AS candidates, NULL::bigint AS fullest, NULL::timestamptz AS next_due,
       NULL::timestamptz AS server_now, ordering_key
  FROM claimed
UNION ALL
SELECT NULL, last.org, NULL, NULL, last.ep, NULL, NULL, NULL, NULL, NULL, NULL, NULL, last.n,
       (SELECT count(*) FROM cand),
       (SELECT max(k) FROM (SELECT count(*) AS k FROM cand GROUP BY n) AS per_pair),
       -- When the walk saw every pair and claimed fewer than {SMALL_CLAIM}: when the next ready
       -- delivery is due, as next_due_at would say once this commits (the same probe per pair
       -- as NEXT_DUE_AT, past the few rows leased here, which count with their lease's end).
       CASE WHEN last.n < $6 AND (SELECT count(*) FROM capped) < {SMALL_CLAIM} THEN least((
           SELECT min(first.due) FROM walk AS w
            CROSS JOIN LATERAL (
               SELECT d.next_attempt_at AS due FROM deliveries AS d
                WHERE {_PAIR_RANGE.format(upto="'infinity'::timestamptz")}
                  AND d.status = 'pending' AND d.blocked = 0
                  AND d.seq <> ALL (ARRAY(SELECT seq FROM capped))
                ORDER BY d.organization_id, d.endpoint_id, d.next_attempt_at LIMIT 1
            ) AS first
       ), (SELECT max(lease_expires_at) FROM claimed)) END,
       now(), NULL
  FROM (SELECT org, ep, n FROM walk ORDER BY n DESC LIMIT 1) AS last
"""

# Whether a pending delivery of (endpoint, key) later than seq $3 is leased now (an earlier
# one in flight is the head: the retried one waits behind it); locks all the key's pending rows
# (FOR UPDATE: a claim racing this skips them) until the retry that asks commits.
KEY_IN_FLIGHT = """
SELECT coalesce(bool_or(x.seq > $3 AND x.locked_by IS NOT NULL AND x.lease_expires_at > now()),
                false) FROM (
    SELECT d.seq, d.locked_by, d.lease_expires_at FROM deliveries AS d
     WHERE d.status = 'pending' AND d.endpoint_id = $1 AND d.ordering_key = $2
       FOR UPDATE
) AS x
"""

# -- record ---------------------------------------------------------------------------------

# The outcomes, their attempts, the ordering keys they end: one statement (migration 0003).
# Only rows this worker still holds change: an outcome for a lease that was lost (and perhaps
# taken by another worker) is dropped, attempt and all. Returns how many deliveries became the
# head of their ordering key.
RECORD = f"""
SELECT ascend_webhooks_record($1, $2::text[], $3::int[], $4::timestamptz[], $5::float8[],
                              $6::int[], $7::text[], $8::text[], $9::text[], $10::timestamptz[],
                              {ORDERING_LOCK_SEED})
"""

# The next delivery of each (endpoint, key) whose head just left 'pending' may now go.
UNBLOCK_HEADS = """
UPDATE deliveries AS d SET blocked = d.blocked & ~1
 WHERE d.blocked & 1 = 1 AND d.seq IN (
    SELECT (SELECT min(x.seq) FROM deliveries AS x
             WHERE x.endpoint_id = k.ep AND x.ordering_key = k.key AND x.status = 'pending')
      FROM unnest($1::text[], $2::text[]) AS k(ep, key)
 )
"""

# Rows found by id (the unique index); the lease and status checked on each row, as a CASE that
# no partial index matches: a generic plan otherwise read every pending delivery of the backlog
# from deliveries_status (a BitmapAnd with deliveries_leased), on every call.
EXTEND_LEASES = """
UPDATE deliveries
   SET lease_expires_at = now() + $3 * interval '1 second',
       next_attempt_at = now() + $3 * interval '1 second'
 WHERE id = ANY($2::text[])
   AND CASE WHEN locked_by = $1 AND status = 'pending' THEN true ELSE false END
"""

RELEASE = """
UPDATE deliveries
   SET locked_by = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
 WHERE id = ANY($2::text[])
   AND CASE WHEN locked_by = $1 AND status = 'pending' THEN true ELSE false END
"""

# Both by the partial index of leased rows (migration 0002): as small as the work in flight.
LEASE_HOLDERS = """
SELECT DISTINCT locked_by FROM deliveries
 WHERE locked_by IS NOT NULL AND lease_expires_at > now() AND status = 'pending'
 ORDER BY locked_by
"""

RELEASE_WORKER = """
UPDATE deliveries
   SET locked_by = NULL, lease_expires_at = NULL, next_attempt_at = now(), updated_at = now()
 WHERE locked_by = $1 AND status = 'pending'
"""

# The earliest ready delivery of each (organization, endpoint) pair, by the same loose index
# scan as the claim: O(pairs) index probes.
NEXT_DUE_AT = f"""
WITH RECURSIVE walk(org, ep) AS (
    SELECT s.org, s.ep FROM ({_NEXT_PAIR.format(org="''::text", ep="''::text")}) AS s
    UNION ALL
    SELECT nx.org, nx.ep FROM walk AS w
     CROSS JOIN LATERAL ({_NEXT_PAIR.format(org="w.org", ep="w.ep")}) AS nx
     WHERE (nx.org, nx.ep) > (w.org, w.ep)
)
SELECT min(first.due) FROM walk AS w
 CROSS JOIN LATERAL (
    SELECT d.next_attempt_at AS due FROM deliveries AS d
     WHERE {_PAIR_RANGE.format(upto="'infinity'::timestamptz")}
       AND d.status = 'pending' AND d.blocked = 0
     ORDER BY d.organization_id, d.endpoint_id, d.next_attempt_at LIMIT 1
 ) AS first
"""

DELIVERY_COUNTS = "SELECT status, count(*) FROM deliveries GROUP BY status"
