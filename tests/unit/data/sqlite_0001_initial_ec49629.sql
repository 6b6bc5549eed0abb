-- The initial schema of the embedded SQLite store.
--
-- Times are INTEGER Unix milliseconds (cheap to compare and index). Events and deliveries have
-- an INTEGER ``seq`` (the rowid): the order of acceptance, the pagination cursor and the rank
-- within an ordering key. Public ids (org_..., dlv_..., the publisher's event id) are TEXT.

CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT REFERENCES organizations (id) ON DELETE CASCADE,  -- NULL: admin
    token_hash       BLOB NOT NULL UNIQUE,
    name             TEXT,
    created_at       INTEGER NOT NULL
);
CREATE INDEX api_tokens_admin ON api_tokens (id) WHERE organization_id IS NULL;

CREATE TABLE webhook_keys (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    organization_id    TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    secret_ciphertext  BLOB NOT NULL,
    created_at         INTEGER NOT NULL,
    activated_at       INTEGER,
    revoked_at         INTEGER
);
CREATE INDEX webhook_keys_organization ON webhook_keys (organization_id, seq);

-- A deleted endpoint stays as a row (deleted_at set) so that its deliveries keep their history.
CREATE TABLE endpoints (
    id               TEXT PRIMARY KEY,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url              TEXT NOT NULL,
    event_types      TEXT,  -- a JSON array of strings; NULL: every event type
    description      TEXT,
    enabled          INTEGER NOT NULL DEFAULT 1,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    deleted_at       INTEGER
);
CREATE INDEX endpoints_organization ON endpoints (organization_id, id) WHERE deleted_at IS NULL;

CREATE TABLE events (
    seq              INTEGER PRIMARY KEY,
    id               TEXT NOT NULL,
    organization_id  TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    type             TEXT NOT NULL,
    body             BLOB NOT NULL,
    content_hash     BLOB NOT NULL,
    ordering_key     TEXT,
    created_at       INTEGER NOT NULL,
    UNIQUE (organization_id, id)
);
CREATE INDEX events_organization_seq ON events (organization_id, seq);
CREATE INDEX events_organization_type_seq ON events (organization_id, type, seq);

CREATE TABLE deliveries (
    seq               INTEGER PRIMARY KEY,
    id                TEXT NOT NULL UNIQUE,
    organization_id   TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_seq         INTEGER NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    endpoint_id       TEXT NOT NULL REFERENCES endpoints (id),
    ordering_key      TEXT,  -- copied from the event
    status            TEXT NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Why a pending delivery may not be claimed, as bits: 1 = an older delivery with the same
    -- ordering key to the same endpoint is still pending; 2 = the endpoint is disabled.
    blocked           INTEGER NOT NULL DEFAULT 0,
    attempt_count     INTEGER NOT NULL DEFAULT 0,
    round_start       INTEGER NOT NULL DEFAULT 0,  -- attempt_count when this round began
    -- While leased: the lease's end, so that an attempt lost with its worker is simply due
    -- again then, and one index range serves both new work and expired leases.
    next_attempt_at   INTEGER,
    locked_by         TEXT,
    lease_expires_at  INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
-- The claim path: a loose index scan over (organization, endpoint) pairs with ready work, then
-- the earliest due rows of each pair. Finished and blocked rows are not in the index at all.
CREATE INDEX deliveries_ready
    ON deliveries (organization_id, endpoint_id, next_attempt_at)
    WHERE status = 'pending' AND blocked = 0;
CREATE INDEX deliveries_ready_due
    ON deliveries (next_attempt_at)
    WHERE status = 'pending' AND blocked = 0;
-- The head of each ordering key: the oldest pending delivery per (endpoint, key).
CREATE INDEX deliveries_ordering
    ON deliveries (endpoint_id, ordering_key)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_seq);
CREATE INDEX deliveries_organization_seq ON deliveries (organization_id, seq);
CREATE INDEX deliveries_organization_status_seq ON deliveries (organization_id, status, seq);
CREATE INDEX deliveries_endpoint_seq ON deliveries (endpoint_id, seq);
CREATE INDEX deliveries_status ON deliveries (status);

CREATE TABLE attempts (
    delivery_seq      INTEGER NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    number            INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    duration_ms       REAL NOT NULL,
    status_code       INTEGER,
    error             TEXT,
    response_excerpt  TEXT,
    PRIMARY KEY (delivery_seq, number)
) WITHOUT ROWID;
