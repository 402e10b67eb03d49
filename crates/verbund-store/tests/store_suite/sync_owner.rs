//! Sync, the owner's side: a partner's edits are merged once, conflicts are kept, and
//! erasure removes what was merged.

use std::collections::BTreeSet;

use verbund_core::{Hlc, RecordKind};

use super::{Fixture, text};

pub(super) async fn sync_owner_merges_once_keeps_conflicts_and_erases(f: &Fixture) {
    use verbund_core::sync::{Conflict, FieldState};
    use verbund_store::{MergePlan, VerdictOutcome};
    let a = f
        .create(RecordKind::Account, &[("name", text("Kunde"))])
        .await
        .unwrap();
    let partner_version = Hlc::new(u64::MAX / 4, 0, "globex/n1");
    let plan = |name: &'static str, v: Hlc| {
        move |cur: &verbund_core::Record| {
            let mut next = cur.clone();
            next.fields.insert("name".into(), text(name));
            next.versions.insert("name".into(), v.clone());
            Ok(MergePlan {
                write: Some(verbund_core::write::WritePlan {
                    change: verbund_core::Change {
                        seq: 0,
                        record_id: cur.id,
                        kind: cur.kind,
                        op: verbund_core::ChangeOp::Update,
                        hlc: v.clone(),
                        fields: [("name".to_string(), Some(text(name)))].into(),
                        at_ms: 9,
                    },
                    record: next,
                    refs: vec![],
                }),
                conflicts: vec![Conflict {
                    field: "name".into(),
                    winner: FieldState {
                        value: Some(text(name)),
                        version: v.clone(),
                    },
                    loser: FieldState {
                        value: cur.fields.get("name").cloned(),
                        version: cur.versions["name"].clone(),
                    },
                }],
                outcome: VerdictOutcome::AppliedWithConflict,
                reason: "name: concurrent".into(),
                at_ms: 9,
            })
        }
    };
    let (rec, verdict) = f
        .store
        .merge_push(
            "globex",
            "k1",
            RecordKind::Account,
            a.id,
            plan("Kunde AG", partner_version.clone()),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(verdict.outcome, VerdictOutcome::AppliedWithConflict);
    assert_eq!(rec.fields["name"], text("Kunde AG"));
    // The same key again: the stored verdict, nothing applied twice.
    let later = Hlc::new(u64::MAX / 4 + 1, 0, "globex/n1");
    let (rec2, again) = f
        .store
        .merge_push(
            "globex",
            "k1",
            RecordKind::Account,
            a.id,
            plan("Anders", later),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(again, verdict);
    assert_eq!(rec2.fields["name"], text("Kunde AG"));
    let conflicts = f.store.list_conflicts(Some(a.id), false).await.unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].conflict.loser.value, Some(text("Kunde")));
    assert!(
        f.store
            .mark_conflict_resolved(conflicts[0].id, "verbund://acme/user/admin", "winner", 10)
            .await
            .unwrap()
    );
    assert!(
        !f.store
            .mark_conflict_resolved(conflicts[0].id, "x", "winner", 11)
            .await
            .unwrap()
    );
    assert!(
        f.store
            .list_conflicts(Some(a.id), false)
            .await
            .unwrap()
            .is_empty()
    );

    // Erasure: every organization in the ledger owes an acknowledgement; values are gone.
    let c = f
        .create(
            RecordKind::Contact,
            &[
                ("account_id", text(&a.id.to_string())),
                ("last_name", text("Muster")),
                ("email", text("erika@kunde.example")),
            ],
        )
        .await
        .unwrap();
    for org in ["globex", "fixit"] {
        f.store
            .record_deliveries(org, vec![live_note(c.id)], 20, "p1", Vec::new(), None)
            .await
            .unwrap();
    }
    // The ledger keeps the digest sent: its bucket sums are the pure ones, and rows of
    // another policy count as unknown.
    let sums = f.store.delivery_bucket_sums("globex", "p1").await.unwrap();
    let want = verbund_core::sync::bucket_sums([(&c.id, 7)]);
    assert_eq!(sums.iter().map(|b| b.sum).collect::<Vec<_>>(), want);
    assert!(sums.iter().all(|b| b.unknown == 0));
    let bucket = verbund_core::sync::bucket_of(&c.id);
    assert!(
        sums.iter()
            .enumerate()
            .all(|(i, b)| b.rows == i64::from(i == bucket))
    );
    let reloaded = f.store.delivery_bucket_sums("globex", "p2").await.unwrap();
    assert_eq!(reloaded.iter().map(|b| b.unknown).sum::<i64>(), 1);
    let in_bucket = [verbund_core::sync::bucket_of(&c.id) as u32];
    let rows = f
        .store
        .live_deliveries_in("globex", &in_bucket)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].digest, rows[0].policy.as_deref()),
        (Some(7), Some("p1"))
    );
    let hlc = f.hlc();
    let erased = f
        .store
        .erase(
            RecordKind::Contact,
            c.id,
            "verbund://acme/user/admin",
            move |cur| verbund_core::write::plan_erase(cur, hlc, 30),
        )
        .await
        .unwrap();
    assert!(erased.is_deleted());
    assert_eq!(erased.fields.keys().collect::<Vec<_>>(), ["account_id"]);
    assert!(f.store.erasure(c.id).await.unwrap().is_some());
    let owed: Vec<String> = f
        .store
        .deliveries_of_record(c.id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.state.as_str().to_string())
        .collect();
    assert_eq!(owed, ["erased", "erased"]);
    f.store.ack_erasures("globex", &[c.id], 40).await.unwrap();
    assert!(f.store.pending_erasures("globex").await.unwrap().is_empty());
    assert_eq!(f.store.pending_erasures("fixit").await.unwrap().len(), 1);
    // A delivery racing the erasure is still owed the erasure.
    f.store
        .record_deliveries(
            "umbrella",
            vec![live_note(c.id)],
            50,
            "p1",
            Vec::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(f.store.pending_erasures("umbrella").await.unwrap().len(), 1);
    let log = f.log_after(0, &[], 1000).await;
    for ch in log.iter().filter(|ch| ch.record_id == c.id) {
        assert!(ch.fields.values().all(Option::is_none), "{ch:?}");
    }
}

fn live_note(id: uuid::Uuid) -> verbund_store::DeliveryNote {
    verbund_store::DeliveryNote {
        record_id: id,
        kind: RecordKind::Contact,
        state: verbund_store::DeliveryState::Live,
        digest: Some(7),
    }
}

/// A partner's stream positions: each stands for our changes up to a sequence number, the
/// latest can be moved on in place, an acknowledgement forgets the older ones; and the stamp
/// reservation only grows.
pub(super) async fn sync_owner_keeps_stream_positions_and_stamp_reservations(f: &Fixture) {
    use verbund_store::StreamPosition;
    let position = |stream_pos: i64, owner_seq: i64, mark: &str| StreamPosition {
        stream_pos,
        owner_seq,
        mark: mark.to_string(),
    };
    assert_eq!(f.store.stream_position("globex", 100).await.unwrap(), None);
    for p in [position(100, 0, "m100"), position(200, 7, "m200")] {
        f.store
            .record_deliveries("globex", Vec::new(), 10, "", Vec::new(), Some(p))
            .await
            .unwrap();
    }
    // Another partner's positions are its own.
    f.store
        .record_deliveries(
            "fixit",
            Vec::new(),
            10,
            "",
            Vec::new(),
            Some(position(200, 3, "other")),
        )
        .await
        .unwrap();
    assert_eq!(
        f.store.stream_position("globex", 100).await.unwrap(),
        Some(position(100, 0, "m100"))
    );
    assert_eq!(f.store.stream_position("globex", 150).await.unwrap(), None);
    // Changes with nothing for the partner move its latest position on, not its cursor.
    f.store.move_position("globex", 200, 42).await.unwrap();
    assert_eq!(
        f.store.stream_position("globex", 200).await.unwrap(),
        Some(position(200, 42, "m200"))
    );
    assert_eq!(
        f.store.stream_position("fixit", 200).await.unwrap(),
        Some(position(200, 3, "other"))
    );
    // Acknowledged 200: 100 is never asked for again.
    f.store.record_peer_ack("globex", 200, 20).await.unwrap();
    assert_eq!(f.store.stream_position("globex", 100).await.unwrap(), None);
    assert_eq!(
        f.store.stream_position("globex", 200).await.unwrap(),
        Some(position(200, 42, "m200"))
    );

    assert_eq!(f.store.stamps_reserved("globex").await.unwrap(), 0);
    f.store.reserve_stamps("globex", 5_000).await.unwrap();
    f.store.reserve_stamps("globex", 9_000).await.unwrap();
    // A stale reservation (a slower writer) never lowers it.
    f.store.reserve_stamps("globex", 6_000).await.unwrap();
    assert_eq!(f.store.stamps_reserved("globex").await.unwrap(), 9_000);
    assert_eq!(f.store.stamps_reserved("fixit").await.unwrap(), 0);

    // A node secret is made up once and kept; another name has its own.
    let key = f.store.node_secret("watch-token").await.unwrap();
    assert_eq!(key.len(), 64);
    assert_eq!(f.store.node_secret("watch-token").await.unwrap(), key);
    assert_ne!(f.store.node_secret("other").await.unwrap(), key);
}

/// Our stream passes other owners' records by unless one of ours hangs off them, directly
/// or through one more record.
pub(super) async fn sync_owner_passes_by_other_owners_records(f: &Fixture) {
    use verbund_core::Value;
    let t = |s: &str| Value::Text(s.into());
    let as_org = |org: &'static str, kind: RecordKind, fields: Vec<(&'static str, Value)>| {
        let fields: Vec<(&str, Value)> = fields;
        let plan = verbund_core::write::plan_create(
            kind,
            uuid::Uuid::now_v7(),
            org,
            super::fm(&fields),
            f.hlc(),
            1_000,
        )
        .unwrap();
        async move { f.store.create(plan).await.unwrap() }
    };
    let ours = as_org("acme", RecordKind::Account, vec![("name", t("Eigen"))]).await;
    let lone = as_org("globex", RecordKind::Account, vec![("name", t("Fremd"))]).await;
    // The stream's read of the change log tells which records are another's.
    let foreign = || async {
        let read = f.stream_log_after(0, "acme", 100).await;
        assert!(read.changes.iter().any(|c| c.record_id == ours.id));
        assert_eq!(
            read.scanned_to, read.last,
            "one read looks through all of it"
        );
        read
    };
    // Their lone account bears on nothing of ours: the read passes it by.
    let read = foreign().await;
    assert!(read.foreign.is_empty());
    assert!(!read.changes.iter().any(|c| c.record_id == lone.id));
    assert_eq!(read.scanned_to, f.store.last_seq().await.unwrap());
    let theirs: BTreeSet<uuid::Uuid> = [lone.id].into();
    let all = vec![ours.id, lone.id];
    assert_eq!(
        f.store.bearing_on_own(all, &theirs, "acme").await.unwrap(),
        [ours.id]
    );
    assert!(
        f.store
            .bearing_on_own(vec![lone.id], &theirs, "acme")
            .await
            .unwrap()
            .is_empty()
    );
    // Their contact at their account, our activity at the contact: two steps away.
    let their_contact = as_org(
        "globex",
        RecordKind::Contact,
        vec![
            ("last_name", t("Weber")),
            ("account_id", t(&lone.id.to_string())),
        ],
    )
    .await;
    // Their account now has a record hanging off it: the read brings it, and its contact
    // (a leaf) still passes by.
    let theirs = foreign().await.foreign;
    assert_eq!(theirs, [lone.id].into());
    let theirs: BTreeSet<uuid::Uuid> = [lone.id, their_contact.id].into();
    assert!(
        f.store
            .bearing_on_own(vec![lone.id], &theirs, "acme")
            .await
            .unwrap()
            .is_empty()
    );
    as_org(
        "acme",
        RecordKind::Activity,
        vec![
            ("channel", t("call")),
            ("related_id", t(&their_contact.id.to_string())),
        ],
    )
    .await;
    // Both of theirs now have a record hanging off them: the read brings both.
    assert_eq!(foreign().await.foreign, theirs);
    let both = vec![ours.id, lone.id];
    assert_eq!(
        f.store
            .bearing_on_own(both.clone(), &theirs, "acme")
            .await
            .unwrap(),
        both
    );
    assert_eq!(
        f.store
            .bearing_on_own(vec![their_contact.id], &theirs, "acme")
            .await
            .unwrap(),
        [their_contact.id]
    );
    // A read that reaches its limit has looked through the log up to its last change.
    let last = f.store.last_seq().await.unwrap();
    let read = f.stream_log_after(0, "acme", 2).await;
    assert_eq!(read.changes.len(), 2);
    assert_eq!(read.scanned_to, read.changes[1].seq);
    assert_eq!(read.last, last);
    let rest = f.stream_log_after(read.scanned_to, "acme", 100).await;
    assert_eq!(rest.scanned_to, last);
    assert!(rest.changes.iter().all(|c| c.seq > read.scanned_to));
    // Nothing after the last change: nothing read, and the window stays where it was.
    let none = f.stream_log_after(last, "acme", 100).await;
    assert!(none.changes.is_empty());
    assert_eq!(none.scanned_to, last);
}

/// A record another owner's stream brings here for the first time is passed by on its mark;
/// a later change of it is looked at like any other (a record of ours may hang off it by
/// then).
pub(super) async fn sync_owner_passes_by_records_new_from_another_owner(f: &Fixture) {
    use verbund_core::Value;
    use verbund_store::{ReplicaBatch, ReplicaItem, ReplicaState};
    let theirs = uuid::Uuid::now_v7();
    let state = |name: &str, owner_seq: i64| ReplicaState {
        id: theirs,
        kind: RecordKind::Account,
        owner_org: "globex".into(),
        created_at_ms: 1,
        updated_at_ms: 2,
        fields: super::fm(&[("name", Value::Text(name.into()))]),
        versions: [(
            "name".to_string(),
            Hlc::new(1_000 + owner_seq as u64, 0, "globex/n1"),
        )]
        .into(),
        writable: Vec::new(),
        deleted: None,
        owner_seq,
    };
    let batch = |cursor: i64, st: ReplicaState| ReplicaBatch {
        owner_org: "globex".into(),
        cursor,
        owner_last_seq: 100,
        at_ms: 3,
        items: vec![ReplicaItem::Upsert(st)],
        from_stream: true,
        ..Default::default()
    };
    let start = f.store.last_seq().await.unwrap();
    f.store
        .apply_replica_batch(batch(1, state("Fremd", 1)))
        .await
        .unwrap();
    let last = f.store.last_seq().await.unwrap();
    assert!(
        last > start,
        "the replica's first state is in the change log"
    );
    let read = f.stream_log_after(start, "acme", 100).await;
    assert!(read.changes.is_empty(), "{:?}", read.changes);
    assert_eq!(read.scanned_to, last);
    // Their account changes while nothing here refers to it: passed by too (on SQLite the
    // kept changes know it from the apply, which looked for records referring to it).
    f.store
        .apply_replica_batch(batch(2, state("Fremd GmbH", 2)))
        .await
        .unwrap();
    let read = f.stream_log_after(last, "acme", 100).await;
    assert!(read.changes.is_empty(), "{:?}", read.changes);
    assert!(read.foreign.is_empty());
    let last = f.store.last_seq().await.unwrap();
    assert_eq!(read.scanned_to, last);
    // A contact of ours at their account; then their account changes.
    let plan = verbund_core::write::plan_create(
        RecordKind::Contact,
        uuid::Uuid::now_v7(),
        "acme",
        super::fm(&[
            ("last_name", Value::Text("Weber".into())),
            ("account_id", Value::Text(theirs.to_string())),
        ]),
        f.hlc(),
        1_000,
    )
    .unwrap();
    let ours = f.store.create(plan).await.unwrap();
    f.store
        .apply_replica_batch(batch(3, state("Fremd AG", 3)))
        .await
        .unwrap();
    let read = f.stream_log_after(last, "acme", 100).await;
    let ids: Vec<uuid::Uuid> = read.changes.iter().map(|c| c.record_id).collect();
    assert_eq!(ids, [ours.id, theirs]);
    assert_eq!(read.foreign, [theirs].into());
    assert_eq!(read.scanned_to, f.store.last_seq().await.unwrap());
}

/// `n` new contacts of one new account, their ids in order.
async fn contacts_of_one_account(f: &Fixture, n: usize) -> Vec<uuid::Uuid> {
    let a = f
        .create(RecordKind::Account, &[("name", text("Kunde"))])
        .await
        .unwrap();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let c = f
            .create(
                RecordKind::Contact,
                &[
                    ("account_id", text(&a.id.to_string())),
                    ("last_name", text(&format!("Muster {i}"))),
                ],
            )
            .await
            .unwrap();
        ids.push(c.id);
    }
    ids
}

/// The ledger's bucket sums as kept (`delivery_sums`) must be those of its rows as read: the
/// sum of the digests of the current policy, and every other live row unknown.
async fn ledger_sums_agree(f: &Fixture, org: &str, policy: &str) -> Vec<verbund_store::BucketSum> {
    let kept = f.store.delivery_bucket_sums(org, policy).await.unwrap();
    let all: Vec<u32> = (0..verbund_core::sync::DIGEST_BUCKETS as u32).collect();
    let rows = f.store.live_deliveries_in(org, &all).await.unwrap();
    let counted: Vec<(uuid::Uuid, u64)> = rows
        .iter()
        .filter(|r| r.policy.as_deref() == Some(policy))
        .filter_map(|r| r.digest.map(|d| (r.record_id, d)))
        .collect();
    let sums = verbund_core::sync::bucket_sums(counted.iter().map(|(id, d)| (id, *d)));
    let mut want = vec![verbund_store::BucketSum::default(); verbund_core::sync::DIGEST_BUCKETS];
    for (b, s) in want.iter_mut().zip(sums) {
        b.sum = s;
    }
    for r in &rows {
        let b = &mut want[verbund_core::sync::bucket_of(&r.record_id)];
        b.rows += 1;
        if r.digest.is_none() || r.policy.as_deref() != Some(policy) {
            b.unknown += 1;
        }
    }
    assert_eq!(
        kept, want,
        "the kept bucket sums of {org} disagree with its ledger"
    );
    kept
}

/// The owner's bucket sums follow every change of the ledger: new rows, new digests, revokes,
/// a new policy, erasure (with a delivery racing it), without a scan of the ledger.
pub(super) async fn sync_owner_keeps_bucket_sums_as_the_ledger_changes(f: &Fixture) {
    use verbund_store::{DeliveryNote, DeliveryState};
    let note = |id: uuid::Uuid, state: DeliveryState, digest: Option<u64>| DeliveryNote {
        record_id: id,
        kind: RecordKind::Contact,
        state,
        digest,
    };
    let ids = contacts_of_one_account(f, 40).await;
    let live = |range: std::ops::Range<usize>, digest: u64| -> Vec<DeliveryNote> {
        ids[range]
            .iter()
            .map(|id| note(*id, DeliveryState::Live, Some(digest)))
            .collect()
    };
    let deliver = |org: &'static str, rows: Vec<DeliveryNote>, policy: &'static str| async move {
        f.store
            .record_deliveries(org, rows, 10, policy, Vec::new(), None)
            .await
            .unwrap();
    };
    deliver("globex", live(0..30, 7), "p1").await;
    deliver("fixit", live(10..20, 9), "p1").await;
    let first = ledger_sums_agree(f, "globex", "p1").await;
    assert_eq!(first.iter().map(|b| b.rows).sum::<i64>(), 30);
    assert!(first.iter().all(|b| b.unknown == 0));
    // New digests for some, the same again for others: each row counts once.
    deliver("globex", live(0..10, 8), "p1").await;
    deliver("globex", live(5..15, 8), "p1").await;
    ledger_sums_agree(f, "globex", "p1").await;
    // Revoked rows leave the sums; a revoked row sent again comes back.
    let revokes: Vec<DeliveryNote> = ids[20..25]
        .iter()
        .map(|id| note(*id, DeliveryState::Revoked, None))
        .collect();
    deliver("globex", revokes, "p1").await;
    assert_eq!(
        ledger_sums_agree(f, "globex", "p1")
            .await
            .iter()
            .map(|b| b.rows)
            .sum::<i64>(),
        25
    );
    deliver("globex", live(24..26, 5), "p1").await;
    ledger_sums_agree(f, "globex", "p1").await;
    // A reload: rows sent under p1 count as unknown under p2 until they are sent again.
    deliver("globex", live(0..5, 6), "p2").await;
    let reloaded = ledger_sums_agree(f, "globex", "p2").await;
    assert_eq!(reloaded.iter().map(|b| b.unknown).sum::<i64>(), 26 - 5);
    ledger_sums_agree(f, "globex", "p1").await;
    // Erasure takes the record out of every partner's sums.
    let hlc = f.hlc();
    let erased = ids[12];
    f.store
        .erase(
            RecordKind::Contact,
            erased,
            "verbund://acme/user/admin",
            move |cur| verbund_core::write::plan_erase(cur, hlc, 30),
        )
        .await
        .unwrap();
    let after = ledger_sums_agree(f, "globex", "p2").await;
    assert_eq!(after.iter().map(|b| b.rows).sum::<i64>(), 25);
    assert_eq!(
        ledger_sums_agree(f, "fixit", "p1")
            .await
            .iter()
            .map(|b| b.rows)
            .sum::<i64>(),
        9
    );
    // A delivery racing the erasure is owed the erasure and counts in no sum.
    deliver("umbrella", live(12..14, 7), "p1").await;
    let umbrella = ledger_sums_agree(f, "umbrella", "p1").await;
    assert_eq!(umbrella.iter().map(|b| b.rows).sum::<i64>(), 1);
    deliver("globex", live(12..13, 7), "p2").await;
    ledger_sums_agree(f, "globex", "p2").await;
    // A record twice in one note: the last counts, once.
    let twice = vec![
        note(ids[35], DeliveryState::Live, Some(1)),
        note(ids[35], DeliveryState::Live, Some(2)),
    ];
    deliver("globex", twice, "p2").await;
    let sums = ledger_sums_agree(f, "globex", "p2").await;
    assert_eq!(sums.iter().map(|b| b.rows).sum::<i64>(), 26);
    let rows = f.store.deliveries_of("globex", &[ids[35]]).await.unwrap();
    assert_eq!(rows[0].digest, Some(2));
}

/// Rows from before digests were kept (no bucket) count in no sum until the backfill gives
/// them a bucket; then the kept sums are those of the rows again, on both sides.
pub(super) async fn sync_bucket_sums_take_in_rows_from_before_buckets(f: &Fixture) {
    use verbund_store::{DeliveryNote, DeliveryState};
    let rows: Vec<DeliveryNote> = contacts_of_one_account(f, 12)
        .await
        .into_iter()
        .map(|id| DeliveryNote {
            record_id: id,
            kind: RecordKind::Contact,
            state: DeliveryState::Live,
            digest: Some(3),
        })
        .collect();
    f.store
        .record_deliveries("globex", rows, 10, "p1", Vec::new(), None)
        .await
        .unwrap();
    // As the ledger stood before digests: no bucket, no digest; the sums as migration 0028
    // computed them from such a ledger.
    f.raw_sql(
        "UPDATE deliveries SET bucket = NULL, digest = NULL, sum_part = NULL, policy = NULL \
         WHERE record_id IN (SELECT record_id FROM deliveries ORDER BY record_id LIMIT 5); \
         DELETE FROM delivery_sums; \
         INSERT INTO delivery_sums (org, bucket, policy, s, n) \
         SELECT org, bucket, CASE WHEN digest IS NULL OR policy IS NULL THEN '' ELSE policy END, COALESCE(SUM(sum_part), 0), COUNT(*) \
         FROM deliveries WHERE state = 'live' AND bucket IS NOT NULL \
         GROUP BY org, bucket, CASE WHEN digest IS NULL OR policy IS NULL THEN '' ELSE policy END;",
    )
    .await;
    let before = f.store.delivery_bucket_sums("globex", "p1").await.unwrap();
    assert_eq!(before.iter().map(|b| b.rows).sum::<i64>(), 7);
    f.store.backfill_digests().await.unwrap();
    let after = ledger_sums_agree(f, "globex", "p1").await;
    assert_eq!(after.iter().map(|b| b.rows).sum::<i64>(), 12);
    assert_eq!(after.iter().map(|b| b.unknown).sum::<i64>(), 5);
}

/// `surroundings` reads what the three reads it stands for read, for a few ids (one query on
/// SQLite) and for many (the reads side by side), and nothing of another organization.
pub(super) async fn sync_owner_reads_surroundings_as_the_reads_they_join(f: &Fixture) {
    use super::{draft, share_hlc, share_of};
    use verbund_store::{DeliveryNote, DeliveryState, ShareOp};
    let contacts = contacts_of_one_account(f, 20).await;
    let account = f.store.get(contacts[0]).await.unwrap().unwrap();
    let account_id = match account.fields.get("account_id") {
        Some(verbund_core::Value::Text(t)) => uuid::Uuid::parse_str(t).unwrap(),
        other => panic!("a contact without its account: {other:?}"),
    };
    let acc = f.store.get(account_id).await.unwrap().unwrap();
    f.store
        .share(
            ShareOp::Add(share_of(&acc, "globex", "partner-account")),
            share_hlc(),
            draft("share", Some(acc.id.to_string())),
        )
        .await
        .unwrap();
    let notes = |ids: &[uuid::Uuid]| {
        ids.iter()
            .map(|id| DeliveryNote {
                record_id: *id,
                kind: RecordKind::Contact,
                state: DeliveryState::Live,
                digest: Some(7),
            })
            .collect::<Vec<_>>()
    };
    f.store
        .record_deliveries("globex", notes(&contacts[..3]), 10, "p1", Vec::new(), None)
        .await
        .unwrap();
    f.store
        .record_deliveries("fixit", notes(&contacts[3..5]), 10, "p1", Vec::new(), None)
        .await
        .unwrap();
    // A few ids: the account (its contacts depend on it), its share, three deliveries.
    let few = f
        .store
        .surroundings(
            "globex",
            &[acc.id.to_string()],
            &[acc.id, contacts[0]],
            &contacts[..5],
        )
        .await
        .unwrap();
    let mut dependents: Vec<_> = few.dependents.iter().map(|r| r.id).collect();
    dependents.sort();
    let mut expected = contacts.clone();
    expected.sort();
    assert_eq!(dependents, expected);
    assert_eq!(few.shares.len(), 1);
    assert_eq!(few.shares[0].record_id, acc.id);
    let mut delivered: Vec<_> = few.deliveries.iter().map(|d| d.record_id).collect();
    delivered.sort();
    let mut expected: Vec<_> = contacts[..3].to_vec();
    expected.sort();
    assert_eq!(delivered, expected, "only globex's deliveries");
    assert!(few.deliveries.iter().all(|d| d.org == "globex"));
    // Many ids: the same answers as the reads one by one.
    let many = f
        .store
        .surroundings("globex", &[acc.id.to_string()], &contacts, &contacts)
        .await
        .unwrap();
    assert_eq!(many.dependents.len(), 20);
    assert!(
        many.shares.is_empty(),
        "the contacts have no share of their own"
    );
    assert_eq!(
        many.deliveries.len(),
        f.store
            .deliveries_of("globex", &contacts)
            .await
            .unwrap()
            .len()
    );
    // Nothing asked, nothing read.
    let none = f.store.surroundings("globex", &[], &[], &[]).await.unwrap();
    assert!(none.dependents.is_empty() && none.shares.is_empty() && none.deliveries.is_empty());
}
