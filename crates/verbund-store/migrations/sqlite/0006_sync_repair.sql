-- Sync that nothing can wedge (issue 10).

-- Partner side: items of an owner's stream or repairs we could not take (a field our schema
-- does not know, a version beyond the clock-skew bound): kept, reported and retried, while
-- everything else flows. One row per record: a later item of the record replaces it.
CREATE TABLE quarantine (
    owner_org TEXT NOT NULL,
    record_id TEXT NOT NULL,
    -- The wire item (protobuf, hex), to retry as it came.
    item TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (owner_org, record_id)
);

-- Partner side: the owner's mark of the change at our cursor; an owner whose change at the
-- cursor has another mark was restored from a backup.
ALTER TABLE subscriptions ADD COLUMN cursor_mark TEXT NOT NULL DEFAULT '';
ALTER TABLE subscriptions ADD COLUMN history_note TEXT NOT NULL DEFAULT '';

-- Partner side: after an owner's history reset, our own edits the owner had taken (JSON:
-- field -> value and version), until the owner's state of the record arrives again; those
-- it no longer has are offered again.
ALTER TABLE replicas ADD COLUMN reset_from TEXT;
