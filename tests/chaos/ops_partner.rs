//! The partners' operations: globex's edits of shared deals, fixit's status changes of its
//! cases, edits queued while acme is down and taken away before they arrive, and concurrent
//! edits of the same field by acme and globex.

use super::*;

impl Chaos {
    // -------------------------------------------------------------- partner operations

    pub fn op_globex_edit(&mut self) {
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

    pub fn globex_edit(&mut self, rec: usize, field: &str, draw: usize) {
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

    pub fn op_fixit_edit(&mut self) {
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
    pub fn fixit_edit(&mut self, rec: usize, wild: bool, draw: usize) {
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
    pub fn op_offline_edit(&mut self) {
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
    pub fn op_concurrent(&mut self) {
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
}
