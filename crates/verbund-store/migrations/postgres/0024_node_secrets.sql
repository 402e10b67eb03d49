-- Secrets a node makes up for itself on first use and keeps (e.g. the key that seals the
-- Watch resume tokens of other organizations' callers). A backup carries them, so tokens
-- stay valid after a restore.
CREATE TABLE node_secrets (
    name TEXT PRIMARY KEY NOT NULL,
    secret TEXT NOT NULL
);
