-- Owner side: what each partner's cursor means here. A partner's cursor is a position of
-- its own stream (a stamp, see the node's sync/owner/stamps.rs), never our change sequence
-- number: it moves only when the partner is sent something, so it tells nothing about how
-- often we change records it cannot see. Each position names the change of ours up to
-- which the partner then had everything (moved on in place while nothing is for it).
CREATE TABLE stream_positions (
    org TEXT NOT NULL,
    stream_pos INTEGER NOT NULL,
    owner_seq INTEGER NOT NULL,
    -- Sent with the cursor and sent back on Subscribe: a random token, so a cursor from
    -- another history (we were restored from a backup) is told apart.
    mark TEXT NOT NULL,
    PRIMARY KEY (org, stream_pos)
);

-- Owner side: the stamps given out to each partner (its stream positions, and the order of
-- the record states it receives) stay below this, also across a restart; a partner that
-- holds a higher one has seen a history we lost (restored from a backup).
CREATE TABLE stream_stamps (
    org TEXT PRIMARY KEY NOT NULL,
    reserved INTEGER NOT NULL
);
