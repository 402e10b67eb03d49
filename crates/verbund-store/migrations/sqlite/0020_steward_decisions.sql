-- A group data steward's decisions about pairs of records in the consolidated customer view:
-- they win over the matcher and persist across restarts. Kept by record id (the smaller id
-- first), so a decision applies again when a record returns; ids only, never values.
CREATE TABLE steward_decisions (
    kind TEXT NOT NULL,
    record_a TEXT NOT NULL,
    record_b TEXT NOT NULL,
    decision TEXT NOT NULL CHECK (decision IN ('link', 'unlink')),
    decided_by TEXT NOT NULL,
    decided_at_ms BIGINT NOT NULL,
    PRIMARY KEY (kind, record_a, record_b)
);
