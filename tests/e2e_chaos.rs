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
//!
//! The harness lives in `chaos/`: the model of what the schedule did (`model`), reads of
//! what the nodes show (`reads`), the federation of three nodes (`mod.rs`), the schedule and
//! node lifecycle (`schedule`), the owner's and the partners' operations (`ops_owner`,
//! `ops_partner`) and the invariants (`check`). This file runs the seeds and reports.

mod chaos;
mod support;

use std::time::Instant;

use chaos::Chaos;

const DEFAULT_SEEDS: [u64; 3] = [1, 2, 3];
const DEFAULT_OPS: usize = 40;

/// Field versions of every node are sampled after every this many operations.
const SAMPLE_EVERY: usize = 3;

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
