//! The chaos harness: three real node processes — `acme` (the owner), `globex` (a partner
//! company) and `fixit` (a supplier) — pinned to each other, with the model of what a seeded
//! schedule did to them; see `e2e_chaos.rs` for the schedule and the invariants it checks.

mod check;
mod model;
mod ops_owner;
mod ops_partner;
mod reads;
mod schedule;

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::federation::{pin, share_rule};
use crate::support::*;
use model::*;
use reads::*;
use serde_json::Value as Json;
use tonic::transport::Channel;
use verbund_core::{FieldMap, Hlc, Value};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::convert::RecordMessage;
use verbund_node::pb;

pub const ACME: usize = 0;
pub const GLOBEX: usize = 1;
pub const FIXIT: usize = 2;
pub const ORGS: [&str; 3] = ["acme", "globex", "fixit"];
pub const PARTNERS: [usize; 2] = [GLOBEX, FIXIT];

/// How long sync may take to settle after the schedule (a bound, not an expectation).
pub const QUIESCE: Duration = Duration::from_secs(90);

pub const RPC_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ the federation

pub fn fmt_versions(v: &Versions) -> String {
    v.iter()
        .map(|(f, h)| format!("{f}@{h}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The identity of `node`'s own node certificate, to call `host` with (a partner's node
/// principal: what the owner projects for that partner).
pub fn node_identity(host: &TestNode, node: &TestNode) -> ClientIdentity {
    let read = |rel: &str| std::fs::read_to_string(node.home().join(rel)).unwrap();
    ClientIdentity {
        ca_pem: host.ca_pem(),
        cert_and_key: Some((read("tls/node.crt"), read("tls/node.key"))),
    }
}

pub struct Chaos {
    pub seed: u64,
    pub rng: Rng,
    pub rt: tokio::runtime::Runtime,
    pub nodes: Vec<TestNode>,
    pub life: [Life; 3],
    pub recs: Vec<Rec>,
    pub edits: Vec<Edit>,
    /// Divergences found while the schedule ran (an owner write refused that must succeed,
    /// a delete whose outcome contradicts the references).
    pub problems: Vec<String>,
    /// Newest version each node showed per (node, record, field), and after which op.
    pub versions: BTreeMap<(usize, String, String), (Hlc, usize)>,
    pub decreases: Vec<Decrease>,
    /// What the schedule did to each record (for the report).
    pub history: BTreeMap<String, Vec<String>>,
    /// The partners' outboxes as last read (rejected edits excuse a version going back).
    pub last_outboxes: Option<[Vec<OutboxRow>; 3]>,
    pub op: usize,
    pub refused: usize,
    pub restarts: usize,
    pub pauses: usize,
}

impl Chaos {
    pub fn say(&self, msg: impl AsRef<str>) {
        println!("[seed {} op {:03}] {}", self.seed, self.op, msg.as_ref());
    }

    pub fn setup(seed: u64) -> Chaos {
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
    pub fn log(&mut self, id: &str, msg: String) {
        self.say(&msg);
        self.history
            .entry(id.to_string())
            .or_default()
            .push(format!("op {}: {msg}", self.op));
    }

    pub fn up(&self, node: usize) -> bool {
        self.life[node] == Life::Up
    }

    pub fn problem(&mut self, msg: String) {
        self.say(format!("PROBLEM: {msg}"));
        self.problems
            .push(format!("[schedule] op {}: {msg}", self.op));
    }

    /// A channel to `node` as its admin.
    pub async fn channel(&self, node: usize) -> Result<Channel, String> {
        let n = &self.nodes[node];
        connect(&n.endpoint, &n.admin_identity())
            .await
            .map_err(|e| format!("connecting to {}: {e:#}", n.org))
    }

    /// acme's API as the node principal of `partner`.
    pub async fn projection_channel(&self, partner: usize) -> Result<Channel, String> {
        let acme = &self.nodes[ACME];
        connect(&acme.endpoint, &node_identity(acme, &self.nodes[partner]))
            .await
            .map_err(|e| format!("connecting to acme as {}: {e:#}", ORGS[partner]))
    }

    /// Every live record `node`'s admin sees there.
    pub fn list(&self, node: usize) -> Result<Listing, String> {
        self.rt
            .block_on(async { list_all(&self.channel(node).await?).await })
    }

    /// The record as `node`'s admin sees it there (Err: the node did not answer).
    pub fn read(&self, node: usize, kind: Kind, id: &str) -> Result<Option<Seen>, String> {
        self.rt
            .block_on(async { get_record(&self.channel(node).await?, kind, id).await })
    }
}
