//! `verbund bench match`: the consolidation engine on a seeded, labelled data set of accounts
//! and contacts across subsidiaries. Reports pairwise and B-cubed quality, build time, peak
//! RSS of this process, and the latency of incremental changes (one record at a time).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use verbund_consolidation::quality::{Generator, GeneratorParams, Quality, quality};
use verbund_consolidation::{AccountInput, Consolidation, Engine, EngineOptions, Matcher};

use crate::bench::percentile;

#[derive(Args)]
pub struct MatchArgs {
    /// Account records to generate.
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Subsidiaries holding them.
    #[arg(long, default_value_t = 5)]
    subsidiaries: usize,
    /// Seed of the generated data set (same seed, same records).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Accounts only (no contacts).
    #[arg(long)]
    no_contacts: bool,
    /// Threads of the batch build.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Incremental changes to time after the build (each: change a record, then restore it).
    #[arg(long, default_value_t = 200)]
    changes: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// (VmRSS, VmHWM) of this process in KiB.
fn own_rss() -> Option<(u64, u64)> {
    crate::bench::rss_kib(std::process::id())
}

/// Quality of an engine's partition; record keys are `<prefix><index into truth>`.
fn measure<M: Matcher>(engine: &Engine<M>, truth: &[u32]) -> Result<Quality> {
    let mut cluster_ids: HashMap<String, u32> = HashMap::new();
    let mut labels = Vec::with_capacity(truth.len());
    let mut bad = None;
    engine.for_each_record(|record, cluster| {
        let next = cluster_ids.len() as u32;
        let c = *cluster_ids.entry(cluster.to_owned()).or_insert(next);
        match record
            .get(1..)
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|i| truth.get(i))
        {
            Some(&t) => labels.push((c, t)),
            None => bad = Some(record.to_owned()),
        }
    });
    if let Some(b) = bad {
        bail!("record {b} has no truth");
    }
    Ok(quality(&labels))
}

/// An order-free fingerprint of a partition: equal partitions give equal fingerprints.
fn fingerprint<M: Matcher>(engine: &Engine<M>) -> u64 {
    let mut sum = 0u64;
    engine.for_each_record(|record, cluster| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (record, cluster).hash(&mut h);
        sum = sum.wrapping_add(h.finish());
    });
    sum
}

/// A changed copy: the name gains a word, the phone goes, so the record's blocks, edges and
/// perhaps its cluster change.
fn changed(input: &AccountInput) -> AccountInput {
    let mut c = input.clone();
    c.name = format!("{} Nord", c.name);
    c.phone = None;
    c
}

pub fn run(args: MatchArgs) -> Result<()> {
    let params = GeneratorParams {
        accounts: args.records,
        subsidiaries: args.subsidiaries,
        seed: args.seed,
    };
    let opts = EngineOptions {
        threads: args.threads.max(1),
        ..EngineOptions::default()
    };
    let step = (args.records / args.changes.max(1)).max(1);
    let mut account_truth = Vec::with_capacity(args.records + 16);
    let mut samples: Vec<(String, AccountInput)> = Vec::new();
    let rss_before = own_rss();

    let started = Instant::now();
    let accounts = Generator::accounts(params).map(|l| {
        if account_truth.len() % step == 0 && samples.len() < args.changes {
            samples.push((l.key.clone(), l.input.clone()));
        }
        account_truth.push(l.truth);
        (l.key, l.input)
    });
    let mut consolidation = Consolidation::build_accounts(opts, accounts, &[]);
    let accounts_secs = started.elapsed().as_secs_f64();
    let rss_accounts = own_rss();

    let mut contact_truth = Vec::new();
    let mut contacts_secs = 0.0;
    if !args.no_contacts {
        let started = Instant::now();
        let contacts = Generator::contacts(params).map(|l| {
            contact_truth.push(l.truth);
            (l.key, l.input)
        });
        consolidation.build_contacts(contacts, &[]);
        contacts_secs = started.elapsed().as_secs_f64();
    }
    let rss_built = own_rss();

    let account_quality = measure(consolidation.accounts(), &account_truth)?;
    let contact_quality = if args.no_contacts {
        None
    } else {
        Some(measure(consolidation.contacts(), &contact_truth)?)
    };

    // Incremental: change a record, then restore it; every fourth is removed and re-added.
    let before = (
        fingerprint(consolidation.accounts()),
        fingerprint(consolidation.contacts()),
    );
    let mut micros: Vec<u64> = Vec::with_capacity(samples.len() * 2);
    for (i, (key, input)) in samples.iter().enumerate() {
        let t = Instant::now();
        if i % 4 == 3 {
            consolidation.remove_account(key);
        } else {
            consolidation.upsert_account(key, &changed(input));
        }
        micros.push(t.elapsed().as_micros() as u64);
        let t = Instant::now();
        consolidation.upsert_account(key, input);
        micros.push(t.elapsed().as_micros() as u64);
    }
    let after = (
        fingerprint(consolidation.accounts()),
        fingerprint(consolidation.contacts()),
    );
    micros.sort_unstable();
    let rss_end = own_rss();
    let restored = before == after;

    let prf = |q: &Quality| {
        serde_json::json!({
            "pairwise": {"precision": q.pairwise.precision, "recall": q.pairwise.recall, "f1": q.pairwise.f1},
            "bcubed": {"precision": q.bcubed.precision, "recall": q.bcubed.recall, "f1": q.bcubed.f1},
            "records": q.records, "true_entities": q.true_entities, "predicted_clusters": q.predicted_clusters,
            "true_pairs": q.true_pairs, "predicted_pairs": q.predicted_pairs, "correct_pairs": q.correct_pairs,
        })
    };
    let kib = |r: Option<(u64, u64)>, peak: bool| r.map(|(now, hwm)| if peak { hwm } else { now });
    let report = serde_json::json!({
        "records": args.records, "subsidiaries": args.subsidiaries, "seed": args.seed, "threads": opts.threads,
        "accounts": prf(&account_quality),
        "account_engine": format!("{:?}", consolidation.accounts().stats()),
        "contact_engine": format!("{:?}", consolidation.contacts().stats()),
        "contacts": contact_quality.as_ref().map(prf),
        "accounts_build_secs": accounts_secs,
        "contacts_build_secs": contacts_secs,
        "rss_start_kib": kib(rss_before, false),
        "rss_after_accounts_kib": kib(rss_accounts, false),
        "rss_after_build_kib": kib(rss_built, false),
        "peak_rss_kib": kib(rss_end, true),
        "incremental": {
            "operations": micros.len(),
            "p50_us": percentile(&micros, 0.50), "p99_us": percentile(&micros, 0.99),
            "max_us": micros.last().copied().unwrap_or(0),
            "restored_to_batch_partition": restored,
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let line = |name: &str, q: &Quality| {
        println!(
            "{name}: {} records, {} entities, {} clusters; pairwise P {:.4} R {:.4} F1 {:.4}; B-cubed P {:.4} R {:.4} F1 {:.4}",
            q.records,
            q.true_entities,
            q.predicted_clusters,
            q.pairwise.precision,
            q.pairwise.recall,
            q.pairwise.f1,
            q.bcubed.precision,
            q.bcubed.recall,
            q.bcubed.f1
        )
    };
    line("accounts", &account_quality);
    if let Some(q) = &contact_quality {
        line("contacts", q);
    }
    println!(
        "build: accounts {accounts_secs:.2} s, contacts {contacts_secs:.2} s ({} threads)",
        opts.threads
    );
    if let Some((_, peak)) = rss_end {
        println!(
            "peak RSS {:.1} MiB (generator included)",
            peak as f64 / 1024.0
        );
    }
    println!(
        "incremental: {} operations, p50 {} µs, p99 {} µs, max {} µs; restored to the batch partition: {restored}",
        micros.len(),
        percentile(&micros, 0.50),
        percentile(&micros, 0.99),
        micros.last().copied().unwrap_or(0)
    );
    Ok(())
}
