-- The initial schema of the PostgreSQL store.
--
-- Public ids (org_..., evt_..., dlv_...) are what the API shows; events and deliveries also get
-- a bigserial ``seq``: the order of acceptance, the pagination cursor and the ordering-key rank.

CREATE TABLE organizations (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id               text PRIMARY KEY,
    organization_id  text REFERENCES organizations (id) ON DELETE CASCADE,  -- NULL: admin
    token_hash       bytea NOT NULL UNIQUE,
    name             text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_tokens_admin ON api_tokens (id) WHERE organization_id IS NULL;

CREATE TABLE webhook_keys (
    id                 text PRIMARY KEY,
    organization_id    text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    secret_ciphertext  bytea NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    activated_at       timestamptz,
    revoked_at         timestamptz
);
CREATE INDEX webhook_keys_organization ON webhook_keys (organization_id, created_at);

-- A deleted endpoint stays as a row (deleted_at set) so that its deliveries keep their history.
CREATE TABLE endpoints (
    id               text PRIMARY KEY,
    organization_id  text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url              text NOT NULL,
    event_types      text[],  -- NULL: every event type
    description      text,
    enabled          boolean NOT NULL DEFAULT true,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    deleted_at       timestamptz
);
CREATE INDEX endpoints_organization ON endpoints (organization_id, id) WHERE deleted_at IS NULL;

CREATE TABLE events (
    seq              bigserial PRIMARY KEY,
    id               text NOT NULL,
    organization_id  text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    type             text NOT NULL,
    body             bytea NOT NULL,
    content_hash     bytea NOT NULL,
    ordering_key     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, id)
);
CREATE INDEX events_organization_seq ON events (organization_id, seq);
CREATE INDEX events_organization_type_seq ON events (organization_id, type, seq);

CREATE TABLE deliveries (
    seq               bigserial PRIMARY KEY,
    id                text NOT NULL UNIQUE,
    organization_id   text NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_seq         bigint NOT NULL REFERENCES events (seq) ON DELETE CASCADE,
    endpoint_id       text NOT NULL REFERENCES endpoints (id),
    ordering_key      text,  -- copied from the event
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed')),
    -- Why a pending delivery may not be claimed, as bits: 1 = an older delivery with the same
    -- ordering key to the same endpoint is still pending; 2 = the endpoint is disabled.
    blocked           integer NOT NULL DEFAULT 0,
    attempt_count     integer NOT NULL DEFAULT 0,
    round_start       integer NOT NULL DEFAULT 0,  -- attempt_count when this round began
    -- while leased: the lease's end, so that a lost attempt is simply due again then
    next_attempt_at   timestamptz,
    locked_by         text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- The claim path: a loose index scan over (organization, endpoint) pairs with ready work, then
-- the earliest due rows of each pair. Finished and blocked rows are not in the index at all.
-- (No index on next_attempt_at alone: on a table not yet analyzed, the planner would prefer it
-- for the claim and read the whole backlog; next_due_at walks this one instead.)
CREATE INDEX deliveries_ready
    ON deliveries (organization_id, endpoint_id, next_attempt_at, seq)
    WHERE status = 'pending' AND blocked = 0;
-- The head of each ordering key: the oldest pending delivery per (endpoint, key).
CREATE INDEX deliveries_ordering
    ON deliveries (endpoint_id, ordering_key, seq)
    WHERE status = 'pending' AND ordering_key IS NOT NULL;
CREATE INDEX deliveries_event ON deliveries (event_seq);
CREATE INDEX deliveries_organization_seq ON deliveries (organization_id, seq);
CREATE INDEX deliveries_organization_status_seq ON deliveries (organization_id, status, seq);
CREATE INDEX deliveries_endpoint_seq ON deliveries (endpoint_id, seq);
CREATE INDEX deliveries_status ON deliveries (status);

CREATE TABLE attempts (
    delivery_seq      bigint NOT NULL REFERENCES deliveries (seq) ON DELETE CASCADE,
    number            integer NOT NULL,
    started_at        timestamptz NOT NULL,
    duration_ms       double precision NOT NULL,
    status_code       integer,
    error             text,
    response_excerpt  text,
    PRIMARY KEY (delivery_seq, number)
);
