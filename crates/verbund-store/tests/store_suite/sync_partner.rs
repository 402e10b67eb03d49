//! Sync, the partner's side: replica batches are applied once, pending edits show, the
//! quarantine, revoking verdicts and a reset of the history.

use uuid::Uuid;
use verbund_core::write::plan_update;
use verbund_core::{Hlc, RecordKind};

use super::{Fixture, fm, text};

/// The live replicas of `owner` as counted (`replica_counts`, kept by the replica batch), and as found
/// by reading them: both must agree.
async fn live_replicas(f: &Fixture, owner: &str) -> i64 {
    let counted = f
        .store
        .replica_counts()
        .await
        .unwrap()
        .into_iter()
        .find(|(o, _)| o == owner)
        .map_or(0, |(_, n)| n);
    let held = f
        .store
        .replica_digests_in(owner, &all_buckets())
        .await
        .unwrap();
    assert_eq!(
        counted,
        held.len() as i64,
        "replica_counts of {owner} disagrees with the replicas"
    );
    // So must the bucket sums kept by the replica batch (`replica_sums`).
    let kept = f.store.replica_bucket_sums(owner).await.unwrap();
    let sums = verbund_core::sync::bucket_sums(held.iter().map(|(id, d)| (id, *d)));
    let mut rows = vec![0i64; verbund_core::sync::DIGEST_BUCKETS];
    for (id, _) in &held {
        rows[verbund_core::sync::bucket_of(id)] += 1;
    }
    let want: Vec<verbund_store::BucketSum> = sums
        .into_iter()
        .zip(rows)
        .map(|(sum, rows)| verbund_store::BucketSum {
            sum,
            unknown: 0,
            rows,
        })
        .collect();
    assert_eq!(
        kept, want,
        "replica_sums of {owner} disagrees with the replicas"
    );
    counted
}

pub(super) async fn sync_partner_applies_batches_once_and_shows_pending_edits(f: &Fixture) {
    use verbund_store::{ReplicaBatch, ReplicaItem, ReplicaState, VerdictApply, VerdictOutcome};
    let r = Uuid::now_v7();
    let v1 = Hlc::new(1_000, 0, "globex/n1");
    let state = |name: &str, city: Option<&str>, owner_seq: i64| {
        let mut fields = fm(&[("name", text(name))]);
        let mut versions: verbund_core::VersionMap = [("name".to_string(), v1.clone())].into();
        if let Some(c) = city {
            fields.insert("city".into(), text(c));
            versions.insert("city".into(), Hlc::new(1_001, 0, "globex/n1"));
        }
        ReplicaState {
            id: r,
            kind: RecordKind::Account,
            owner_org: "globex".into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            fields,
            versions,
            writable: vec!["name".into()],
            deleted: None,
            owner_seq,
        }
    };
    let batch = |cursor: i64, items: Vec<ReplicaItem>| ReplicaBatch {
        owner_org: "globex".into(),
        cursor,
        owner_last_seq: 100,
        at_ms: 3,
        items,
        from_stream: cursor > 0,
        ..Default::default()
    };
    let b1 = batch(5, vec![ReplicaItem::Upsert(state("N1", None, 3))]);
    f.store.apply_replica_batch(b1.clone()).await.unwrap();
    let shown = f.store.get(r).await.unwrap().unwrap();
    assert_eq!(
        (shown.owner_org.as_str(), &shown.fields["name"]),
        ("globex", &text("N1"))
    );
    assert_eq!(live_replicas(f, "globex").await, 1);
    assert_eq!(
        f.store
            .subscription("globex")
            .await
            .unwrap()
            .unwrap()
            .cursor,
        5
    );
    let seq = f.store.last_seq().await.unwrap();
    f.store.apply_replica_batch(b1).await.unwrap();
    assert_eq!(
        f.store.last_seq().await.unwrap(),
        seq,
        "a batch applied twice changes nothing"
    );
    // An older state of the owner changes nothing, but the cursor moves on.
    f.store
        .apply_replica_batch(batch(6, vec![ReplicaItem::Upsert(state("N0", None, 2))]))
        .await
        .unwrap();
    assert_eq!(
        f.store.get(r).await.unwrap().unwrap().fields["name"],
        text("N1")
    );
    assert_eq!(
        f.store
            .subscription("globex")
            .await
            .unwrap()
            .unwrap()
            .cursor,
        6
    );

    // A local edit shows at once and waits in the outbox, based on the version shown.
    let v2 = Hlc::new(2_000, 0, "acme/n1");
    let edited = f
        .store
        .edit_replica(RecordKind::Account, r, "e1", move |cur| {
            plan_update(
                cur,
                &["name".to_string()],
                fm(&[("name", text("N2"))]),
                v2,
                4,
            )
        })
        .await
        .unwrap();
    assert_eq!(edited.fields["name"], text("N2"));
    let pending = f
        .store
        .list_outbox(
            Some("globex"),
            Some(verbund_store::OutboxState::Pending),
            10,
        )
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].edits[0].base, Some(v1.clone()));
    // The owner's newer state arrives: still shown with our pending edit on top.
    f.store
        .apply_replica_batch(batch(
            7,
            vec![ReplicaItem::Upsert(state("N1", Some("Bremen"), 4))],
        ))
        .await
        .unwrap();
    let shown = f.store.get(r).await.unwrap().unwrap();
    assert_eq!(
        (&shown.fields["name"], &shown.fields["city"]),
        (&text("N2"), &text("Bremen"))
    );
    // A verdict of another owner settles nothing; the owner's rejection restores its value.
    let reject = |owner: &str| VerdictApply {
        owner_org: owner.into(),
        key: "e1".into(),
        outcome: VerdictOutcome::Rejected,
        reason: "name: not writable".into(),
        record: Some(state("N1", Some("Bremen"), 4)),
        revoked: false,
        as_of_seq: 0,
        at_ms: 4,
    };
    f.store.apply_verdict(reject("evil")).await.unwrap();
    assert_eq!(
        f.store.get(r).await.unwrap().unwrap().fields["name"],
        text("N2")
    );
    f.store.apply_verdict(reject("globex")).await.unwrap();
    assert_eq!(
        f.store.get(r).await.unwrap().unwrap().fields["name"],
        text("N1")
    );
    let rejected = f
        .store
        .list_outbox(None, Some(verbund_store::OutboxState::Rejected), 10)
        .await
        .unwrap();
    assert_eq!(
        rejected[0].last_error.as_deref(),
        Some("name: not writable")
    );
    let held = f
        .store
        .replica_digests_in("globex", &all_buckets())
        .await
        .unwrap();
    assert_eq!(held.len(), 1);
    // The database's bucket sums are the pure ones over what is held (the owner's versions).
    let owner_state = state("N1", Some("Bremen"), 4);
    assert_eq!(
        held[0],
        (
            r,
            verbund_core::sync::record_digest(&owner_state.versions, false)
        )
    );
    let bucket_sums = f.store.replica_bucket_sums("globex").await.unwrap();
    assert_eq!(bucket_sums.iter().map(|b| b.rows).sum::<i64>(), 1);
    let sums: Vec<u64> = bucket_sums.iter().map(|b| b.sum).collect();
    assert_eq!(
        sums,
        verbund_core::sync::bucket_sums(held.iter().map(|(id, d)| (id, *d)))
    );

    // Revoke: the copy is gone (a value-free tombstone), and a stale verdict cannot revive it.
    f.store
        .apply_replica_batch(batch(8, vec![ReplicaItem::Revoke { id: r }]))
        .await
        .unwrap();
    let gone = f.store.get(r).await.unwrap().unwrap();
    assert!(gone.is_deleted() && gone.fields.is_empty());
    // Its earlier changes in the log name no field any more (read as Watch reads them).
    let log = f.log_after(0, &[], 1_000).await;
    let of_r: Vec<_> = log.iter().filter(|c| c.record_id == r).collect();
    assert!(of_r.len() > 1, "{of_r:?}");
    assert!(of_r[..of_r.len() - 1].iter().all(|c| c.fields.is_empty()));
    assert_eq!(live_replicas(f, "globex").await, 0);
    assert!(
        f.store
            .replica_digests_in("globex", &all_buckets())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .replica_bucket_sums("globex")
            .await
            .unwrap()
            .iter()
            .all(|b| b.sum == 0)
    );
    f.store
        .apply_replica_batch(batch(0, vec![ReplicaItem::Upsert(state("N1", None, 9))]))
        .await
        .unwrap();
    assert!(
        f.store.get(r).await.unwrap().unwrap().is_deleted(),
        "a repair does not revive"
    );
    // The ordered stream does (a new share).
    f.store
        .apply_replica_batch(batch(9, vec![ReplicaItem::Upsert(state("N1", None, 9))]))
        .await
        .unwrap();
    assert!(!f.store.get(r).await.unwrap().unwrap().is_deleted());
    assert_eq!(live_replicas(f, "globex").await, 1);

    // Erasure of something never received: remembered, so a late batch cannot bring it in.
    let u = Uuid::now_v7();
    f.store
        .apply_replica_batch(batch(10, vec![ReplicaItem::Erase { id: u }]))
        .await
        .unwrap();
    assert_eq!(f.store.unacked_erasures("globex").await.unwrap(), [u]);
    let mut late = state("Person", None, 1);
    late.id = u;
    f.store
        .apply_replica_batch(batch(11, vec![ReplicaItem::Upsert(late)]))
        .await
        .unwrap();
    assert!(f.store.get(u).await.unwrap().is_none());
    assert_eq!(live_replicas(f, "globex").await, 1);
    f.store.mark_erasures_acked(&[u]).await.unwrap();
    assert!(f.store.unacked_erasures("globex").await.unwrap().is_empty());

    // The live count moves by what one batch changes in all: a new copy, a revoke and a new
    // share of the same record, then an erasure and a late copy of it in one batch.
    let mut other = state("Other", None, 12);
    other.id = Uuid::now_v7();
    f.store
        .apply_replica_batch(batch(
            12,
            vec![
                ReplicaItem::Upsert(other.clone()),
                ReplicaItem::Revoke { id: r },
                ReplicaItem::Upsert(state("N2", None, 12)),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(live_replicas(f, "globex").await, 2);
    f.store
        .apply_replica_batch(batch(
            13,
            vec![
                ReplicaItem::Erase { id: other.id },
                ReplicaItem::Upsert(other.clone()),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(live_replicas(f, "globex").await, 1);

    // An owner can never overwrite a record of ours.
    let mine = f
        .create(RecordKind::Account, &[("name", text("Unser"))])
        .await
        .unwrap();
    let mut evil = state("Übernommen", None, 99);
    evil.id = mine.id;
    f.store
        .apply_replica_batch(batch(
            12,
            vec![
                ReplicaItem::Upsert(evil),
                ReplicaItem::Revoke { id: mine.id },
            ],
        ))
        .await
        .unwrap();
    let still = f.store.get(mine.id).await.unwrap().unwrap();
    assert_eq!(
        (still.fields["name"].clone(), still.is_deleted()),
        (text("Unser"), false)
    );

    // A replica from before digests were kept (no bucket) counts in no sum until the
    // backfill gives it its bucket and digest; then the kept sums are the replicas' again.
    f.raw_sql(
        "UPDATE replicas SET bucket = NULL, digest = NULL, sum_part = NULL WHERE state = 'live'; \
         DELETE FROM replica_sums; \
         INSERT INTO replica_sums (owner_org, bucket, s, unknown, n) \
         SELECT owner_org, bucket, COALESCE(SUM(sum_part), 0), SUM(CASE WHEN digest IS NULL THEN 1 ELSE 0 END), COUNT(*) \
         FROM replicas WHERE state = 'live' AND bucket IS NOT NULL GROUP BY owner_org, bucket;",
    )
    .await;
    let before = f.store.replica_bucket_sums("globex").await.unwrap();
    assert_eq!(before.iter().map(|b| b.rows).sum::<i64>(), 0);
    f.store.backfill_digests().await.unwrap();
    assert_eq!(live_replicas(f, "globex").await, 1);
}

pub(super) async fn sync_partner_quarantine_revoking_verdicts_and_history_reset(f: &Fixture) {
    use verbund_store::{
        QuarantineItem, ReplicaBatch, ReplicaItem, ReplicaState, VerdictApply, VerdictOutcome,
    };
    let state = |id: Uuid, fields: &[(&str, &str, Hlc)], owner_seq: i64| ReplicaState {
        id,
        kind: RecordKind::Account,
        owner_org: "globex".into(),
        created_at_ms: 1,
        updated_at_ms: 2,
        fields: fields
            .iter()
            .map(|(n, v, _)| (n.to_string(), text(v)))
            .collect(),
        versions: fields
            .iter()
            .map(|(n, _, h)| (n.to_string(), h.clone()))
            .collect(),
        writable: vec!["name".into()],
        deleted: None,
        owner_seq,
    };
    let batch = |cursor: i64, items: Vec<ReplicaItem>| ReplicaBatch {
        owner_org: "globex".into(),
        cursor,
        cursor_mark: format!("mark-{cursor}"),
        owner_last_seq: 100,
        at_ms: 3,
        items,
        from_stream: true,
        ..Default::default()
    };
    let owner_v = |ms: u64| Hlc::new(ms, 0, "globex/n1");
    let cursor = || async {
        f.store
            .subscription("globex")
            .await
            .unwrap()
            .unwrap_or_default()
    };

    // An item we cannot take is kept; the rest of the batch and the cursor move on.
    let (r, q) = (Uuid::now_v7(), Uuid::now_v7());
    let mut b = batch(
        5,
        vec![ReplicaItem::Upsert(state(
            r,
            &[("name", "R", owner_v(10))],
            1,
        ))],
    );
    b.quarantine = vec![QuarantineItem {
        record_id: q.to_string(),
        item: "s:00".into(),
        reason: "an unknown field".into(),
        ..Default::default()
    }];
    f.store.apply_replica_batch(b).await.unwrap();
    assert_eq!(
        f.store.get(r).await.unwrap().unwrap().fields["name"],
        text("R")
    );
    let held = f.store.list_quarantine(Some("globex"), 10).await.unwrap();
    assert_eq!(
        (
            held.len(),
            held[0].record_id.clone(),
            held[0].reason.as_str()
        ),
        (1, q.to_string(), "an unknown field")
    );
    assert_eq!(
        f.store.quarantine_counts().await.unwrap(),
        [("globex".to_string(), 1)]
    );
    assert_eq!(
        (cursor().await.cursor, cursor().await.cursor_mark),
        (5, "mark-5".to_string())
    );
    // A later item of that record supersedes it.
    f.store
        .apply_replica_batch(batch(
            6,
            vec![ReplicaItem::Upsert(state(
                q,
                &[("name", "Q", owner_v(11))],
                2,
            ))],
        ))
        .await
        .unwrap();
    assert!(f.store.list_quarantine(None, 10).await.unwrap().is_empty());

    // A verdict saying we no longer see the record removes the copy, unless our cursor is
    // already past the point the owner decided at (newer owner changes decide instead).
    let edit = |key: &'static str, value: &'static str, ms: u64| {
        let key = key.to_string();
        async move {
            f.store
                .edit_replica(RecordKind::Account, r, &key, move |cur| {
                    plan_update(
                        cur,
                        &["name".to_string()],
                        fm(&[("name", text(value))]),
                        Hlc::new(ms, 0, "acme/n1"),
                        4,
                    )
                })
                .await
                .unwrap()
        }
    };
    edit("k1", "R1", 20).await;
    let verdict = |key: &str, as_of_seq: i64| VerdictApply {
        owner_org: "globex".into(),
        key: key.into(),
        outcome: VerdictOutcome::Rejected,
        reason: "NOT_FOUND: not shared".into(),
        record: None,
        revoked: true,
        as_of_seq,
        at_ms: 5,
    };
    f.store.apply_verdict(verdict("k1", 5)).await.unwrap();
    let kept = f.store.get(r).await.unwrap().unwrap();
    assert!(!kept.is_deleted(), "cursor 6 is past the verdict's point 5");
    assert_eq!(
        kept.fields["name"],
        text("R"),
        "the rejected edit no longer shows"
    );
    edit("k2", "R2", 21).await;
    f.store.apply_verdict(verdict("k2", 6)).await.unwrap();
    let gone = f.store.get(r).await.unwrap().unwrap();
    assert!(gone.is_deleted() && gone.fields.is_empty(), "{gone:?}");
    live_replicas(f, "globex").await;

    // The owner's history changes under our cursor (a restore): the cursor starts over, the
    // owner's older state is taken as it is, and our edit it no longer has is offered again.
    let s = Uuid::now_v7();
    let ours = Hlc::new(30, 0, "acme/n1");
    f.store
        .apply_replica_batch(batch(
            7,
            vec![ReplicaItem::Upsert(state(
                s,
                &[
                    ("name", "Unser Name", ours.clone()),
                    ("city", "Neu", owner_v(31)),
                ],
                7,
            ))],
        ))
        .await
        .unwrap();
    let mut reset = batch(0, Vec::new());
    reset.cursor_mark = String::new();
    reset.reset_for_org = Some("acme".into());
    f.store.apply_replica_batch(reset).await.unwrap();
    live_replicas(f, "globex").await;
    let sub = cursor().await;
    assert_eq!((sub.cursor, sub.cursor_mark.as_str()), (0, ""));
    assert!(
        sub.history_note.contains("restored from a backup"),
        "{}",
        sub.history_note
    );
    f.store
        .apply_replica_batch(batch(
            3,
            vec![ReplicaItem::Upsert(state(
                s,
                &[("name", "Alt", owner_v(12)), ("city", "Alt", owner_v(13))],
                3,
            ))],
        ))
        .await
        .unwrap();
    let shown = f.store.get(s).await.unwrap().unwrap();
    assert_eq!(
        (&shown.fields["name"], &shown.fields["city"]),
        (&text("Unser Name"), &text("Alt")),
        "the owner's value of a field we did not write, our edit on top where it was lost"
    );
    let offered = f
        .store
        .list_outbox(
            Some("globex"),
            Some(verbund_store::OutboxState::Pending),
            10,
        )
        .await
        .unwrap();
    assert_eq!(offered.len(), 1, "{offered:?}");
    let e = &offered[0].edits[0];
    assert_eq!(
        (
            e.field.as_str(),
            e.value.clone(),
            e.version.clone(),
            e.base.clone()
        ),
        ("name", Some(text("Unser Name")), ours, Some(owner_v(12)))
    );
    assert_eq!(
        cursor().await.cursor,
        3,
        "the cursor moved on from the beginning"
    );
}

fn all_buckets() -> Vec<u32> {
    (0..verbund_core::sync::DIGEST_BUCKETS as u32).collect()
}
