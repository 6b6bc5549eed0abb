-- The references of the rows a publish and a worker's record write are checked once per call,
-- not once per row. A foreign key checks each inserted row with a query of its own (a trigger
-- running SELECT ... FOR KEY SHARE on the referenced row): five per delivered event, for
-- references that the two functions writing these tables already guarantee:
--
--   events.organization_id, deliveries.organization_id: ascend_webhooks_publish now locks the
--     organization FOR KEY SHARE once (step 0), as each of those checks did, and raises the
--     same error (foreign_key_violation) when it does not exist;
--   deliveries.event_seq: the events inserted by the same call (step 1);
--   deliveries.endpoint_id: the endpoints it reads FOR KEY SHARE (step 3);
--   attempts.delivery_seq: the deliveries ascend_webhooks_record updates (so locks) in the
--     same statement; an outcome of a delivery that is gone inserts nothing.
--
-- bench/run_all.py's PostgreSQL part, six alternating rounds: 6,933-7,388 -> 7,593-8,420
-- deliveries/s, the machine's CPU per event 272-290 -> 237-263 us (docs/benchmarks.md).
--
-- What ON DELETE CASCADE did stays, for rows deleted by hand: statement-level triggers delete
-- the rows that referenced those deleted (a deleted endpoint's deliveries too, which its
-- foreign key refused before). The service itself deletes none of these rows.
SET LOCAL lock_timeout = '10s';

ALTER TABLE events DROP CONSTRAINT IF EXISTS events_organization_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_organization_id_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_event_seq_fkey;
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_endpoint_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_delivery_seq_fkey;

CREATE FUNCTION ascend_webhooks_cascade() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    -- Deliveries first: their own trigger deletes their attempts.
    IF TG_TABLE_NAME = 'organizations' THEN
        DELETE FROM deliveries AS d USING gone WHERE d.organization_id = gone.id;
        DELETE FROM events AS e USING gone WHERE e.organization_id = gone.id;
    ELSIF TG_TABLE_NAME = 'events' THEN
        DELETE FROM deliveries AS d USING gone WHERE d.event_seq = gone.seq;
    ELSIF TG_TABLE_NAME = 'endpoints' THEN
        DELETE FROM deliveries AS d USING gone WHERE d.endpoint_id = gone.id;
    ELSIF TG_TABLE_NAME = 'deliveries' THEN
        DELETE FROM attempts AS a USING gone WHERE a.delivery_seq = gone.seq;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER organizations_cascade AFTER DELETE ON organizations
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION ascend_webhooks_cascade();
CREATE TRIGGER events_cascade AFTER DELETE ON events
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION ascend_webhooks_cascade();
CREATE TRIGGER endpoints_cascade AFTER DELETE ON endpoints
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION ascend_webhooks_cascade();
CREATE TRIGGER deliveries_cascade AFTER DELETE ON deliveries
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION ascend_webhooks_cascade();

-- As in migration 0003, with step 0 added.
CREATE OR REPLACE FUNCTION ascend_webhooks_publish(
    p_org text, p_ids text[], p_types text[], p_bodies bytea[], p_hashes bytea[],
    p_keys text[], p_delivery_ids text[], p_lock_seed bigint
) RETURNS TABLE (o_kind text, o_id text, o_seq bigint, o_event_seq bigint,
                 o_endpoint_id text, o_at timestamptz)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $fn$
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
    -- 0. The organization, locked as a foreign key check locks it (once, not per row): it
    --    cannot be deleted until this commits, and a missing one is what such a check says.
    PERFORM FROM organizations WHERE id = p_org FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'organization % not found', p_org
              USING ERRCODE = 'foreign_key_violation', DETAIL = p_org;
    END IF;

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
