-- An attempt on its way when its endpoint is deleted is recorded: deleting the endpoint fails
-- its pending deliveries but leaves their leases with their workers (the store's code), and
-- the record takes an outcome of a delivery failed while leased to it (the attempt is kept,
-- the delivery stays failed). Before, the lease was cleared with it, and the outcome of an
-- attempt the receiver may have acted upon was dropped.
--
-- The function is restated whole (CREATE OR REPLACE takes the whole body); against 0005 only
-- the outcomes' UPDATE differs.

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
           SET status = CASE WHEN d.status = 'failed' THEN 'failed' ELSE o.status END,
               attempt_count = d.attempt_count + 1,
               next_attempt_at = CASE WHEN d.status = 'pending' AND o.status = 'pending'
                                      THEN coalesce(o.next_at, now()) END,
               blocked = CASE WHEN d.status = 'pending' AND o.status = 'pending'
                              THEN d.blocked ELSE 0 END,
               locked_by = NULL,
               lease_expires_at = NULL,
               updated_at = now()
          FROM o
         WHERE d.id = o.id
           -- (SET reads the row as it was: d.status is the status before this update)
           AND CASE WHEN d.locked_by = p_worker AND d.status IN ('pending', 'failed')
                    THEN true ELSE false END
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
