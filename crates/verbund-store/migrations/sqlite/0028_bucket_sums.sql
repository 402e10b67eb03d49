-- Anti-entropy's bucket sums, kept as rows change instead of summed by a scan: a round read
-- every live ledger row (owner) or replica (partner) of the organization, over a second at
-- 1,000,000 rows, on every round. Both tables are kept by the writes that change the rows
-- (one multi-row upsert per batch with what the batch changed; a trigger per row cost more
-- than the row's own insert, see 0025).
--
-- Owner: per partner, bucket and the policy fingerprint the digests were computed under
-- (policy '' holds the rows whose digest is unknown). A round counts the rows of any other
-- policy than the current one as unknown, as the scan did.
CREATE TABLE delivery_sums (
    org TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    policy TEXT NOT NULL,
    s INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (org, bucket, policy)
);

INSERT INTO delivery_sums (org, bucket, policy, s, n)
    SELECT org, bucket, CASE WHEN digest IS NULL OR policy IS NULL THEN '' ELSE policy END,
           COALESCE(SUM(sum_part), 0), COUNT(*)
    FROM deliveries WHERE state = 'live' AND bucket IS NOT NULL
    GROUP BY org, bucket, CASE WHEN digest IS NULL OR policy IS NULL THEN '' ELSE policy END;

-- Partner: per owner and bucket, over the live replicas (unknown: those without a digest).
CREATE TABLE replica_sums (
    owner_org TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    s INTEGER NOT NULL,
    unknown INTEGER NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (owner_org, bucket)
);

INSERT INTO replica_sums (owner_org, bucket, s, unknown, n)
    SELECT owner_org, bucket, COALESCE(SUM(sum_part), 0), SUM(CASE WHEN digest IS NULL THEN 1 ELSE 0 END), COUNT(*)
    FROM replicas WHERE state = 'live' AND bucket IS NOT NULL
    GROUP BY owner_org, bucket;
