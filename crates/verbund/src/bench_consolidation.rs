//! `verbund bench consolidation`: the consolidated view of a real node process. Loads N
//! generated accounts (the labelled set of `bench match`, noisy duplicates included) into a
//! fresh node's database, starts the node with `[consolidation] enabled = true`, measures how
//! long the view takes to build and the node's peak RSS, then edits accounts through the API
//! and measures how long until GetCustomer shows the edit in the golden record.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use uuid::Uuid;
use verbund_consolidation::AccountInput;
use verbund_consolidation::quality::{Generator, GeneratorParams};
use verbund_core::write::plan_create;
use verbund_core::{FieldMap, HlcClock, RecordKind, Value};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::config::NodeConfig;
use verbund_node::pb;
use verbund_store::Store;

use crate::bench::{percentile, rss_kib};
use crate::init::{InitArgs, init};

#[derive(Args)]
pub struct ConsolidationArgs {
    /// Accounts in the holding's database.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    #[arg(long, default_value_t = 5)]
    subsidiaries: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Edits measured (edit → visible in GetCustomer).
    #[arg(long, default_value_t = 200)]
    samples: usize,
    #[arg(long)]
    json: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn free_port() -> Result<std::net::SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn domain_of(website: &str) -> String {
    let w = website.trim().to_lowercase();
    let w = w.split("://").last().unwrap_or(&w).to_string();
    let w = w.strip_prefix("www.").unwrap_or(&w).to_string();
    w.split(['/', '?', '#']).next().unwrap_or("").to_string()
}

/// The account's fields as a subsidiary would have typed them; `full` false: name and city.
fn fields_of(a: &AccountInput, full: bool) -> FieldMap {
    let mut f = FieldMap::new();
    f.insert("name".into(), Value::Text(a.name.clone()));
    if let Some(c) = &a.city {
        f.insert("city".into(), Value::Text(c.clone()));
    }
    if full {
        if let Some(w) = &a.website {
            f.insert("domain".into(), Value::Text(domain_of(w)));
        }
        for (field, v) in [
            ("vat_id", &a.vat_id),
            ("phone", &a.phone),
            ("country_code", &a.country),
        ] {
            if let Some(v) = v {
                f.insert(field.into(), Value::Text(v.clone()));
            }
        }
    }
    f
}

async fn load(store: &Store, org: &str, args: &ConsolidationArgs) -> Result<Vec<Uuid>> {
    let clock = std::sync::Arc::new(std::sync::Mutex::new(HlcClock::new(
        format!("{org}/node1"),
        60_000,
    )));
    let params = GeneratorParams {
        accounts: args.records,
        subsidiaries: args.subsidiaries,
        seed: args.seed,
    };
    let mut ids = Vec::with_capacity(args.records);
    let mut batch = Vec::new();
    let started = Instant::now();
    for labelled in Generator::accounts(params).take(args.records) {
        batch.push(labelled.input);
        if batch.len() == 2_000 {
            ids.extend(create_all(store, org, &clock, std::mem::take(&mut batch)).await?);
        }
    }
    ids.extend(create_all(store, org, &clock, batch).await?);
    eprintln!(
        "loaded {} accounts in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(ids)
}

async fn create_all(
    store: &Store,
    org: &str,
    clock: &std::sync::Arc<std::sync::Mutex<HlcClock>>,
    accounts: Vec<AccountInput>,
) -> Result<Vec<Uuid>> {
    let jobs = accounts.into_iter().map(|a| {
        let (store, org, clock) = (store.clone(), org.to_string(), clock.clone());
        async move {
            for full in [true, false] {
                let (fields, org, clock) = (fields_of(&a, full), org.clone(), clock.clone());
                let planned = store
                    .create_with(move || {
                        let now = now_ms();
                        let hlc = clock
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .tick(now as u64);
                        plan_create(RecordKind::Account, Uuid::now_v7(), &org, fields, hlc, now)
                    })
                    .await;
                if let Ok(rec) = planned {
                    return Some(rec.id);
                }
            }
            None
        }
    });
    Ok(futures::future::join_all(jobs)
        .await
        .into_iter()
        .flatten()
        .collect())
}

pub async fn run(args: ConsolidationArgs) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("verbund-bench-")
        .tempdir()?;
    let org = "holding";
    let done = init(&InitArgs {
        org: org.into(),
        dir: dir.path().join(org),
        name: "node1".into(),
        listen: free_port()?,
        ops_listen: Some(free_port()?),
        dns: vec![],
        database_url: None,
    })
    .await?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&done.config_path)?;
        writeln!(f, "\n[consolidation]\nenabled = true")?;
    }
    let cfg = NodeConfig::load(&done.config_path)?;
    let ids = {
        let store = Store::open(&cfg.database_url()).await?;
        let ids = load(&store, org, &args).await?;
        store.close().await;
        ids
    };
    if ids.is_empty() {
        bail!("no account could be loaded");
    }
    let exe = std::env::current_exe().context("locating the verbund binary")?;
    let mut child = std::process::Command::new(exe)
        .args(["run", "--config"])
        .arg(&done.config_path)
        .env("VERBUND_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the node process")?;
    let result = measure(&cfg, &ids, &args, child.id()).await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn measure(cfg: &NodeConfig, ids: &[Uuid], args: &ConsolidationArgs, pid: u32) -> Result<()> {
    let started = Instant::now();
    let identity = ClientIdentity::from_config(cfg)?;
    let channel = loop {
        match connect(&cfg.endpoint(), &identity).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let mut view =
        pb::consolidation_service_client::ConsolidationServiceClient::new(channel.clone());
    loop {
        match view
            .list_customers(pb::ListCustomersRequest {
                page_size: 1,
                ..Default::default()
            })
            .await
        {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => bail!("ListCustomers: {s}"),
        }
    }
    let built_s = started.elapsed().as_secs_f64();
    let (_, hwm_after_build) = rss_kib(pid).unwrap_or_default();
    let mut accounts = pb::account_service_client::AccountServiceClient::new(channel);
    let mut latencies = Vec::with_capacity(args.samples);
    let step = (ids.len() / args.samples.max(1)).max(1);
    for (n, id) in ids.iter().step_by(step).take(args.samples).enumerate() {
        let city = format!("Bench City {n}");
        let t = Instant::now();
        accounts
            .update_account(pb::UpdateAccountRequest {
                id: id.to_string(),
                account: Some(pb::Account {
                    city: Some(city.clone()),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["city".into()],
                }),
            })
            .await?;
        loop {
            let c = view
                .get_customer(pb::GetCustomerRequest { id: id.to_string() })
                .await?
                .into_inner();
            if c.golden
                .iter()
                .any(|g| g.field == "city" && g.value == city)
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(30) {
                bail!("an edit of {id} did not reach GetCustomer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(t.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let (_, hwm) = rss_kib(pid).unwrap_or_default();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "accounts": ids.len(), "view_built_s": built_s,
                "rss_peak_kib_after_build": hwm_after_build, "rss_peak_kib": hwm,
                "edit_to_get_customer_p50_us": p50, "edit_to_get_customer_p99_us": p99,
                "samples": latencies.len(),
            })
        );
    } else {
        println!(
            "{} accounts: view built {:.1} s after start; node peak RSS {} MiB; edit → GetCustomer p50 {:.1} ms, p99 {:.1} ms ({} edits)",
            ids.len(),
            built_s,
            hwm / 1024,
            p50 as f64 / 1000.0,
            p99 as f64 / 1000.0,
            latencies.len()
        );
    }
    Ok(())
}
