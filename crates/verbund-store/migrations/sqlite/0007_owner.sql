-- The organization this database belongs to: written by the first node (or init) that opens
-- it; any other organization is refused, so two organizations never share one database.
CREATE TABLE node_owner (
    org TEXT PRIMARY KEY NOT NULL
);
