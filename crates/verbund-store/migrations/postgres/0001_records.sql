-- PostgreSQL twin of migrations/sqlite/0001_records.sql (same tables, BIGINT for integers).
-- Node-wide counters. last_seq is the change-log sequence; every write transaction bumps it
-- first, which also serializes writers so sequence numbers commit in order, without gaps.
CREATE TABLE node_state (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    last_seq BIGINT NOT NULL
);
INSERT INTO node_state (id, last_seq) VALUES (1, 0);

-- Every record of every kind, own and (later) replicated. Field values and their versions are
-- JSON text; the columns after `versions` are derived from them for filtering and search.
CREATE TABLE records (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    owner_org TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    deleted_version TEXT,
    seq BIGINT NOT NULL,
    fields TEXT NOT NULL,
    versions TEXT NOT NULL,
    account_id TEXT,
    contact_id TEXT,
    related_id TEXT,
    stage TEXT,
    status TEXT,
    priority TEXT,
    assigned_org TEXT,
    channel TEXT,
    search_text TEXT NOT NULL
);
CREATE INDEX records_kind_id ON records (kind, id);
CREATE INDEX records_account ON records (account_id, kind, id);
CREATE INDEX records_contact ON records (contact_id);
CREATE INDEX records_related ON records (related_id, kind, id);
CREATE INDEX records_kind_stage ON records (kind, stage, id);
CREATE INDEX records_kind_status ON records (kind, status, id);
CREATE INDEX records_kind_assigned ON records (kind, assigned_org, id);
CREATE INDEX records_kind_channel ON records (kind, channel, id);
CREATE INDEX records_kind_updated ON records (kind, updated_at_ms);

-- The durable change log: one row per committed write, in sequence order.
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY NOT NULL,
    record_id TEXT NOT NULL REFERENCES records (id),
    kind TEXT NOT NULL,
    op TEXT NOT NULL,
    hlc TEXT NOT NULL,
    fields TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX changes_record ON changes (record_id, seq);
