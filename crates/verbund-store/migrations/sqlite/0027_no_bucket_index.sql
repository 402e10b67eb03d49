-- Anti-entropy's bucket indexes cost more than they saved. A record's bucket is random (the
-- last byte of its UUIDv7), so every batch of new ledger rows or replicas touched one leaf
-- page per bucket: 256 pages dirtied per batch, written to the WAL each time. The insert
-- cost per row doubled between the first and the last 100k of a 1M share. The sums per
-- bucket do not need the index either: a scan of one organization's rows by the primary key
-- (or by owner and state) and a grouping over 256 buckets is faster than walking the bucket
-- index and looking every row up (measured at 1M rows in SQLite: 0.97 s against 2.7 s). Only
-- the rows of differing buckets, read when a digest round finds a difference, now come from
-- that same scan.
DROP INDEX deliveries_bucket;
DROP INDEX replicas_bucket;
