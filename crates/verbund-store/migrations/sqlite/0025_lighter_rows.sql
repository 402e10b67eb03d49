-- The partner's apply of a large share was bound by its writes: per replica, the row's
-- inserts plus a trigger and nine index entries of the record row.
--
-- replica_counts is kept by the replica batch itself (one upsert per batch with what the batch
-- changed) instead of a trigger per row: a row trigger cost more than the row's own insert.
-- Only the replica batch changes a replica's state to or from 'live'.
DROP TRIGGER replica_counts_insert;
DROP TRIGGER replica_counts_delete;
DROP TRIGGER replica_counts_update_old;
DROP TRIGGER replica_counts_update_new;

-- Columns that only some kinds fill (an account has no stage, status, contact or channel):
-- their indexes hold only the rows that have a value. Every query on them compares the column
-- (`=` or `IN`), which implies it is not null, so the partial index still serves it.
DROP INDEX records_contact;
DROP INDEX records_related;
DROP INDEX records_kind_stage;
DROP INDEX records_kind_status;
DROP INDEX records_kind_assigned;
DROP INDEX records_kind_channel;
CREATE INDEX records_contact ON records (contact_id) WHERE contact_id IS NOT NULL;
CREATE INDEX records_related ON records (related_id, kind, id) WHERE related_id IS NOT NULL;
CREATE INDEX records_kind_stage ON records (kind, stage, id) WHERE stage IS NOT NULL;
CREATE INDEX records_kind_status ON records (kind, status, id) WHERE status IS NOT NULL;
CREATE INDEX records_kind_assigned ON records (kind, assigned_org, id) WHERE assigned_org IS NOT NULL;
CREATE INDEX records_kind_channel ON records (kind, channel, id) WHERE channel IS NOT NULL;
