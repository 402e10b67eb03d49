//! The model of a chaos schedule: seeded randomness, record kinds and the values each writer
//! draws, what the schedule did to each record and each acknowledged edit, node lives, and
//! the CLI calls that run the edits.

use super::*;

// ------------------------------------------------------------------ seeded randomness

/// SplitMix64: tiny, seedable, good enough to pick operations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0);
        (self.next() % n as u64) as usize
    }

    pub fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// One element, or None for an empty slice (which draws nothing).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            None
        } else {
            Some(items[self.below(items.len())])
        }
    }
}

// ------------------------------------------------------------------ the model

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Account,
    Contact,
    Opportunity,
    Case,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Account, Kind::Contact, Kind::Opportunity, Kind::Case];

    pub fn cli(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Contact => "contact",
            Kind::Opportunity => "opportunity",
            Kind::Case => "case",
        }
    }

    /// The fields the owner's schedule edits (assigned_org has its own operation).
    pub fn owner_fields(self) -> &'static [&'static str] {
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
pub const GLOBEX_FIELDS: [&str; 4] = ["stage", "next_step", "amount", "close_date"];
/// Stages are drawn from disjoint sets per side, so an edit never repeats the value the
/// other side wrote (an edit equal to the current value is a no-op that leaves no trace).
pub const OWNER_STAGES: [&str; 3] = ["prospecting", "qualification", "proposal"];
pub const PARTNER_STAGES: [&str; 3] = ["negotiation", "closed_won", "closed_lost"];
pub const PRIORITIES: [&str; 4] = ["low", "normal", "high", "urgent"];
pub const COUNTRIES: [&str; 5] = ["DE", "FR", "AT", "CH", "NL"];
pub const CASE_STATUSES: [&str; 5] = ["new", "open", "pending", "resolved", "closed"];

/// One record acme created, as the schedule knows it.
pub struct Rec {
    pub id: String,
    pub kind: Kind,
    /// Records this one refers to (account, contact): a delete of those is refused while
    /// this one lives.
    pub refs: Vec<usize>,
    pub deleted: bool,
    /// Directly shared with globex right now (accounts: partner-account, deals: joint-deal).
    pub shared: bool,
    pub ever_shared: bool,
    /// Cases: assigned_org ("" = nobody).
    pub assigned: String,
    pub ever_fixit: bool,
}

/// An acknowledged edit: the CLI said yes.
#[derive(Clone, Debug)]
pub struct Edit {
    pub op: usize,
    pub org: usize,
    pub kind: Kind,
    pub record: String,
    pub field: String,
    /// As the node showed it in its answer (normalized); None = cleared.
    pub value: Option<Value>,
    pub start_ms: i64,
    pub end_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Life {
    Up,
    /// SIGSTOPped until the start of this operation.
    Paused(usize),
    /// Killed (SIGKILL) until the start of this operation.
    Down(usize),
}

/// Who writes a value: every side draws from its own range, so values never collide.
#[derive(Clone, Copy, Debug)]
pub enum Who {
    Acme,
    Globex,
    AcmeRace,
    GlobexRace,
}

impl Who {
    pub fn slot(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Who::Acme => "acme",
            Who::Globex => "globex",
            Who::AcmeRace => "acme-race",
            Who::GlobexRace => "globex-race",
        }
    }
    pub fn stages(self) -> &'static [&'static str] {
        match self {
            Who::Acme | Who::AcmeRace => &OWNER_STAGES,
            Who::Globex | Who::GlobexRace => &PARTNER_STAGES,
        }
    }
}

/// Text for `field=` that differs from `current`, unique per writer and operation where the
/// type allows it. `draw` is a random number drawn whatever the current value is.
pub fn new_value(field: &str, who: Who, op: usize, draw: usize, current: Option<&Value>) -> String {
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

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `<kind> update <id> field=value… --json`
pub fn update_args(kind: Kind, id: &str, assignments: &[(&str, String)]) -> Vec<String> {
    let mut args = vec![kind.cli().to_string(), "update".into(), id.to_string()];
    args.extend(assignments.iter().map(|(f, v)| format!("{f}={v}")));
    args.push("--json".into());
    args
}

/// The CLI against `node`, with the wall-clock window it ran in.
pub fn timed_cli(node: &TestNode, args: Vec<String>) -> (Output, i64, i64) {
    let start = now_ms();
    let o = node.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (o, start, now_ms())
}

pub fn first_line(o: &Output) -> String {
    stderr(o).lines().next().unwrap_or("").to_string()
}

pub fn json_of(o: &Output) -> Result<Json, String> {
    if !o.status.success() {
        return Err(stderr(o).trim().to_string());
    }
    serde_json::from_str(stdout(o).trim()).map_err(|e| format!("{e}: {}", stdout(o)))
}

pub fn show(v: &Option<Value>) -> String {
    match v {
        Some(v) => serde_json::to_string(v).unwrap(),
        None => "(cleared)".into(),
    }
}
