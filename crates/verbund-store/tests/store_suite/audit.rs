//! The audit chain in the store: entries are chained, and tampering with the database
//! (changed content, a removed head, a gap) is detected.

use uuid::Uuid;
use verbund_core::audit;
use verbund_core::write::plan_create;
use verbund_core::{Hlc, RecordKind};
use verbund_store::AuditQuery;

use super::{Fixture, draft, fm, t};

pub(super) async fn audit_chain_detects_tampering(f: &Fixture) {
    assert_eq!(f.store.verify_audit().await.unwrap().checked, 0);
    for i in 0..5 {
        f.store
            .audit(vec![
                draft("read", Some(format!("r{i}"))),
                draft("list", None),
            ])
            .await
            .unwrap();
    }
    let acc = f
        .store
        .create_audited(
            move || {
                plan_create(
                    RecordKind::Account,
                    Uuid::now_v7(),
                    "acme",
                    fm(&[("name", t("X"))]),
                    Hlc::new(1, 0, "acme/n1"),
                    1,
                )
            },
            vec![draft("create", None)],
        )
        .await
        .unwrap();
    let log = f
        .store
        .list_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(log.len(), 11);
    assert_eq!(
        log[10].draft.record_id,
        Some(acc.id.to_string()),
        "creates get their id"
    );
    let filtered = f
        .store
        .list_audit(&AuditQuery {
            record_id: Some("r3".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    let report = f.store.verify_audit().await.unwrap();
    assert_eq!((report.checked, report.broken), (11, None));

    f.tamper("UPDATE audit_log SET decision = 'deny' WHERE seq = 4")
        .await;
    assert!(matches!(
        f.store.verify_audit().await.unwrap().broken,
        Some(audit::ChainBreak::Content { seq: 4 })
    ));
    f.tamper("UPDATE audit_log SET decision = 'allow' WHERE seq = 4")
        .await;
    assert_eq!(f.store.verify_audit().await.unwrap().broken, None);
    f.tamper("DELETE FROM audit_log WHERE seq = 11").await;
    assert!(matches!(
        f.store.verify_audit().await.unwrap().broken,
        Some(audit::ChainBreak::Head { .. })
    ));
    f.tamper("DELETE FROM audit_log WHERE seq = 6").await;
    assert!(matches!(
        f.store.verify_audit().await.unwrap().broken,
        Some(audit::ChainBreak::Gap {
            seq: 7,
            expected: 6
        })
    ));
}
