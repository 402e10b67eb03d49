//! Records in the store: create and get, references, updates and the change log, deletes and
//! tombstones, lists and keyset pages, search, sequences under concurrent writers, activity
//! roll-up to the account, and a batch whose failed writes fail alone.

use std::collections::HashSet;

use uuid::Uuid;
use verbund_core::write::{plan_create, plan_update};
use verbund_core::{DomainError, HlcClock, RecordKind, Value};
use verbund_store::{FilterColumns, ListQuery, SearchQuery, StoreError};

use super::{Fixture, fm, t};

/// Many concurrent writes land in shared group commits; the ones that break a rule fail
/// alone, the others commit, and sequence numbers stay contiguous.
pub(super) async fn failed_writes_in_a_batch_fail_alone(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = f.store.clone();
        let target = if i % 2 == 0 {
            acc.id.to_string()
        } else {
            Uuid::now_v7().to_string()
        };
        let hlc = f.hlc();
        tasks.push(tokio::spawn(async move {
            let plan = plan_create(
                RecordKind::Contact,
                Uuid::now_v7(),
                "acme",
                fm(&[
                    ("last_name", t(&format!("P{i}"))),
                    ("account_id", t(&target)),
                ]),
                hlc,
                1,
            )
            .unwrap();
            (i, store.create(plan).await)
        }));
    }
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match result {
            Ok(_) => assert_eq!(i % 2, 0, "write {i} with a dangling reference was stored"),
            Err(StoreError::Domain(DomainError::Invalid { field, .. })) => {
                assert_eq!(i % 2, 1, "valid write {i} failed");
                assert_eq!(field, "account_id");
            }
            Err(e) => panic!("write {i}: unexpected error {e}"),
        }
    }
    assert_eq!(f.store.count(RecordKind::Contact).await.unwrap(), 30);
    let log = f.log_after(0, &[], 1_000).await;
    assert_eq!(
        log.iter().map(|c| c.seq).collect::<Vec<_>>(),
        (1..=31).collect::<Vec<i64>>()
    );
    assert_eq!(f.store.last_seq().await.unwrap(), 31);
}

/// A batch the database refuses stores nothing and takes no sequence number: the next write
/// follows the last committed change without a gap (the SQLite writer keeps the counter in
/// memory and must not keep the failed batch's).
pub(super) async fn a_refused_batch_leaves_no_gap_in_the_sequence(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    // The database itself refuses every change of a contact (not a rule of ours).
    if f.pg_schema.is_some() {
        f.raw_sql(
            "CREATE FUNCTION refuse_change() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse BEFORE INSERT ON changes FOR EACH ROW WHEN (NEW.kind = 'contact') EXECUTE FUNCTION refuse_change();",
        )
        .await;
    } else {
        f.raw_sql(
            "CREATE TRIGGER refuse BEFORE INSERT ON changes WHEN NEW.kind = 'contact' \
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .await;
    }
    f.store
        .audit(vec![super::draft("read", None)])
        .await
        .unwrap();
    // With an audit entry: the chain's head must not move either.
    let hlc = f.hlc();
    let refused = f
        .store
        .create_audited(
            move || {
                plan_create(
                    RecordKind::Contact,
                    Uuid::now_v7(),
                    "acme",
                    fm(&[("last_name", t("Weber"))]),
                    hlc,
                    1,
                )
            },
            vec![super::draft("create", None)],
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::CommitFailed(_))),
        "{refused:?}"
    );
    assert_eq!(f.store.last_seq().await.unwrap(), acc.seq);
    f.store
        .audit(vec![super::draft("read", None)])
        .await
        .unwrap();
    let report = f.store.verify_audit().await.unwrap();
    assert_eq!((report.checked, report.broken), (2, None));
    f.raw_sql(if f.pg_schema.is_some() {
        "DROP TRIGGER refuse ON changes"
    } else {
        "DROP TRIGGER refuse"
    })
    .await;
    let next = f
        .create(RecordKind::Contact, &[("last_name", t("Weber"))])
        .await
        .unwrap();
    assert_eq!(next.seq, acc.seq + 1);
    let log = f.log_after(0, &[], 100).await;
    assert_eq!(
        log.iter().map(|c| c.seq).collect::<Vec<_>>(),
        vec![acc.seq, next.seq]
    );
}

pub(super) async fn create_and_get_round_trip(f: &Fixture) {
    let acc = f
        .create(
            RecordKind::Account,
            &[
                ("name", t("Müller Maschinenbau GmbH")),
                ("domain", t("Mueller.Example")),
                ("tags", Value::List(vec!["key".into(), "group".into()])),
                (
                    "annual_revenue",
                    Value::Money(verbund_core::Money {
                        currency: "EUR".into(),
                        minor_units: 123_456_789,
                    }),
                ),
            ],
        )
        .await
        .unwrap();
    let got = f.store.get(acc.id).await.unwrap().unwrap();
    assert_eq!(got, acc);
    assert_eq!(got.text("domain"), Some("mueller.example"));
    assert_eq!(got.seq, 1);
    assert_eq!(got.versions.len(), got.fields.len());
    assert!(f.store.get(Uuid::now_v7()).await.unwrap().is_none());
    // The read trait is the same read.
    let mut reader = f.store.clone();
    use verbund_store::RecordReads;
    assert_eq!(reader.record(acc.id).await.unwrap(), Some(acc.clone()));
    assert_eq!(reader.records(&[acc.id]).await.unwrap(), vec![acc.clone()]);
    let many = f.store.get_many(&[acc.id, Uuid::now_v7()]).await.unwrap();
    assert_eq!(many, vec![acc]);
}

pub(super) async fn references_must_exist_and_failed_writes_change_nothing(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    let before = f.store.last_seq().await.unwrap();
    let missing = Uuid::now_v7().to_string();
    let err = f
        .create(
            RecordKind::Contact,
            &[("last_name", t("Weber")), ("account_id", t(&missing))],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Domain(DomainError::Invalid { ref field, .. }) if field == "account_id"),
        "{err}"
    );
    // A reference of the wrong kind is refused too.
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
    let err = f
        .create(
            RecordKind::Opportunity,
            &[
                ("name", t("Deal")),
                ("stage", t("proposal")),
                ("account_id", t(&contact.id.to_string())),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is a contact, not a account"),
        "{err}"
    );
    assert_eq!(f.store.last_seq().await.unwrap(), before + 1);
    assert_eq!(f.store.count(RecordKind::Contact).await.unwrap(), 1);
    assert_eq!(f.store.count(RecordKind::Opportunity).await.unwrap(), 0);
    // A failing update leaves the record as it was.
    let err = f
        .update(
            RecordKind::Contact,
            contact.id,
            &["account_id"],
            fm(&[("account_id", t(&missing))]),
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Domain(DomainError::Invalid { .. })
    ));
    assert_eq!(f.store.get(contact.id).await.unwrap().unwrap(), contact);
}

pub(super) async fn update_writes_change_log(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    let opp = f
        .create(
            RecordKind::Opportunity,
            &[
                ("name", t("Deal")),
                ("stage", t("proposal")),
                ("account_id", t(&acc.id.to_string())),
            ],
        )
        .await
        .unwrap();
    let updated = f
        .update(
            RecordKind::Opportunity,
            opp.id,
            &["stage"],
            fm(&[("stage", t("negotiation"))]),
        )
        .await
        .unwrap();
    assert_eq!(updated.text("stage"), Some("negotiation"));
    assert!(updated.versions["stage"] > opp.versions["stage"]);
    assert_eq!(updated.versions["name"], opp.versions["name"]);
    // A no-op update consumes no sequence number.
    let same = f
        .update(
            RecordKind::Opportunity,
            opp.id,
            &["stage"],
            fm(&[("stage", t("negotiation"))]),
        )
        .await
        .unwrap();
    assert_eq!(same.seq, updated.seq);
    // Wrong kind is not found.
    let err = f
        .store
        .update(RecordKind::ServiceCase, opp.id, |_| Ok(None))
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Domain(DomainError::NotFound { .. })
    ));
    let log = f.log_after(0, &[], 100).await;
    assert_eq!(log.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(log[2].fields.keys().collect::<Vec<_>>(), vec!["stage"]);
    // The log names what a change wrote; the values live in the record only.
    assert_eq!(log[2].fields["stage"], None);
    let only_opps = f.log_after(0, &[RecordKind::Opportunity], 100).await;
    assert_eq!(only_opps.len(), 2);
    assert_eq!(f.store.last_hlc().await.unwrap(), Some(log[2].hlc.clone()));
}

pub(super) async fn delete_leaves_tombstone_and_protects_dependents(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
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
    let err = f.delete(RecordKind::Account, acc.id).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Domain(DomainError::FailedPrecondition { .. })
        ),
        "{err}"
    );
    let tomb = f.delete(RecordKind::Contact, contact.id).await.unwrap();
    assert!(tomb.is_deleted());
    let acc_tomb = f.delete(RecordKind::Account, acc.id).await.unwrap();
    assert!(acc_tomb.is_deleted());
    assert_eq!(
        acc_tomb.fields, acc.fields,
        "a delete keeps values until erasure"
    );
    let err = f.delete(RecordKind::Account, acc.id).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::Domain(DomainError::NotFound { .. })
    ));
    let q = ListQuery {
        kind: Some(RecordKind::Account),
        limit: 10,
        ..Default::default()
    };
    assert!(f.store.list(&q).await.unwrap().is_empty());
    let q = ListQuery {
        show_deleted: true,
        ..q
    };
    assert_eq!(f.store.list(&q).await.unwrap().len(), 1);
    let log = f.log_after(0, &[], 100).await;
    assert_eq!(log.last().unwrap().op, verbund_core::ChangeOp::Delete);
}

pub(super) async fn list_filters_and_keyset_pages(f: &Fixture) {
    let a1 = f
        .create(RecordKind::Account, &[("name", t("A1"))])
        .await
        .unwrap();
    let a2 = f
        .create(RecordKind::Account, &[("name", t("A2"))])
        .await
        .unwrap();
    let mut expected = Vec::new();
    for i in 0..23 {
        let (acc, stage) = if i % 3 == 0 {
            (&a1, "proposal")
        } else {
            (&a2, "qualification")
        };
        let o = f
            .create(
                RecordKind::Opportunity,
                &[
                    ("name", t(&format!("Deal {i}"))),
                    ("stage", t(stage)),
                    ("account_id", t(&acc.id.to_string())),
                ],
            )
            .await
            .unwrap();
        expected.push(o.id);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let q = ListQuery {
            kind: Some(RecordKind::Opportunity),
            after_id: after.clone(),
            limit: 5,
            ..Default::default()
        };
        let page = f.store.list(&q).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().id.to_string());
        seen.extend(page.into_iter().map(|r| r.id));
    }
    assert_eq!(seen, expected, "every record exactly once, in id order");
    let q = ListQuery {
        kind: Some(RecordKind::Opportunity),
        filter: FilterColumns {
            account_id: Some(a1.id.to_string()),
            ..Default::default()
        },
        limit: 100,
        ..Default::default()
    };
    assert_eq!(f.store.list(&q).await.unwrap().len(), 8);
    let q = ListQuery {
        kind: Some(RecordKind::Opportunity),
        filter: FilterColumns {
            stage: Some("qualification".into()),
            ..Default::default()
        },
        limit: 100,
        ..Default::default()
    };
    assert_eq!(f.store.list(&q).await.unwrap().len(), 15);
    let q = ListQuery {
        kind: Some(RecordKind::Opportunity),
        updated_since_ms: Some(i64::MAX),
        limit: 100,
        ..Default::default()
    };
    assert!(f.store.list(&q).await.unwrap().is_empty());
}

pub(super) async fn search_is_case_insensitive(f: &Fixture) {
    let acc = f
        .create(
            RecordKind::Account,
            &[
                ("name", t("Müller Maschinenbau")),
                ("domain", t("mueller.example")),
            ],
        )
        .await
        .unwrap();
    let c = f
        .create(
            RecordKind::Contact,
            &[
                ("last_name", t("Weber")),
                ("email", t("Anna.Weber@Mueller.example")),
                ("phone", t("+49 (30) 1234-567")),
                ("account_id", t(&acc.id.to_string())),
            ],
        )
        .await
        .unwrap();
    f.create(RecordKind::Account, &[("name", t("100% Wild_card"))])
        .await
        .unwrap();
    let search = |needles: Vec<&str>, kinds: Vec<RecordKind>| SearchQuery {
        needles: needles.into_iter().map(String::from).collect(),
        kinds,
        after_id: None,
        limit: 50,
    };
    let ids = |v: Vec<verbund_core::Record>| v.into_iter().map(|r| r.id).collect::<HashSet<_>>();
    assert_eq!(
        ids(f
            .store
            .search(&search(vec!["müller"], vec![]))
            .await
            .unwrap()),
        HashSet::from([acc.id])
    );
    assert_eq!(
        ids(f
            .store
            .search(&search(vec!["anna.weber"], vec![]))
            .await
            .unwrap()),
        HashSet::from([c.id])
    );
    assert_eq!(
        ids(f
            .store
            .search(&search(vec!["mueller.example"], vec![]))
            .await
            .unwrap()),
        HashSet::from([acc.id, c.id])
    );
    assert_eq!(
        ids(f
            .store
            .search(&search(vec!["mueller.example"], vec![RecordKind::Contact]))
            .await
            .unwrap()),
        HashSet::from([c.id])
    );
    assert_eq!(
        ids(f
            .store
            .search(&search(vec!["1234567"], vec![]))
            .await
            .unwrap()),
        HashSet::from([c.id])
    );
    // LIKE wildcards in the query match literally.
    assert_eq!(
        f.store
            .search(&search(vec!["0% w"], vec![]))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        f.store
            .search(&search(vec!["wil__card"], vec![]))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        f.store
            .search(&search(vec!["m%ller"], vec![]))
            .await
            .unwrap()
            .is_empty()
    );
}

pub(super) async fn concurrent_writers_get_gap_free_sequences(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = f.store.clone();
        let acc_id = acc.id.to_string();
        let node = format!("acme/w{w}");
        tasks.push(tokio::spawn(async move {
            let mut clock = HlcClock::new(node, 60_000);
            for i in 0..20 {
                let plan = plan_create(
                    RecordKind::Contact,
                    Uuid::now_v7(),
                    "acme",
                    fm(&[
                        ("last_name", t(&format!("W{w}-{i}"))),
                        ("account_id", t(&acc_id)),
                    ]),
                    clock.tick(i),
                    1,
                )
                .unwrap();
                store.create(plan).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = f.log_after(0, &[], 1_000).await;
    assert_eq!(log.len(), 121);
    assert!(
        log.iter().enumerate().all(|(i, c)| c.seq == i as i64 + 1),
        "sequence numbers are gap-free and ordered"
    );
    assert_eq!(f.store.count(RecordKind::Contact).await.unwrap(), 120);
}

/// Updates of different fields of one record, at once: the writer commits them in groups,
/// and each op must build on the record as the ops before it in the same transaction left
/// it (not on the committed copy the record cache holds), or a field would be lost.
pub(super) async fn concurrent_updates_of_one_record_lose_no_field(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    // Read once: from here the record cache (SQLite) holds the committed copy.
    assert!(f.store.get(acc.id).await.unwrap().is_some());
    let fields = [
        "industry",
        "street",
        "city",
        "postal_code",
        "description",
        "vat_id",
    ];
    let mut tasks = Vec::new();
    for field in fields {
        let store = f.store.clone();
        let id = acc.id;
        tasks.push(tokio::spawn(async move {
            let mut clock = HlcClock::new(format!("acme/{field}"), 60_000);
            for i in 0..10 {
                let hlc = clock.tick(1_000 + i);
                let patch = fm(&[(field, t(&format!("{field}-{i}")))]);
                store
                    .update(RecordKind::Account, id, move |cur| {
                        plan_update(cur, &[field.to_string()], patch, hlc, 2)
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rec = f.store.get(acc.id).await.unwrap().unwrap();
    for field in fields {
        assert_eq!(
            rec.fields.get(field),
            Some(&t(&format!("{field}-9"))),
            "{field} kept its last value"
        );
    }
    assert_eq!(rec.fields.get("name"), Some(&t("Acme")));
}

pub(super) async fn activity_rolls_up_to_account(f: &Fixture) {
    let acc = f
        .create(RecordKind::Account, &[("name", t("Acme"))])
        .await
        .unwrap();
    let other = f
        .create(RecordKind::Account, &[("name", t("Other"))])
        .await
        .unwrap();
    let case = f
        .create(
            RecordKind::ServiceCase,
            &[
                ("subject", t("Broken pump")),
                ("account_id", t(&acc.id.to_string())),
            ],
        )
        .await
        .unwrap();
    let on_case = f
        .create(
            RecordKind::Activity,
            &[
                ("related_id", t(&case.id.to_string())),
                ("channel", t("call")),
            ],
        )
        .await
        .unwrap();
    let on_acc = f
        .create(
            RecordKind::Activity,
            &[
                ("related_id", t(&acc.id.to_string())),
                ("channel", t("note")),
            ],
        )
        .await
        .unwrap();
    f.create(
        RecordKind::Activity,
        &[
            ("related_id", t(&other.id.to_string())),
            ("channel", t("email")),
        ],
    )
    .await
    .unwrap();
    let q = ListQuery {
        kind: Some(RecordKind::Activity),
        filter: FilterColumns {
            account_id: Some(acc.id.to_string()),
            ..Default::default()
        },
        limit: 10,
        ..Default::default()
    };
    let got: Vec<_> = f
        .store
        .list(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, vec![on_case.id, on_acc.id]);
    let q = ListQuery {
        kind: Some(RecordKind::Activity),
        filter: FilterColumns {
            channel: Some("call".into()),
            ..Default::default()
        },
        limit: 10,
        ..Default::default()
    };
    assert_eq!(f.store.list(&q).await.unwrap().len(), 1);
    // Updating an activity's subject keeps its account roll-up.
    f.update(
        RecordKind::Activity,
        on_case.id,
        &["subject"],
        fm(&[("subject", t("Called back"))]),
    )
    .await
    .unwrap();
    let q = ListQuery {
        kind: Some(RecordKind::Activity),
        filter: FilterColumns {
            account_id: Some(acc.id.to_string()),
            ..Default::default()
        },
        limit: 10,
        ..Default::default()
    };
    assert_eq!(f.store.list(&q).await.unwrap().len(), 2);
    // When the record an activity belongs to moves to another account, the activity follows.
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
    let on_contact = f
        .create(
            RecordKind::Activity,
            &[
                ("related_id", t(&contact.id.to_string())),
                ("channel", t("email")),
            ],
        )
        .await
        .unwrap();
    f.update(
        RecordKind::Contact,
        contact.id,
        &["account_id"],
        fm(&[("account_id", t(&other.id.to_string()))]),
    )
    .await
    .unwrap();
    let q_other = ListQuery {
        kind: Some(RecordKind::Activity),
        filter: FilterColumns {
            account_id: Some(other.id.to_string()),
            ..Default::default()
        },
        limit: 10,
        ..Default::default()
    };
    assert!(
        f.store
            .list(&q_other)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == on_contact.id)
    );
    assert!(
        !f.store
            .list(&q)
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == on_contact.id)
    );
    f.update(
        RecordKind::Contact,
        contact.id,
        &["account_id"],
        fm(&[("account_id", t(&acc.id.to_string()))]),
    )
    .await
    .unwrap();
    // Moving it to another account's record moves the roll-up.
    f.update(
        RecordKind::Activity,
        on_case.id,
        &["related_id"],
        fm(&[("related_id", t(&other.id.to_string()))]),
    )
    .await
    .unwrap();
    // Left on the account: the activity on the account itself and the one on the contact.
    let left: Vec<_> = f
        .store
        .list(&q)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, vec![on_acc.id, on_contact.id]);
}

/// A call that meets the closed store (a node shutting down) is told so, a read as well as a
/// write, and nothing is stored.
pub(super) async fn a_closed_store_says_so(f: &Fixture) {
    let a = f
        .create(RecordKind::Account, &[("name", t("Vorher"))])
        .await
        .unwrap();
    // The writer waits with its next transaction begun (SQLite): closing must not wait for it.
    tokio::time::timeout(std::time::Duration::from_secs(10), f.store.close())
        .await
        .expect("the store closes while its writer waits");
    let write = f
        .create(RecordKind::Account, &[("name", t("Danach"))])
        .await;
    assert!(matches!(write, Err(StoreError::Closed)), "{write:?}");
    let read = f.store.changes_after(a.seq - 1, &[], 10).await;
    assert!(matches!(read, Err(StoreError::Closed)), "{read:?}");
}

/// After an erasure the write-ahead log can be emptied at once: the transaction the writer
/// begins while it waits (SQLite) holds no lock that would keep the log, and the next write
/// after the log was truncated is stored.
pub(super) async fn the_log_is_scrubbed_after_an_erasure_while_the_writer_waits(f: &Fixture) {
    let a = f
        .create(RecordKind::Account, &[("name", t("Kunde"))])
        .await
        .unwrap();
    let c = f
        .create(
            RecordKind::Contact,
            &[
                ("account_id", t(&a.id.to_string())),
                ("last_name", t("Zu Löschen")),
            ],
        )
        .await
        .unwrap();
    let hlc = f.hlc();
    f.store
        .erase(
            RecordKind::Contact,
            c.id,
            "verbund://acme/user/admin",
            move |cur| verbund_core::write::plan_erase(cur, hlc, 30),
        )
        .await
        .unwrap();
    assert!(
        f.store.scrub_erased().await.unwrap(),
        "the log was kept busy after the erasure"
    );
    let after = f
        .create(RecordKind::Account, &[("name", t("Danach"))])
        .await
        .unwrap();
    let read = f.store.get(after.id).await.unwrap().unwrap();
    assert_eq!(read.fields.get("name"), Some(&t("Danach")));
}
