//! `verbund ca export` and `verbund partner add|list|remove`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use verbund_node::config::NodeConfig;
use verbund_node::pb;
use verbund_node::pki;

use crate::Conn;

#[derive(Subcommand)]
pub enum PartnerCommand {
    /// Pin a partner's CA. Refused unless --fingerprint (received out of band) matches --ca.
    Add {
        /// The partner's organization id.
        #[arg(long)]
        org: String,
        /// The partner's CA certificate (PEM file, from its `verbund ca export`).
        #[arg(long)]
        ca: PathBuf,
        /// The partner node's endpoint, https://host:port.
        #[arg(long)]
        endpoint: String,
        /// SHA-256 fingerprint of the partner's CA, as the partner told you.
        #[arg(long)]
        fingerprint: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the partners: org, endpoint, fingerprint, status, last contact.
    List {
        #[command(flatten)]
        conn: Conn,
    },
    /// Let the node dial the partner (mutual TLS, partner's pinned CA) and show how it sees us.
    Ping {
        #[arg(long)]
        org: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Load a partner's revocation list: from a file (its `verbund crl export`) or fetched
    /// from its node over mutual TLS (--fetch).
    Crl {
        #[arg(long)]
        org: String,
        /// The CRL file (PEM).
        #[arg(long, required_unless_present = "fetch", conflicts_with = "fetch")]
        file: Option<PathBuf>,
        /// Fetch it from the partner's node.
        #[arg(long)]
        fetch: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Replace a partner's pinned CA(s), e.g. its new and old CA during its CA rollover.
    UpdateCa {
        #[arg(long)]
        org: String,
        /// PEM file with the partner's CA certificate(s) (its `verbund ca export`).
        #[arg(long)]
        ca: PathBuf,
        /// The fingerprint of every CA in the file, as the partner told you.
        #[arg(long = "fingerprint", required = true)]
        fingerprints: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Sync state per partner: link state, cursor, lag, outbox depth, replicas, last error.
    Status {
        #[command(flatten)]
        conn: Conn,
    },
    /// Unpin a partner: its new connections are refused at once.
    Remove {
        #[arg(long)]
        org: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub fn ca_export(config: &Path) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let pem = cfg.read(&cfg.tls.ca_cert)?;
    let certs = pki::parse_certs(&pem)?;
    print!("{pem}");
    for c in certs {
        eprintln!(
            "SHA-256 fingerprint of the {} CA: {}",
            cfg.node.org,
            pki::fingerprint(c.as_ref())
        );
    }
    Ok(())
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| {
            verbund_core::civil::format_rfc3339_ms(
                t.seconds * 1000 + i64::from(t.nanos / 1_000_000),
            )
        })
        .unwrap_or_else(|| "never".into())
}

pub async fn run(cmd: PartnerCommand) -> Result<()> {
    match cmd {
        PartnerCommand::Add {
            org,
            ca,
            endpoint,
            fingerprint,
            conn,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            let p = admin
                .add_partner(pb::AddPartnerRequest {
                    org,
                    ca_pem,
                    endpoint,
                    fingerprint,
                })
                .await?
                .into_inner();
            if conn.json {
                println!(
                    "{}",
                    serde_json::json!({"org": p.org, "endpoint": p.endpoint, "fingerprint": p.fingerprint, "status": p.status})
                );
            } else {
                println!(
                    "partner {} pinned (CA fingerprint {}), endpoint {}",
                    p.org, p.fingerprint, p.endpoint
                );
            }
        }
        PartnerCommand::Status { conn } => {
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            let status = admin
                .sync_status(pb::SyncStatusRequest {})
                .await?
                .into_inner();
            if conn.json {
                let rows: Vec<_> = status
                    .partners
                    .iter()
                    .map(|p| {
                        serde_json::json!({"org": p.org, "endpoint": p.endpoint, "state": p.state,
                            "cursor": p.cursor, "lag": p.lag, "outbox_depth": p.outbox_depth,
                            "replicas": p.replicas, "partner_acked_cursor": p.partner_acked_cursor,
                            "last_batch_ms": p.last_batch_ms, "last_error": p.last_error,
                            "last_error_ms": p.last_error_ms,
                            "quarantined": p.quarantined, "quarantine_note": p.quarantine_note,
                            "partner_quarantined": p.partner_quarantined,
                            "partner_quarantine_note": p.partner_quarantine_note,
                            "history_note": p.history_note,
                            "snapshot_after": p.snapshot_after,
                            "node_clock_note": status.clock_note})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                if !status.clock_note.is_empty() {
                    println!("clock: {}", status.clock_note);
                }
                println!(
                    "{:<16} {:<12} {:>8} {:>6} {:>7} {:>9} {:>9}  last error",
                    "org", "state", "cursor", "lag", "outbox", "replicas", "they-ack"
                );
                for p in &status.partners {
                    println!(
                        "{:<16} {:<12} {:>8} {:>6} {:>7} {:>9} {:>9}  {}",
                        p.org,
                        p.state,
                        p.cursor,
                        p.lag,
                        p.outbox_depth,
                        p.replicas,
                        p.partner_acked_cursor,
                        p.last_error
                    );
                    if p.quarantined > 0 {
                        println!(
                            "  {} item(s) of {} in quarantine here, e.g. {}",
                            p.quarantined, p.org, p.quarantine_note
                        );
                    }
                    if p.partner_quarantined > 0 {
                        println!(
                            "  {} keeps {} item(s) of ours in quarantine, e.g. {}",
                            p.org, p.partner_quarantined, p.partner_quarantine_note
                        );
                    }
                    if !p.history_note.is_empty() {
                        println!("  {}", p.history_note);
                    }
                    if !p.snapshot_after.is_empty() {
                        println!(
                            "  taking in {}'s snapshot of a share rule: up to record {}",
                            p.org, p.snapshot_after
                        );
                    }
                }
            }
        }
        PartnerCommand::List { conn } => {
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            let list = admin
                .list_partners(pb::ListPartnersRequest {})
                .await?
                .into_inner();
            if conn.json {
                let rows: Vec<_> = list
                    .partners
                    .iter()
                    .map(|p| serde_json::json!({"org": p.org, "endpoint": p.endpoint, "fingerprint": p.fingerprint, "status": p.status, "last_contact": ts(&p.last_contact_time)}))
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<20} {:<32} {:<8} {:<26} fingerprint",
                    "org", "endpoint", "status", "last contact"
                );
                for p in &list.partners {
                    println!(
                        "{:<20} {:<32} {:<8} {:<26} {}",
                        p.org,
                        p.endpoint,
                        p.status,
                        ts(&p.last_contact_time),
                        p.fingerprint
                    );
                }
                let n = list.partners.len();
                println!("({n} partner{})", if n == 1 { "" } else { "s" });
            }
        }
        PartnerCommand::Ping { org, conn } => {
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            let r = admin
                .ping_partner(pb::PingPartnerRequest { org })
                .await?
                .into_inner();
            println!(
                "partner node {}/{} answered in {} ms; it sees this node as verbund://{}/{}/{}",
                r.partner_org,
                r.partner_node,
                r.round_trip_ms,
                r.seen_as_org,
                r.seen_as_kind,
                r.seen_as_name
            );
        }
        PartnerCommand::Crl {
            org,
            file,
            fetch: _,
            conn,
        } => {
            let crl_pem = match &file {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => String::new(), // empty: the node fetches it from the partner
            };
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            admin
                .load_partner_crl(pb::LoadPartnerCrlRequest {
                    org: org.clone(),
                    crl_pem,
                })
                .await?;
            println!(
                "revocation list of partner {org} loaded; listed certificates are refused from now on"
            );
        }
        PartnerCommand::UpdateCa {
            org,
            ca,
            fingerprints,
            conn,
        } => {
            let ca_pem = std::fs::read_to_string(&ca)
                .with_context(|| format!("reading {}", ca.display()))?;
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            let p = admin
                .update_partner_ca(pb::UpdatePartnerCaRequest {
                    org,
                    ca_pem,
                    fingerprints,
                })
                .await?
                .into_inner();
            println!("partner {} now pinned to CA(s) {}", p.org, p.fingerprint);
        }
        PartnerCommand::Remove { org, conn } => {
            let mut admin =
                pb::admin_service_client::AdminServiceClient::new(conn.channel().await?);
            admin
                .remove_partner(pb::RemovePartnerRequest { org: org.clone() })
                .await?;
            println!("partner {org} removed; its new connections are refused");
        }
    }
    Ok(())
}
