//! `verbund customer …` and `verbund group figures`: the consolidated customer view of a
//! group holding's node (ConsolidationService), and an export of golden records and figures
//! as CSV for BI tools.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use tonic::transport::Channel;
use verbund_node::pb;

use crate::Conn;

#[derive(Subcommand)]
pub enum CustomerCommand {
    /// Customers across subsidiaries (clusters of accounts), filtered and paged.
    List {
        /// Part of the customer's name (case and accents ignored).
        #[arg(long, default_value = "")]
        query: String,
        /// Only customers this subsidiary holds an account of.
        #[arg(long, default_value = "")]
        subsidiary: String,
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        #[arg(long, default_value = "")]
        page_token: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// One customer: golden record with the origin of every value, sources, persons, figures.
    Get {
        /// A customer id or the id of any of its account records.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A data steward's decision: two accounts (or two contacts) are one customer (person).
    Link {
        record_a: String,
        record_b: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// A data steward's decision: a record is not the customer (person) of another, or of
    /// anyone in its cluster (without --from).
    Unlink {
        record: String,
        #[arg(long, default_value = "")]
        from: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Why two records are, or are not, one customer.
    Explain {
        record_a: String,
        record_b: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Golden records and figures of every customer as CSV (stdout), for BI tools.
    Export {
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// The group's figures over all customers.
    Figures {
        #[command(flatten)]
        conn: Conn,
    },
}

async fn client(
    conn: &Conn,
) -> Result<pb::consolidation_service_client::ConsolidationServiceClient<Channel>> {
    Ok(pb::consolidation_service_client::ConsolidationServiceClient::new(conn.channel().await?))
}

fn money(list: &[pb::MoneyTotal]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(|m| format!("{:.2} {}", m.minor_units as f64 / 100.0, m.currency_code))
        .collect::<Vec<_>>()
        .join(" + ")
}

fn figures_json(f: &pb::Figures) -> Value {
    let totals = |l: &[pb::MoneyTotal]| -> Value {
        l.iter()
            .map(|m| json!({"currency_code": m.currency_code, "minor_units": m.minor_units}))
            .collect()
    };
    let converted = |c: &Option<pb::ConvertedTotal>| -> Value {
        c.as_ref().map_or(Value::Null, |c| {
            json!({"currency_code": c.currency_code, "minor_units": c.minor_units,
                   "rate_date": c.rate_date, "unconverted": totals(&c.unconverted)})
        })
    };
    json!({
        "open_pipeline": totals(&f.open_pipeline),
        "open_pipeline_converted": converted(&f.open_pipeline_converted),
        "won_last_12_months": totals(&f.won_last_12_months),
        "won_last_12_months_converted": converted(&f.won_last_12_months_converted),
        "open_cases": f.open_cases,
        "resolved_cases": f.resolved_cases,
        "mean_resolution_secs": f.mean_resolution_secs,
        "last_interaction_s": f.last_interaction.as_ref().map(|t| t.seconds),
        "served_by": f.served_by,
        "not_served_by": f.not_served_by,
    })
}

fn golden_json(g: &[pb::GoldenValue]) -> Value {
    g.iter()
        .map(|v| {
            json!({
                "field": v.field, "value": v.value, "subsidiary": v.subsidiary,
                "record_id": v.record_id, "decided_by": v.decided_by, "candidates": v.candidates,
                "version": v.version.as_ref().map(|h| format!("{:016x}.{:08x}.{}", h.physical_ms, h.counter, h.node_id)),
            })
        })
        .collect()
}

fn sources_json(s: &[pb::SourceRecord]) -> Value {
    s.iter()
        .map(|r| json!({"record_id": r.record_id, "subsidiary": r.subsidiary, "name": r.name}))
        .collect()
}

pub fn customer_json(c: &pb::Customer) -> Value {
    json!({
        "id": c.id,
        "golden": golden_json(&c.golden),
        "sources": sources_json(&c.sources),
        "persons": c.persons.iter().map(|p| json!({
            "id": p.id, "golden": golden_json(&p.golden), "sources": sources_json(&p.sources)
        })).collect::<Vec<_>>(),
        "figures": c.figures.as_ref().map(figures_json),
    })
}

/// A customer as people read it: each golden value with where it comes from, the sources,
/// the persons, the figures.
pub fn print_customer(c: &pb::Customer) {
    for g in &c.golden {
        let rule = if g.decided_by.is_empty() {
            "the only value"
        } else {
            g.decided_by.as_str()
        };
        println!(
            "  {:<14} {:<36} <- {} {} ({rule})",
            g.field, g.value, g.subsidiary, g.record_id
        );
    }
    for s in &c.sources {
        println!(
            "  source         {} {} ({})",
            s.record_id, s.name, s.subsidiary
        );
    }
    for p in &c.persons {
        let names: Vec<String> = p
            .sources
            .iter()
            .map(|s| format!("{} at {}", s.name, s.subsidiary))
            .collect();
        println!("  person         {}", names.join(" = "));
    }
    if let Some(f) = &c.figures {
        print_figures(f);
    }
}

fn print_figures(f: &pb::Figures) {
    println!("  open pipeline   {}", money(&f.open_pipeline));
    if let Some(c) = &f.open_pipeline_converted {
        println!(
            "                  = {:.2} {} at the rates of {}",
            c.minor_units as f64 / 100.0,
            c.currency_code,
            c.rate_date
        );
    }
    println!("  won (12 months) {}", money(&f.won_last_12_months));
    println!(
        "  cases           {} open, {} resolved, mean resolution {} h",
        f.open_cases,
        f.resolved_cases,
        f.mean_resolution_secs / 3600
    );
    println!("  served by       {}", f.served_by.join(", "));
    println!("  not served by   {}", f.not_served_by.join(", "));
}

pub async fn customer(cmd: CustomerCommand) -> Result<()> {
    match cmd {
        CustomerCommand::List {
            query,
            subsidiary,
            page_size,
            page_token,
            conn,
        } => {
            let r = client(&conn)
                .await?
                .list_customers(pb::ListCustomersRequest {
                    query,
                    subsidiary,
                    page_size,
                    page_token,
                })
                .await?
                .into_inner();
            if conn.json {
                let list: Vec<Value> = r
                    .customers
                    .iter()
                    .map(|c| json!({"id": c.id, "name": c.name, "subsidiaries": c.subsidiaries, "accounts": c.accounts}))
                    .collect();
                println!(
                    "{}",
                    json!({"customers": list, "next_page_token": r.next_page_token})
                );
            } else {
                for c in &r.customers {
                    println!(
                        "{}  {}  ({} accounts: {})",
                        c.id,
                        c.name,
                        c.accounts,
                        c.subsidiaries.join(", ")
                    );
                }
                if !r.next_page_token.is_empty() {
                    println!("more: --page-token {}", r.next_page_token);
                }
            }
        }
        CustomerCommand::Get { id, conn } => {
            let c = client(&conn)
                .await?
                .get_customer(pb::GetCustomerRequest { id })
                .await?
                .into_inner();
            if conn.json {
                println!("{}", customer_json(&c));
                return Ok(());
            }
            println!("customer {}", c.id);
            print_customer(&c);
        }
        CustomerCommand::Link {
            record_a,
            record_b,
            conn,
        } => {
            let r = client(&conn)
                .await?
                .link_records(pb::LinkRecordsRequest { record_a, record_b })
                .await?
                .into_inner();
            println!("linked: both in {}", r.cluster_a);
        }
        CustomerCommand::Unlink { record, from, conn } => {
            let r = client(&conn)
                .await?
                .unlink_record(pb::UnlinkRecordRequest {
                    record_id: record,
                    from_record_id: from,
                })
                .await?
                .into_inner();
            println!(
                "unlinked: now in {} (the other in {})",
                r.cluster_a, r.cluster_b
            );
        }
        CustomerCommand::Explain {
            record_a,
            record_b,
            conn,
        } => {
            let e = client(&conn)
                .await?
                .explain_match(pb::ExplainMatchRequest { record_a, record_b })
                .await?
                .into_inner();
            if conn.json {
                let evidence: Vec<Value> = e
                    .evidence
                    .iter()
                    .map(|x| json!({"attribute": x.attribute, "finding": x.finding, "points": x.points}))
                    .collect();
                println!(
                    "{}",
                    json!({"evidence": evidence, "score": e.score, "threshold": e.threshold,
                           "constraint": e.constraint, "steward": e.steward,
                           "decision": e.decision, "same_cluster": e.same_cluster})
                );
                return Ok(());
            }
            for x in &e.evidence {
                println!("  {:<10} {:<24} {:+.2}", x.attribute, x.finding, x.points);
            }
            println!("score {:.2} (threshold {:.2})", e.score, e.threshold);
            if !e.constraint.is_empty() {
                println!("constraint: {}", e.constraint);
            }
            if !e.steward.is_empty() {
                println!("steward: {}", e.steward);
            }
            println!(
                "decision: {}; {}",
                e.decision,
                if e.same_cluster {
                    "one customer"
                } else {
                    "two customers"
                }
            );
        }
        CustomerCommand::Export { conn } => export(&conn).await?,
    }
    Ok(())
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Every customer's golden name, VAT ID, domain, city and country with their origin, and its
/// figures per currency, one CSV row per customer.
async fn export(conn: &Conn) -> Result<()> {
    let mut c = client(conn).await?;
    let mut out = std::io::stdout().lock();
    const FIELDS: [&str; 5] = ["name", "vat_id", "domain", "city", "country_code"];
    let mut header = vec!["customer_id".to_string(), "subsidiaries".into()];
    for f in FIELDS {
        header.push(f.into());
        header.push(format!("{f}_source"));
    }
    header.extend(
        [
            "open_pipeline",
            "won_last_12_months",
            "open_cases",
            "mean_resolution_secs",
            "not_served_by",
        ]
        .map(String::from),
    );
    writeln!(out, "{}", header.join(","))?;
    let mut token = String::new();
    loop {
        let page = c
            .list_customers(pb::ListCustomersRequest {
                page_size: 500,
                page_token: token.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        for s in &page.customers {
            let cust = c
                .get_customer(pb::GetCustomerRequest { id: s.id.clone() })
                .await?
                .into_inner();
            let mut row = vec![cust.id.clone(), s.subsidiaries.join(" ")];
            for f in FIELDS {
                let g = cust.golden.iter().find(|g| g.field == f);
                row.push(g.map(|g| g.value.clone()).unwrap_or_default());
                row.push(
                    g.map(|g| format!("{}/{}", g.subsidiary, g.record_id))
                        .unwrap_or_default(),
                );
            }
            let f = cust.figures.unwrap_or_default();
            row.push(money(&f.open_pipeline));
            row.push(money(&f.won_last_12_months));
            row.push(f.open_cases.to_string());
            row.push(f.mean_resolution_secs.to_string());
            row.push(f.not_served_by.join(" "));
            let row: Vec<String> = row.iter().map(|v| csv_field(v)).collect();
            writeln!(out, "{}", row.join(","))?;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    Ok(())
}

pub async fn group(cmd: GroupCommand) -> Result<()> {
    match cmd {
        GroupCommand::Figures { conn } => {
            let r = client(&conn)
                .await?
                .group_figures(pb::GroupFiguresRequest {})
                .await?
                .into_inner();
            let Some(g) = r.group else {
                bail!("the node answered no group figures");
            };
            if conn.json {
                println!(
                    "{}",
                    json!({"group": figures_json(&g), "customers": r.customers,
                           "single_subsidiary_customers": r.single_subsidiary_customers,
                           "subsidiaries": r.subsidiaries})
                );
                return Ok(());
            }
            println!(
                "{} customers across {} ({} served by one subsidiary only)",
                r.customers,
                r.subsidiaries.join(", "),
                r.single_subsidiary_customers
            );
            print_figures(&g);
        }
    }
    Ok(())
}
