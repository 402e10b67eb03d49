//! `verbund conflict`, `verbund outbox`, `verbund erase` and `verbund erasure`: the
//! operator's view of federation sync (admin API of a running node).

use anyhow::Result;
use clap::Subcommand;
use verbund_node::pb;

use crate::Conn;

#[derive(Subcommand)]
pub enum ConflictCommand {
    /// Unresolved conflicts (all with --all), optionally of one record.
    List {
        #[arg(long)]
        record: Option<String>,
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Resolve a conflict: keep the winner, or write the losing value back (a new edit).
    Resolve {
        id: String,
        /// winner or loser
        #[arg(long)]
        keep: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Entries of the outbox (pending, rejected, or all).
    List {
        #[arg(long, default_value = "")]
        state: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum ErasureCommand {
    /// Who received the erased record and who has acknowledged purging it.
    Status {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

async fn admin(
    conn: &Conn,
) -> Result<pb::admin_service_client::AdminServiceClient<tonic::transport::Channel>> {
    Ok(pb::admin_service_client::AdminServiceClient::new(
        conn.channel().await?,
    ))
}

fn side_json(s: &Option<pb::ConflictSide>) -> serde_json::Value {
    match s {
        Some(s) => serde_json::json!({
            "value": serde_json::from_str::<serde_json::Value>(&s.value_json).unwrap_or(serde_json::Value::Null),
            "version": s.version.as_ref().map(|h| format!("{:016x}.{:08x}.{}", h.physical_ms, h.counter, h.node_id)),
            "origin": s.origin_org,
        }),
        None => serde_json::Value::Null,
    }
}

fn conflict_json(c: &pb::Conflict) -> serde_json::Value {
    serde_json::json!({
        "id": c.id, "record_id": c.record_id, "field": c.field,
        "winner": side_json(&c.winner), "loser": side_json(&c.loser),
        "created_ms": c.created_ms, "resolution": c.resolution, "resolved_by": c.resolved_by,
    })
}

fn print_conflicts(conn: &Conn, list: &[pb::Conflict]) {
    if conn.json {
        println!(
            "{}",
            serde_json::Value::Array(list.iter().map(conflict_json).collect())
        );
        return;
    }
    println!(
        "{:<36} {:<36} {:<14} {:<24} {:<24} resolution",
        "id", "record", "field", "kept (origin)", "lost (origin)"
    );
    for c in list {
        let show = |s: &Option<pb::ConflictSide>| {
            s.as_ref()
                .map(|s| format!("{} ({})", s.value_json, s.origin_org))
                .unwrap_or_default()
        };
        println!(
            "{:<36} {:<36} {:<14} {:<24} {:<24} {}",
            c.id,
            c.record_id,
            c.field,
            show(&c.winner),
            show(&c.loser),
            c.resolution
        );
    }
}

pub async fn conflict(cmd: ConflictCommand) -> Result<()> {
    match cmd {
        ConflictCommand::List { record, all, conn } => {
            let list = admin(&conn)
                .await?
                .list_conflicts(pb::ListConflictsRequest {
                    record_id: record.unwrap_or_default(),
                    include_resolved: all,
                })
                .await?
                .into_inner();
            print_conflicts(&conn, &list.conflicts);
        }
        ConflictCommand::Resolve { id, keep, conn } => {
            let c = admin(&conn)
                .await?
                .resolve_conflict(pb::ResolveConflictRequest { id, keep })
                .await?
                .into_inner();
            print_conflicts(&conn, &[c]);
        }
    }
    Ok(())
}

pub async fn outbox(cmd: OutboxCommand) -> Result<()> {
    let OutboxCommand::List { state, conn } = cmd;
    let list = admin(&conn)
        .await?
        .list_outbox(pb::ListOutboxRequest { state })
        .await?
        .into_inner();
    if conn.json {
        let rows: Vec<_> = list
            .entries
            .iter()
            .map(|e| {
                serde_json::json!({"key": e.key, "owner": e.owner_org, "record_id": e.record_id,
                    "fields": e.fields, "state": e.state, "attempts": e.attempts,
                    "last_error": e.last_error, "created_ms": e.created_ms})
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
    } else {
        println!(
            "{:<36} {:<12} {:<36} {:<9} {:>8}  fields / last error",
            "key", "owner", "record", "state", "attempts"
        );
        for e in &list.entries {
            println!(
                "{:<36} {:<12} {:<36} {:<9} {:>8}  {} / {}",
                e.key,
                e.owner_org,
                e.record_id,
                e.state,
                e.attempts,
                e.fields.join(","),
                e.last_error
            );
        }
    }
    Ok(())
}

fn print_erasure(conn: &Conn, s: &pb::ErasureStatusResponse) {
    if conn.json {
        let receivers: Vec<_> = s
            .receivers
            .iter()
            .map(|r| serde_json::json!({"org": r.org, "state": r.state, "acknowledged_ms": r.acknowledged_ms}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"record_id": s.record_id, "erased_ms": s.erased_ms, "receivers": receivers})
        );
        return;
    }
    println!(
        "record {} erased at {}",
        s.record_id,
        verbund_core::civil::format_rfc3339_ms(s.erased_ms)
    );
    if s.receivers.is_empty() {
        println!("no partner ever received it");
    }
    for r in &s.receivers {
        println!("{:<20} {}", r.org, r.state);
    }
}

pub async fn erase(id: &str, conn: &Conn) -> Result<()> {
    let s = admin(conn)
        .await?
        .erase_record(pb::EraseRecordRequest { id: id.to_string() })
        .await?
        .into_inner();
    print_erasure(conn, &s);
    Ok(())
}

pub async fn erasure(cmd: ErasureCommand) -> Result<()> {
    let ErasureCommand::Status { id, conn } = cmd;
    let s = admin(&conn)
        .await?
        .erasure_status(pb::ErasureStatusRequest { id })
        .await?
        .into_inner();
    print_erasure(&conn, &s);
    Ok(())
}
