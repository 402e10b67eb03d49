-- Partner side: the number of live replicas per owner, kept by triggers, so `partner status`
-- and /metrics read one row per owner instead of counting every replica (a scan that took
-- about a second at 1,000,000 replicas, on every poll). Triggers keep it exact whatever
-- writes the replicas. A migration that rebuilds `replicas` must create them again.
CREATE TABLE replica_counts (
    owner_org TEXT PRIMARY KEY NOT NULL,
    live INTEGER NOT NULL
);

INSERT INTO replica_counts (owner_org, live)
    SELECT owner_org, COUNT(*) FROM replicas WHERE state = 'live' GROUP BY owner_org;

CREATE TRIGGER replica_counts_insert AFTER INSERT ON replicas
WHEN NEW.state = 'live'
BEGIN
    INSERT INTO replica_counts (owner_org, live) VALUES (NEW.owner_org, 1)
        ON CONFLICT (owner_org) DO UPDATE SET live = live + 1;
END;

CREATE TRIGGER replica_counts_delete AFTER DELETE ON replicas
WHEN OLD.state = 'live'
BEGIN
    UPDATE replica_counts SET live = live - 1 WHERE owner_org = OLD.owner_org;
END;

CREATE TRIGGER replica_counts_update_old AFTER UPDATE OF state, owner_org ON replicas
WHEN OLD.state = 'live' AND (NEW.state <> 'live' OR NEW.owner_org <> OLD.owner_org)
BEGIN
    UPDATE replica_counts SET live = live - 1 WHERE owner_org = OLD.owner_org;
END;

CREATE TRIGGER replica_counts_update_new AFTER UPDATE OF state, owner_org ON replicas
WHEN NEW.state = 'live' AND (OLD.state <> 'live' OR NEW.owner_org <> OLD.owner_org)
BEGIN
    INSERT INTO replica_counts (owner_org, live) VALUES (NEW.owner_org, 1)
        ON CONFLICT (owner_org) DO UPDATE SET live = live + 1;
END;
