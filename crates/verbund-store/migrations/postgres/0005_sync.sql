-- PostgreSQL twin of migrations/sqlite/0005_sync.sql.

-- Owner side: every organization a record was ever sent to, and what it holds now
-- (live, deleted, revoked, erased). Erasure must reach every organization listed here.
CREATE TABLE deliveries (
    org TEXT NOT NULL,
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    first_sent_ms BIGINT NOT NULL,
    last_sent_ms BIGINT NOT NULL,
    erasure_acked_ms BIGINT,
    PRIMARY KEY (org, record_id)
);
CREATE INDEX deliveries_record ON deliveries (record_id);

-- Owner side: erased records (GDPR Art. 17); the tombstone keeps no personal field.
CREATE TABLE erasures (
    record_id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    erased_ms BIGINT NOT NULL,
    erased_by TEXT NOT NULL
);

-- Owner side: pushes already decided, by idempotency key: a retry gets the same verdict.
CREATE TABLE push_receipts (
    org TEXT NOT NULL,
    push_key TEXT NOT NULL,
    record_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (org, push_key)
);

-- Owner side: concurrent edits that lost, for a person to review.
CREATE TABLE conflicts (
    id TEXT PRIMARY KEY NOT NULL,
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    field TEXT NOT NULL,
    winner_value TEXT,
    winner_version TEXT NOT NULL,
    loser_value TEXT,
    loser_version TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    resolved_by TEXT,
    resolved_ms BIGINT,
    resolution TEXT
);
CREATE INDEX conflicts_record ON conflicts (record_id);

-- Owner side: the cursor each partner has acknowledged.
CREATE TABLE sync_peers (
    org TEXT PRIMARY KEY NOT NULL,
    acked_cursor BIGINT NOT NULL,
    acked_ms BIGINT NOT NULL
);

-- Partner side: our subscription to each owner; the cursor moves in the transaction that
-- applies a batch.
CREATE TABLE subscriptions (
    owner_org TEXT PRIMARY KEY NOT NULL,
    cursor BIGINT NOT NULL,
    owner_last_seq BIGINT NOT NULL,
    last_batch_ms BIGINT,
    last_error TEXT,
    last_error_ms BIGINT
);

-- Partner side: the owner's state of each replica (what the owner sent), and what we may
-- propose changes to. The records row shows this state with our pending edits on top.
CREATE TABLE replicas (
    record_id TEXT PRIMARY KEY NOT NULL,
    owner_org TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    shadow_fields TEXT NOT NULL,
    shadow_versions TEXT NOT NULL,
    writable TEXT NOT NULL,
    -- The owner's change sequence number of the state we hold: older states are ignored.
    owner_seq BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE INDEX replicas_owner ON replicas (owner_org, record_id);

-- Partner side: local edits of replicas, in order, until the owner's verdict.
CREATE TABLE outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    push_key TEXT NOT NULL UNIQUE,
    owner_org TEXT NOT NULL,
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    edits TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    last_error TEXT,
    created_ms BIGINT NOT NULL
);
CREATE INDEX outbox_record ON outbox (record_id, seq);
CREATE INDEX outbox_state ON outbox (state, seq);
