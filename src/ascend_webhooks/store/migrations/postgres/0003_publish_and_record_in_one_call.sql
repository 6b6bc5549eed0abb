-- A publish and a worker's record of outcomes, each one statement: one round trip, committed
-- as it returns (no BEGIN, COMMIT or statements in between, each of which was a round trip of
-- its own). Their steps stay separate statements inside the function, so each one still gets
-- a fresh snapshot under READ COMMITTED: what a step reads after waiting for a lock (the event
-- a racing publisher of the same id committed, the pending deliveries of an ordering key) is
-- what was committed before the lock was granted, as it was with one statement per round trip.
--
-- Errors the caller turns into its own: SQLSTATE AWC01 (DETAIL: the event id) is an event id
-- stored with another body; AWC02 (DETAIL: how many) means the caller passed too few delivery
-- ids (it makes them, one per event and matching endpoint) and should call again with as many.
-- Either rolls the whole call back.

CREATE FUNCTION ascend_webhooks_publish(
    p_org text, p_ids text[], p_types text[], p_bodies bytea[], p_hashes bytea[],
    p_keys text[], p_delivery_ids text[], p_lock_seed bigint
) RETURNS TABLE (o_kind text, o_id text, o_seq bigint, o_event_seq bigint,
                 o_endpoint_id text, o_at timestamptz)
LANGUAGE plpgsql AS $fn$
DECLARE
    c_seqs bigint[];
    c_ids text[];
    c_types text[];
    c_keys text[];
    c_at timestamptz[];
    conflict text;
    d_seqs bigint[];
    d_endpoints text[];
    d_keys text[];
    wanted integer;
BEGIN
    -- 1. The events that are new, in the order given (their seq is the order of acceptance).
    WITH ins AS (
        INSERT INTO events AS e (organization_id, id, type, body, content_hash, ordering_key)
        SELECT p_org, t.id, t.type, t.body, t.hash, t.key
          FROM unnest(p_ids, p_types, p_bodies, p_hashes, p_keys)
               WITH ORDINALITY AS t(id, type, body, hash, key, ord)
         ORDER BY t.ord
        ON CONFLICT (organization_id, id) DO NOTHING
        RETURNING e.seq, e.id, e.type, e.ordering_key, e.created_at
    )
    SELECT array_agg(ins.seq ORDER BY ins.seq), array_agg(ins.id ORDER BY ins.seq),
           array_agg(ins.type ORDER BY ins.seq), array_agg(ins.ordering_key ORDER BY ins.seq),
           array_agg(ins.created_at ORDER BY ins.seq)
      INTO c_seqs, c_ids, c_types, c_keys, c_at
      FROM ins;

    -- 2. The others exist: ON CONFLICT waited for any publisher of the same id still running,
    --    so this statement sees what it committed. Same body: the stored event is the answer.
    IF coalesce(cardinality(c_ids), 0) < cardinality(p_ids) THEN
        SELECT e.id INTO conflict
          FROM unnest(p_ids, p_hashes) AS t(id, hash)
          JOIN events AS e ON e.organization_id = p_org AND e.id = t.id
         WHERE e.content_hash <> t.hash
         LIMIT 1;
        IF conflict IS NOT NULL THEN
            RAISE EXCEPTION 'event % exists with another body', conflict
                  USING ERRCODE = 'AWC01', DETAIL = conflict;
        END IF;
        RETURN QUERY
            SELECT 'x'::text, e.id, e.seq, NULL::bigint, NULL::text, e.created_at
              FROM events AS e
             WHERE e.organization_id = p_org AND e.id = ANY (p_ids)
               AND NOT (e.id = ANY (coalesce(c_ids, '{}'::text[])));
    END IF;
    IF c_ids IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT 'e'::text, t.id, t.seq, NULL::bigint, NULL::text, t.at
          FROM unnest(c_ids, c_seqs, c_at) AS t(id, seq, at);

    -- 3. One delivery per new event and enabled endpoint that wants its type, events in order,
    --    endpoints oldest first. FOR KEY SHARE: delete_endpoint and update_endpoint lock the
    --    row FOR UPDATE first, so they wait for this commit and then fail (or hold back) the
    --    deliveries made here, instead of leaving claimable deliveries to an endpoint that is
    --    gone or disabled.
    SELECT array_agg(ev.seq ORDER BY ev.ord, ep.ord), array_agg(ep.id ORDER BY ev.ord, ep.ord),
           array_agg(ev.key ORDER BY ev.ord, ep.ord)
      INTO d_seqs, d_endpoints, d_keys
      FROM unnest(c_seqs, c_types, c_keys) WITH ORDINALITY AS ev(seq, type, key, ord)
      JOIN (SELECT en.id, en.event_types,
                   row_number() OVER (ORDER BY en.created_at, en.id) AS ord
              FROM (SELECT e.id, e.event_types, e.created_at FROM endpoints AS e
                     WHERE e.organization_id = p_org AND e.enabled AND e.deleted_at IS NULL
                       FOR KEY SHARE) AS en) AS ep
        ON ep.event_types IS NULL OR ev.type = ANY (ep.event_types);
    wanted := coalesce(cardinality(d_seqs), 0);
    IF wanted = 0 THEN
        RETURN;
    END IF;
    IF wanted > coalesce(cardinality(p_delivery_ids), 0) THEN
        RAISE EXCEPTION '% delivery ids needed', wanted
              USING ERRCODE = 'AWC02', DETAIL = wanted::text;
    END IF;

    -- 4. The transitions of one (organization, ordering key) are serialized by an advisory
    --    lock taken before the new deliveries get their seq: the order of seq is the order of
    --    commits. Sorted, so two transactions locking overlapping keys cannot deadlock.
    PERFORM pg_advisory_xact_lock(locks.h) FROM (
        SELECT DISTINCT hashtextextended(p_org || chr(1) || k, p_lock_seed) AS h
          FROM unnest(d_keys) AS k
         WHERE k IS NOT NULL
         ORDER BY h
    ) AS locks;

    -- 5. A keyed delivery starts blocked when an older delivery with its (endpoint, key) is
    --    pending, already stored (this statement's snapshot follows the lock) or earlier in
    --    this very call.
    RETURN QUERY
        WITH made AS (
            INSERT INTO deliveries AS d (id, organization_id, event_seq, endpoint_id,
                                         ordering_key, next_attempt_at, blocked)
            SELECT p_delivery_ids[t.ord], p_org, t.seq, t.endpoint_id, t.key, now(),
                   CASE WHEN t.key IS NOT NULL AND (
                       row_number() OVER (PARTITION BY t.endpoint_id, t.key ORDER BY t.ord) > 1
                       OR EXISTS (SELECT 1 FROM deliveries AS o
                                   WHERE o.endpoint_id = t.endpoint_id
                                     AND o.ordering_key = t.key AND o.status = 'pending'))
                   THEN 1 ELSE 0 END
              FROM unnest(d_seqs, d_endpoints, d_keys) WITH ORDINALITY AS t(seq, endpoint_id, key, ord)
             ORDER BY t.ord
            RETURNING d.id, d.seq, d.event_seq, d.endpoint_id, d.created_at
        )
        SELECT 'd'::text, made.id, made.seq, made.event_seq, made.endpoint_id, made.created_at
          FROM made;
END
$fn$;

-- The outcomes of one worker's attempts. Only rows this worker still holds are changed: an
-- outcome for a lease that was lost (and perhaps taken by another worker) is dropped, attempt
-- and all. Returns how many deliveries became the head of their ordering key (workers should
-- look for work).
CREATE FUNCTION ascend_webhooks_record(
    p_worker text, p_ids text[], p_numbers integer[], p_started timestamptz[],
    p_durations double precision[], p_codes integer[], p_errors text[], p_excerpts text[],
    p_statuses text[], p_next timestamptz[], p_lock_seed bigint
) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    ended_endpoints text[];
    ended_keys text[];
    unblocked integer;
BEGIN
    -- 1. The ordering keys whose head may end here: their transitions are serialized (sorted
    --    advisory locks) with publishes of the same key and other workers' records.
    PERFORM pg_advisory_xact_lock(locks.h) FROM (
        SELECT DISTINCT hashtextextended(d.organization_id || chr(1) || d.ordering_key,
                                         p_lock_seed) AS h
          FROM deliveries AS d
         WHERE d.id = ANY (p_ids) AND d.locked_by = p_worker AND d.status = 'pending'
           AND d.ordering_key IS NOT NULL
         ORDER BY h
    ) AS locks;

    -- 2. The outcomes and their attempts.
    WITH o AS (
        SELECT * FROM unnest(p_ids, p_numbers, p_started, p_durations, p_codes, p_errors,
                             p_excerpts, p_statuses, p_next)
               AS t(id, number, started_at, duration_ms, status_code, error, excerpt, status,
                    next_at)
    ),
    upd AS (
        UPDATE deliveries AS d
           SET status = o.status,
               attempt_count = d.attempt_count + 1,
               next_attempt_at = CASE WHEN o.status = 'pending'
                                      THEN coalesce(o.next_at, now()) END,
               blocked = CASE WHEN o.status = 'pending' THEN d.blocked ELSE 0 END,
               locked_by = NULL,
               lease_expires_at = NULL,
               updated_at = now()
          FROM o
         WHERE d.id = o.id AND d.locked_by = p_worker AND d.status = 'pending'
        RETURNING d.seq, d.id, d.status, d.endpoint_id, d.ordering_key, d.attempt_count
    ),
    att AS (
        INSERT INTO attempts (delivery_seq, number, started_at, duration_ms, status_code,
                              error, response_excerpt)
        SELECT upd.seq, upd.attempt_count, o.started_at, o.duration_ms, o.status_code, o.error,
               o.excerpt
          FROM upd JOIN o ON o.id = upd.id
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(upd.endpoint_id), array_agg(upd.ordering_key)
      INTO ended_endpoints, ended_keys
      FROM upd
     WHERE upd.status <> 'pending' AND upd.ordering_key IS NOT NULL;

    IF ended_endpoints IS NULL THEN
        RETURN 0;
    END IF;

    -- 3. The next delivery of each (endpoint, key) whose head just left 'pending' may now go.
    UPDATE deliveries AS d SET blocked = d.blocked & ~1
     WHERE d.blocked & 1 = 1 AND d.seq IN (
        SELECT (SELECT min(x.seq) FROM deliveries AS x
                 WHERE x.endpoint_id = k.ep AND x.ordering_key = k.key
                   AND x.status = 'pending')
          FROM unnest(ended_endpoints, ended_keys) AS k(ep, key)
     );
    GET DIAGNOSTICS unblocked = ROW_COUNT;
    RETURN unblocked;
END
$fn$;
