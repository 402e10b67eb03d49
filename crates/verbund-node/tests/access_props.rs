//! Property test of the enforcement point, in process (no TLS): for random records, shares,
//! share rules and principals, List (paged) and Search return exactly the records that Get
//! allows, and each returned record shows exactly the fields Get shows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use uuid::Uuid;
use verbund_core::access::{RuleMatch, Share, ShareRule};
use verbund_core::audit::AuditDraft;
use verbund_core::{FieldMap, RecordKind, Value};
use verbund_node::api::ListFilter;
use verbund_node::convert::{RecordMessage, message_from_fields};
use verbund_node::identity::{Principal, PrincipalKind};
use verbund_node::pb;
use verbund_node::state::{NodeSettings, NodeState};
use verbund_store::{ShareOp, Store};

const MODEL: &str = include_str!("../../../policies/model.conf");
const POLICY: &str = include_str!("../../../policies/policy.csv");
const MARK: &str = "zqx";

#[derive(Clone, Debug)]
enum Spec {
    Account {
        tags: Vec<&'static str>,
    },
    Contact {
        account: usize,
    },
    Opportunity {
        account: usize,
    },
    Case {
        account: usize,
        assigned: Option<&'static str>,
    },
    Activity {
        related: usize,
    },
}

#[derive(Clone, Debug)]
struct Scenario {
    records: Vec<Spec>,
    shares: Vec<(usize, &'static str, &'static str)>,
    rules: Vec<(&'static str, &'static str, &'static str)>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let tags = prop::sample::subsequence(vec!["group", "key"], 0..=2);
    let accounts = prop::collection::vec(tags.prop_map(|tags| Spec::Account { tags }), 1..4);
    let others = prop::collection::vec(
        (
            0u8..4,
            0usize..64,
            prop::option::of(prop::sample::select(vec!["fixit", "repairco"])),
        ),
        0..10,
    );
    let shares = prop::collection::vec(
        (
            0usize..64,
            prop::sample::select(vec!["globex", "holding", "fixit"]),
            prop::sample::select(vec![
                "joint-deal",
                "partner-account",
                "group",
                "supplier-case",
                "reference",
            ]),
        ),
        0..6,
    );
    let rules = prop::sample::subsequence(
        vec![
            ("fixit", "case-assigned", "supplier-case"),
            ("repairco", "case-assigned", "supplier-case"),
            ("holding", "account-tag:group", "group"),
            ("globex", "account-tag:key", "partner-account"),
        ],
        0..=4,
    );
    (accounts, others, shares, rules).prop_map(|(accounts, others, shares, rules)| {
        let n_acc = accounts.len();
        let mut records = accounts;
        for (what, pick, assigned) in others {
            let account = pick % n_acc;
            let spec = match what {
                0 => Spec::Contact { account },
                1 => Spec::Opportunity { account },
                2 => Spec::Case { account, assigned },
                _ => {
                    let targets: Vec<usize> = (0..records.len())
                        .filter(|i| !matches!(records[*i], Spec::Activity { .. }))
                        .collect();
                    Spec::Activity {
                        related: targets[pick % targets.len()],
                    }
                }
            };
            records.push(spec);
        }
        let shares = shares
            .into_iter()
            .map(|(r, org, profile)| (r % records.len(), org, profile))
            .collect();
        Scenario {
            records,
            shares,
            rules,
        }
    })
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

async fn node(dir: &std::path::Path) -> Arc<NodeState> {
    let store = Store::open(dir.join("v.db").to_str().unwrap())
        .await
        .unwrap();
    let model = dir.join("model.conf");
    let policy = dir.join("policy.csv");
    std::fs::write(&model, MODEL).unwrap();
    std::fs::write(
        &policy,
        format!("{POLICY}\ng2, globex, partner\ng2, fixit, supplier\ng2, repairco, supplier\ng2, holding, holding\ng, verbund://acme/user/admin, admin\n"),
    )
    .unwrap();
    let ca = verbund_node::pki::new_ca("acme").unwrap();
    let trust = Arc::new(verbund_node::tls::FederationVerifier::new("acme", &ca.cert_pem).unwrap());
    let settings = NodeSettings {
        org: "acme".into(),
        node_name: "n1".into(),
        max_clock_skew_ms: 60_000,
        watch_max_age: Duration::from_secs(60),
        node_identity: (String::new(), String::new()),
        crl_path: dir.join("crl.pem"),
        policy: Arc::new(
            verbund_policy::LivePolicy::open(model, policy, "acme")
                .await
                .unwrap(),
        ),
    };
    NodeState::new(store, settings, trust).await.unwrap()
}

fn user(org: &str, name: &str) -> Principal {
    Principal {
        org: org.into(),
        kind: PrincipalKind::User,
        name: name.into(),
    }
}

async fn create<M: RecordMessage>(state: &NodeState, fields: FieldMap) -> String {
    let admin = user("acme", "admin");
    let m: M = state
        .create(&admin, Some(message_from_fields(&fields)))
        .await
        .unwrap();
    m.meta().unwrap().id.clone()
}

/// Get as `p`: the fields shown, or None when refused.
async fn get<M: RecordMessage>(state: &NodeState, p: &Principal, id: &str) -> Option<FieldMap> {
    state
        .get::<M>(p, id)
        .await
        .ok()
        .map(|m| m.to_fields().unwrap())
}

/// List as `p`, page by page (3 per page).
async fn list<M: RecordMessage>(state: &NodeState, p: &Principal) -> BTreeMap<String, FieldMap> {
    let mut out = BTreeMap::new();
    let mut token = String::new();
    loop {
        let (items, next) = state
            .list::<M>(
                p,
                Some(pb::ListOptions {
                    page_size: 3,
                    page_token: token.clone(),
                    ..Default::default()
                }),
                ListFilter::default(),
            )
            .await
            .unwrap();
        for m in items {
            let id = m.meta().unwrap().id.clone();
            assert!(
                out.insert(id, m.to_fields().unwrap()).is_none(),
                "listed twice"
            );
        }
        if next.is_empty() {
            return out;
        }
        token = next;
    }
}

async fn get_any(state: &NodeState, p: &Principal, kind: RecordKind, id: &str) -> Option<FieldMap> {
    match kind {
        RecordKind::Account => get::<pb::Account>(state, p, id).await,
        RecordKind::Contact => get::<pb::Contact>(state, p, id).await,
        RecordKind::Lead => get::<pb::Lead>(state, p, id).await,
        RecordKind::Opportunity => get::<pb::Opportunity>(state, p, id).await,
        RecordKind::ServiceCase => get::<pb::ServiceCase>(state, p, id).await,
        RecordKind::Activity => get::<pb::Activity>(state, p, id).await,
    }
}

async fn list_any(
    state: &NodeState,
    p: &Principal,
    kind: RecordKind,
) -> BTreeMap<String, FieldMap> {
    match kind {
        RecordKind::Account => list::<pb::Account>(state, p).await,
        RecordKind::Contact => list::<pb::Contact>(state, p).await,
        RecordKind::Lead => list::<pb::Lead>(state, p).await,
        RecordKind::Opportunity => list::<pb::Opportunity>(state, p).await,
        RecordKind::ServiceCase => list::<pb::ServiceCase>(state, p).await,
        RecordKind::Activity => list::<pb::Activity>(state, p).await,
    }
}

async fn check(sc: Scenario) {
    let dir = tempfile::tempdir().unwrap();
    let state = node(dir.path()).await;
    let mut ids: Vec<(RecordKind, String)> = Vec::new();
    let mut contacts_of: BTreeMap<usize, String> = BTreeMap::new();
    for (i, spec) in sc.records.iter().enumerate() {
        let acc = |a: &usize| ids[*a].1.clone();
        let (kind, id) = match spec {
            Spec::Account { tags } => {
                let mut f: FieldMap = [
                    ("name".to_string(), t(&format!("Firma {i} {MARK}"))),
                    ("vat_id".to_string(), t("DE1")),
                    ("city".to_string(), t("Berlin")),
                ]
                .into();
                f.insert(
                    "tags".into(),
                    Value::List(tags.iter().map(|s| s.to_string()).collect()),
                );
                (RecordKind::Account, create::<pb::Account>(&state, f).await)
            }
            Spec::Contact { account } => {
                let f = [
                    ("account_id".to_string(), t(&acc(account))),
                    ("last_name".to_string(), t(&format!("Weber {MARK}"))),
                    ("email".to_string(), t("w@example.com")),
                    ("phone".to_string(), t("+49 30 1")),
                ]
                .into();
                let id = create::<pb::Contact>(&state, f).await;
                contacts_of.insert(*account, id.clone());
                (RecordKind::Contact, id)
            }
            Spec::Opportunity { account } => {
                let f = [
                    ("account_id".to_string(), t(&acc(account))),
                    ("name".to_string(), t(&format!("Deal {MARK}"))),
                    ("stage".to_string(), t("proposal")),
                    ("next_step".to_string(), t("call")),
                    ("description".to_string(), t("intern")),
                ]
                .into();
                (
                    RecordKind::Opportunity,
                    create::<pb::Opportunity>(&state, f).await,
                )
            }
            Spec::Case { account, assigned } => {
                let mut f: FieldMap = [
                    ("account_id".to_string(), t(&acc(account))),
                    ("subject".to_string(), t(&format!("Pumpe {MARK}"))),
                    ("description".to_string(), t("heiß")),
                ]
                .into();
                if let Some(c) = contacts_of.get(account) {
                    f.insert("contact_id".into(), t(c));
                }
                if let Some(a) = assigned {
                    f.insert("assigned_org".into(), t(a));
                }
                (
                    RecordKind::ServiceCase,
                    create::<pb::ServiceCase>(&state, f).await,
                )
            }
            Spec::Activity { related } => {
                let f = [
                    ("related_id".to_string(), t(&ids[*related].1)),
                    ("subject".to_string(), t(&format!("Anruf {MARK}"))),
                    ("channel".to_string(), t("call")),
                    ("body".to_string(), t("Notiz")),
                ]
                .into();
                (
                    RecordKind::Activity,
                    create::<pb::Activity>(&state, f).await,
                )
            }
        };
        ids.push((kind, id));
    }
    let draft = AuditDraft {
        at_ms: 0,
        principal: "verbund://acme/user/admin".into(),
        org: "acme".into(),
        action: "share".into(),
        kind: None,
        record_id: None,
        fields: vec![],
        decision: "allow".into(),
        reason: String::new(),
    };
    for (r, org, profile) in &sc.shares {
        let (kind, id) = &ids[*r];
        let _ = state
            .store
            .share(
                ShareOp::Add(Share {
                    id: Uuid::now_v7(),
                    record_id: Uuid::parse_str(id).unwrap(),
                    kind: *kind,
                    org: org.to_string(),
                    profile: profile.to_string(),
                    created_at_ms: 0,
                    created_by: "x".into(),
                }),
                state.tick(),
                draft.clone(),
            )
            .await; // a second share of the same record with the same org is refused: fine
    }
    for (org, rule, profile) in &sc.rules {
        state
            .store
            .share(
                ShareOp::AddRule(ShareRule {
                    id: Uuid::now_v7(),
                    org: org.to_string(),
                    rule: RuleMatch::parse(rule).unwrap(),
                    profile: profile.to_string(),
                    created_at_ms: 0,
                    created_by: "x".into(),
                }),
                state.tick(),
                draft.clone(),
            )
            .await
            .unwrap();
    }
    for p in [
        user("acme", "admin"),
        user("acme", "rita"),
        user("globex", "bob"),
        user("fixit", "sue"),
        user("repairco", "rob"),
        user("holding", "gina"),
        user("umbrella", "ute"),
    ] {
        let mut allowed: BTreeMap<String, (RecordKind, FieldMap)> = BTreeMap::new();
        for (kind, id) in &ids {
            if let Some(f) = get_any(&state, &p, *kind, id).await {
                allowed.insert(id.clone(), (*kind, f));
            }
        }
        for kind in RecordKind::ALL {
            let listed = list_any(&state, &p, kind).await;
            let want: BTreeMap<String, FieldMap> = allowed
                .iter()
                .filter(|(_, (k, _))| *k == kind)
                .map(|(id, (_, f))| (id.clone(), f.clone()))
                .collect();
            assert_eq!(listed, want, "{p}: List {kind} differs from Get");
        }
        let found = state
            .search(
                &p,
                pb::SearchRequest {
                    query: MARK.into(),
                    page_size: 500,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let got: BTreeSet<String> = found
            .results
            .iter()
            .map(|a| verbund_node::convert::any_record_fields(a).unwrap().2.id)
            .collect();
        let want: BTreeSet<String> = allowed
            .iter()
            .filter(|(_, (k, f))| verbund_core::write::search_text(*k, f).contains(MARK))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(got, want, "{p}: Search differs from Get");
        for a in &found.results {
            let (_, fields, meta) = verbund_node::convert::any_record_fields(a).unwrap();
            assert_eq!(
                fields, allowed[&meta.id].1,
                "{p}: Search shows other fields than Get"
            );
        }
        if p.org == "umbrella" {
            assert!(
                allowed.is_empty(),
                "an organization without role sees {allowed:?}"
            );
        }
    }
    state.store.close().await;
}

proptest! {
    // Each case runs a node on a fresh database; 16 cases keep this under half a minute.
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn list_and_search_show_exactly_what_get_allows(sc in scenario()) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(sc));
    }
}
