//! The owner's operations: creates, edits, shares and revokes, case reassignments and
//! deletes (refused while live records refer to the target).

use super::*;

impl Chaos {
    // -------------------------------------------------------------- owner operations

    pub fn live(&self, kind: Kind) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| self.recs[*i].kind == kind && !self.recs[*i].deleted)
            .collect()
    }

    pub fn live_any(&self) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| !self.recs[*i].deleted)
            .collect()
    }

    /// Runs an acknowledged-or-not edit through the CLI of `node` and logs it.
    pub fn edit(
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
    pub fn ack(
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

    pub fn create(&mut self, kind: Kind, fields: &[String], refs: Vec<usize>, assigned: &str) {
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

    pub fn op_create(&mut self, kind: Kind) {
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

    pub fn op_owner_edit(&mut self) {
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

    pub fn op_share(&mut self) {
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

    pub fn op_unshare(&mut self) {
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

    pub fn unshare(&mut self, rec: usize) {
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

    pub fn op_reassign(&mut self) {
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
    pub fn reassign(&mut self, rec: usize, draw: usize) {
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

    pub fn op_delete(&mut self) {
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
    pub fn dependents(&self, rec: usize) -> Vec<usize> {
        (0..self.recs.len())
            .filter(|i| !self.recs[*i].deleted && self.recs[*i].refs.contains(&rec))
            .collect()
    }

    /// acme deletes the record; refused exactly when live records still refer to it.
    pub fn delete(&mut self, rec: usize) {
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
}
