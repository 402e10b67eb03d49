//! Part of the `backend!` instantiation (see `lib.rs`): sync reads: verdicts, deliveries, erasures, conflicts, subscriptions, outbox, quarantine, digests.
//! A macro so that the SQL is written once for SQLite and PostgreSQL.

macro_rules! backend_sync_reads {
    ($db:ty, $pool:ty, $begin:expr, $savepoints:expr) => {
        // ---- Federation sync: reads (every sync write goes through the writer) ----

        pub async fn push_verdict(pool: &$pool, org: &str, key: &str) -> Result<Option<StoredVerdict>> {
            let row = sqlx::query("SELECT record_id, outcome, reason FROM push_receipts WHERE org = $1 AND push_key = $2")
                .bind(org)
                .bind(key)
                .fetch_optional(pool)
                .await?;
            row.map(|r| verdict_row(&r)).transpose()
        }

        fn delivery_row(r: &<$db as sqlx::Database>::Row) -> Result<Delivery> {
            let id: String = r.try_get("record_id")?;
            let kind: String = r.try_get("kind")?;
            let state: String = r.try_get("state")?;
            Ok(Delivery {
                org: r.try_get("org")?,
                record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                kind: kind_from_db(&kind)?,
                state: DeliveryState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("delivery state {state:?}")))?,
                digest: r.try_get::<Option<i64>, _>("digest")?.map(|d| d as u64),
                policy: r.try_get("policy")?,
                first_sent_ms: r.try_get("first_sent_ms")?,
                last_sent_ms: r.try_get("last_sent_ms")?,
                erasure_acked_ms: r.try_get("erasure_acked_ms")?,
            })
        }

        const DELIVERY_COLUMNS: &str = "org, record_id, kind, state, first_sent_ms, last_sent_ms, erasure_acked_ms, digest, policy";

        /// 256 bucket sums from rows (bucket, s, unknown, n).
        fn bucket_sums_of(rows: &[<$db as sqlx::Database>::Row]) -> Result<Vec<BucketSum>> {
            let mut out = vec![BucketSum::default(); verbund_core::sync::DIGEST_BUCKETS];
            for r in rows {
                let bucket: i64 = r.try_get("bucket")?;
                let sum: Option<i64> = r.try_get("s")?;
                let unknown: Option<i64> = r.try_get("unknown")?;
                let rows: i64 = r.try_get("n")?;
                let slot = usize::try_from(bucket).ok().and_then(|b| out.get_mut(b)).ok_or_else(|| StoreError::Corrupt(format!("bucket {bucket}")))?;
                *slot = BucketSum { sum: (sum.unwrap_or(0) as u64) & verbund_core::sync::SUM_MASK, unknown: unknown.unwrap_or(0), rows };
            }
            Ok(out)
        }

        /// Owner: the bucket sums of what partner `org` holds live according to the ledger
        /// (kept in `delivery_sums` as the ledger changes: no ledger row is read); a row
        /// without a digest, or with one computed under another policy, is unknown.
        pub async fn delivery_bucket_sums(pool: &$pool, org: &str, policy: &str) -> Result<Vec<BucketSum>> {
            let rows = sqlx::query(
                "SELECT bucket, CAST(SUM(CASE WHEN policy = $2 THEN s ELSE 0 END) AS BIGINT) AS s, \
                 CAST(SUM(CASE WHEN policy = $2 THEN 0 ELSE n END) AS BIGINT) AS unknown, \
                 CAST(SUM(n) AS BIGINT) AS n FROM delivery_sums WHERE org = $1 GROUP BY bucket",
            )
            .bind(org)
            .bind(policy)
            .fetch_all(pool)
            .await?;
            bucket_sums_of(&rows)
        }

        /// Owner: the live ledger rows of partner `org` in `buckets`.
        pub async fn live_deliveries_in(pool: &$pool, org: &str, buckets: &[u32]) -> Result<Vec<Delivery>> {
            if buckets.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string()).push(" AND state = 'live' AND bucket IN (");
            let mut sep = qb.separated(", ");
            for b in buckets {
                sep.push_bind(i64::from(*b));
            }
            qb.push(")");
            qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
        }

        /// Partner: the bucket sums of the live replicas of `owner` we hold (kept in
        /// `replica_sums` by the replica batch: no replica is read).
        pub async fn replica_bucket_sums(pool: &$pool, owner: &str) -> Result<Vec<BucketSum>> {
            let rows = sqlx::query("SELECT bucket, s, unknown, n FROM replica_sums WHERE owner_org = $1")
                .bind(owner)
                .fetch_all(pool)
                .await?;
            bucket_sums_of(&rows)
        }

        fn digest_rows(rows: &[<$db as sqlx::Database>::Row]) -> Result<Vec<(Uuid, u64)>> {
            rows.iter()
                .filter_map(|r| {
                    let parsed = (|| {
                        let id: String = r.try_get("record_id")?;
                        let digest: Option<i64> = r.try_get("digest")?;
                        Ok::<_, StoreError>(digest.map(|d| (id, d as u64)))
                    })();
                    parsed.transpose()
                })
                .map(|row| {
                    let (id, d) = row?;
                    Ok((Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?, d))
                })
                .collect()
        }

        /// Partner: (record id, digest of the owner's versions) of the live replicas of
        /// `owner` in `buckets`.
        pub async fn replica_digests_in(pool: &$pool, owner: &str, buckets: &[u32]) -> Result<Vec<(Uuid, u64)>> {
            if buckets.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT record_id, digest FROM replicas WHERE owner_org = ");
            qb.push_bind(owner.to_string()).push(" AND state = 'live' AND bucket IN (");
            let mut sep = qb.separated(", ");
            for b in buckets {
                sep.push_bind(i64::from(*b));
            }
            qb.push(")");
            digest_rows(&qb.build().fetch_all(pool).await?)
        }

        /// Partner: the same for the live replicas among `ids`.
        pub async fn replica_digests_of(pool: &$pool, owner: &str, ids: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(1000) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT record_id, digest FROM replicas WHERE owner_org = ");
                qb.push_bind(owner.to_string()).push(" AND state = 'live' AND record_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                out.extend(digest_rows(&qb.build().fetch_all(pool).await?)?);
            }
            Ok(out)
        }

        /// Whether rows from before digests were kept remain (see `SyncNote::BackfillDigests`).
        pub async fn digests_missing(pool: &$pool) -> Result<bool> {
            let d: Option<String> = sqlx::query_scalar("SELECT record_id FROM deliveries WHERE bucket IS NULL LIMIT 1").fetch_optional(pool).await?;
            let r: Option<String> = sqlx::query_scalar("SELECT record_id FROM replicas WHERE bucket IS NULL LIMIT 1").fetch_optional(pool).await?;
            Ok(d.is_some() || r.is_some())
        }

        pub async fn deliveries_of(pool: &$pool, org: &str, ids: &[Uuid]) -> Result<Vec<Delivery>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(500) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string()).push(" AND record_id IN (");
                let mut sep = qb.separated(", ");
                for id in chunk {
                    sep.push_bind(id.to_string());
                }
                qb.push(")");
                for r in qb.build().fetch_all(pool).await? {
                    out.push(delivery_row(&r)?);
                }
            }
            Ok(out)
        }

        pub async fn deliveries_of_record(pool: &$pool, id: Uuid) -> Result<Vec<Delivery>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE record_id = ").push_bind(id.to_string()).push(" ORDER BY org");
            qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
        }

        pub async fn live_deliveries(pool: &$pool, org: &str) -> Result<Vec<Delivery>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string()).push(" AND state = 'live' ORDER BY record_id");
            qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
        }

        pub async fn pending_erasures(pool: &$pool, org: &str) -> Result<Vec<Delivery>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(DELIVERY_COLUMNS).push(" FROM deliveries WHERE org = ").push_bind(org.to_string())
                .push(" AND state = 'erased' AND erasure_acked_ms IS NULL ORDER BY record_id");
            qb.build().fetch_all(pool).await?.iter().map(|r| delivery_row(r)).collect()
        }

        pub async fn peer_acks(pool: &$pool) -> Result<Vec<PeerAck>> {
            let rows = sqlx::query("SELECT org, acked_cursor, acked_ms FROM sync_peers ORDER BY org").fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok(PeerAck { org: r.try_get("org")?, acked_cursor: r.try_get("acked_cursor")?, acked_ms: r.try_get("acked_ms")? }))
                .collect()
        }

        pub async fn stream_position(pool: &$pool, org: &str, stream_pos: i64) -> Result<Option<StreamPosition>> {
            let row = sqlx::query("SELECT owner_seq, mark FROM stream_positions WHERE org = $1 AND stream_pos = $2")
                .bind(org)
                .bind(stream_pos)
                .fetch_optional(pool)
                .await?;
            row.map(|r| Ok(StreamPosition { stream_pos, owner_seq: r.try_get("owner_seq")?, mark: r.try_get("mark")? }))
                .transpose()
        }

        pub async fn stamps_reserved(pool: &$pool, org: &str) -> Result<i64> {
            let n: Option<i64> = sqlx::query_scalar("SELECT reserved FROM stream_stamps WHERE org = $1")
                .bind(org)
                .fetch_optional(pool)
                .await?;
            Ok(n.unwrap_or(0))
        }

        pub async fn erasure(pool: &$pool, id: Uuid) -> Result<Option<Erasure>> {
            let row = sqlx::query("SELECT record_id, kind, erased_ms, erased_by FROM erasures WHERE record_id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            row.map(|r| {
                let kind: String = r.try_get("kind")?;
                Ok(Erasure { record_id: id, kind: kind_from_db(&kind)?, erased_ms: r.try_get("erased_ms")?, erased_by: r.try_get("erased_by")? })
            })
            .transpose()
        }

        fn conflict_row(r: &<$db as sqlx::Database>::Row) -> Result<ConflictRecord> {
            let corrupt = |e: String| StoreError::Corrupt(e);
            let id: String = r.try_get("id")?;
            let record_id: String = r.try_get("record_id")?;
            let kind: String = r.try_get("kind")?;
            let value = |col: &str| -> Result<Option<Value>> {
                let text: Option<String> = r.try_get(col)?;
                text.map(|t| serde_json::from_str(&t).map_err(|e| corrupt(format!("conflict value: {e}")))).transpose()
            };
            let version = |col: &str| -> Result<Hlc> {
                let text: String = r.try_get(col)?;
                text.parse().map_err(|e: verbund_core::hlc::ParseHlcError| corrupt(e.to_string()))
            };
            Ok(ConflictRecord {
                id: Uuid::parse_str(&id).map_err(|e| corrupt(e.to_string()))?,
                record_id: Uuid::parse_str(&record_id).map_err(|e| corrupt(e.to_string()))?,
                kind: kind_from_db(&kind)?,
                conflict: verbund_core::sync::Conflict {
                    field: r.try_get("field")?,
                    winner: verbund_core::sync::FieldState { value: value("winner_value")?, version: version("winner_version")? },
                    loser: verbund_core::sync::FieldState { value: value("loser_value")?, version: version("loser_version")? },
                },
                created_ms: r.try_get("created_ms")?,
                resolved_by: r.try_get("resolved_by")?,
                resolved_ms: r.try_get("resolved_ms")?,
                resolution: r.try_get("resolution")?,
            })
        }

        const CONFLICT_COLUMNS: &str = "id, record_id, kind, field, winner_value, winner_version, loser_value, loser_version, created_ms, resolved_by, resolved_ms, resolution";

        pub async fn list_conflicts(pool: &$pool, record_id: Option<Uuid>, include_resolved: bool) -> Result<Vec<ConflictRecord>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(CONFLICT_COLUMNS).push(" FROM conflicts WHERE 1 = 1");
            if let Some(id) = record_id {
                qb.push(" AND record_id = ").push_bind(id.to_string());
            }
            if !include_resolved {
                qb.push(" AND resolved_ms IS NULL");
            }
            qb.push(" ORDER BY created_ms, id LIMIT 1000");
            qb.build().fetch_all(pool).await?.iter().map(|r| conflict_row(r)).collect()
        }

        pub async fn get_conflict(pool: &$pool, id: Uuid) -> Result<Option<ConflictRecord>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(CONFLICT_COLUMNS).push(" FROM conflicts WHERE id = ").push_bind(id.to_string());
            qb.build().fetch_optional(pool).await?.map(|r| conflict_row(&r)).transpose()
        }

        fn subscription_row(r: &<$db as sqlx::Database>::Row) -> Result<Subscription> {
            Ok(Subscription {
                owner_org: r.try_get("owner_org")?,
                cursor: r.try_get("cursor")?,
                owner_last_seq: r.try_get("owner_last_seq")?,
                last_batch_ms: r.try_get("last_batch_ms")?,
                last_error: r.try_get("last_error")?,
                last_error_ms: r.try_get("last_error_ms")?,
                cursor_mark: r.try_get("cursor_mark")?,
                history_note: r.try_get("history_note")?,
                snapshot_after: r.try_get("snapshot_after")?,
            })
        }

        pub async fn subscription(pool: &$pool, owner: &str) -> Result<Option<Subscription>> {
            sqlx::query("SELECT owner_org, cursor, owner_last_seq, last_batch_ms, last_error, last_error_ms, cursor_mark, history_note, snapshot_after FROM subscriptions WHERE owner_org = $1")
                .bind(owner)
                .fetch_optional(pool)
                .await?
                .map(|r| subscription_row(&r))
                .transpose()
        }

        pub async fn list_subscriptions(pool: &$pool) -> Result<Vec<Subscription>> {
            sqlx::query("SELECT owner_org, cursor, owner_last_seq, last_batch_ms, last_error, last_error_ms, cursor_mark, history_note, snapshot_after FROM subscriptions ORDER BY owner_org")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| subscription_row(r))
                .collect()
        }

        fn outbox_row(r: &<$db as sqlx::Database>::Row) -> Result<OutboxEntry> {
            let id: String = r.try_get("record_id")?;
            let kind: String = r.try_get("kind")?;
            let edits: String = r.try_get("edits")?;
            Ok(OutboxEntry {
                seq: r.try_get("seq")?,
                key: r.try_get("push_key")?,
                owner_org: r.try_get("owner_org")?,
                record_id: Uuid::parse_str(&id).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                kind: kind_from_db(&kind)?,
                edits: serde_json::from_str(&edits).map_err(|e| StoreError::Corrupt(format!("outbox edits: {e}")))?,
                state: {
                    let st: String = r.try_get("state")?;
                    OutboxState::parse(&st).ok_or_else(|| StoreError::Corrupt(format!("outbox state {st:?}")))?
                },
                attempts: r.try_get("attempts")?,
                last_error: r.try_get("last_error")?,
                created_ms: r.try_get("created_ms")?,
            })
        }

        const OUTBOX_COLUMNS: &str = "seq, push_key, owner_org, record_id, kind, edits, state, attempts, last_error, created_ms";

        pub async fn list_outbox(pool: &$pool, owner: Option<&str>, state: Option<OutboxState>, limit: i64) -> Result<Vec<OutboxEntry>> {
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
            qb.push(OUTBOX_COLUMNS).push(" FROM outbox WHERE 1 = 1");
            if let Some(o) = owner {
                qb.push(" AND owner_org = ").push_bind(o.to_string());
            }
            if let Some(st) = state {
                qb.push(" AND state = ").push_bind(st.as_str());
            }
            qb.push(" ORDER BY seq LIMIT ").push_bind(limit);
            qb.build().fetch_all(pool).await?.iter().map(|r| outbox_row(r)).collect()
        }

        pub async fn count_by_owner(pool: &$pool, table_outbox: bool) -> Result<Vec<(String, i64)>> {
            let sql = if table_outbox {
                "SELECT owner_org, COUNT(*) AS n FROM outbox WHERE state = 'pending' GROUP BY owner_org"
            } else {
                // Kept by the replica batch (migration 0025): one row per owner, no scan.
                "SELECT owner_org, live AS n FROM replica_counts WHERE live > 0"
            };
            sqlx::query(sql).fetch_all(pool).await?.iter().map(|r| Ok((r.try_get("owner_org")?, r.try_get("n")?))).collect()
        }

        /// Items of owners' streams we could not take (all owners for None), oldest first.
        pub async fn list_quarantine(pool: &$pool, owner: Option<&str>, limit: i64) -> Result<Vec<QuarantineItem>> {
            let mut qb: QueryBuilder<$db> =
                QueryBuilder::new("SELECT owner_org, record_id, item, reason, first_ms, last_ms, attempts FROM quarantine WHERE 1 = 1");
            if let Some(o) = owner {
                qb.push(" AND owner_org = ").push_bind(o.to_string());
            }
            qb.push(" ORDER BY first_ms, record_id LIMIT ").push_bind(limit);
            qb.build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(QuarantineItem {
                        owner_org: r.try_get("owner_org")?,
                        record_id: r.try_get("record_id")?,
                        item: r.try_get("item")?,
                        reason: r.try_get("reason")?,
                        first_ms: r.try_get("first_ms")?,
                        last_ms: r.try_get("last_ms")?,
                        attempts: r.try_get("attempts")?,
                    })
                })
                .collect()
        }

        /// The newest owner sequence number among our replicas of `owner` (0: none).
        pub async fn max_replica_seq(pool: &$pool, owner: &str) -> Result<i64> {
            let n: Option<i64> = sqlx::query_scalar("SELECT MAX(owner_seq) FROM replicas WHERE owner_org = $1")
                .bind(owner)
                .fetch_one(pool)
                .await?;
            Ok(n.unwrap_or(0))
        }

        pub async fn quarantine_counts(pool: &$pool) -> Result<Vec<(String, i64)>> {
            sqlx::query("SELECT owner_org, COUNT(*) AS n FROM quarantine GROUP BY owner_org")
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get("owner_org")?, r.try_get("n")?)))
                .collect()
        }

        pub async fn unacked_erasures(pool: &$pool, owner: &str) -> Result<Vec<Uuid>> {
            let ids: Vec<String> = sqlx::query_scalar("SELECT record_id FROM replicas WHERE owner_org = $1 AND state = 'erased-unacked'")
                .bind(owner)
                .fetch_all(pool)
                .await?;
            ids.iter().map(|i| Uuid::parse_str(i).map_err(|e| StoreError::Corrupt(e.to_string()))).collect()
        }

        /// Our replica's owner and writable fields (None: not a replica).
        pub async fn replica_info(pool: &$pool, id: Uuid) -> Result<Option<ReplicaInfo>> {
            let row = sqlx::query("SELECT owner_org, state, writable FROM replicas WHERE record_id = $1")
                .bind(id.to_string())
                .fetch_optional(pool)
                .await?;
            row.map(|r| {
                let writable: String = r.try_get("writable")?;
                let state: String = r.try_get("state")?;
                Ok(ReplicaInfo {
                    owner_org: r.try_get("owner_org")?,
                    state: CopyState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("replica state {state:?}")))?,
                    writable: serde_json::from_str(&writable).map_err(|e| StoreError::Corrupt(format!("writable: {e}")))?,
                })
            })
            .transpose()
        }

        /// `FROM … WHERE` of the live records referring to the ids of `chunk` (as
        /// account, contact or related record): one statement for all three columns, so a
        /// change costs one hand-off to the database, not three. An account's own
        /// `account_id` is its id: it is not its own dependent (reading it back here cost a
        /// snapshot batch its own records a second time).
        fn push_dependents_filter(qb: &mut QueryBuilder<$db>, chunk: &[String]) {
            qb.push(" FROM records WHERE deleted_version IS NULL AND ((account_id IN (");
            bind_texts(qb, chunk);
            qb.push(") AND kind <> 'account') OR contact_id IN (");
            bind_texts(qb, chunk);
            qb.push(") OR related_id IN (");
            bind_texts(qb, chunk);
            qb.push("))");
        }

        fn bind_texts(qb: &mut QueryBuilder<$db>, texts: &[String]) {
            let mut sep = qb.separated(", ");
            for t in texts {
                sep.push_bind(t.clone());
            }
        }

        /// Ids per statement of `dependents_of`: each is bound three times.
        const DEPENDENTS_CHUNK: usize = 1000;

        /// Live records that refer to one of `ids` as account, contact or related record
        /// (each once, whichever columns match).
        pub async fn dependents_of(pool: &$pool, ids: &[String]) -> Result<Vec<Record>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(DEPENDENTS_CHUNK) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT ");
                qb.push(RECORD_COLUMNS);
                push_dependents_filter(&mut qb, chunk);
                for r in qb.build().fetch_all(pool).await? {
                    out.push(record_row(&r)?.into_record()?);
                }
            }
            Ok(out)
        }

        /// Ids at most, in all, that `surroundings` reads in one query (SQLite): what the
        /// stream looks at for an update. A batch's reads go their own ways: a long joined
        /// text would stay in the statement cache.
        const SURROUNDINGS_AT_MOST: usize = 16;

        /// `dependents_of(dependents)`, `shares_of_records(org, shares)` and
        /// `deliveries_of(org, deliveries)` at once: on SQLite, for a few ids, one query of
        /// three statements (one hand-off to a connection's thread instead of three, on three
        /// connections, each with its page cache to read again); else the three side by side.
        pub async fn surroundings(pool: &$pool, org: &str, dependents: &[String], shares: &[Uuid], deliveries: &[Uuid]) -> Result<Surroundings> {
            if !MULTI_STATEMENT || dependents.len() + shares.len() + deliveries.len() > SURROUNDINGS_AT_MOST {
                let (dependents, shares, deliveries) = futures::future::try_join3(
                    async { if dependents.is_empty() { Ok(Vec::new()) } else { dependents_of(pool, dependents).await } },
                    async { if shares.is_empty() { Ok(Vec::new()) } else { shares_of_records(pool, org, shares).await } },
                    async { if deliveries.is_empty() { Ok(Vec::new()) } else { deliveries_of(pool, org, deliveries).await } },
                )
                .await?;
                return Ok(Surroundings { dependents, shares, deliveries });
            }
            let mut qb: QueryBuilder<$db> = QueryBuilder::new("");
            let mut statements = 0;
            if !dependents.is_empty() {
                qb.push("SELECT 'dependent' AS src, ").push(RECORD_COLUMNS);
                push_dependents_filter(&mut qb, dependents);
                statements += 1;
            }
            // The organization's rows of a table keyed by (org, record_id).
            let of_org = [
                ("SELECT 'share' AS src, ", SHARE_COLUMNS, " FROM shares WHERE org = ", shares),
                ("SELECT 'delivery' AS src, ", DELIVERY_COLUMNS, " FROM deliveries WHERE org = ", deliveries),
            ];
            for (select, columns, from, ids) in of_org {
                if ids.is_empty() {
                    continue;
                }
                if statements > 0 {
                    qb.push("; ");
                }
                qb.push(select).push(columns).push(from).push_bind(org.to_string()).push(" AND record_id IN (");
                bind_ids(&mut qb, ids);
                qb.push(")");
                statements += 1;
            }
            let mut out = Surroundings::default();
            if statements == 0 {
                return Ok(out);
            }
            for r in qb.build().fetch_all(pool).await? {
                let src: String = r.try_get("src")?;
                match src.as_str() {
                    "dependent" => out.dependents.push(record_row(&r)?.into_record()?),
                    "share" => out.shares.push(share_row(&r)?),
                    "delivery" => out.deliveries.push(delivery_row(&r)?),
                    other => return Err(StoreError::Corrupt(format!("a row of unknown source {other}"))),
                }
            }
            Ok(out)
        }

        fn bind_ids(qb: &mut QueryBuilder<$db>, ids: &[Uuid]) {
            let mut sep = qb.separated(", ");
            for id in ids {
                sep.push_bind(id.to_string());
            }
        }

        /// (id, owner) of the live records `dependents_of` finds for `ids`, without reading
        /// the records themselves.
        async fn dependent_owners(pool: &$pool, ids: &[String]) -> Result<Vec<(String, String)>> {
            let mut out = Vec::new();
            for chunk in ids.chunks(DEPENDENTS_CHUNK) {
                let mut qb: QueryBuilder<$db> = QueryBuilder::new("SELECT id, owner_org");
                push_dependents_filter(&mut qb, chunk);
                for r in qb.build().fetch_all(pool).await? {
                    out.push((r.try_get("id")?, r.try_get("owner_org")?));
                }
            }
            Ok(out)
        }

        /// Of `ids`, those that may bear on what `org` shares: its own records, and those of
        /// `foreign` (records other organizations own) only when a record of `org` hangs off
        /// one of them, directly or through one more record (then all are kept). A partner's
        /// apply of its owner's stream fills the change log with the owner's records; our
        /// own stream passes them by without reading them.
        pub async fn bearing_on_own(pool: &$pool, ids: Vec<Uuid>, foreign: &BTreeSet<Uuid>, org: &str) -> Result<Vec<Uuid>> {
            let mut frontier: Vec<String> = foreign.iter().map(Uuid::to_string).collect();
            for _ in 0..2 {
                let found = dependent_owners(pool, &frontier).await?;
                if found.iter().any(|(_, owner)| owner == org) {
                    return Ok(ids);
                }
                frontier = found.into_iter().map(|(id, _)| id).collect();
                if frontier.is_empty() {
                    break;
                }
            }
            Ok(ids.into_iter().filter(|id| !foreign.contains(id)).collect())
        }
    };
}
