-- Sync at scale: a share rule's initial share (or its removal) is one `snapshot` change-log
-- row instead of one `access` row per matching record. Each partner's stream streams the
-- rule's records in id order from that row, in batches, resumably (the partner's cursor
-- carries the snapshot position). The row's record_id names the rule, not a record, so
-- the change log no longer references `records` (SQLite cannot drop a constraint: the
-- table is rebuilt, rows and index unchanged).
CREATE TABLE changes_rebuilt (
    seq INTEGER PRIMARY KEY NOT NULL,
    record_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    op TEXT NOT NULL,
    hlc TEXT NOT NULL,
    fields TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
INSERT INTO changes_rebuilt (seq, record_id, kind, op, hlc, fields, at_ms)
    SELECT seq, record_id, kind, op, hlc, fields, at_ms FROM changes;
DROP TABLE changes;
ALTER TABLE changes_rebuilt RENAME TO changes;
CREATE INDEX changes_record ON changes (record_id, seq);

-- What a snapshot change is about: the rule (kept here, since a removed rule's row is gone),
-- whom it concerns, and whether it was added or removed.
CREATE TABLE share_snapshots (
    seq INTEGER PRIMARY KEY NOT NULL,
    rule_id TEXT NOT NULL,
    org TEXT NOT NULL,
    rule TEXT NOT NULL,
    removed INTEGER NOT NULL
);

-- Partner side: how far the snapshot at `cursor` has come (the last record id taken;
-- empty: the change at `cursor` is applied completely).
ALTER TABLE subscriptions ADD COLUMN snapshot_after TEXT NOT NULL DEFAULT '';

-- Partner side: the newest owner state held per owner (checked at every connect: an owner
-- behind it was restored from a backup), read from the index, not by scanning the replicas.
CREATE INDEX replicas_owner_seq ON replicas (owner_org, owner_seq);
