//! `verbund bench sync`: two real node processes on loopback (owner `acme`, partner `globex`,
//! embedded SQLite, mutual TLS), pinned to each other. Measures the initial share of many
//! accounts (records/s until the partner holds them all), the propagation latency of single
//! owner updates (owner commit → event in the partner's change stream), the round trip of a
//! partner edit (partner's local edit → merged at the owner, seen in the owner's change
//! stream), the peak RSS of every node and the warnings and errors in their logs. With
//! `--partners N` one owner shares with N partner nodes (fan-out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;

use crate::bench::{cpu_secs, percentile, rss_kib, spawn_org};

#[derive(Args)]
pub struct SyncArgs {
    /// Accounts shared with the partner in the initial share.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Single updates timed owner → partner, and partner edits timed partner → owner.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Partner nodes the owner shares the records with (each gets all of them). Latencies
    /// are measured against the first.
    #[arg(long, default_value_t = 1)]
    partners: usize,
    /// Records per progress band of the initial share (its rate is reported per band).
    #[arg(long, default_value_t = 100_000)]
    band: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// The organization name of partner `i` (0-based).
fn partner_org(i: usize) -> String {
    if i == 0 {
        "globex".into()
    } else {
        format!("globex{}", i + 1)
    }
}

/// Lines of a node's log at WARN and at ERROR level.
fn log_counts(path: &std::path::Path) -> (usize, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let warn = text.lines().filter(|l| l.contains(" WARN ")).count();
    let error = text.lines().filter(|l| l.contains("ERROR")).count();
    (warn, error)
}

/// The first lines at WARN or ERROR level of a node's log (shown when there are any).
fn log_excerpt(path: &std::path::Path, n: usize) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains("ERROR"))
        .take(n)
        .map(|l| l.chars().take(300).collect())
        .collect()
}

/// Prints the warnings and errors of the nodes' logs when dropped while armed (the benchmark
/// failed); declared after the nodes, so it runs before their directories are removed.
struct LogDump {
    logs: Vec<std::path::PathBuf>,
    armed: bool,
}

impl Drop for LogDump {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for log in &self.logs {
            let lines = log_excerpt(log, 20);
            if !lines.is_empty() {
                eprintln!("{}:", log.display());
                for l in lines {
                    eprintln!("    {l}");
                }
            }
        }
    }
}

/// Times at which the held count first reached each multiple of `band` (progress bands).
struct Bands {
    band: usize,
    start: Instant,
    reached: Vec<f64>,
}

impl Bands {
    fn note(&mut self, held: i64, now: Instant) {
        let done = (held.max(0) as usize) / self.band;
        let before = self.reached.len();
        if done <= before {
            return;
        }
        // Several bands completed since the last look (a batch larger than a band): the
        // time in between is spread over them evenly.
        let prev = self.reached.last().copied().unwrap_or(0.0);
        let now = now.duration_since(self.start).as_secs_f64();
        let new = done - before;
        for i in 1..=new {
            self.reached
                .push(prev + (now - prev) * i as f64 / new as f64);
        }
    }

    /// Records per second of each completed band.
    fn rates(&self) -> Vec<f64> {
        let mut prev = 0.0;
        self.reached
            .iter()
            .map(|&t| {
                let r = self.band as f64 / (t - prev).max(1e-6);
                prev = t;
                r
            })
            .collect()
    }
}

async fn admin_of(cfg: &verbund_node::config::NodeConfig, endpoint: &str) -> Result<Channel> {
    connect(endpoint, &ClientIdentity::from_config(cfg)?).await
}

async fn pin(
    admin: &Channel,
    org: &str,
    cfg: &verbund_node::config::NodeConfig,
    endpoint: &str,
) -> Result<()> {
    let ca = cfg.read(&cfg.tls.ca_cert)?;
    let der = verbund_node::pki::parse_certs(&ca)?.remove(0);
    pb::admin_service_client::AdminServiceClient::new(admin.clone())
        .add_partner(pb::AddPartnerRequest {
            org: org.into(),
            ca_pem: ca,
            endpoint: endpoint.into(),
            fingerprint: verbund_node::pki::fingerprint(der.as_ref()),
        })
        .await?;
    Ok(())
}

async fn replicas(admin: &Channel) -> Result<i64> {
    let mut client = pb::admin_service_client::AdminServiceClient::new(admin.clone());
    // A poll racing the node's connection-age GOAWAY is asked again (see create_accounts).
    let mut attempt = 0;
    let s = loop {
        match client.sync_status(pb::SyncStatusRequest {}).await {
            Ok(r) => break r.into_inner(),
            Err(s)
                if attempt < 5
                    && matches!(s.code(), tonic::Code::Cancelled | tonic::Code::Unavailable) =>
            {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => return Err(s.into()),
        }
    };
    Ok(s.partners.iter().map(|p| p.replicas).sum())
}

/// Creates `n` accounts tagged `bench` with 64 calls in flight; returns their ids.
async fn create_accounts(admin: &Channel, n: usize, quiet: bool) -> Result<Vec<String>> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::with_capacity(n)));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (next, ids, ch) = (next.clone(), ids.clone(), admin.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = pb::account_service_client::AccountServiceClient::new(ch);
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                let request = pb::CreateAccountRequest {
                    account: Some(pb::Account {
                        name: Some(format!("Sync Bench {i}")),
                        city: Some("Hamburg".into()),
                        tags: vec!["bench".into()],
                        ..Default::default()
                    }),
                };
                // The node closes a connection after its maximum age (GOAWAY); a call racing
                // that is CANCELLED or UNAVAILABLE and is sent again (at worst one account
                // more: the share is measured until the partner holds at least `n`).
                let mut attempt = 0;
                let m = loop {
                    match c.create_account(request.clone()).await {
                        Ok(r) => break r.into_inner(),
                        Err(s)
                            if attempt < 5
                                && matches!(
                                    s.code(),
                                    tonic::Code::Cancelled | tonic::Code::Unavailable
                                ) =>
                        {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(s) => return Err(s.into()),
                    }
                };
                if let Some(meta) = m.meta {
                    ids.lock().unwrap_or_else(|p| p.into_inner()).push(meta.id);
                }
            }
        }));
    }
    let started = Instant::now();
    loop {
        let done = next.load(std::sync::atomic::Ordering::Relaxed).min(n);
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
        if !quiet {
            eprint!("\r  creating accounts at the owner: {done}/{n}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for t in tasks {
        t.await??;
    }
    if !quiet {
        eprintln!(
            "\r  created {n} accounts at the owner in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(ids)
}

async fn last_seq(admin: &Channel) -> Result<i64> {
    let info = pb::node_service_client::NodeServiceClient::new(admin.clone())
        .who_am_i(pb::WhoAmIRequest {})
        .await?
        .into_inner();
    Ok(info.last_seq)
}

pub async fn sync(a: SyncArgs) -> Result<()> {
    if a.records == 0 || a.samples == 0 || a.partners == 0 || a.band == 0 {
        bail!("--records, --samples, --partners and --band must be at least 1");
    }
    let quiet = a.json;
    let (owner_proc, owner_cfg, owner_ep) = spawn_org("acme").await?;
    let owner = admin_of(&owner_cfg, &owner_ep).await?;
    let policy = owner_cfg.path(&owner_cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy)?;
    let mut partner_procs = Vec::with_capacity(a.partners);
    let mut partner_admins = Vec::with_capacity(a.partners);
    for i in 0..a.partners {
        let org = partner_org(i);
        let (node, cfg, ep) = spawn_org(&org).await?;
        let admin = admin_of(&cfg, &ep).await?;
        pin(&owner, &org, &cfg, &ep).await?;
        pin(&admin, "acme", &owner_cfg, &owner_ep).await?;
        text.push_str(&format!("g2, {org}, partner\n"));
        partner_procs.push(node);
        partner_admins.push(admin);
    }
    let partner = partner_admins[0].clone();
    std::fs::write(&policy, text)?;
    // Should the benchmark fail, what the nodes logged is shown before their directories go.
    let mut log_dump = LogDump {
        logs: std::iter::once(owner_proc.log.clone())
            .chain(partner_procs.iter().map(|p| p.log.clone()))
            .collect(),
        armed: true,
    };
    let mut owner_admin = pb::admin_service_client::AdminServiceClient::new(owner.clone());
    owner_admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await?;
    if !quiet {
        eprintln!(
            "bench sync: owner acme at {owner_ep}, {} partner node(s) (embedded SQLite, mutual TLS)",
            a.partners
        );
    }

    // 1. Initial share.
    let ids = create_accounts(&owner, a.records, quiet).await?;
    // CPU time of each node during the share: what a record costs each side, a figure that
    // moves less with the machine's other load than the wall-clock rate does.
    let node_pids: Vec<u32> = std::iter::once(owner_proc.child.id())
        .chain(partner_procs.iter().map(|p| p.child.id()))
        .collect();
    let cpu_before: Vec<Option<f64>> = node_pids.iter().map(|p| cpu_secs(*p)).collect();
    let started = Instant::now();
    for i in 0..a.partners {
        owner_admin
            .add_share_rule(pb::AddShareRuleRequest {
                org: partner_org(i),
                rule: "account-tag:bench".into(),
                profile: "partner-account".into(),
            })
            .await?;
    }
    let mut bands: Vec<Bands> = (0..a.partners)
        .map(|_| Bands {
            band: a.band,
            start: started,
            reached: Vec::new(),
        })
        .collect();
    loop {
        let mut all = true;
        let mut least = i64::MAX;
        for (i, admin) in partner_admins.iter().enumerate() {
            let held = replicas(admin).await?;
            bands[i].note(held, Instant::now());
            least = least.min(held);
            all &= held >= a.records as i64;
        }
        if !quiet {
            let rate = bands[0].rates().last().copied().unwrap_or(0.0);
            eprint!(
                "\r  initial share: every partner holds at least {least}/{} (last band {rate:.0} records/s)   ",
                a.records
            );
        }
        if all {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the initial share did not complete within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let share_secs = started.elapsed().as_secs_f64();
    let share_cpu: Vec<Option<f64>> = node_pids
        .iter()
        .zip(&cpu_before)
        .map(|(p, before)| Some(cpu_secs(*p)? - (*before)?))
        .collect();
    let band_rates = bands[0].rates();
    if !quiet {
        eprintln!(
            "\r  initial share: {} records to {} partner(s) in {share_secs:.2} s                    ",
            a.records, a.partners
        );
        for (i, r) in band_rates.iter().enumerate() {
            eprintln!(
                "    records {:>9} to {:<9} {r:>9.0} records/s",
                i * a.band,
                (i + 1) * a.band
            );
        }
    }

    // 2. Owner update → partner's change stream.
    let mut partner_events = pb::change_service_client::ChangeServiceClient::new(partner.clone())
        .watch(pb::WatchRequest {
            after_seq: last_seq(&partner).await?,
            kinds: Vec::new(),
        })
        .await?
        .into_inner();
    let mut owner_accounts = pb::account_service_client::AccountServiceClient::new(owner.clone());
    let mut propagation = Vec::with_capacity(a.samples);
    // How long the owner's update call takes (its commit), part of the propagation.
    let mut committed = Vec::with_capacity(a.samples);
    for i in 0..a.samples {
        let id = ids[i % ids.len()].clone();
        let t0 = Instant::now();
        owner_accounts
            .update_account(pb::UpdateAccountRequest {
                id: id.clone(),
                account: Some(pb::Account {
                    city: Some(format!("Stadt {i}")),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["city".into()],
                }),
            })
            .await?;
        committed.push(t0.elapsed().as_micros() as u64);
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), partner_events.next())
                .await
                .context("no event at the partner within 30 s")?
                .context("the partner's stream ended")??;
            if ev.record_id == id {
                break;
            }
        }
        propagation.push(t0.elapsed().as_micros() as u64);
    }

    // 3. Partner edit → merged at the owner.
    let deal = pb::opportunity_service_client::OpportunityServiceClient::new(owner.clone())
        .create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                account_id: Some(ids[0].clone()),
                name: Some("Sync bench deal".into()),
                stage: pb::OpportunityStage::Qualification as i32,
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .meta
        .context("no id")?
        .id;
    owner_admin
        .add_share(pb::AddShareRequest {
            record_id: deal.clone(),
            org: "globex".into(),
            profile: "joint-deal".into(),
        })
        .await?;
    let mut partner_deals =
        pb::opportunity_service_client::OpportunityServiceClient::new(partner.clone());
    let waited = Instant::now();
    while partner_deals
        .get_opportunity(pb::GetRecordRequest { id: deal.clone() })
        .await
        .is_err()
    {
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the shared deal did not reach the partner");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut owner_events = pb::change_service_client::ChangeServiceClient::new(owner.clone())
        .watch(pb::WatchRequest {
            after_seq: last_seq(&owner).await?,
            kinds: Vec::new(),
        })
        .await?
        .into_inner();
    let mut round_trip = Vec::with_capacity(a.samples);
    for i in 0..a.samples {
        let t0 = Instant::now();
        partner_deals
            .update_opportunity(pb::UpdateOpportunityRequest {
                id: deal.clone(),
                opportunity: Some(pb::Opportunity {
                    next_step: Some(format!("Schritt {i}")),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["next_step".into()],
                }),
            })
            .await?;
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), owner_events.next())
                .await
                .context("the partner's edit did not reach the owner within 30 s")?
                .context("the owner's stream ended")??;
            if ev.record_id == deal {
                break;
            }
        }
        round_trip.push(t0.elapsed().as_micros() as u64);
    }

    propagation.sort_unstable();
    committed.sort_unstable();
    round_trip.sort_unstable();
    let per_sec = a.records as f64 / share_secs;
    let ms = |us: u64| us as f64 / 1000.0;
    // Peak RSS is the kernel's own (VmHWM) of each node process.
    let nodes = std::iter::once(("acme".to_string(), &owner_proc)).chain(
        partner_procs
            .iter()
            .enumerate()
            .map(|(i, p)| (partner_org(i), p)),
    );
    let mut reports = Vec::new();
    for ((org, p), cpu) in nodes.zip(&share_cpu) {
        let (warn, error) = log_counts(&p.log);
        reports.push((
            org,
            rss_kib(p.child.id()),
            warn,
            error,
            log_excerpt(&p.log, 5),
            *cpu,
        ));
    }
    // Microseconds of a node's CPU per record shared.
    let us_per_record = |cpu: f64| cpu * 1e6 / a.records as f64;
    if a.json {
        let nodes: Vec<_> = reports
            .iter()
            .map(|(org, rss, warn, error, _, cpu)| {
                serde_json::json!({
                    "org": org, "rss_kib": rss.map(|r| r.0), "peak_rss_kib": rss.map(|r| r.1),
                    "log_warnings": warn, "log_errors": error,
                    "share_cpu_secs": cpu, "share_cpu_us_per_record": cpu.map(us_per_record),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "records": a.records, "partners": a.partners,
                "initial_share_secs": share_secs, "initial_share_per_sec": per_sec,
                "band": a.band, "band_per_sec": band_rates,
                "propagation_p50_ms": ms(percentile(&propagation, 0.50)),
                "propagation_p99_ms": ms(percentile(&propagation, 0.99)),
                "owner_update_call_p50_ms": ms(percentile(&committed, 0.50)),
                "owner_update_call_p99_ms": ms(percentile(&committed, 0.99)),
                "partner_edit_p50_ms": ms(percentile(&round_trip, 0.50)),
                "partner_edit_p99_ms": ms(percentile(&round_trip, 0.99)),
                "nodes": nodes,
            })
        );
    } else {
        println!(
            "initial share        {} records to {} partner(s) in {share_secs:.2} s = {per_sec:.0} records/s",
            a.records, a.partners
        );
        if let (Some(first), Some(last)) = (band_rates.first(), band_rates.last()) {
            println!(
                "  per {} records   first band {first:.0}/s, last band {last:.0}/s ({:.0}%)",
                a.band,
                100.0 * last / first
            );
        }
        println!(
            "owner → partner      p50 {:.2} ms  p99 {:.2} ms  ({} single updates; of it the owner's update call p50 {:.2} ms  p99 {:.2} ms)",
            ms(percentile(&propagation, 0.50)),
            ms(percentile(&propagation, 0.99)),
            a.samples,
            ms(percentile(&committed, 0.50)),
            ms(percentile(&committed, 0.99)),
        );
        println!(
            "partner edit → owner p50 {:.2} ms  p99 {:.2} ms  ({} edits)",
            ms(percentile(&round_trip, 0.50)),
            ms(percentile(&round_trip, 0.99)),
            a.samples
        );
        let mib = |kib: u64| kib as f64 / 1024.0;
        for (org, rss, warn, error, excerpt, cpu) in &reports {
            let rss = rss
                .map(|(now, peak)| format!("RSS {:.1} MiB (peak {:.1} MiB)", mib(now), mib(peak)))
                .unwrap_or_else(|| "RSS not measured".into());
            let cpu = cpu
                .map(|c| format!("share CPU {c:.2} s ({:.0} µs/record)", us_per_record(c)))
                .unwrap_or_else(|| "share CPU not measured".into());
            println!("{org:<20} {rss}; {cpu}; log: {warn} warning(s), {error} error(s)");
            for line in excerpt {
                println!("    {line}");
            }
        }
    }
    log_dump.armed = false;
    Ok(())
}
