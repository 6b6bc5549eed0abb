-- ascend_webhooks_record finds the rows it changes by their id (the unique index), whatever
-- the planner knows of the table. Its generic plans (0004) are made once per session, often
-- while the table is still small (a worker's first record), and kept as the table grows: the
-- outcomes' UPDATE was then a sequential scan of all deliveries hashed against the outcomes,
-- and the lock step's read a BitmapAnd of deliveries_leased and deliveries_status (every
-- pending delivery of the backlog). In bench/run_all.py's PostgreSQL part (50,000 events) that
-- was about 650 sequential scans, 450 rows read per delivery, and half the workers' server CPU.
-- Now the conditions on the row (this worker's lease, still pending) are a CASE, checked on
-- each row found and never used to choose an index (as in the claim), and the function plans
-- without sequential scans, so a plan made on a small table still probes by id.

CREATE OR REPLACE FUNCTION ascend_webhooks_record(
    p_worker text, p_ids text[], p_numbers integer[], p_started timestamptz[],
    p_durations double precision[], p_codes integer[], p_errors text[], p_excerpts text[],
    p_statuses text[], p_next timestamptz[], p_lock_seed bigint
) RETURNS integer
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
AS $fn$
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
         WHERE d.id = ANY (p_ids)
           AND CASE WHEN d.locked_by = p_worker AND d.status = 'pending'
                         AND d.ordering_key IS NOT NULL THEN true ELSE false END
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
         WHERE d.id = o.id
           AND CASE WHEN d.locked_by = p_worker AND d.status = 'pending' THEN true ELSE false END
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
