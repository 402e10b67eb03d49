//! Sharing in the store: shares and share rules with their audit entries, and the partner
//! registry.

use uuid::Uuid;
use verbund_core::access::{RuleMatch, ShareRule};
use verbund_core::{DomainError, RecordKind, Value};
use verbund_store::{AuditQuery, ShareOp, StoreError};

use super::{Fixture, draft, share_hlc, share_of, t};

pub(super) async fn shares_and_rules(f: &Fixture) {
    let acc = f
        .create(
            RecordKind::Account,
            &[
                ("name", t("Kunde")),
                ("tags", Value::List(vec!["group".into()])),
            ],
        )
        .await
        .unwrap();
    let other = f
        .create(RecordKind::Account, &[("name", t("group"))])
        .await
        .unwrap();
    let contact = f
        .create(
            RecordKind::Contact,
            &[
                ("last_name", t("Weber")),
                ("account_id", t(&acc.id.to_string())),
            ],
        )
        .await
        .unwrap();
    let case = f
        .create(
            RecordKind::ServiceCase,
            &[
                ("subject", t("Pumpe")),
                ("assigned_org", t("fixit")),
                ("account_id", t(&other.id.to_string())),
            ],
        )
        .await
        .unwrap();
    let share = share_of(&acc, "globex", "partner-account");
    f.store
        .share(
            ShareOp::Add(share.clone()),
            share_hlc(),
            draft("share", Some(acc.id.to_string())),
        )
        .await
        .unwrap();
    // Once per record and organization; the kind must match; the record must exist.
    let again = f
        .store
        .share(
            ShareOp::Add(share_of(&acc, "globex", "joint-deal")),
            share_hlc(),
            draft("share", None),
        )
        .await;
    assert!(
        matches!(
            again,
            Err(StoreError::Domain(DomainError::AlreadyExists(_)))
        ),
        "{again:?}"
    );
    let mut wrong_kind = share_of(&acc, "initech", "x");
    wrong_kind.kind = RecordKind::Contact;
    assert!(matches!(
        f.store
            .share(ShareOp::Add(wrong_kind), share_hlc(), draft("share", None))
            .await,
        Err(StoreError::Domain(DomainError::NotFound { .. }))
    ));
    assert_eq!(
        f.store.list_shares(Some("globex"), None).await.unwrap(),
        vec![share.clone()]
    );
    assert_eq!(
        f.store.list_shares(None, Some(acc.id)).await.unwrap(),
        vec![share]
    );
    assert!(
        f.store
            .list_shares(Some("initech"), None)
            .await
            .unwrap()
            .is_empty()
    );

    let rule = ShareRule {
        id: Uuid::now_v7(),
        org: "holding".into(),
        rule: RuleMatch::AccountTag("group".into()),
        profile: "group".into(),
        created_at_ms: 5,
        created_by: "verbund://acme/user/admin".into(),
    };
    // Read before and after every change (SQLite keeps what it read: it must not go stale).
    assert!(f.store.list_share_rules(None).await.unwrap().is_empty());
    assert!(rules_of(f, "holding").await.is_empty());
    f.store
        .share(
            ShareOp::AddRule(rule.clone()),
            share_hlc(),
            draft("rule-add", None),
        )
        .await
        .unwrap();
    assert_eq!(
        f.store.list_share_rules(Some("holding")).await.unwrap(),
        vec![rule.clone()]
    );
    assert_eq!(
        f.store.list_share_rules(None).await.unwrap(),
        vec![rule.clone()]
    );
    // The tag query over-fetches (the account named "group"); the rule narrows.
    let mentioning = f.store.accounts_mentioning("group").await.unwrap();
    assert!(mentioning.iter().any(|r| r.id == acc.id));
    let tagged: Vec<_> = mentioning
        .iter()
        .filter(|r| rule.rule.matches(r, "holding"))
        .map(|r| r.id)
        .collect();
    assert_eq!(tagged, vec![acc.id]);
    assert!(!tagged.contains(&other.id));
    let children = f
        .store
        .records_of_accounts(&[acc.id.to_string()])
        .await
        .unwrap();
    assert_eq!(
        children.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![contact.id]
    );
    let cases = f.store.cases_assigned_to("fixit").await.unwrap();
    assert_eq!(
        cases.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![case.id]
    );
    assert!(
        f.store
            .cases_assigned_to("repairco")
            .await
            .unwrap()
            .is_empty()
    );

    f.store
        .share(
            ShareOp::Revoke {
                record_id: acc.id,
                org: "globex".into(),
            },
            share_hlc(),
            draft("revoke", None),
        )
        .await
        .unwrap();
    assert!(
        f.store
            .list_shares(Some("globex"), None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        f.store
            .share(
                ShareOp::Revoke {
                    record_id: acc.id,
                    org: "globex".into()
                },
                share_hlc(),
                draft("revoke", None)
            )
            .await,
        Err(StoreError::Domain(DomainError::Absent(_)))
    ));
    f.store
        .share(
            ShareOp::RemoveRule(rule.id),
            share_hlc(),
            draft("rule-remove", None),
        )
        .await
        .unwrap();
    assert!(f.store.list_share_rules(None).await.unwrap().is_empty());
    assert!(rules_of(f, "holding").await.is_empty());
    // Every share change was audited, the failed ones as failed.
    let log = f
        .store
        .list_audit(&AuditQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let decisions: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.draft.action.as_str(), e.draft.decision.as_str()))
        .collect();
    assert_eq!(
        decisions,
        vec![
            ("share", "allow"),
            ("share", "failed"),
            ("share", "failed"),
            ("rule-add", "allow"),
            ("revoke", "allow"),
            ("revoke", "failed"),
            ("rule-remove", "allow"),
        ]
    );
    assert_eq!(f.store.verify_audit().await.unwrap().broken, None);
}

pub(super) async fn partner_registry(f: &Fixture) {
    let p = verbund_store::Partner {
        org: "globex".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\n...\n".into(),
        fingerprint: "ab".repeat(32),
        endpoint: "https://globex.example:7443".into(),
        status: verbund_store::PartnerStatus::Active,
        added_at_ms: 5,
        last_contact_ms: None,
        crl_pem: None,
    };
    f.store.add_partner(&p).await.unwrap();
    f.store
        .set_partner_crl("globex", Some("crl"))
        .await
        .unwrap();
    assert!(matches!(
        f.store.set_partner_crl("nobody", None).await,
        Err(StoreError::NotFound(_))
    ));
    f.store.set_partner_crl("globex", None).await.unwrap();
    let rolled = verbund_store::Partner {
        ca_pem: "two CAs".into(),
        fingerprint: "a,b".into(),
        ..p.clone()
    };
    f.store.set_partner_anchor(&rolled).await.unwrap();
    assert_eq!(f.store.list_partners().await.unwrap()[0].fingerprint, "a,b");
    f.store.set_partner_anchor(&p).await.unwrap();
    let ghost = verbund_store::Partner {
        org: "nobody".into(),
        ..p.clone()
    };
    assert!(matches!(
        f.store.set_partner_anchor(&ghost).await,
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        f.store.add_partner(&p).await,
        Err(StoreError::AlreadyExists(_))
    ));
    f.store.touch_partner("globex", 9).await.unwrap();
    let listed = f.store.list_partners().await.unwrap();
    assert_eq!(
        listed,
        vec![verbund_store::Partner {
            last_contact_ms: Some(9),
            ..p
        }]
    );
    f.store.remove_partner("globex").await.unwrap();
    assert!(matches!(
        f.store.remove_partner("globex").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(f.store.list_partners().await.unwrap().is_empty());
}

/// The share rules of `org` as the store lists them.
async fn rules_of(f: &Fixture, org: &str) -> Vec<ShareRule> {
    f.store.list_share_rules(Some(org)).await.unwrap()
}
