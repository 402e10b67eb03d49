//! `verbund bench sync`: two real node processes on loopback (owner `acme`, partner `globex`,
//! embedded SQLite, mutual TLS), pinned to each other. Measures the initial share of many
//! accounts (records/s until the partner holds them all), the propagation latency of single
//! owner updates (owner commit → event in the partner's change stream), the round trip of a
//! partner edit (partner's local edit → merged at the owner, seen in the owner's change
//! stream), and the RSS of both nodes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::pb;

use crate::bench::{percentile, rss_kib, spawn_org};

#[derive(Args)]
pub struct SyncArgs {
    /// Accounts shared with the partner in the initial share.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Single updates timed owner → partner, and partner edits timed partner → owner.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
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
    let s = pb::admin_service_client::AdminServiceClient::new(admin.clone())
        .sync_status(pb::SyncStatusRequest {})
        .await?
        .into_inner();
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
                let m = c
                    .create_account(pb::CreateAccountRequest {
                        account: Some(pb::Account {
                            name: Some(format!("Sync Bench {i}")),
                            city: Some("Hamburg".into()),
                            tags: vec!["bench".into()],
                            ..Default::default()
                        }),
                    })
                    .await?
                    .into_inner();
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
    if a.records == 0 || a.samples == 0 {
        bail!("--records and --samples must be at least 1");
    }
    let quiet = a.json;
    let (owner_proc, owner_cfg, owner_ep) = spawn_org("acme").await?;
    let (partner_proc, partner_cfg, partner_ep) = spawn_org("globex").await?;
    let owner = admin_of(&owner_cfg, &owner_ep).await?;
    let partner = admin_of(&partner_cfg, &partner_ep).await?;
    pin(&owner, "globex", &partner_cfg, &partner_ep).await?;
    pin(&partner, "acme", &owner_cfg, &owner_ep).await?;
    let policy = owner_cfg.path(&owner_cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy)?;
    text.push_str("g2, globex, partner\n");
    std::fs::write(&policy, text)?;
    let mut owner_admin = pb::admin_service_client::AdminServiceClient::new(owner.clone());
    owner_admin
        .reload_policy(pb::ReloadPolicyRequest {})
        .await?;
    if !quiet {
        eprintln!(
            "bench sync: owner acme at {owner_ep}, partner globex at {partner_ep} (embedded SQLite, mutual TLS)"
        );
    }

    // 1. Initial share.
    let ids = create_accounts(&owner, a.records, quiet).await?;
    let started = Instant::now();
    owner_admin
        .add_share_rule(pb::AddShareRuleRequest {
            org: "globex".into(),
            rule: "account-tag:bench".into(),
            profile: "partner-account".into(),
        })
        .await?;
    loop {
        let held = replicas(&partner).await?;
        if !quiet {
            eprint!("\r  initial share: partner holds {held}/{}", a.records);
        }
        if held >= a.records as i64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the initial share did not complete within an hour");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let share_secs = started.elapsed().as_secs_f64();
    if !quiet {
        eprintln!(
            "\r  initial share: {} records in {share_secs:.2} s",
            a.records
        );
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
    round_trip.sort_unstable();
    let owner_rss = rss_kib(owner_proc.child.id());
    let partner_rss = rss_kib(partner_proc.child.id());
    let per_sec = a.records as f64 / share_secs;
    let ms = |us: u64| us as f64 / 1000.0;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "records": a.records, "initial_share_secs": share_secs, "initial_share_per_sec": per_sec,
                "propagation_p50_ms": ms(percentile(&propagation, 0.50)),
                "propagation_p99_ms": ms(percentile(&propagation, 0.99)),
                "partner_edit_p50_ms": ms(percentile(&round_trip, 0.50)),
                "partner_edit_p99_ms": ms(percentile(&round_trip, 0.99)),
                "owner_rss_kib": owner_rss.map(|r| r.0), "owner_peak_rss_kib": owner_rss.map(|r| r.1),
                "partner_rss_kib": partner_rss.map(|r| r.0), "partner_peak_rss_kib": partner_rss.map(|r| r.1),
            })
        );
    } else {
        println!(
            "initial share        {} records in {share_secs:.2} s = {per_sec:.0} records/s",
            a.records
        );
        println!(
            "owner → partner      p50 {:.2} ms  p99 {:.2} ms  ({} single updates)",
            ms(percentile(&propagation, 0.50)),
            ms(percentile(&propagation, 0.99)),
            a.samples
        );
        println!(
            "partner edit → owner p50 {:.2} ms  p99 {:.2} ms  ({} edits)",
            ms(percentile(&round_trip, 0.50)),
            ms(percentile(&round_trip, 0.99)),
            a.samples
        );
        let mib = |r: Option<(u64, u64)>| {
            r.map(|(now, peak)| {
                format!(
                    "{:.1} MiB (peak {:.1} MiB)",
                    now as f64 / 1024.0,
                    peak as f64 / 1024.0
                )
            })
            .unwrap_or_else(|| "not measured".into())
        };
        println!("owner RSS            {}", mib(owner_rss));
        println!("partner RSS          {}", mib(partner_rss));
    }
    Ok(())
}
