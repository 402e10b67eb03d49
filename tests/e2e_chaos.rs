//! Seeded chaos schedules end to end: three real node processes — the owner `acme`, a partner
//! company `globex` and a supplier `fixit`, pinned to each other — run a random schedule of
//! owner writes (creates of accounts, contacts, deals and cases; edits; shares with globex
//! and their revokes; case reassignments between fixit, nobody and globex, which the
//! `case-assigned` rule turns into fixit's share; deletes, refused while live records refer
//! to the target), globex's edits of shared deals, fixit's status changes of its cases,
//! concurrent edits of the same field by acme and globex, partner edits queued while acme is
//! down and taken away (revoke, reassignment, delete) before they arrive, `kill -9` of any
//! node with restart, and SIGSTOP/SIGCONT pauses. Afterwards every node runs again, and once
//! sync has settled (polled, bounded, never timed) these must hold:
//!
//! 1. every replica at a partner equals the owner's projection for that partner (values and
//!    versions): what acme's own API answers the partner's node principal;
//! 2. no partner holds a live replica of a record acme does not show it (deleted, unshared,
//!    reassigned);
//! 3. every acknowledged edit (the CLI succeeded) is accounted for: current at the owner,
//!    overwritten by a later (or concurrent, effective) edit of the field, a conflict loser at
//!    the owner, rejected with a reason in the partner's outbox, or its record was deleted;
//! 4. no node ever showed a field version lower than one it showed before (sampled during
//!    the schedule and while settling); a partner's own edit that the owner rejected may go
//!    back to the owner's version;
//! 5. every link is connected, without a last error, with an empty outbox and nothing held in
//!    quarantine on either side.
//!
//! Replay: `VERBUND_CHAOS_SEED=7 VERBUND_CHAOS_OPS=500 cargo test --test e2e_chaos -- --nocapture`
//! (seeds may be a comma-separated list; several seeds run side by side). The seed fixes every
//! choice of the schedule; the outcomes of partner edits depend on timing (whether a change
//! has arrived yet), and the schedule log prints both, as does a failure report per record.
//!
//! Values are chosen so that no edit is a no-op (which would leave no trace to account for):
//! texts, amounts and dates are unique per writer and operation, each side draws stages from
//! its own set, and only fixit moves a case's status.

mod support;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use support::federation::{pin, share_rule};
use support::*;
use tonic::transport::Channel;
use verbund_core::{FieldMap, Hlc, Value};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::convert::RecordMessage;
use verbund_node::pb;

const ACME: usize = 0;
const GLOBEX: usize = 1;
const FIXIT: usize = 2;
const ORGS: [&str; 3] = ["acme", "globex", "fixit"];
const PARTNERS: [usize; 2] = [GLOBEX, FIXIT];

const DEFAULT_SEEDS: [u64; 3] = [1, 2, 3];
const DEFAULT_OPS: usize = 40;
/// How long sync may take to settle after the schedule (a bound, not an expectation).
const QUIESCE: Duration = Duration::from_secs(90);
/// Field versions of every node are sampled after every this many operations.
const SAMPLE_EVERY: usize = 3;
const RPC_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ seeded randomness

/// SplitMix64: tiny, seedable, good enough to pick operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// One element, or None for an empty slice (which draws nothing).
    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len())])
        }
    }
}

// ------------------------------------------------------------------ the model

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Account,
    Contact,
    Opportunity,
    Case,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Account, Kind::Contact, Kind::Opportunity, Kind::Case];

    fn cli(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Contact => "contact",
            Kind::Opportunity => "opportunity",
            Kind::Case => "case",
        }
    }

    /// The fields the owner's schedule edits (assigned_org has its own operation).
    fn owner_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Account => &[
                "name",
                "industry",
                "city",
                "country_code",
                "website",
                "description",
            ],
            Kind::Contact => &["first_name", "last_name", "phone", "email", "title"],
            Kind::Opportunity => &[
                "name",
                "stage",
                "amount",
                "probability",
                "close_date",
                "next_step",
                "description",
            ],
            Kind::Case => &["subject", "description", "priority", "due_date"],
        }
    }
}

/// What globex may write on a shared opportunity (joint-deal ∩ partner role).
const GLOBEX_FIELDS: [&str; 4] = ["stage", "next_step", "amount", "close_date"];
/// Stages are drawn from disjoint sets per side, so an edit never repeats the value the
/// other side wrote (an edit equal to the current value is a no-op that leaves no trace).
const OWNER_STAGES: [&str; 3] = ["prospecting", "qualification", "proposal"];
const PARTNER_STAGES: [&str; 3] = ["negotiation", "closed_won", "closed_lost"];
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];
const COUNTRIES: [&str; 5] = ["DE", "FR", "AT", "CH", "NL"];
const CASE_STATUSES: [&str; 5] = ["new", "open", "pending", "resolved", "closed"];

/// One record acme created, as the schedule knows it.
struct Rec {
    id: String,
    kind: Kind,
    /// Records this one refers to (account, contact): a delete of those is refused while
    /// this one lives.
    refs: Vec<usize>,
    deleted: bool,
    /// Directly shared with globex right now (accounts: partner-account, deals: joint-deal).
    shared: bool,
    ever_shared: bool,
    /// Cases: assigned_org ("" = nobody).
    assigned: String,
    ever_fixit: bool,
}

/// An acknowledged edit: the CLI said yes.
#[derive(Clone, Debug)]
struct Edit {
    op: usize,
    org: usize,
    kind: Kind,
    record: String,
    field: String,
    /// As the node showed it in its answer (normalized); None = cleared.
    value: Option<Value>,
    start_ms: i64,
    end_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    Up,
    /// SIGSTOPped until the start of this operation.
    Paused(usize),
    /// Killed (SIGKILL) until the start of this operation.
    Down(usize),
}

/// Who writes a value: every side draws from its own range, so values never collide.
#[derive(Clone, Copy, Debug)]
enum Who {
    Acme,
    Globex,
    AcmeRace,
    GlobexRace,
}

impl Who {
    fn slot(self) -> usize {
        self as usize
    }
    fn name(self) -> &'static str {
        match self {
            Who::Acme => "acme",
            Who::Globex => "globex",
            Who::AcmeRace => "acme-race",
            Who::GlobexRace => "globex-race",
        }
    }
    fn stages(self) -> &'static [&'static str] {
        match self {
            Who::Acme | Who::AcmeRace => &OWNER_STAGES,
            Who::Globex | Who::GlobexRace => &PARTNER_STAGES,
        }
    }
}

/// Text for `field=` that differs from `current`, unique per writer and operation where the
/// type allows it. `draw` is a random number drawn whatever the current value is.
fn new_value(field: &str, who: Who, op: usize, draw: usize, current: Option<&Value>) -> String {
    let cur = current.and_then(Value::as_text);
    let from_set = |set: &[&str]| {
        let v = set[draw % set.len()];
        if Some(v) == cur {
            set[(draw + 1) % set.len()].to_string()
        } else {
            v.to_string()
        }
    };
    let slot = who.slot();
    match field {
        "stage" => from_set(who.stages()),
        "priority" => from_set(&PRIORITIES),
        "country_code" => from_set(&COUNTRIES),
        "probability" => {
            let mut p = (draw % 101) as i64;
            if current.and_then(Value::as_int) == Some(p) {
                p = (p + 1) % 101;
            }
            p.to_string()
        }
        "amount" => format!("{} EUR", (slot + 1) * 100_000 + op),
        "close_date" | "due_date" => format!(
            "{}-{:02}-{:02}",
            2100 + slot * 100 + op / 336,
            (op / 28) % 12 + 1,
            op % 28 + 1
        ),
        "phone" => format!("+49 {} {:06}", 30 + slot, op),
        "email" => format!("c{op}.{slot}@chaos.example.com"),
        "website" => format!("https://w{slot}-{op}.chaos.example.com"),
        _ => format!("{field} {} op{op}", who.name()),
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `<kind> update <id> field=value… --json`
fn update_args(kind: Kind, id: &str, assignments: &[(&str, String)]) -> Vec<String> {
    let mut args = vec![kind.cli().to_string(), "update".into(), id.to_string()];
    args.extend(assignments.iter().map(|(f, v)| format!("{f}={v}")));
    args.push("--json".into());
    args
}

/// The CLI against `node`, with the wall-clock window it ran in.
fn timed_cli(node: &TestNode, args: Vec<String>) -> (Output, i64, i64) {
    let start = now_ms();
    let o = node.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (o, start, now_ms())
}

fn first_line(o: &Output) -> String {
    stderr(o).lines().next().unwrap_or("").to_string()
}

fn json_of(o: &Output) -> Result<Json, String> {
    if !o.status.success() {
        return Err(stderr(o).trim().to_string());
    }
    serde_json::from_str(stdout(o).trim()).map_err(|e| format!("{e}: {}", stdout(o)))
}

fn show(v: &Option<Value>) -> String {
    match v {
        Some(v) => serde_json::to_string(v).unwrap(),
        None => "(cleared)".into(),
    }
}

// ------------------------------------------------------------------ gRPC reads

type Versions = BTreeMap<String, Hlc>;

/// A record as one caller sees it.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    owner: String,
    fields: FieldMap,
    versions: Versions,
}

fn seen<M: RecordMessage>(m: &M) -> (String, Seen) {
    let meta = m.meta().cloned().unwrap_or_default();
    let versions = meta
        .field_versions
        .iter()
        .map(|(k, h)| {
            (
                k.clone(),
                Hlc::new(h.physical_ms, h.counter, h.node_id.clone()),
            )
        })
        .collect();
    (
        meta.id.clone(),
        Seen {
            owner: meta.owner_org.clone(),
            fields: m.to_fields().expect("a record the node sent converts"),
            versions,
        },
    )
}

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn timed<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(RPC_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "{what}: no answer in {RPC_TIMEOUT:?}"
        ))),
    }
}

/// The record as the caller of `ch` sees it; None when it is not found (or not visible).
async fn get_record(ch: &Channel, kind: Kind, id: &str) -> Result<Option<Seen>, String> {
    let req = pb::GetRecordRequest { id: id.into() };
    let r = match kind {
        Kind::Account => timed(
            "get",
            pb::account_service_client::AccountServiceClient::new(ch.clone()).get_account(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Contact => timed(
            "get",
            pb::contact_service_client::ContactServiceClient::new(ch.clone()).get_contact(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Opportunity => timed(
            "get",
            pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                .get_opportunity(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
        Kind::Case => timed(
            "get",
            pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                .get_service_case(req),
        )
        .await
        .map(|r| seen(&r.into_inner()).1),
    };
    match r {
        Ok(s) => Ok(Some(s)),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(status_text(s)),
    }
}

/// Every live record of `kind` the caller of `ch` sees (all pages).
async fn list_records(ch: &Channel, kind: Kind) -> Result<Vec<(String, Seen)>, String> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let options = Some(pb::ListOptions {
            page_size: 500,
            page_token: token.clone(),
            ..Default::default()
        });
        let (page, next) = match kind {
            Kind::Account => {
                let r = timed(
                    "list",
                    pb::account_service_client::AccountServiceClient::new(ch.clone())
                        .list_accounts(pb::ListAccountsRequest { options }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.accounts.iter().map(seen).collect::<Vec<_>>(),
                    r.next_page_token,
                )
            }
            Kind::Contact => {
                let r = timed(
                    "list",
                    pb::contact_service_client::ContactServiceClient::new(ch.clone())
                        .list_contacts(pb::ListContactsRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (r.contacts.iter().map(seen).collect(), r.next_page_token)
            }
            Kind::Opportunity => {
                let r = timed(
                    "list",
                    pb::opportunity_service_client::OpportunityServiceClient::new(ch.clone())
                        .list_opportunities(pb::ListOpportunitiesRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.opportunities.iter().map(seen).collect(),
                    r.next_page_token,
                )
            }
            Kind::Case => {
                let r = timed(
                    "list",
                    pb::service_case_service_client::ServiceCaseServiceClient::new(ch.clone())
                        .list_service_cases(pb::ListServiceCasesRequest {
                            options,
                            ..Default::default()
                        }),
                )
                .await
                .map_err(status_text)?
                .into_inner();
                (
                    r.service_cases.iter().map(seen).collect(),
                    r.next_page_token,
                )
            }
        };
        out.extend(page);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}

/// Every live record the caller of `ch` sees, by id.
/// Records by id, as one caller sees them.
type Listing = BTreeMap<String, (Kind, Seen)>;

async fn list_all(ch: &Channel) -> Result<Listing, String> {
    let mut all = BTreeMap::new();
    for kind in Kind::ALL {
        for (id, s) in list_records(ch, kind).await? {
            all.insert(id, (kind, s));
        }
    }
    Ok(all)
}

// ------------------------------------------------------------------ what the CLI reports

struct ConflictRow {
    record: String,
    field: String,
    winner: Option<Value>,
    loser: Option<Value>,
    loser_origin: String,
    /// When the losing edit was stamped (the physical part of its version), to tell apart
    /// two edits that set the same value.
    loser_ms: Option<i64>,
}

struct OutboxRow {
    record: String,
    fields: Vec<String>,
    state: String,
    last_error: String,
    created_ms: i64,
}

fn value_of(j: &Json) -> Option<Value> {
    if j.is_null() {
        None
    } else {
        Some(serde_json::from_value(j.clone()).unwrap_or_else(|e| panic!("{e}: {j}")))
    }
}

/// A field version lower than one the same node showed before.
struct Decrease {
    node: usize,
    kind: Kind,
    record: String,
    field: String,
    before: Hlc,
    before_op: usize,
    after: Hlc,
    after_op: usize,
}

// ------------------------------------------------------------------ the federation

fn fmt_versions(v: &Versions) -> String {
    v.iter()
        .map(|(f, h)| format!("{f}@{h}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The identity of `node`'s own node certificate, to call `host` with (a partner's node
/// principal: what the owner projects for that partner).
fn node_identity(host: &TestNode, node: &TestNode) -> ClientIdentity {
    let read = |rel: &str| std::fs::read_to_string(node.home().join(rel)).unwrap();
    ClientIdentity {
        ca_pem: host.ca_pem(),
        cert_and_key: Some((read("tls/node.crt"), read("tls/node.key"))),
    }
}

struct Chaos {
    seed: u64,
    rng: Rng,
    rt: tokio::runtime::Runtime,
    nodes: Vec<TestNode>,
    life: [Life; 3],
    recs: Vec<Rec>,
    edits: Vec<Edit>,
    /// Divergences found while the schedule ran (an owner write refused that must succeed,
    /// a delete whose outcome contradicts the references).
    problems: Vec<String>,
    /// Newest version each node showed per (node, record, field), and after which op.
    versions: BTreeMap<(usize, String, String), (Hlc, usize)>,
    decreases: Vec<Decrease>,
    /// What the schedule did to each record (for the report).
    history: BTreeMap<String, Vec<String>>,
    /// The partners' outboxes as last read (rejected edits excuse a version going back).
    last_outboxes: Option<[Vec<OutboxRow>; 3]>,
    op: usize,
    refused: usize,
    restarts: usize,
    pauses: usize,
}

impl Chaos {
    fn say(&self, msg: impl AsRef<str>) {
        println!("[seed {} op {:03}] {}", self.seed, self.op, msg.as_ref());
    }

    fn setup(seed: u64) -> Chaos {
        let acme = TestNode::init_fixed("acme");
        acme.append_policy("g2, globex, partner\ng2, fixit, supplier");
        let globex = TestNode::init_fixed("globex");
        let fixit = TestNode::init_fixed("fixit");
        let mut nodes = vec![acme, globex, fixit];
        for n in nodes.iter_mut() {
            n.run();
        }
        for (a, b) in [(ACME, GLOBEX), (ACME, FIXIT), (GLOBEX, FIXIT)] {
            pin(&nodes[a], &nodes[b]);
            pin(&nodes[b], &nodes[a]);
        }
        share_rule(&nodes[ACME], "fixit", "case-assigned", "supplier-case");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Chaos {
            seed,
            rng: Rng(seed),
            rt,
            nodes,
            life: [Life::Up; 3],
            recs: Vec::new(),
            edits: Vec::new(),
            problems: Vec::new(),
            versions: BTreeMap::new(),
            decreases: Vec::new(),
            history: BTreeMap::new(),
            last_outboxes: None,
            op: 0,
            refused: 0,
            restarts: 0,
            pauses: 0,
        }
    }

    /// Says `msg` and notes it in the record's history.
    fn log(&mut self, id: &str, msg: String) {
        self.say(&msg);
        self.history
            .entry(id.to_string())
            .or_default()
            .push(format!("op {}: {msg}", self.op));
    }

    fn up(&self, node: usize) -> bool {
        self.life[node] == Life::Up
    }

    fn problem(&mut self, msg: String) {
        self.say(format!("PROBLEM: {msg}"));
        self.problems
            .push(format!("[schedule] op {}: {msg}", self.op));
    }

    /// A channel to `node` as its admin.
    async fn channel(&self, node: usize) -> Result<Channel, String> {
        let n = &self.nodes[node];
        connect(&n.endpoint, &n.admin_identity())
            .await
            .map_err(|e| format!("connecting to {}: {e:#}", n.org))
    }

    /// acme's API as the node principal of `partner`.
    async fn projection_channel(&self, partner: usize) -> Result<Channel, String> {
        let acme = &self.nodes[ACME];
        connect(&acme.endpoint, &node_identity(acme, &self.nodes[partner]))
            .await
            .map_err(|e| format!("connecting to acme as {}: {e:#}", ORGS[partner]))
    }

    /// Every live record `node`'s admin sees there.
    fn list(&self, node: usize) -> Result<Listing, String> {
        self.rt
            .block_on(async { list_all(&self.channel(node).await?).await })
    }

    /// The record as `node`'s admin sees it there (Err: the node did not answer).
    fn read(&self, node: usize, kind: Kind, id: &str) -> Result<Option<Seen>, String> {
        self.rt
            .block_on(async { get_record(&self.channel(node).await?, kind, id).await })
    }

    // -------------------------------------------------------------- node lifecycle

    fn start(&mut self, node: usize) {
        for attempt in 1.. {
            match self.nodes[node].try_run() {
                Ok(()) => break,
                Err(e) if attempt < 20 => {
                    self.say(format!("{} did not start ({e}); retrying", ORGS[node]));
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("seed {}: {} does not start: {e}", self.seed, ORGS[node]),
            }
        }
        self.life[node] = Life::Up;
        self.restarts += 1;
    }

    fn resume(&mut self, node: usize) {
        assert!(self.nodes[node].signal("-CONT"), "SIGCONT {}", ORGS[node]);
        self.life[node] = Life::Up;
    }

    /// Nodes whose outage is over come back (at the start of an operation, or at the end).
    fn restore(&mut self, all: bool) {
        for (node, org) in ORGS.iter().enumerate() {
            match self.life[node] {
                Life::Paused(until) if all || until <= self.op => {
                    self.say(format!("SIGCONT {org}"));
                    self.resume(node);
                }
                Life::Down(until) if all || until <= self.op => {
                    self.say(format!("restart {org}"));
                    self.start(node);
                }
                _ => {}
            }
        }
    }

    fn op_kill(&mut self) {
        let out = self.life.iter().filter(|l| **l != Life::Up).count();
        let cands: Vec<usize> = (0..3)
            .filter(|n| !matches!(self.life[*n], Life::Down(_)))
            .collect();
        let node = self.rng.pick(&cands);
        let ops_down = self.rng.below(4);
        let Some(node) = node else {
            return self.say("kill: skipped (every node is down)");
        };
        if out >= 2 && self.up(node) {
            self.say("kill: skipped (two nodes are out already)");
            return;
        }
        self.nodes[node].kill();
        self.life[node] = Life::Down(self.op + 1 + ops_down);
        self.say(format!(
            "kill -9 {} (down for {ops_down} more ops)",
            ORGS[node]
        ));
    }

    fn op_pause(&mut self) {
        let out = self.life.iter().filter(|l| **l != Life::Up).count();
        let cands: Vec<usize> = (0..3).filter(|n| self.up(*n)).collect();
        let node = self.rng.pick(&cands);
        let ops_paused = self.rng.below(3);
        let Some(node) = node else {
            return self.say("pause: skipped (no node is up)");
        };
        if out >= 2 {
            self.say("pause: skipped (two nodes are out already)");
            return;
        }
        assert!(self.nodes[node].signal("-STOP"), "SIGSTOP {}", ORGS[node]);
        self.life[node] = Life::Paused(self.op + 1 + ops_paused);
        self.pauses += 1;
        self.say(format!(
            "SIGSTOP {} (paused for {ops_paused} more ops)",
            ORGS[node]
        ));
    }

    // -------------------------------------------------------------- owner operations

    fn live(&self, kind: Kind) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| self.recs[*i].kind == kind && !self.recs[*i].deleted)
            .collect()
    }

    fn live_any(&self) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| !self.recs[*i].deleted)
            .collect()
    }

    /// Runs an acknowledged-or-not edit through the CLI of `node` and logs it.
    fn edit(
        &mut self,
        node: usize,
        rec: usize,
        assignments: &[(&str, String)],
    ) -> Result<(), String> {
        let (kind, id) = (self.recs[rec].kind, self.recs[rec].id.clone());
        let run = timed_cli(&self.nodes[node], update_args(kind, &id, assignments));
        self.ack(node, kind, &id, assignments, &run)
    }

    /// Logs the outcome of one update command (its output and the wall-clock window it ran
    /// in); Ok when it was acknowledged.
    fn ack(
        &mut self,
        node: usize,
        kind: Kind,
        id: &str,
        assignments: &[(&str, String)],
        (o, start_ms, end_ms): &(Output, i64, i64),
    ) -> Result<(), String> {
        let (start_ms, end_ms) = (*start_ms, *end_ms);
        let what = assignments
            .iter()
            .map(|(f, v)| format!("{f}={v:?}"))
            .collect::<Vec<_>>()
            .join(" ");
        match json_of(o) {
            Ok(rec) => {
                for (field, _) in assignments {
                    let value = value_of(&rec["fields"][*field]);
                    self.edits.push(Edit {
                        op: self.op,
                        org: node,
                        kind,
                        record: id.to_string(),
                        field: field.to_string(),
                        value,
                        start_ms,
                        end_ms,
                    });
                }
                self.log(
                    id,
                    format!(
                        "{} edits {} {id}: {what} → acknowledged",
                        ORGS[node],
                        kind.cli()
                    ),
                );
                Ok(())
            }
            Err(_) => {
                let e = first_line(o);
                self.log(
                    id,
                    format!(
                        "{} edits {} {id}: {what} → refused: {e}",
                        ORGS[node],
                        kind.cli()
                    ),
                );
                Err(e)
            }
        }
    }

    fn create(&mut self, kind: Kind, fields: &[String], refs: Vec<usize>, assigned: &str) {
        let mut args = vec![kind.cli(), "create"];
        args.extend(fields.iter().map(String::as_str));
        args.push("--json");
        let o = self.nodes[ACME].cli(&args);
        match json_of(&o) {
            Ok(j) => {
                let id = j["id"].as_str().unwrap().to_string();
                self.log(
                    &id,
                    format!("acme creates {} {id} ({})", kind.cli(), fields.join(", ")),
                );
                self.recs.push(Rec {
                    id,
                    kind,
                    refs,
                    deleted: false,
                    shared: false,
                    ever_shared: false,
                    assigned: assigned.to_string(),
                    ever_fixit: assigned == "fixit",
                });
            }
            Err(e) => self.problem(format!("acme could not create a {}: {e}", kind.cli())),
        }
    }

    fn op_create(&mut self, kind: Kind) {
        let n = self.recs.len();
        let accounts = self.live(Kind::Account);
        let account = self.rng.pick(&accounts);
        let contacts = self.live(Kind::Contact);
        let with_contact = self.rng.percent(50);
        let contact = self.rng.pick(&contacts);
        let assign = self.rng.below(100);
        if !self.up(ACME) {
            self.say(format!("create {}: skipped (acme is out)", kind.cli()));
            return;
        }
        let (kind, account) = match (kind, account) {
            (Kind::Account, _) | (_, None) => (Kind::Account, None),
            (k, Some(a)) => (k, Some(a)),
        };
        let acc = |a: usize| format!("account_id={}", self.recs[a].id);
        match kind {
            Kind::Account => self.create(
                kind,
                &[
                    format!("name=Account {n}"),
                    format!("industry=industry {n}"),
                    format!("city=City {n}"),
                    "country_code=DE".into(),
                    format!("description=internal account note {n}"),
                ],
                vec![],
                "",
            ),
            Kind::Contact => {
                let a = account.unwrap();
                self.create(
                    kind,
                    &[
                        acc(a),
                        format!("first_name=First{n}"),
                        format!("last_name=Last{n}"),
                        format!("phone=+49 89 {n:06}"),
                        format!("email=p{n}@kunde.example.com"),
                        format!("description=internal contact note {n}"),
                    ],
                    vec![a],
                    "",
                )
            }
            Kind::Opportunity => {
                let a = account.unwrap();
                self.create(
                    kind,
                    &[
                        acc(a),
                        format!("name=Deal {n}"),
                        "stage=qualification".into(),
                        format!("amount={} EUR", 1000 + n),
                        format!("description=internal deal note {n}"),
                    ],
                    vec![a],
                    "",
                )
            }
            Kind::Case => {
                let a = account.unwrap();
                let mut fields = vec![
                    acc(a),
                    format!("subject=Case {n}"),
                    format!("description=case description {n}"),
                ];
                let mut refs = vec![a];
                if let (true, Some(c)) = (with_contact, contact) {
                    fields.push(format!("contact_id={}", self.recs[c].id));
                    refs.push(c);
                }
                let assigned = match assign {
                    0..50 => "fixit",
                    50..85 => "",
                    _ => "globex",
                };
                if !assigned.is_empty() {
                    fields.push(format!("assigned_org={assigned}"));
                }
                self.create(kind, &fields, refs, assigned)
            }
        }
    }

    fn op_owner_edit(&mut self) {
        let cands = self.live_any();
        let rec = self.rng.pick(&cands);
        let field_draw = self.rng.below(1000);
        let draw = self.rng.below(1000);
        let Some(rec) = rec else {
            return self.say("owner edit: skipped (no live record)");
        };
        if !self.up(ACME) {
            self.say("owner edit: skipped (acme is out)");
            return;
        }
        let kind = self.recs[rec].kind;
        let field = kind.owner_fields()[field_draw % kind.owner_fields().len()];
        let current = match self.read(ACME, kind, &self.recs[rec].id.clone()) {
            Ok(s) => s.and_then(|s| s.fields.get(field).cloned()),
            Err(e) => {
                self.problem(format!("acme does not answer a read: {e}"));
                return;
            }
        };
        let value = new_value(field, Who::Acme, self.op, draw, current.as_ref());
        if let Err(e) = self.edit(ACME, rec, &[(field, value)]) {
            self.problem(format!(
                "the owner's edit of a live record was refused: {e}"
            ));
        }
    }

    fn op_share(&mut self) {
        let prefer_account = self.rng.percent(40);
        let order = if prefer_account {
            [Kind::Account, Kind::Opportunity]
        } else {
            [Kind::Opportunity, Kind::Account]
        };
        let cands: Vec<usize> = order
            .iter()
            .map(|k| {
                self.live(*k)
                    .into_iter()
                    .filter(|i| !self.recs[*i].shared)
                    .collect::<Vec<_>>()
            })
            .find(|c| !c.is_empty())
            .unwrap_or_default();
        let Some(rec) = self.rng.pick(&cands) else {
            return self.say("share: skipped (nothing left to share)");
        };
        if !self.up(ACME) {
            self.say("share: skipped (acme is out)");
            return;
        }
        let profile = match self.recs[rec].kind {
            Kind::Account => "partner-account",
            _ => "joint-deal",
        };
        let id = self.recs[rec].id.clone();
        let o = self.nodes[ACME].cli(&[
            "share",
            "add",
            "--record",
            &id,
            "--org",
            "globex",
            "--profile",
            profile,
        ]);
        if o.status.success() {
            self.log(
                &id,
                format!(
                    "acme shares {} {id} with globex ({profile})",
                    self.recs[rec].kind.cli()
                ),
            );
            self.recs[rec].shared = true;
            self.recs[rec].ever_shared = true;
        } else {
            self.problem(format!("share add refused: {}", first_line(&o)));
        }
    }

    fn op_unshare(&mut self) {
        let cands: Vec<usize> = self
            .live_any()
            .into_iter()
            .filter(|i| self.recs[*i].shared)
            .collect();
        let Some(rec) = self.rng.pick(&cands) else {
            return self.say("unshare: skipped (nothing is shared)");
        };
        if !self.up(ACME) {
            self.say("unshare: skipped (acme is out)");
            return;
        }
        self.unshare(rec);
    }

    fn unshare(&mut self, rec: usize) {
        let id = self.recs[rec].id.clone();
        let o = self.nodes[ACME].cli(&["share", "revoke", "--record", &id, "--org", "globex"]);
        if o.status.success() {
            self.log(
                &id,
                format!(
                    "acme revokes globex's share of {} {id}",
                    self.recs[rec].kind.cli()
                ),
            );
            self.recs[rec].shared = false;
        } else {
            self.problem(format!("share revoke refused: {}", first_line(&o)));
        }
    }

    fn op_reassign(&mut self) {
        let cands = self.live(Kind::Case);
        let rec = self.rng.pick(&cands);
        let draw = self.rng.below(1000);
        let Some(rec) = rec else {
            return self.say("reassign: skipped (no live case)");
        };
        if !self.up(ACME) {
            self.say("reassign: skipped (acme is out)");
            return;
        }
        self.reassign(rec, draw);
    }

    /// Moves a case to another assignee (fixit, nobody, globex), chosen by `draw`.
    fn reassign(&mut self, rec: usize, draw: usize) {
        let choices: Vec<&str> = ["fixit", "", "globex"]
            .into_iter()
            .filter(|o| *o != self.recs[rec].assigned)
            .collect();
        let to = choices[draw % choices.len()];
        if self
            .edit(ACME, rec, &[("assigned_org", to.to_string())])
            .is_ok()
        {
            self.recs[rec].assigned = to.to_string();
            self.recs[rec].ever_fixit |= to == "fixit";
        } else {
            self.problem("the owner's reassignment of a live case was refused".into());
        }
    }

    fn op_delete(&mut self) {
        let kind = match self.rng.below(100) {
            0..40 => Kind::Opportunity,
            40..75 => Kind::Case,
            75..90 => Kind::Contact,
            _ => Kind::Account,
        };
        let cands = self.live(kind);
        let Some(rec) = self.rng.pick(&cands) else {
            return self.say(format!("delete: skipped (no live {})", kind.cli()));
        };
        if !self.up(ACME) {
            self.say("delete: skipped (acme is out)");
            return;
        }
        self.delete(rec);
    }

    /// Live records that refer to `rec` (its delete is refused while there are any).
    fn dependents(&self, rec: usize) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| !self.recs[*i].deleted && self.recs[*i].refs.contains(&rec))
            .collect()
    }

    /// acme deletes the record; refused exactly when live records still refer to it.
    fn delete(&mut self, rec: usize) {
        let kind = self.recs[rec].kind;
        let dependents = self.dependents(rec);
        let id = self.recs[rec].id.clone();
        let o = self.nodes[ACME].cli(&[kind.cli(), "delete", &id]);
        match (o.status.success(), dependents.is_empty()) {
            (true, true) => {
                self.log(&id, format!("acme deletes {} {id}", kind.cli()));
                self.recs[rec].deleted = true;
            }
            (false, false) if stderr(&o).contains("FAILED_PRECONDITION") => {
                self.log(&id, format!(
                    "acme deletes {} {id} → refused as expected ({} live record(s) refer to it)",
                    kind.cli(),
                    dependents.len()
                ));
            }
            (true, false) => {
                self.recs[rec].deleted = true;
                self.problem(format!(
                    "acme deleted {} {id} although {} live record(s) refer to it",
                    kind.cli(),
                    dependents.len()
                ));
            }
            (false, _) => self.problem(format!(
                "acme's delete of {} {id} ({} live dependents) was refused: {}",
                kind.cli(),
                dependents.len(),
                first_line(&o)
            )),
        }
    }

    // -------------------------------------------------------------- partner operations

    fn op_globex_edit(&mut self) {
        let any_ever = self.rng.percent(20);
        let cands: Vec<usize> = (0..self.recs.len())
            .filter(|i| {
                let r = &self.recs[*i];
                r.kind == Kind::Opportunity
                    && if any_ever {
                        r.ever_shared
                    } else {
                        r.shared && !r.deleted
                    }
            })
            .collect();
        let rec = self.rng.pick(&cands);
        let field = GLOBEX_FIELDS[self.rng.below(GLOBEX_FIELDS.len())];
        let draw = self.rng.below(1000);
        let Some(rec) = rec else {
            return self.say("globex edit: skipped (no deal shared with globex)");
        };
        if !self.up(GLOBEX) {
            self.say("globex edit: skipped (globex is out)");
            return;
        }
        self.globex_edit(rec, field, draw);
    }

    fn globex_edit(&mut self, rec: usize, field: &str, draw: usize) {
        let id = self.recs[rec].id.clone();
        let current = self
            .read(GLOBEX, Kind::Opportunity, &id)
            .ok()
            .flatten()
            .and_then(|s| s.fields.get(field).cloned());
        let value = new_value(field, Who::Globex, self.op, draw, current.as_ref());
        if self.edit(GLOBEX, rec, &[(field, value)]).is_err() {
            self.refused += 1;
        }
    }

    fn op_fixit_edit(&mut self) {
        let any_ever = self.rng.percent(20);
        let cands: Vec<usize> = (0..self.recs.len())
            .filter(|i| {
                let r = &self.recs[*i];
                r.kind == Kind::Case
                    && if any_ever {
                        r.ever_fixit
                    } else {
                        r.assigned == "fixit" && !r.deleted
                    }
            })
            .collect();
        let rec = self.rng.pick(&cands);
        let wild = self.rng.percent(15);
        let draw = self.rng.below(1000);
        let Some(rec) = rec else {
            return self.say("fixit edit: skipped (no case assigned to fixit)");
        };
        if !self.up(FIXIT) {
            self.say("fixit edit: skipped (fixit is out)");
            return;
        }
        self.fixit_edit(rec, wild, draw);
    }

    /// fixit moves the case's status: along the lifecycle from what it holds, or (`wild`)
    /// to any other status, which its node or the owner may refuse.
    fn fixit_edit(&mut self, rec: usize, wild: bool, draw: usize) {
        let id = self.recs[rec].id.clone();
        let current = self
            .read(FIXIT, Kind::Case, &id)
            .ok()
            .flatten()
            .and_then(|s| {
                s.fields
                    .get("status")
                    .and_then(|v| v.as_text().map(str::to_string))
            })
            .unwrap_or_else(|| "new".into());
        let allowed: Vec<&str> = CASE_STATUSES
            .into_iter()
            .filter(|s| *s != current)
            .filter(|s| wild || verbund_core::write::case_transition_allowed(&current, s))
            .collect();
        let Some(&to) = allowed.get(draw % allowed.len().max(1)) else {
            self.say(format!(
                "fixit edit: case {id} is {current}; no transition left"
            ));
            return;
        };
        if self
            .edit(FIXIT, rec, &[("status", to.to_string())])
            .is_err()
        {
            self.refused += 1;
        }
    }

    /// A partner edits while acme is down (kill -9); acme comes back and, before the
    /// partner's link is back from its backoff, takes the record away (revoke, reassignment
    /// or delete): the queued edit must end rejected, with a reason, or with the record.
    fn op_offline_edit(&mut self) {
        let globex_side = self.rng.percent(50);
        let delete_it = self.rng.percent(35);
        let field = GLOBEX_FIELDS[self.rng.below(GLOBEX_FIELDS.len())];
        let draw = self.rng.below(1000);
        let deals: Vec<usize> = self
            .live(Kind::Opportunity)
            .into_iter()
            .filter(|i| self.recs[*i].shared)
            .collect();
        let cases: Vec<usize> = self
            .live(Kind::Case)
            .into_iter()
            .filter(|i| self.recs[*i].assigned == "fixit")
            .collect();
        let (partner, cands) = if (globex_side && !deals.is_empty()) || cases.is_empty() {
            (GLOBEX, deals)
        } else {
            (FIXIT, cases)
        };
        let Some(rec) = self.rng.pick(&cands) else {
            return self.say("offline edit: skipped (nothing shared)");
        };
        if !self.up(ACME) || !self.up(partner) {
            return self.say(format!(
                "offline edit: skipped (acme or {} is out)",
                ORGS[partner]
            ));
        }
        self.say(format!(
            "offline edit: kill -9 acme, {} edits, acme restarts and takes the record away",
            ORGS[partner]
        ));
        self.nodes[ACME].kill();
        if partner == GLOBEX {
            self.globex_edit(rec, field, draw);
        } else {
            self.fixit_edit(rec, false, draw);
        }
        self.start(ACME);
        if delete_it && self.dependents(rec).is_empty() {
            self.delete(rec);
        } else if partner == GLOBEX {
            self.unshare(rec);
        } else {
            self.reassign(rec, draw % 2 + 1);
        }
    }

    /// The owner and globex edit the same field of a shared deal at the same time.
    fn op_concurrent(&mut self) {
        let cands: Vec<usize> = self
            .live(Kind::Opportunity)
            .into_iter()
            .filter(|i| self.recs[*i].shared)
            .collect();
        let rec = self.rng.pick(&cands);
        let field = GLOBEX_FIELDS[self.rng.below(GLOBEX_FIELDS.len())];
        let (d1, d2) = (self.rng.below(1000), self.rng.below(1000));
        let Some(rec) = rec else {
            return self.say("concurrent edit: skipped (no deal shared with globex)");
        };
        if !self.up(ACME) || !self.up(GLOBEX) {
            self.say("concurrent edit: skipped (acme or globex is out)");
            return;
        }
        let id = self.recs[rec].id.clone();
        let cur = |node: usize| {
            self.read(node, Kind::Opportunity, &id)
                .ok()
                .flatten()
                .and_then(|s| s.fields.get(field).cloned())
        };
        let (ca, cg) = (cur(ACME), cur(GLOBEX));
        let va = new_value(field, Who::AcmeRace, self.op, d1, ca.as_ref());
        let vg = new_value(field, Who::GlobexRace, self.op, d2, cg.as_ref());
        let (aa, ag) = ([(field, va)], [(field, vg)]);
        let (acme, globex) = (&self.nodes[ACME], &self.nodes[GLOBEX]);
        let (ra, rg) = std::thread::scope(|s| {
            let ha = s.spawn(|| timed_cli(acme, update_args(Kind::Opportunity, &id, &aa)));
            let hg = s.spawn(|| timed_cli(globex, update_args(Kind::Opportunity, &id, &ag)));
            (ha.join().unwrap(), hg.join().unwrap())
        });
        self.say(format!(
            "concurrently: acme and globex edit {field} of opportunity {id}"
        ));
        if let Err(e) = self.ack(ACME, Kind::Opportunity, &id, &aa, &ra) {
            self.problem(format!("the owner's concurrent edit was refused: {e}"));
        }
        if self.ack(GLOBEX, Kind::Opportunity, &id, &ag, &rg).is_err() {
            self.refused += 1;
        }
    }

    // -------------------------------------------------------------- the schedule

    fn prelude(&mut self) {
        self.op_create(Kind::Account);
        self.op_create(Kind::Account);
        self.op_create(Kind::Contact);
        self.op_create(Kind::Opportunity);
        self.op_create(Kind::Opportunity);
        self.op_create(Kind::Case);
        self.op_create(Kind::Case);
        self.op_share();
        self.op_share();
    }

    fn step(&mut self) {
        self.restore(false);
        match self.rng.below(100) {
            0..5 => self.op_create(Kind::Account),
            5..9 => self.op_create(Kind::Contact),
            9..16 => self.op_create(Kind::Opportunity),
            16..22 => self.op_create(Kind::Case),
            22..36 => self.op_owner_edit(),
            36..44 => self.op_share(),
            44..49 => self.op_unshare(),
            49..55 => self.op_reassign(),
            55..62 => self.op_delete(),
            62..75 => self.op_globex_edit(),
            75..84 => self.op_fixit_edit(),
            84..89 => self.op_concurrent(),
            89..92 => self.op_offline_edit(),
            92..96 => self.op_kill(),
            _ => self.op_pause(),
        }
    }

    /// Notes the field versions every running node shows now; a lower one than before is
    /// kept as a decrease (judged at the end, when rejected edits are known).
    fn sample_versions(&mut self) {
        let running: Vec<usize> = (0..3).filter(|n| self.up(*n)).collect();
        let seen: Vec<(usize, Result<Listing, String>)> =
            running.into_iter().map(|n| (n, self.list(n))).collect();
        for (node, all) in seen {
            let all = match all {
                Ok(a) => a,
                Err(e) => {
                    self.say(format!("sampling {}: {e}", ORGS[node]));
                    continue;
                }
            };
            for (id, (kind, s)) in all {
                for (field, v) in s.versions {
                    let key = (node, id.clone(), field.clone());
                    if let Some((before, before_op)) = self.versions.get(&key)
                        && v < *before
                    {
                        self.decreases.push(Decrease {
                            node,
                            kind,
                            record: id.clone(),
                            field: field.clone(),
                            before: before.clone(),
                            before_op: *before_op,
                            after: v.clone(),
                            after_op: self.op,
                        });
                    }
                    self.versions.insert(key, (v, self.op));
                }
            }
        }
    }

    // -------------------------------------------------------------- the invariants

    fn record_named(&self, id: &str) -> Option<&Rec> {
        self.recs.iter().find(|r| r.id == id)
    }

    /// Why acme may not show `partner` a record, as far as the schedule knows.
    fn why_hidden(&self, partner: usize, id: &str) -> String {
        let Some(r) = self.record_named(id) else {
            return "a record the schedule never created".into();
        };
        if r.deleted {
            return "deleted at acme".into();
        }
        let at = self.recs.iter().position(|x| x.id == id).unwrap();
        // Live records that refer to this one and reach the partner themselves.
        let via = |reaches: &dyn Fn(&Rec) -> bool| {
            self.recs
                .iter()
                .any(|x| !x.deleted && x.refs.contains(&at) && reaches(x))
        };
        match (partner, r.kind) {
            (GLOBEX, Kind::Opportunity) if !r.shared => {
                "its share was revoked or never made".into()
            }
            (GLOBEX, Kind::Account) if !r.shared && !via(&|x| x.shared) => {
                "not shared, and no shared deal refers to it".into()
            }
            (GLOBEX, Kind::Contact) if !r.refs.iter().any(|a| self.recs[*a].shared) => {
                "its account is not shared".into()
            }
            (FIXIT, Kind::Case) if r.assigned != "fixit" => {
                format!("assigned to {:?}", r.assigned)
            }
            (FIXIT, Kind::Account | Kind::Contact) if !via(&|x| x.assigned == "fixit") => {
                "no live case assigned to fixit refers to it".into()
            }
            _ => "the schedule expects it to be visible there".into(),
        }
    }

    fn ops_touching(&self, id: &str) -> String {
        self.history
            .get(id)
            .map(|h| h.join("; "))
            .unwrap_or_default()
    }

    fn cli_json(&self, node: usize, args: &[&str]) -> Result<Json, String> {
        json_of(&self.nodes[node].cli(args))
            .map_err(|e| format!("{} {}: {e}", ORGS[node], args.join(" ")))
    }

    fn conflicts(&self) -> Result<Vec<ConflictRow>, String> {
        let j = self.cli_json(ACME, &["conflict", "list", "--all", "--json"])?;
        Ok(j.as_array()
            .unwrap()
            .iter()
            .map(|c| ConflictRow {
                record: c["record_id"].as_str().unwrap_or("").into(),
                field: c["field"].as_str().unwrap_or("").into(),
                winner: value_of(&c["winner"]["value"]),
                loser: value_of(&c["loser"]["value"]),
                loser_origin: c["loser"]["origin"].as_str().unwrap_or("").into(),
                loser_ms: c["loser"]["version"]
                    .as_str()
                    .and_then(|v| v.get(..16))
                    .and_then(|h| i64::from_str_radix(h, 16).ok()),
            })
            .collect())
    }

    fn outbox(&self, node: usize) -> Result<Vec<OutboxRow>, String> {
        let j = self.cli_json(node, &["outbox", "list", "--json"])?;
        Ok(j.as_array()
            .unwrap()
            .iter()
            .map(|e| OutboxRow {
                record: e["record_id"].as_str().unwrap_or("").into(),
                fields: e["fields"]
                    .as_array()
                    .map(|f| {
                        f.iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                state: e["state"].as_str().unwrap_or("").into(),
                last_error: e["last_error"].as_str().unwrap_or("").into(),
                created_ms: e["created_ms"].as_i64().unwrap_or(0),
            })
            .collect())
    }

    /// Invariants 1 and 2 for `partner`: its replicas against acme's projection for it.
    fn check_replicas(&self, partner: usize, out: &mut Vec<String>) {
        let org = ORGS[partner];
        let held = match self.list(partner) {
            Ok(h) => h,
            Err(e) => return out.push(format!("[1] cannot list {org}'s records: {e}")),
        };
        let projected = self.rt.block_on(async {
            let ch = self.projection_channel(partner).await?;
            let mut projected = BTreeMap::new();
            for r in &self.recs {
                projected.insert(r.id.clone(), (r.kind, get_record(&ch, r.kind, &r.id).await));
            }
            Ok::<_, String>(projected)
        });
        let projected = match projected {
            Ok(p) => p,
            Err(e) => return out.push(format!("[1] {e}")),
        };
        for (id, (kind, owner_view)) in &projected {
            let owner_view = match owner_view {
                Ok(v) => v,
                Err(e) => {
                    out.push(format!(
                        "[1] acme does not answer {org}'s node for {id}: {e}"
                    ));
                    continue;
                }
            };
            let k = kind.cli();
            match (owner_view, held.get(id)) {
                (None, None) => {}
                (Some(want), Some((_, got))) => {
                    if want.fields != got.fields || want.owner != got.owner {
                        out.push(format!(
                            "[1] {org}'s replica of {k} {id} differs from acme's projection for {org}: acme shows {org} {}, {org} holds {} (history: {})",
                            serde_json::to_string(&want.fields).unwrap(),
                            serde_json::to_string(&got.fields).unwrap(),
                            self.ops_touching(id)
                        ));
                    } else if want.versions != got.versions {
                        out.push(format!(
                            "[1] {org}'s replica of {k} {id} has other field versions than acme's projection for {org}: acme {}, {org} {} (history: {})",
                            fmt_versions(&want.versions),
                            fmt_versions(&got.versions),
                            self.ops_touching(id)
                        ));
                    }
                }
                (Some(want), None) => out.push(format!(
                    "[1] {org} lacks {k} {id}, which acme shows it as {} (history: {})",
                    serde_json::to_string(&want.fields).unwrap(),
                    self.ops_touching(id)
                )),
                (None, Some((_, got))) => out.push(format!(
                    "[2] {org} holds a live replica of {k} {id} ({}) that acme does not show {org}: {} (history: {})",
                    serde_json::to_string(&got.fields).unwrap(),
                    self.why_hidden(partner, id),
                    self.ops_touching(id)
                )),
            }
        }
        for (id, (kind, got)) in &held {
            if !projected.contains_key(id) {
                out.push(format!(
                    "[2] {org} holds {} {id} owned by {:?}, which the schedule never created",
                    kind.cli(),
                    got.owner
                ));
            }
        }
    }

    /// Invariant 3: every acknowledged edit is accounted for. `owner` is what acme's admin
    /// sees now.
    fn check_edits(
        &self,
        owner: &Listing,
        conflicts: &[ConflictRow],
        outboxes: &[Vec<OutboxRow>; 3],
        out: &mut Vec<String>,
    ) {
        let rejected = |e: &Edit| -> Option<&OutboxRow> {
            if e.org == ACME {
                return None;
            }
            outboxes[e.org].iter().find(|r| {
                r.state == "rejected"
                    && r.record == e.record
                    && r.fields.contains(&e.field)
                    && (e.start_ms - 2..=e.end_ms + 2).contains(&r.created_ms)
            })
        };
        // The conflict's loser is this edit: same value and origin, and stamped while the
        // edit was being made (another edit may have set the same value at another time).
        let lost = |e: &Edit| {
            conflicts.iter().any(|c| {
                c.record == e.record
                    && c.field == e.field
                    && c.loser == e.value
                    && c.loser_origin == ORGS[e.org]
                    && c.loser_ms
                        .is_none_or(|ms| (e.start_ms - 5..=e.end_ms + 5).contains(&ms))
            })
        };
        let current = |e: &Edit| {
            owner
                .get(&e.record)
                .is_some_and(|(_, s)| s.fields.get(&e.field) == e.value.as_ref())
        };
        let deleted = |e: &Edit| {
            !owner.contains_key(&e.record)
                && self.record_named(&e.record).is_some_and(|r| r.deleted)
        };
        let same = |a: &Edit, b: &Edit| a.record == b.record && a.field == b.field;
        let effective = |e: &Edit| rejected(e).is_none() && !lost(e);
        let overwritten_later = |e: &Edit| {
            self.edits
                .iter()
                .any(|l| same(e, l) && l.op > e.op && effective(l))
        };
        for (i, e) in self.edits.iter().enumerate() {
            let concurrent_winner = self.edits.iter().enumerate().any(|(j, c)| {
                j != i
                    && same(e, c)
                    && c.op == e.op
                    && effective(c)
                    && (current(c) || overwritten_later(c))
            });
            if deleted(e)
                || current(e)
                || lost(e)
                || rejected(e).is_some()
                || overwritten_later(e)
                || concurrent_winner
            {
                continue;
            }
            let now = owner
                .get(&e.record)
                .map(|(_, s)| show(&s.fields.get(&e.field).cloned()))
                .unwrap_or_else(|| "(no live record)".into());
            let conflicts: Vec<String> = conflicts
                .iter()
                .filter(|c| c.record == e.record && c.field == e.field)
                .map(|c| {
                    format!(
                        "winner {} / loser {} from {}",
                        show(&c.winner),
                        show(&c.loser),
                        c.loser_origin
                    )
                })
                .collect();
            let entries: Vec<String> = outboxes[e.org]
                .iter()
                .filter(|r| r.record == e.record)
                .map(|r| {
                    format!(
                        "{} {:?} at {} ms: {}",
                        r.state, r.fields, r.created_ms, r.last_error
                    )
                })
                .collect();
            out.push(format!(
                "[3] the edit of op {} is not accounted for: {} set {} {} {} = {} (acknowledged {}..{} ms); acme has {now}; conflicts on the field: {conflicts:?}; {}'s outbox entries of the record: {entries:?}; later edits of the field: none effective",
                e.op,
                ORGS[e.org],
                e.kind.cli(),
                e.record,
                e.field,
                show(&e.value),
                e.start_ms,
                e.end_ms,
                ORGS[e.org]
            ));
        }
    }

    /// Invariant 5: every link connected, no last error, nothing waiting in an outbox.
    fn check_links(&self, out: &mut Vec<String>) {
        for (node, org) in ORGS.iter().enumerate() {
            let rows = match self.cli_json(node, &["partner", "status", "--json"]) {
                Ok(r) => r,
                Err(e) => {
                    out.push(format!("[5] {e}"));
                    continue;
                }
            };
            let rows = rows.as_array().cloned().unwrap_or_default();
            if rows.len() != 2 {
                out.push(format!(
                    "[5] {org} reports {} partner links: {rows:?}",
                    rows.len()
                ));
            }
            for r in rows {
                let text = |k: &str| r[k].as_str().unwrap_or("").to_string();
                let (state, error) = (text("state"), text("last_error"));
                let depth = r["outbox_depth"].as_i64().unwrap_or(-1);
                // Items one side could not take and keeps aside (reported by newer nodes).
                let held_back = r["quarantined"].as_i64().unwrap_or(0);
                let held_back_there = r["partner_quarantined"].as_i64().unwrap_or(0);
                if state != "connected"
                    || !error.is_empty()
                    || depth != 0
                    || held_back != 0
                    || held_back_there != 0
                {
                    out.push(format!(
                        "[5] link {org} → {}: state {state:?}, outbox depth {depth}, last error {error:?}, quarantined here {held_back} ({:?}), there {held_back_there} ({:?})",
                        text("org"),
                        text("quarantine_note"),
                        text("partner_quarantine_note"),
                    ));
                }
            }
        }
    }

    /// All invariants that must hold once sync has settled; empty when they do.
    fn check(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let owner = match self.list(ACME) {
            Ok(o) => o,
            Err(e) => return vec![format!("cannot list acme's records: {e}")],
        };
        // The owner itself matches the schedule: live records listed, deleted ones not.
        for r in &self.recs {
            if owner.contains_key(&r.id) == r.deleted {
                out.push(format!(
                    "[owner] acme {} {} {} but the schedule has it {}",
                    r.kind.cli(),
                    r.id,
                    if r.deleted { "lists" } else { "does not list" },
                    if r.deleted { "deleted" } else { "live" }
                ));
            }
        }
        for p in PARTNERS {
            self.check_replicas(p, &mut out);
        }
        let conflicts = self.conflicts();
        let outboxes = [Ok(Vec::new()), self.outbox(GLOBEX), self.outbox(FIXIT)];
        match (conflicts, outboxes) {
            (Ok(c), [Ok(a), Ok(g), Ok(f)]) => {
                let outboxes = [a, g, f];
                self.check_edits(&owner, &c, &outboxes, &mut out);
                self.last_outboxes = Some(outboxes);
            }
            (c, o) => {
                for e in c
                    .err()
                    .into_iter()
                    .chain(o.into_iter().filter_map(Result::err))
                {
                    out.push(format!("[3] {e}"));
                }
            }
        }
        self.check_links(&mut out);
        out
    }

    /// Every node runs again; then poll (bounded) until the invariants hold twice in a row.
    /// Returns what still fails at the bound (empty when settled).
    fn settle(&mut self) -> Vec<String> {
        self.restore(true);
        let start = Instant::now();
        let mut clean = 0;
        loop {
            self.sample_versions();
            let found = self.check();
            if found.is_empty() {
                clean += 1;
                if clean == 2 {
                    self.say(format!(
                        "settled: every invariant holds ({:.1} s after the schedule)",
                        start.elapsed().as_secs_f64()
                    ));
                    return found;
                }
            } else {
                clean = 0;
            }
            if start.elapsed() > QUIESCE {
                self.say(format!(
                    "not settled after {QUIESCE:?}: {} violation(s)",
                    found.len()
                ));
                return found;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// A partner's own edit that the owner rejected returns to the owner's version: the
    /// higher version was stamped by the partner itself, when it made an edit of the field
    /// that its outbox now lists as rejected.
    fn own_edit_rejected(&self, d: &Decrease) -> bool {
        let org = ORGS[d.node];
        let stamped = d.before.physical_ms as i64;
        d.node != ACME
            && d.before.node.starts_with(&format!("{org}/"))
            && self.last_outboxes.as_ref().is_some_and(|o| {
                o[d.node].iter().any(|r| {
                    r.state == "rejected"
                        && r.record == d.record
                        && r.fields.contains(&d.field)
                        && (r.created_ms - stamped).abs() <= 2000
                })
            })
    }

    /// Invariant 4: a version a node showed never goes back — except a partner's own edit
    /// that the owner rejected.
    fn unexcused_decreases(&self) -> Vec<String> {
        for d in self.decreases.iter().filter(|d| self.own_edit_rejected(d)) {
            self.say(format!(
                "{}'s rejected edit of {} {} {} went back from {} to the owner's {}",
                ORGS[d.node],
                d.kind.cli(),
                d.record,
                d.field,
                d.before,
                d.after
            ));
        }
        self.decreases
            .iter()
            .filter(|d| !self.own_edit_rejected(d))
            .map(|d| {
                let entries: Vec<String> = self
                    .last_outboxes
                    .iter()
                    .flat_map(|o| o[d.node].iter())
                    .filter(|r| r.record == d.record)
                    .map(|r| {
                        format!(
                            "{} {:?} at {} ms: {}",
                            r.state, r.fields, r.created_ms, r.last_error
                        )
                    })
                    .collect();
                format!(
                    "[4] a version went back on {}: {} {} field {}: {} (seen after op {}) then {} (after op {}); {}'s outbox entries of the record: {entries:?} (history: {})",
                    ORGS[d.node],
                    d.kind.cli(),
                    d.record,
                    d.field,
                    d.before,
                    d.before_op,
                    d.after,
                    d.after_op,
                    ORGS[d.node],
                    self.ops_touching(&d.record)
                )
            })
            .collect()
    }
}

struct SeedReport {
    seed: u64,
    ops: usize,
    secs: f64,
    summary: String,
    failures: Vec<String>,
}

fn replay(seed: u64, ops: usize) -> String {
    format!(
        "VERBUND_CHAOS_SEED={seed} VERBUND_CHAOS_OPS={ops} cargo test --test e2e_chaos -- --nocapture"
    )
}

fn run_seed(seed: u64, ops: usize) -> SeedReport {
    let started = Instant::now();
    let mut c = Chaos::setup(seed);
    c.say(format!("{ops} operations; replay: {}", replay(seed, ops)));
    c.prelude();
    for op in 1..=ops {
        c.op = op;
        c.step();
        if op % SAMPLE_EVERY == 0 {
            c.sample_versions();
        }
    }
    c.op = ops + 1;
    c.say("schedule done; every node runs again, waiting for sync to settle");
    let mut failures = std::mem::take(&mut c.problems);
    failures.extend(c.settle());
    failures.extend(c.unexcused_decreases());
    let conflicts = c.conflicts().map(|v| v.len()).unwrap_or(0);
    let rejected = c
        .last_outboxes
        .as_ref()
        .map(|o| o.iter().flatten().filter(|r| r.state == "rejected").count())
        .unwrap_or(0);
    let summary = format!(
        "{} records, {} acknowledged edits, {} partner edits refused at once, {} rejected by the owner, {} conflicts, {} restarts, {} pauses, {} field versions followed ({} went back after a rejected own edit)",
        c.recs.len(),
        c.edits.len(),
        c.refused,
        rejected,
        conflicts,
        c.restarts,
        c.pauses,
        c.versions.len(),
        c.decreases
            .iter()
            .filter(|d| c.own_edit_rejected(d))
            .count()
    );
    c.say(&summary);
    SeedReport {
        seed,
        ops,
        secs: started.elapsed().as_secs_f64(),
        summary,
        failures,
    }
}

fn env_seeds() -> Vec<u64> {
    match std::env::var("VERBUND_CHAOS_SEED") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("VERBUND_CHAOS_SEED: {x:?} is not a number"))
            })
            .collect(),
        _ => DEFAULT_SEEDS.to_vec(),
    }
}

fn env_ops() -> usize {
    match std::env::var("VERBUND_CHAOS_OPS") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("VERBUND_CHAOS_OPS: {s:?} is not a number")),
        _ => DEFAULT_OPS,
    }
}

/// The seeds run side by side (each its own three nodes); a failing seed does not hide the
/// others' results.
#[test]
fn seeded_chaos_schedules_keep_replicas_edits_versions_and_links_sound() {
    let (seeds, ops) = (env_seeds(), env_ops());
    let reports: Vec<SeedReport> = std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .iter()
            .map(|&seed| (seed, s.spawn(move || run_seed(seed, ops))))
            .collect();
        handles
            .into_iter()
            .map(|(seed, h)| {
                h.join().unwrap_or_else(|p| SeedReport {
                    seed,
                    ops,
                    secs: 0.0,
                    summary: "the harness panicked".into(),
                    failures: vec![format!(
                        "panic: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    )],
                })
            })
            .collect()
    });
    let mut failed = String::new();
    for r in &reports {
        println!(
            "seed {}: {} ops in {:.1} s: {}; {}",
            r.seed,
            r.ops,
            r.secs,
            r.summary,
            if r.failures.is_empty() {
                "all invariants hold".to_string()
            } else {
                format!("{} violation(s)", r.failures.len())
            }
        );
        if !r.failures.is_empty() {
            failed.push_str(&format!(
                "\n--- seed {} ({} ops); replay: {}\n{}\n",
                r.seed,
                r.ops,
                replay(r.seed, r.ops),
                r.failures.join("\n")
            ));
        }
    }
    assert!(
        failed.is_empty(),
        "chaos schedules broke invariants:{failed}"
    );
}
