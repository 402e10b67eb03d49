//! `verbund share …`, `verbund policy …` and `verbund audit …`: the admin API for sharing,
//! the access policy and the audit log of a running node.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::json;
use verbund_core::civil::{format_rfc3339_ms, parse_date, parse_rfc3339_ms};
use verbund_node::pb;
use verbund_node::pb::admin_service_client::AdminServiceClient;

use crate::Conn;

#[derive(Subcommand)]
pub enum ShareCommand {
    /// Share one record with a registered partner under a share profile of the policy.
    Add {
        /// The record's id.
        #[arg(long)]
        record: String,
        /// The partner organization.
        #[arg(long)]
        org: String,
        /// A share profile of the policy (e.g. joint-deal, partner-account, supplier-case, group).
        #[arg(long)]
        profile: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show shares, optionally of one partner or one record.
    List {
        /// Only the shares with this partner organization.
        #[arg(long)]
        org: Option<String>,
        /// Only the shares of this record (id).
        #[arg(long)]
        record: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// End a share: the partner's next call no longer sees the record.
    Revoke {
        /// The record's id.
        #[arg(long)]
        record: String,
        /// The partner organization.
        #[arg(long)]
        org: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Share rules: every record matching a rule, for as long as it matches.
    #[command(subcommand)]
    Rule(RuleCommand),
}

#[derive(Subcommand)]
pub enum RuleCommand {
    /// Add a rule: `case-assigned` (every case whose assigned_org is --org) or
    /// `account-tag:<tag>` (every account with the tag).
    Add {
        /// The registered partner organization the rule shares with.
        #[arg(long)]
        org: String,
        /// `case-assigned` or `account-tag:<tag>`.
        #[arg(long)]
        rule: String,
        /// A share profile of the policy (e.g. supplier-case, group).
        #[arg(long)]
        profile: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show share rules, optionally of one partner.
    List {
        /// Only the rules of this partner organization.
        #[arg(long)]
        org: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// End a share rule: the records it matched are no longer shared through it.
    Remove {
        /// The rule's id (from `share rule list`).
        #[arg(long)]
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Would a principal be allowed an action on a record (and field)? Says why.
    Check {
        /// verbund://<org>/<user|node>/<name>
        #[arg(long = "as")]
        principal: String,
        /// read, write, create (an activity on the record) or delete.
        #[arg(long)]
        action: String,
        /// The record's id.
        #[arg(long)]
        record: String,
        /// One field (its proto name); without it: any field the action allows.
        #[arg(long)]
        field: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Re-read the policy files; a malformed policy is refused and the old one stays.
    Reload {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show audit entries (oldest first).
    List {
        /// Only entries of principals of this organization.
        #[arg(long)]
        org: Option<String>,
        /// Only entries about this record (id).
        #[arg(long)]
        record: Option<String>,
        /// From this time on (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (YYYY-MM-DD or RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// At most this many entries.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        conn: Conn,
    },
    /// Walk the hash chain; exits non-zero if any entry was changed, deleted or reordered.
    Verify {
        #[command(flatten)]
        conn: Conn,
    },
}

fn time_arg(flag: &str, v: &Option<String>) -> Result<Option<prost_types::Timestamp>> {
    let Some(v) = v else { return Ok(None) };
    let ms = match parse_rfc3339_ms(v) {
        Some(ms) => ms,
        None => match parse_date(v) {
            Some((y, m, d)) => verbund_core::civil::days_from_civil(y, m, d) * 86_400_000,
            None => bail!("--{flag}: {v:?} is not YYYY-MM-DD or an RFC 3339 time"),
        },
    };
    Ok(Some(verbund_node::convert::ms_to_timestamp(ms)))
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .map(|t| format_rfc3339_ms(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)))
        .unwrap_or_default()
}

fn kind_name(k: i32) -> String {
    pb::RecordKind::try_from(k)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("RECORD_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

pub async fn share(cmd: ShareCommand) -> Result<()> {
    match cmd {
        ShareCommand::Add {
            record,
            org,
            profile,
            conn,
        } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let s = admin
                .add_share(pb::AddShareRequest {
                    record_id: record,
                    org,
                    profile,
                })
                .await?
                .into_inner();
            if conn.json {
                println!("{}", share_json(&s));
            } else {
                println!(
                    "{} {} shared with {} under profile {} (share {})",
                    kind_name(s.kind),
                    s.record_id,
                    s.org,
                    s.profile,
                    s.id
                );
            }
        }
        ShareCommand::List { org, record, conn } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let list = admin
                .list_shares(pb::ListSharesRequest {
                    org: org.unwrap_or_default(),
                    record_id: record.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if conn.json {
                let rows: Vec<_> = list.shares.iter().map(share_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "{:<14} {:<36} {:<16} {:<16} since",
                    "kind", "record", "org", "profile"
                );
                for s in &list.shares {
                    println!(
                        "{:<14} {:<36} {:<16} {:<16} {}",
                        kind_name(s.kind),
                        s.record_id,
                        s.org,
                        s.profile,
                        ts(&s.create_time)
                    );
                }
                println!("({} shares)", list.shares.len());
            }
        }
        ShareCommand::Revoke { record, org, conn } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            admin
                .revoke_share(pb::RevokeShareRequest {
                    record_id: record.clone(),
                    org: org.clone(),
                })
                .await?;
            println!("share of {record} with {org} revoked; {org} no longer sees it");
        }
        ShareCommand::Rule(RuleCommand::Add {
            org,
            rule,
            profile,
            conn,
        }) => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let r = admin
                .add_share_rule(pb::AddShareRuleRequest { org, rule, profile })
                .await?
                .into_inner();
            if conn.json {
                println!("{}", rule_json(&r));
            } else {
                println!(
                    "rule {}: {} shared with {} under profile {}",
                    r.id, r.rule, r.org, r.profile
                );
            }
        }
        ShareCommand::Rule(RuleCommand::List { org, conn }) => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let list = admin
                .list_share_rules(pb::ListShareRulesRequest {
                    org: org.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if conn.json {
                let rows: Vec<_> = list.rules.iter().map(rule_json).collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!("{:<36} {:<16} {:<24} profile", "id", "org", "rule");
                for r in &list.rules {
                    println!("{:<36} {:<16} {:<24} {}", r.id, r.org, r.rule, r.profile);
                }
                println!("({} rules)", list.rules.len());
            }
        }
        ShareCommand::Rule(RuleCommand::Remove { id, conn }) => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            admin
                .remove_share_rule(pb::RemoveShareRuleRequest { id: id.clone() })
                .await?;
            println!("rule {id} removed");
        }
    }
    Ok(())
}

fn share_json(s: &pb::Share) -> serde_json::Value {
    json!({"id": s.id, "record_id": s.record_id, "kind": kind_name(s.kind), "org": s.org,
           "profile": s.profile, "created": ts(&s.create_time), "created_by": s.created_by})
}

fn rule_json(r: &pb::ShareRule) -> serde_json::Value {
    json!({"id": r.id, "org": r.org, "rule": r.rule, "profile": r.profile,
           "created": ts(&r.create_time), "created_by": r.created_by})
}

/// Runs a policy command; false when `policy check` answered deny (the command then fails,
/// so a script can branch on it).
pub async fn policy(cmd: PolicyCommand) -> Result<bool> {
    match cmd {
        PolicyCommand::Check {
            principal,
            action,
            record,
            field,
            conn,
        } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let r = admin
                .check_access(pb::CheckAccessRequest {
                    principal,
                    action,
                    record_id: record,
                    field: field.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if conn.json {
                println!(
                    "{}",
                    json!({"allowed": r.allowed, "kind": kind_name(r.kind), "reason": r.reason,
                           "readable_fields": r.readable_fields, "writable_fields": r.writable_fields,
                           "policy_lines": r.policy_lines, "role_lines": r.role_lines, "grants": r.grants})
                );
            } else {
                println!("{}: {}", if r.allowed { "allow" } else { "deny" }, r.reason);
                let list = |title: &str, items: &[String]| {
                    if !items.is_empty() {
                        println!("{title}:");
                        for i in items {
                            println!("  {i}");
                        }
                    }
                };
                list("roles", &r.role_lines);
                list("shares", &r.grants);
                list("policy lines", &r.policy_lines);
                println!("readable: {}", r.readable_fields.join(", "));
                println!("writable: {}", r.writable_fields.join(", "));
            }
            return Ok(r.allowed);
        }
        PolicyCommand::Reload { conn } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let r = admin
                .reload_policy(pb::ReloadPolicyRequest {})
                .await?
                .into_inner();
            println!(
                "policy reloaded from {} and {}; share profiles: {}",
                r.model_path,
                r.policy_path,
                r.profiles.join(", ")
            );
        }
    }
    Ok(true)
}

pub async fn audit(cmd: AuditCommand) -> Result<bool> {
    match cmd {
        AuditCommand::List {
            org,
            record,
            since,
            until,
            limit,
            conn,
        } => {
            let since = time_arg("since", &since)?;
            let until = time_arg("until", &until)?;
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let mut after_seq = 0;
            let mut shown = 0usize;
            let mut rows = Vec::new();
            if !conn.json {
                println!(
                    "{:>6} {:<24} {:<32} {:<8} {:<6} {:<13} {:<36} fields / reason",
                    "seq", "time", "principal", "action", "", "kind", "record"
                );
            }
            while shown < limit {
                let page = admin
                    .list_audit(pb::ListAuditRequest {
                        org: org.clone().unwrap_or_default(),
                        record_id: record.clone().unwrap_or_default(),
                        since,
                        until,
                        after_seq,
                        page_size: (limit - shown).min(1000) as i32,
                    })
                    .await?
                    .into_inner();
                for e in &page.entries {
                    shown += 1;
                    if conn.json {
                        rows.push(json!({"seq": e.seq, "time": ts(&e.time), "principal": e.principal,
                            "org": e.org, "action": e.action, "kind": e.kind, "record_id": e.record_id,
                            "fields": e.fields, "decision": e.decision, "reason": e.reason,
                            "prev_hash": e.prev_hash, "hash": e.hash}));
                    } else {
                        println!(
                            "{:>6} {:<24} {:<32} {:<8} {:<6} {:<13} {:<36} [{}] {}",
                            e.seq,
                            ts(&e.time),
                            e.principal,
                            e.action,
                            e.decision,
                            e.kind,
                            e.record_id,
                            e.fields.join(","),
                            e.reason
                        );
                    }
                }
                if page.next_after_seq == 0 {
                    break;
                }
                after_seq = page.next_after_seq;
            }
            if conn.json {
                println!("{}", serde_json::Value::Array(rows));
            }
            Ok(true)
        }
        AuditCommand::Verify { conn } => {
            let mut admin = AdminServiceClient::new(conn.channel().await?);
            let r = admin
                .verify_audit(pb::VerifyAuditRequest {})
                .await?
                .into_inner();
            if conn.json {
                println!(
                    "{}",
                    json!({"intact": r.intact, "checked": r.checked, "head_seq": r.head_seq,
                           "head_hash": r.head_hash, "problem": r.problem})
                );
            } else if r.intact {
                println!(
                    "audit log intact: {} entries, head {} (keep this hash elsewhere to detect a rewrite of the whole log)",
                    r.checked, r.head_hash
                );
            } else {
                println!(
                    "AUDIT LOG TAMPERED: {} ({} entries intact before it)",
                    r.problem, r.checked
                );
            }
            Ok(r.intact)
        }
    }
}
