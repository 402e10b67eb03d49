-- Sync at scale: a share rule's initial share (or its removal) is one `snapshot` change-log
-- row instead of one `access` row per matching record. Each partner's stream streams the
-- rule's records in id order from that row, in batches, resumably (the partner's cursor
-- carries the snapshot position). The row's record_id names the rule, not a record, so
-- the change log no longer references `records`.
ALTER TABLE changes DROP CONSTRAINT IF EXISTS changes_record_id_fkey;

-- What a snapshot change is about: the rule (kept here, since a removed rule's row is gone),
-- whom it concerns, and whether it was added or removed.
CREATE TABLE share_snapshots (
    seq BIGINT PRIMARY KEY NOT NULL,
    rule_id TEXT NOT NULL,
    org TEXT NOT NULL,
    rule TEXT NOT NULL,
    removed BOOLEAN NOT NULL
);

-- Partner side: how far the snapshot at `cursor` has come (the last record id taken;
-- empty: the change at `cursor` is applied completely).
ALTER TABLE subscriptions ADD COLUMN snapshot_after TEXT NOT NULL DEFAULT '';

-- Partner side: the newest owner state held per owner (checked at every connect: an owner
-- behind it was restored from a backup), read from the index, not by scanning the replicas.
CREATE INDEX replicas_owner_seq ON replicas (owner_org, owner_seq);
