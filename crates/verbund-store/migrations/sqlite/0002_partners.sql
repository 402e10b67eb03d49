-- Partner organizations this node trusts: one pinned CA (trust anchor) each, compared by its
-- SHA-256 fingerprint out of band when the partner was added.
CREATE TABLE partners (
    org TEXT PRIMARY KEY NOT NULL,
    ca_pem TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status TEXT NOT NULL,
    added_at_ms INTEGER NOT NULL,
    last_contact_ms INTEGER
);
