//! The hard cases of a company group, one by one, with what explain says about them.

use verbund_consolidation::explain::Decision;
use verbund_consolidation::{
    AccountInput, AccountMatcher, Conflict, Consolidation, ContactInput, Engine, EngineOptions,
    StewardDecision,
};

fn account(sub: &str, name: &str, vat: Option<&str>) -> AccountInput {
    AccountInput {
        subsidiary: sub.into(),
        name: name.into(),
        website: Some("https://www.nordwind.de".into()),
        email: None,
        vat_id: vat.map(Into::into),
        phone: Some("030 1234567".into()),
        city: Some("Berlin".into()),
        country: Some("DE".into()),
    }
}

// Valid German VAT IDs (check digit computed by the DE scheme).
const VAT_KG: &str = "DE136695976";
const VAT_GMBH: &str = "DE123456788";

fn engine(records: &[(&str, AccountInput)]) -> Engine<AccountMatcher> {
    let mut e = Engine::new(AccountMatcher, EngineOptions::default());
    for (k, a) in records {
        e.upsert(k, a);
    }
    e
}

#[test]
fn the_same_company_spelled_three_ways_is_one_customer() {
    let e = engine(&[
        (
            "de-1",
            account("de", "Müller Nordwind GmbH", Some("DE 136 695 976")),
        ),
        ("at-1", account("at", "MUELLER NORDWIND G.m.b.H.", None)),
        (
            "pl-1",
            account(
                "pl",
                "Muller Nordwind Gesellschaft mit beschränkter Haftung",
                Some("de136695976"),
            ),
        ),
    ]);
    assert_eq!(e.cluster_members("de-1"), vec!["at-1", "de-1", "pl-1"]);
    let x = e.explain("de-1", "pl-1").unwrap();
    assert_eq!(x.decision, Decision::Match);
    assert!(
        x.evidence
            .iter()
            .any(|v| v.attribute == "vat_id" && v.points > 0.0)
    );
}

#[test]
fn a_kg_next_to_its_own_gmbh_stays_apart_by_vat_id() {
    let e = engine(&[
        (
            "kg",
            account("de", "Nordwind Logistik GmbH & Co. KG", Some(VAT_KG)),
        ),
        (
            "gmbh",
            account("at", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
        ),
    ]);
    assert_ne!(e.cluster_of("kg"), e.cluster_of("gmbh"));
    let x = e.explain("kg", "gmbh").unwrap();
    // Everything else agrees: the score alone would join them.
    assert!(x.score >= x.threshold, "{x:?}");
    assert_eq!(x.conflict, Some(Conflict::DifferentVatIds));
    assert_eq!(x.decision, Decision::KeptApart(Conflict::DifferentVatIds));
    assert!(!x.same_cluster);
}

#[test]
fn different_legal_forms_need_an_equal_vat_id() {
    let e = engine(&[
        ("kg", account("de", "Nordwind Logistik GmbH & Co. KG", None)),
        ("gmbh", account("at", "Nordwind Logistik GmbH", None)),
        // The same company after a change of legal form: the VAT ID says so.
        (
            "old",
            account("de", "Nordwind Software GmbH", Some(VAT_GMBH)),
        ),
        ("new", account("at", "Nordwind Software AG", Some(VAT_GMBH))),
    ]);
    assert_eq!(
        e.explain("kg", "gmbh").unwrap().conflict,
        Some(Conflict::DifferentLegalForms)
    );
    assert_ne!(e.cluster_of("kg"), e.cluster_of("gmbh"));
    assert_eq!(e.cluster_of("old"), e.cluster_of("new"));
}

#[test]
fn group_companies_sharing_brand_domain_and_phone_are_not_one_customer() {
    let e = engine(&[
        ("log", account("de", "Nordwind Logistik GmbH", None)),
        ("soft", account("at", "Nordwind Software GmbH", None)),
    ]);
    let x = e.explain("log", "soft").unwrap();
    assert!(x.score < x.threshold, "{x:?}");
    assert_ne!(e.cluster_of("log"), e.cluster_of("soft"));
}

#[test]
fn a_weak_link_does_not_chain_two_companies() {
    // "bridge" has no VAT ID and matches both; the two others have different VAT IDs.
    let mut e = engine(&[
        ("a", account("de", "Nordwind Logistik GmbH", Some(VAT_KG))),
        ("b", account("at", "Nordwind Logistik GmbH", Some(VAT_GMBH))),
    ]);
    e.upsert("bridge", &account("pl", "Nordwind Logistik G.m.b.H.", None));
    assert_ne!(e.cluster_of("a"), e.cluster_of("b"));
    assert!(
        e.cluster_of("bridge") == e.cluster_of("a") || e.cluster_of("bridge") == e.cluster_of("b")
    );
}

#[test]
fn steward_decisions_win_and_persist_as_data() {
    let mut e = engine(&[
        (
            "kg",
            account("de", "Nordwind Logistik GmbH & Co. KG", Some(VAT_KG)),
        ),
        (
            "gmbh",
            account("at", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
        ),
        (
            "copy",
            account("pl", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
        ),
    ]);
    assert_eq!(e.cluster_of("gmbh"), e.cluster_of("copy"));
    // A link joins what a constraint keeps apart: the steward knows better.
    let changes = e.decide(StewardDecision::Link("kg".into(), "gmbh".into()));
    assert!(!changes.is_empty());
    assert_eq!(e.cluster_of("kg"), e.cluster_of("gmbh"));
    assert_eq!(
        e.explain("kg", "gmbh").unwrap().decision,
        Decision::LinkedBySteward
    );
    // The link does not drag in what conflicts with the linked record: "copy" shares the
    // GmbH's VAT ID but not the KG's, so it stays out now.
    assert_eq!(e.cluster_members("kg"), vec!["gmbh", "kg"]);
    assert_eq!(
        e.explain("copy", "kg").unwrap().decision,
        Decision::KeptApart(Conflict::DifferentVatIds)
    );
    // Taking "kg" out of its cluster unlinks it from every member (replacing the link), and
    // "copy" rejoins the GmbH.
    e.unlink_from_cluster("kg");
    assert_eq!(e.cluster_members("kg"), vec!["kg"]);
    assert_eq!(e.cluster_members("gmbh"), vec!["copy", "gmbh"]);
    assert_eq!(
        e.explain("gmbh", "kg").unwrap().decision,
        Decision::UnlinkedBySteward
    );
    // The decisions are data: they outlive a record's removal, and a rebuild from records and
    // decisions gives the same clusters.
    let decisions = e.decisions();
    assert_eq!(
        decisions,
        vec![StewardDecision::Unlink("gmbh".into(), "kg".into())]
    );
    e.remove("gmbh");
    e.upsert(
        "gmbh",
        &account("at", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
    );
    assert_eq!(
        e.explain("gmbh", "kg").unwrap().decision,
        Decision::UnlinkedBySteward
    );
    let rebuilt = Engine::build(
        AccountMatcher,
        EngineOptions::default(),
        [
            (
                "kg",
                account("de", "Nordwind Logistik GmbH & Co. KG", Some(VAT_KG)),
            ),
            (
                "gmbh",
                account("at", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
            ),
            (
                "copy",
                account("pl", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
            ),
        ],
        &decisions,
    );
    assert_eq!(rebuilt.partition(), e.partition());
    // Forgetting the decision lets the matcher decide again (and its constraint holds).
    e.forget_decision("gmbh", "kg");
    assert_eq!(
        e.explain("gmbh", "kg").unwrap().decision,
        Decision::KeptApart(Conflict::DifferentVatIds)
    );
    assert!(e.decisions().is_empty());
}

fn contact(
    sub: &str,
    first: &str,
    last: &str,
    email: Option<&str>,
    employer: &str,
) -> ContactInput {
    ContactInput {
        subsidiary: sub.into(),
        first_name: first.into(),
        last_name: last.into(),
        email: email.map(Into::into),
        phone: None,
        country: Some("DE".into()),
        employer: Some(employer.into()),
    }
}

#[test]
fn contacts_one_person_across_subsidiaries_but_never_two_colleagues() {
    let mut c = Consolidation::new(EngineOptions::default());
    c.upsert_account(
        "de-1",
        &account("de", "Nordwind Logistik GmbH", Some(VAT_GMBH)),
    );
    c.upsert_account("at-1", &account("at", "Nordwind Logistik G.m.b.H.", None));
    c.upsert_contact(
        "c1",
        &contact(
            "de",
            "Johannes",
            "Müller",
            Some("j.mueller@nordwind.de"),
            "de-1",
        ),
    );
    c.upsert_contact("c2", &contact("at", "Hans", "Mueller", None, "at-1"));
    // A colleague with the same family name at the same company.
    c.upsert_contact("c3", &contact("at", "Anna", "Müller", None, "at-1"));
    assert_eq!(c.contacts().cluster_members("c1"), vec!["c1", "c2"]);
    let x = c.contacts().explain("c2", "c3").unwrap();
    assert_eq!(
        x.conflict,
        Some(Conflict::ColleaguesWithDifferentFirstNames)
    );
    // Erased: gone from every cluster.
    c.remove_contact("c2");
    assert_eq!(c.contacts().cluster_members("c1"), vec!["c1"]);
    assert!(c.contacts().cluster_members("c2").is_empty());
}

#[test]
fn contacts_follow_a_change_of_their_employers_cluster() {
    let mut c = Consolidation::new(EngineOptions::default());
    // Two records of one company that the matcher cannot join (no shared evidence).
    let bare = |sub: &str, name: &str| AccountInput {
        subsidiary: sub.into(),
        name: name.into(),
        city: Some(if sub == "de" { "Berlin" } else { "Wien" }.into()),
        ..AccountInput::default()
    };
    c.upsert_account("de-1", &bare("de", "Nordwind Logistik GmbH"));
    c.upsert_account("at-1", &bare("at", "Nordwind Logistik GmbH"));
    c.upsert_contact("c1", &contact("de", "Anna", "Berg", None, "de-1"));
    c.upsert_contact("c2", &contact("at", "Anna", "Berg", None, "at-1"));
    assert_ne!(c.contacts().cluster_of("c1"), c.contacts().cluster_of("c2"));
    // A steward links the accounts: the contacts now share an employer and match.
    let changes = c.decide_accounts(StewardDecision::Link("de-1".into(), "at-1".into()));
    assert!(!changes.contacts.is_empty());
    assert_eq!(c.contacts().cluster_of("c1"), c.contacts().cluster_of("c2"));
    // And the same as a batch build with that decision.
    let batch = Consolidation::build(
        EngineOptions::default(),
        vec![
            ("de-1".to_string(), bare("de", "Nordwind Logistik GmbH")),
            ("at-1".to_string(), bare("at", "Nordwind Logistik GmbH")),
        ],
        vec![
            (
                "c1".to_string(),
                contact("de", "Anna", "Berg", None, "de-1"),
            ),
            (
                "c2".to_string(),
                contact("at", "Anna", "Berg", None, "at-1"),
            ),
        ],
        &[StewardDecision::Link("at-1".into(), "de-1".into())],
        &[],
    );
    assert_eq!(batch.contacts().partition(), c.contacts().partition());
}
