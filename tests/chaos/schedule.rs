//! The schedule: node lifecycle (start, resume, restore, `kill -9`, SIGSTOP/SIGCONT), the
//! prelude, one seeded step, and sampling the field versions every running node shows.

use super::*;

impl Chaos {
    // -------------------------------------------------------------- node lifecycle

    pub fn start(&mut self, node: usize) {
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

    pub fn resume(&mut self, node: usize) {
        assert!(self.nodes[node].signal("-CONT"), "SIGCONT {}", ORGS[node]);
        self.life[node] = Life::Up;
    }

    /// Nodes whose outage is over come back (at the start of an operation, or at the end).
    pub fn restore(&mut self, all: bool) {
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

    pub fn op_kill(&mut self) {
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

    pub fn op_pause(&mut self) {
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

    // -------------------------------------------------------------- the schedule

    pub fn prelude(&mut self) {
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

    pub fn step(&mut self) {
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
    pub fn sample_versions(&mut self) {
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
}
