//! What operators read: the writer's batch reports, the pool's use, a ping, and the counts
//! behind the alerting metrics (open conflicts, unacknowledged erasures, rejected edits).

use std::sync::{Arc, Mutex};

use verbund_store::{BatchReport, OpsCounts};

use super::{Fixture, draft};

pub(super) async fn ops_reports_batches_pool_and_counts(f: &Fixture) {
    let reports: Arc<Mutex<Vec<BatchReport>>> = Arc::default();
    let seen = reports.clone();
    assert!(f.store.on_batch(move |r| seen.lock().unwrap().push(*r)));
    assert!(!f.store.on_batch(|_| {}), "one hook per store");
    f.store
        .audit(vec![draft("read", Some("r1".into())), draft("list", None)])
        .await
        .unwrap();
    let got = reports.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].committed);
    assert_eq!((got[0].jobs, got[0].audit_entries), (1, 2));

    f.store.ping().await.unwrap();
    let pool = f.store.pool_use();
    assert!(pool.max > 0 && pool.open <= pool.max && pool.idle <= pool.open);

    assert_eq!(f.store.ops_counts().await.unwrap(), OpsCounts::default());
    f.tamper("INSERT INTO conflicts (id, record_id, kind, field, winner_version, loser_version, created_ms) VALUES ('c1', 'r1', 'account', 'name', 'v2', 'v1', 1)").await;
    f.tamper("INSERT INTO conflicts (id, record_id, kind, field, winner_version, loser_version, created_ms, resolved_by, resolved_ms) VALUES ('c2', 'r1', 'account', 'name', 'v2', 'v1', 1, 'admin', 2)").await;
    f.tamper("INSERT INTO deliveries (org, record_id, kind, state, first_sent_ms, last_sent_ms) VALUES ('globex', 'r1', 'contact', 'erased', 1, 1), ('globex', 'r2', 'contact', 'live', 1, 1)").await;
    f.tamper("INSERT INTO deliveries (org, record_id, kind, state, first_sent_ms, last_sent_ms, erasure_acked_ms) VALUES ('initech', 'r1', 'contact', 'erased', 1, 1, 5)").await;
    f.tamper("INSERT INTO outbox (push_key, owner_org, record_id, kind, edits, state, attempts, created_ms) VALUES ('k1', 'globex', 'r9', 'account', '[]', 'rejected', 1, 1), ('k2', 'globex', 'r9', 'account', '[]', 'pending', 0, 1)").await;
    assert_eq!(
        f.store.ops_counts().await.unwrap(),
        OpsCounts {
            conflicts_open: 1,
            erasures_unacked: vec![("globex".into(), 1)],
            rejected_edits: vec![("globex".into(), 1)],
        }
    );
}

/// The database is bound to the first organization that claims it, through the writer (one
/// batch, like every write); any other is refused, and the claim stays the first one.
pub(super) async fn a_database_belongs_to_the_first_organization_that_claims_it(f: &Fixture) {
    let reports: Arc<Mutex<Vec<BatchReport>>> = Arc::default();
    let seen = reports.clone();
    assert!(f.store.on_batch(move |r| seen.lock().unwrap().push(*r)));
    f.store.claim_for("acme").await.unwrap();
    assert_eq!(
        reports.lock().unwrap().len(),
        1,
        "the claim is written by the writer"
    );
    f.store.claim_for("acme").await.unwrap();
    assert_eq!(
        reports.lock().unwrap().len(),
        1,
        "a claim made is only read"
    );
    let refused = f.store.claim_for("globex").await.unwrap_err().to_string();
    assert!(
        refused.contains("belongs to organization \"acme\""),
        "{refused}"
    );
    f.store.claim_for("acme").await.unwrap();

    // A secret is written once by the writer, then read.
    let key = f.store.node_secret("claim-test").await.unwrap();
    assert_eq!(reports.lock().unwrap().len(), 2);
    assert_eq!(f.store.node_secret("claim-test").await.unwrap(), key);
    assert_eq!(reports.lock().unwrap().len(), 2);

    // A refused write of the node's own tables fails alone: a record written beside it is
    // stored (sent together, the writer usually takes them in one batch; in two, this
    // holds as well).
    let name = [("name", verbund_core::Value::Text("Kept".into()))];
    let (refused, created, unknown) = tokio::join!(
        f.store.remove_partner("nobody"),
        f.create(verbund_core::RecordKind::Account, &name),
        f.store
            .mark_conflict_resolved(uuid::Uuid::now_v7(), "admin", "keep", 1),
    );
    assert!(matches!(
        refused,
        Err(verbund_store::StoreError::NotFound(_))
    ));
    let created = created.unwrap();
    assert_eq!(
        f.store.get(created.id).await.unwrap().map(|r| r.id),
        Some(created.id)
    );
    assert!(!unknown.unwrap(), "no such conflict");
}
