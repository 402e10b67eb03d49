-- Anti-entropy without a full scan: each delivered record's digest is kept with the owner's
-- delivery ledger, and each replica's with the replica, so a digest round reads 256 bucket
-- sums (SUM of sum_part per bucket) and only the records of differing buckets.
-- digest: the record digest of the projection (owner: sent; partner: held), as a signed
-- 64-bit integer; sum_part: its 32-bit share of the bucket sum; bucket: 0..255.
-- deliveries.policy: fingerprint of the policy the projection was computed under (a reload
-- may change projections: rows of another policy count as unknown).
-- Rows from before (bucket NULL) are filled in by the node (Store::backfill_digests).
ALTER TABLE deliveries ADD COLUMN digest INTEGER;
ALTER TABLE deliveries ADD COLUMN sum_part INTEGER;
ALTER TABLE deliveries ADD COLUMN bucket INTEGER;
ALTER TABLE deliveries ADD COLUMN policy TEXT;
CREATE INDEX deliveries_bucket ON deliveries (org, bucket);
CREATE INDEX deliveries_no_bucket ON deliveries (record_id) WHERE bucket IS NULL;
ALTER TABLE replicas ADD COLUMN digest INTEGER;
ALTER TABLE replicas ADD COLUMN sum_part INTEGER;
ALTER TABLE replicas ADD COLUMN bucket INTEGER;
CREATE INDEX replicas_bucket ON replicas (owner_org, bucket);
CREATE INDEX replicas_no_bucket ON replicas (record_id) WHERE bucket IS NULL;
-- Looked up per batch (the partner's acknowledgement) and per subscription (the owner's
-- erasures owed): found through the few rows concerned, not every row of the partner.
CREATE INDEX replicas_erased_unacked ON replicas (owner_org) WHERE state = 'erased-unacked';
CREATE INDEX deliveries_erasure_owed ON deliveries (org) WHERE state = 'erased' AND erasure_acked_ms IS NULL;
-- Status counts live replicas per owner: over this small index, not the wide rows.
CREATE INDEX replicas_owner_state ON replicas (owner_org, state);
