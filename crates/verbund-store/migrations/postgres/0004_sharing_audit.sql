-- PostgreSQL twin of migrations/sqlite/0004_sharing_audit.sql.
-- Explicit shares: this record with that organization under a named share profile (policy).
CREATE TABLE shares (
    id TEXT PRIMARY KEY NOT NULL,
    record_id TEXT NOT NULL REFERENCES records (id),
    kind TEXT NOT NULL,
    org TEXT NOT NULL,
    profile TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (record_id, org)
);
CREATE INDEX shares_org ON shares (org);

-- Share rules: every record matching `rule` (case-assigned, account-tag:<tag>) with `org`.
CREATE TABLE share_rules (
    id TEXT PRIMARY KEY NOT NULL,
    org TEXT NOT NULL,
    rule TEXT NOT NULL,
    profile TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    UNIQUE (org, rule)
);

-- The audit log, append-only: each entry carries the hash of the previous one.
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY NOT NULL,
    at_ms BIGINT NOT NULL,
    principal TEXT NOT NULL,
    org TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT,
    record_id TEXT,
    fields TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_org ON audit_log (org, seq);
CREATE INDEX audit_record ON audit_log (record_id, seq);
CREATE INDEX audit_at ON audit_log (at_ms);

-- The newest entry, written with every append: deleting entries at the end shows.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
