//! `verbund bench api`: load against a real node process over mutual TLS, from concurrent
//! clients on several connections. Reports throughput, latency percentiles and node RSS.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::config::NodeConfig;
use verbund_node::pb;

use crate::init::{InitArgs, init};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Creates and gets of accounts against a node.
    Api(ApiArgs),
    /// Federation sync between two real node processes: initial share, propagation latency,
    /// partner edit round trip, RSS.
    Sync(crate::bench_sync::SyncArgs),
    /// The consolidation engine on a seeded labelled data set: match quality (pairwise,
    /// B-cubed), build time, peak RSS, incremental latency. No node involved.
    Match(crate::bench_match::MatchArgs),
    /// The consolidated view of a real node: build time, peak RSS, and how long an edit takes
    /// to show in GetCustomer's golden record.
    Consolidation(crate::bench_consolidation::ConsolidationArgs),
}

#[derive(Args)]
pub struct ApiArgs {
    /// Benchmark this running node (as its [client] identity). Default: start a fresh node
    /// process on the embedded database in a temporary directory.
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Endpoint when --config's listen address is not how to reach the node.
    #[arg(long)]
    endpoint: Option<String>,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// HTTP/2 connections (each multiplexes many calls).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent in-flight calls in total.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
    /// Accounts shared with a partner organization for the "partner get" phase (only with a
    /// node the benchmark starts itself; 0 skips the phase).
    #[arg(long, default_value_t = 100)]
    shared: usize,
    /// Start this many processes of one node on one PostgreSQL database (`shared = true`)
    /// and spread the connections over them. Needs --database-url.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// The PostgreSQL database of the node the benchmark starts (use an empty database or
    /// schema: the benchmark writes into it). Default: embedded SQLite.
    #[arg(long)]
    database_url: Option<String>,
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Api(a) => api(a).await,
        BenchCommand::Sync(a) => crate::bench_sync::sync(a).await,
        BenchCommand::Match(a) => crate::bench_match::run(a),
        BenchCommand::Consolidation(a) => crate::bench_consolidation::run(a).await,
    }
}

/// A node process started for the benchmark; killed on drop.
pub(crate) struct SpawnedNode {
    pub(crate) child: Child,
    /// The node's log (its stderr), so a benchmark can say whether anything went wrong.
    pub(crate) log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for SpawnedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // To read a run afterwards: the node logs are kept in this directory.
        if let (Some(dir), Some(name)) = (
            std::env::var_os("VERBUND_BENCH_KEEP_LOGS"),
            self.log.file_name(),
        ) {
            let to = std::path::Path::new(&dir).join(name);
            match std::fs::copy(&self.log, &to) {
                Ok(_) => eprintln!("node log kept: {}", to.display()),
                Err(e) => eprintln!("could not keep {}: {e}", self.log.display()),
            }
        }
    }
}

/// `init` of organization `org` (on `database_url`, else embedded SQLite) and `processes`
/// node processes serving it; with more than one, they share the PostgreSQL database.
async fn spawn_processes(
    org: &str,
    database_url: Option<&str>,
    processes: usize,
) -> Result<(Vec<SpawnedNode>, NodeConfig, Vec<String>)> {
    let Some(url) = database_url else {
        let (node, cfg, endpoint) = spawn_org(org).await?;
        return Ok((vec![node], cfg, vec![endpoint]));
    };
    let dir = tempfile::Builder::new()
        .prefix("verbund-bench-")
        .tempdir()?;
    let done = init(&InitArgs {
        org: org.into(),
        dir: dir.path().join(org),
        name: "node1".into(),
        listen: "127.0.0.1:0".parse()?,
        ops_listen: None,
        dns: vec![],
        database_url: Some(url.to_string()),
    })
    .await?;
    // Every process: the same identity and database, its own port, no ops listener.
    let text = std::fs::read_to_string(&done.config_path)?
        .replace("[database]\n", "[database]\nshared = true\n")
        .replace("[ops]\nenabled = true", "[ops]\nenabled = false");
    std::fs::write(&done.config_path, text)?;
    let cfg = NodeConfig::load(&done.config_path)?;
    let mut nodes = Vec::new();
    let mut endpoints = Vec::new();
    for i in 0..processes.max(1) {
        let log = dir.path().join(format!("node-{i}.log"));
        let (child, endpoint) = start_process(&done.config_path, &log).await?;
        nodes.push(SpawnedNode {
            child,
            log,
            _dir: tempfile::Builder::new()
                .prefix("verbund-bench-")
                .tempdir()?,
        });
        endpoints.push(endpoint);
    }
    // The first process owns the directory (certificates, config) for the others' lifetime.
    if let Some(first) = nodes.first_mut() {
        first._dir = dir;
    }
    Ok((nodes, cfg, endpoints))
}

/// `verbund run --config <config>`; the endpoint it serves on.
async fn start_process(config: &std::path::Path, log: &std::path::Path) -> Result<(Child, String)> {
    let exe = std::env::current_exe().context("locating the verbund binary")?;
    // Warnings and errors by default (counted in the results); a finer filter to look into a
    // run, e.g. VERBUND_BENCH_NODE_LOG="warn,verbund_node=debug" (and VERBUND_BENCH_KEEP_LOGS).
    let filter = std::env::var("VERBUND_BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into());
    let mut child = Command::new(exe)
        .args(["run", "--config"])
        .arg(config)
        .env("VERBUND_LOG", filter)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(log).context("creating the node's log")?)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the node process")?;
    let stdout = child.stdout.take().context("node stdout")?;
    let addr = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| {
                l.split(" serving on ")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    .map(str::to_string)
            })
    })
    .await?
    .context("the node did not start")?;
    Ok((child, format!("https://{addr}")))
}

/// `init` + `run` of organization `org` in a temporary directory (embedded SQLite).
pub(crate) async fn spawn_org(org: &str) -> Result<(SpawnedNode, NodeConfig, String)> {
    let dir = tempfile::Builder::new()
        .prefix("verbund-bench-")
        .tempdir()?;
    let done = init(&InitArgs {
        org: org.into(),
        dir: dir.path().join(org),
        name: "node1".into(),
        listen: "127.0.0.1:0".parse()?,
        ops_listen: None,
        dns: vec![],
        database_url: None,
    })
    .await?;
    let cfg = NodeConfig::load(&done.config_path)?;
    let log = dir.path().join(format!("{org}.log"));
    let (child, endpoint) = start_process(&done.config_path, &log).await?;
    Ok((
        SpawnedNode {
            child,
            log,
            _dir: dir,
        },
        cfg,
        endpoint,
    ))
}

/// (VmRSS, VmHWM) in KiB of a process.
pub(crate) fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system, all threads) a process has used so far, in seconds. Linux
/// reports it in clock ticks of USER_HZ, which is 100 on every Linux ABI we run on.
pub(crate) fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state (3), ..., utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

struct PhaseResult {
    name: &'static str,
    ops: usize,
    errors: usize,
    secs: f64,
    p50_us: u64,
    p99_us: u64,
}

impl PhaseResult {
    fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Runs `concurrency` loops of `op` for `duration`, spread over the channels.
async fn phase<F, Fut>(
    name: &'static str,
    channels: &[Channel],
    concurrency: usize,
    duration: Duration,
    op: F,
) -> PhaseResult
where
    F: Fn(Channel, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let ch = channels[worker % channels.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            // xorshift state per worker, for picking records without a rand dependency.
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (worker as u64 + 1);
            while Instant::now() < deadline {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let t = Instant::now();
                if op(ch.clone(), x).await {
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((lat, e)) = t.await {
            all.extend(lat);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    PhaseResult {
        name,
        ops: all.len(),
        errors,
        secs,
        p50_us: percentile(&all, 0.50),
        p99_us: percentile(&all, 0.99),
    }
}

async fn api(a: ApiArgs) -> Result<()> {
    if a.connections == 0 || a.concurrency == 0 || a.duration_secs == 0 {
        bail!("--connections, --concurrency and --duration-secs must be at least 1");
    }
    if a.processes > 1 && a.database_url.is_none() {
        bail!("--processes needs --database-url (several processes share one PostgreSQL database)");
    }
    let (spawned, cfg, endpoints) = match &a.config {
        Some(path) => {
            let cfg = NodeConfig::load(path)?;
            let endpoint = a.endpoint.clone().unwrap_or_else(|| cfg.endpoint());
            (Vec::new(), cfg, vec![endpoint])
        }
        None => {
            let (nodes, cfg, endpoints) =
                spawn_processes("bench", a.database_url.as_deref(), a.processes).await?;
            (nodes, cfg, endpoints)
        }
    };
    let endpoint = endpoints.join(", ");
    let spawned = (!spawned.is_empty()).then_some(spawned);
    let id: ClientIdentity = ClientIdentity::from_config(&cfg)?;
    let mut channels = Vec::new();
    for i in 0..a.connections.max(endpoints.len()) {
        channels.push(connect(&endpoints[i % endpoints.len()], &id).await?);
    }
    let duration = Duration::from_secs(a.duration_secs);
    if !a.json {
        eprintln!(
            "bench api: {endpoint}, {} connections, {} concurrent calls, {}s per phase{}",
            a.connections,
            a.concurrency,
            a.duration_secs,
            match (&spawned, a.processes) {
                (Some(_), 1) if a.database_url.is_none() =>
                    ", fresh node on embedded SQLite".to_string(),
                (Some(_), n) => format!(", fresh node, {n} process(es) on PostgreSQL"),
                (None, _) => String::new(),
            }
        );
    }

    let created = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = created.clone();
    let creates = phase(
        "create account",
        &channels,
        a.concurrency,
        duration,
        move |ch, x| {
            let sink = sink.clone();
            async move {
                let mut c = pb::account_service_client::AccountServiceClient::new(ch);
                let req = pb::CreateAccountRequest {
                    account: Some(pb::Account {
                        name: Some(format!("Bench Account {x:x}")),
                        domain: Some(format!("a{:x}.bench.example", x & 0xffff_ffff)),
                        city: Some("Berlin".into()),
                        ..Default::default()
                    }),
                };
                match c.create_account(req).await {
                    Ok(r) => {
                        if let Some(m) = r.into_inner().meta {
                            sink.lock().unwrap_or_else(|p| p.into_inner()).push(m.id);
                        }
                        true
                    }
                    Err(_) => false,
                }
            }
        },
    )
    .await;

    let ids: Arc<Vec<String>> = Arc::new(std::mem::take(
        &mut *created.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    if ids.is_empty() {
        bail!("no account could be created; is the node healthy?");
    }
    let pick = ids.clone();
    let gets = phase(
        "get account",
        &channels,
        a.concurrency,
        duration,
        move |ch, x| {
            let id = pick[(x % pick.len() as u64) as usize].clone();
            async move {
                pb::account_service_client::AccountServiceClient::new(ch)
                    .get_account(pb::GetRecordRequest { id })
                    .await
                    .is_ok()
            }
        },
    )
    .await;

    let mut phases = vec![creates, gets];
    if spawned.is_some() && a.shared > 0 {
        let shared: Vec<String> = ids.iter().take(a.shared).cloned().collect();
        let partner = share_with_partner(&cfg, &channels[0], &shared).await?;
        let mut partner_channels = Vec::new();
        for _ in 0..a.connections {
            partner_channels.push(connect(&endpoint, &partner).await?);
        }
        let shared = Arc::new(shared);
        phases.push(
            phase(
                "partner get",
                &partner_channels,
                a.concurrency,
                duration,
                move |ch, x| {
                    let id = shared[(x % shared.len() as u64) as usize].clone();
                    async move {
                        pb::account_service_client::AccountServiceClient::new(ch)
                            .get_account(pb::GetRecordRequest { id })
                            .await
                            .is_ok()
                    }
                },
            )
            .await,
        );
    }
    // The first process's memory (with several processes, each serves a share of the calls).
    let rss = spawned
        .as_ref()
        .and_then(|n| n.first())
        .and_then(|n| rss_kib(n.child.id()));
    if a.json {
        let phase_json = |p: &PhaseResult| serde_json::json!({"phase": p.name, "ops": p.ops, "errors": p.errors, "secs": p.secs, "per_sec": p.per_sec(), "p50_us": p.p50_us, "p99_us": p.p99_us});
        println!(
            "{}",
            serde_json::json!({
                "connections": a.connections, "concurrency": a.concurrency,
                "shared": a.shared,
                "phases": phases.iter().map(phase_json).collect::<Vec<_>>(),
                "node_rss_kib": rss.map(|r| r.0), "node_peak_rss_kib": rss.map(|r| r.1),
            })
        );
    } else {
        println!(
            "{:<16} {:>10} {:>8} {:>12} {:>10} {:>10}",
            "phase", "ops", "errors", "ops/s", "p50", "p99"
        );
        for p in &phases {
            println!(
                "{:<16} {:>10} {:>8} {:>12.0} {:>8.2}ms {:>8.2}ms",
                p.name,
                p.ops,
                p.errors,
                p.per_sec(),
                p.p50_us as f64 / 1000.0,
                p.p99_us as f64 / 1000.0
            );
        }
        match rss {
            Some((now, peak)) => println!(
                "node RSS {:.1} MiB (peak {:.1} MiB)",
                now as f64 / 1024.0,
                peak as f64 / 1024.0
            ),
            None => println!("node RSS: not measured (node not started by the benchmark)"),
        }
    }
    Ok(())
}

/// Pins a partner organization, gives it the `partner` role and shares `ids` with it
/// (profile partner-account); returns a partner user's identity. Each partner read then pays
/// for the share lookup and its audit entry, as in production.
async fn share_with_partner(
    cfg: &NodeConfig,
    admin_channel: &Channel,
    ids: &[String],
) -> Result<ClientIdentity> {
    let ca = verbund_node::pki::new_ca("benchpartner")?;
    let der = verbund_node::pki::parse_certs(&ca.cert_pem)?.remove(0);
    let mut admin = pb::admin_service_client::AdminServiceClient::new(admin_channel.clone());
    admin
        .add_partner(pb::AddPartnerRequest {
            org: "benchpartner".into(),
            ca_pem: ca.cert_pem.clone(),
            endpoint: "https://127.0.0.1:9".into(),
            fingerprint: verbund_node::pki::fingerprint(der.as_ref()),
        })
        .await?;
    let policy = cfg.path(&cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy)?;
    text.push_str("g2, benchpartner, partner\n");
    std::fs::write(&policy, text)?;
    admin.reload_policy(pb::ReloadPolicyRequest {}).await?;
    for id in ids {
        admin
            .add_share(pb::AddShareRequest {
                record_id: id.clone(),
                org: "benchpartner".into(),
                profile: "partner-account".into(),
            })
            .await?;
    }
    let user = verbund_node::pki::issue(
        &ca,
        "benchpartner",
        verbund_node::identity::PrincipalKind::User,
        "bench",
        &[],
        &[],
        1,
    )?;
    Ok(ClientIdentity {
        ca_pem: cfg.read(&cfg.tls.ca_cert)?,
        cert_and_key: Some((user.cert_pem, user.key_pem)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_cpu_time_is_read_and_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_secs(pid).expect("this process's CPU time");
        // Work until the kernel has counted at least one more clock tick (10 ms) of it; the
        // minute is only a guard against a reading that never moves.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after <= before && start.elapsed() < Duration::from_secs(60) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = cpu_secs(pid).expect("this process's CPU time");
        }
        std::hint::black_box(x);
        assert!(after > before, "{before} s, then {after} s");
        assert_eq!(cpu_secs(u32::MAX), None);
    }
}
