//! The invariants, checked once sync has settled: replicas equal the owner's projection,
//! no replica is held that the owner does not show, every acknowledged edit is accounted
//! for, versions never go back (unless excused), and every link is sound.

use super::*;

impl Chaos {
    // -------------------------------------------------------------- the invariants

    pub fn record_named(&self, id: &str) -> Option<&Rec> {
        self.recs.iter().find(|r| r.id == id)
    }

    /// Why acme may not show `partner` a record, as far as the schedule knows.
    pub fn why_hidden(&self, partner: usize, id: &str) -> String {
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

    pub fn ops_touching(&self, id: &str) -> String {
        self.history
            .get(id)
            .map(|h| h.join("; "))
            .unwrap_or_default()
    }

    pub fn cli_json(&self, node: usize, args: &[&str]) -> Result<Json, String> {
        json_of(&self.nodes[node].cli(args))
            .map_err(|e| format!("{} {}: {e}", ORGS[node], args.join(" ")))
    }

    pub fn conflicts(&self) -> Result<Vec<ConflictRow>, String> {
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

    pub fn outbox(&self, node: usize) -> Result<Vec<OutboxRow>, String> {
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
    pub fn check_replicas(&self, partner: usize, out: &mut Vec<String>) {
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
    pub fn check_edits(
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
    pub fn check_links(&self, out: &mut Vec<String>) {
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
    pub fn check(&mut self) -> Vec<String> {
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
    pub fn settle(&mut self) -> Vec<String> {
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
    pub fn own_edit_rejected(&self, d: &Decrease) -> bool {
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
    pub fn unexcused_decreases(&self) -> Vec<String> {
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
