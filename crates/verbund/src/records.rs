//! Record commands: `verbund <kind> create|get|update|delete|list`, search, watch, whoami.
//!
//! Fields are given as `field=value` (e.g. `name="Acme GmbH" amount="1200.50 EUR"`); on update,
//! the named fields form the update mask and `field=` clears a field.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use tokio_stream::StreamExt;
use verbund_core::{FieldMap, RecordKind, schema};
use verbund_node::convert::{RecordMessage, message_from_fields};
use verbund_node::pb;

use crate::Conn;
use crate::output::{self, Shown};

#[derive(Args)]
pub struct RecordArgs {
    #[command(subcommand)]
    action: Action,
    #[command(flatten)]
    conn: Conn,
}

#[derive(Subcommand)]
enum Action {
    /// Create a record from field=value pairs.
    Create {
        /// field=value pairs, e.g. name="Acme GmbH" amount="1200.50 EUR" (see `fields`).
        #[arg(value_name = "FIELD=VALUE")]
        fields: Vec<String>,
        /// Print only the new record's id (for scripts).
        #[arg(long)]
        id_only: bool,
    },
    /// Show a record.
    Get {
        /// The record's id.
        id: String,
    },
    /// Change the named fields (field=value; field= clears it).
    Update {
        /// The record's id.
        id: String,
        /// field=value pairs; the named fields are the update mask, `field=` clears one.
        #[arg(value_name = "FIELD=VALUE")]
        fields: Vec<String>,
    },
    /// Delete a record (leaves a tombstone for sync).
    Delete {
        /// The record's id.
        id: String,
    },
    /// List records, newest last.
    List(ListArgs),
    /// List the fields of this record type.
    Fields,
}

#[derive(Args, Default)]
pub struct ListArgs {
    /// Only records of this account.
    #[arg(long)]
    account: Option<String>,
    /// Opportunities in this stage.
    #[arg(long)]
    stage: Option<String>,
    /// Cases or leads with this status.
    #[arg(long)]
    status: Option<String>,
    /// Cases with this priority.
    #[arg(long)]
    priority: Option<String>,
    /// Cases assigned to this organization.
    #[arg(long)]
    assigned_org: Option<String>,
    /// Activities of exactly this record.
    #[arg(long)]
    related: Option<String>,
    /// Activities on this channel.
    #[arg(long)]
    channel: Option<String>,
    /// Only records changed since this time (RFC 3339).
    #[arg(long)]
    updated_since: Option<String>,
    /// Include deleted records (tombstones).
    #[arg(long)]
    show_deleted: bool,
    /// Records per page (at most 500).
    #[arg(long, default_value_t = 50)]
    page_size: i32,
    /// Continue after a previous page (its next-page token).
    #[arg(long, default_value = "")]
    page_token: String,
    /// Follow next-page tokens and print every page.
    #[arg(long)]
    all: bool,
}

/// Parses `field=value` pairs for `kind`. Empty values are kept as "absent" in the mask.
fn parse_pairs(kind: RecordKind, pairs: &[String]) -> Result<(FieldMap, Vec<String>)> {
    let mut fields = FieldMap::new();
    let mut mask = Vec::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .with_context(|| format!("{pair:?}: expected field=value"))?;
        let spec = schema::field(kind, name).with_context(|| {
            let names: Vec<&str> = schema::fields(kind).iter().map(|f| f.name).collect();
            format!(
                "{name:?} is not a field of {kind}; fields: {}",
                names.join(", ")
            )
        })?;
        mask.push(name.to_string());
        if !value.is_empty() {
            let v = schema::parse_text(spec, value).map_err(|m| anyhow::anyhow!("{name}: {m}"))?;
            fields.insert(name.to_string(), v);
        }
    }
    Ok((fields, mask))
}

fn enum_filter(
    field: &str,
    value: &Option<String>,
    allowed: &[&str],
    to_wire: fn(&str) -> Option<i32>,
    prefix: &str,
) -> Result<i32> {
    match value {
        None => Ok(0),
        Some(v) => {
            let v = v.to_ascii_lowercase();
            if !allowed.contains(&v.as_str()) {
                bail!("--{field}: {v:?} is not one of {}", allowed.join(", "));
            }
            to_wire(&format!("{prefix}{}", v.to_ascii_uppercase()))
                .with_context(|| format!("--{field}: unknown value"))
        }
    }
}

fn list_options(a: &ListArgs, token: &str) -> Result<pb::ListOptions> {
    let updated_since = a
        .updated_since
        .as_ref()
        .map(|t| {
            verbund_core::civil::parse_rfc3339_ms(t)
                .map(verbund_node::convert::ms_to_timestamp)
                .context("--updated-since: expected RFC 3339")
        })
        .transpose()?;
    Ok(pb::ListOptions {
        page_size: a.page_size,
        page_token: token.to_string(),
        updated_since,
        show_deleted: a.show_deleted,
    })
}

/// The list filters of each kind (the others do not apply).
fn filters_of(kind: RecordKind) -> &'static [&'static str] {
    match kind {
        RecordKind::Account => &[],
        RecordKind::Contact => &["account"],
        RecordKind::Lead => &["status"],
        RecordKind::Opportunity => &["account", "stage"],
        RecordKind::ServiceCase => &["account", "status", "priority", "assigned-org"],
        RecordKind::Activity => &["account", "related", "channel"],
    }
}

/// Every kind-specific list filter.
const ALL_FILTERS: [&str; 6] = [
    "account",
    "stage",
    "status",
    "priority",
    "assigned-org",
    "related",
];

/// `<kind> list --help` offers only the filters of that kind (one argument struct serves
/// every kind; the others are hidden, and refused if given).
pub fn hide_foreign_filters(cmd: clap::Command) -> clap::Command {
    let kinds = [
        ("account", RecordKind::Account),
        ("contact", RecordKind::Contact),
        ("lead", RecordKind::Lead),
        ("opportunity", RecordKind::Opportunity),
        ("case", RecordKind::ServiceCase),
        ("activity", RecordKind::Activity),
    ];
    let mut cmd = cmd;
    for (name, kind) in kinds {
        cmd = cmd.mut_subcommand(name, |sub| {
            sub.mut_subcommand("list", |mut list| {
                for filter in ALL_FILTERS.iter().chain(["channel"].iter()) {
                    if !filters_of(kind).contains(filter) {
                        let id = filter.replace('-', "_");
                        list = list.mut_arg(id, |a| a.hide(true));
                    }
                }
                list
            })
        });
    }
    cmd
}

/// Refuses filters that do not apply to the kind, instead of silently ignoring them.
fn check_filters(kind: RecordKind, a: &ListArgs) -> Result<()> {
    let allowed = filters_of(kind);
    let given = [
        ("account", a.account.is_some()),
        ("stage", a.stage.is_some()),
        ("status", a.status.is_some()),
        ("priority", a.priority.is_some()),
        ("assigned-org", a.assigned_org.is_some()),
        ("related", a.related.is_some()),
        ("channel", a.channel.is_some()),
    ];
    for (name, set) in given {
        if set && !allowed.contains(&name) {
            bail!("--{name} does not apply to {kind} lists");
        }
    }
    Ok(())
}

/// What a record call returned.
enum Outcome {
    Records(Vec<Shown>, String),
    Deleted(pb::RecordMeta),
}

fn shown<M: RecordMessage>(m: &M) -> Result<Shown> {
    Ok(Shown {
        kind: M::KIND,
        fields: m.to_fields()?,
        meta: m.meta().cloned().unwrap_or_default(),
    })
}

enum Op<'a> {
    Create(FieldMap),
    Get(String),
    Update(String, FieldMap, Vec<String>),
    Delete(String),
    List(&'a ListArgs, String),
}

macro_rules! kind_call {
    ($channel:expr, $op:expr, $client:ty, $msg:ty, $create:ident, $create_req:ident { $cf:ident }, $get:ident, $update:ident, $update_req:ident { $uf:ident },
     $delete:ident, $list:ident, $items:ident, |$la:ident, $opts:ident| $list_req:expr) => {{
        let mut c = <$client>::new($channel);
        match $op {
            Op::Create(fields) => {
                let m = c
                    .$create(pb::$create_req {
                        $cf: Some(message_from_fields::<$msg>(&fields)),
                    })
                    .await?
                    .into_inner();
                Outcome::Records(vec![shown(&m)?], String::new())
            }
            Op::Get(id) => Outcome::Records(
                vec![shown(
                    &c.$get(pb::GetRecordRequest { id }).await?.into_inner(),
                )?],
                String::new(),
            ),
            Op::Update(id, fields, paths) => {
                let req = pb::$update_req {
                    id,
                    $uf: Some(message_from_fields::<$msg>(&fields)),
                    update_mask: Some(prost_types::FieldMask { paths }),
                };
                Outcome::Records(
                    vec![shown(&c.$update(req).await?.into_inner())?],
                    String::new(),
                )
            }
            Op::Delete(id) => Outcome::Deleted(
                c.$delete(pb::DeleteRecordRequest { id })
                    .await?
                    .into_inner()
                    .meta
                    .unwrap_or_default(),
            ),
            Op::List($la, token) => {
                let $opts = Some(list_options($la, &token)?);
                let resp = c.$list($list_req).await?.into_inner();
                Outcome::Records(
                    resp.$items.iter().map(shown).collect::<Result<_>>()?,
                    resp.next_page_token,
                )
            }
        }
    }};
}

async fn call(kind: RecordKind, channel: tonic::transport::Channel, op: Op<'_>) -> Result<Outcome> {
    Ok(match kind {
        RecordKind::Account => kind_call!(
            channel,
            op,
            pb::account_service_client::AccountServiceClient<tonic::transport::Channel>,
            pb::Account,
            create_account,
            CreateAccountRequest { account },
            get_account,
            update_account,
            UpdateAccountRequest { account },
            delete_account,
            list_accounts,
            accounts,
            |_a, options| pb::ListAccountsRequest { options }
        ),
        RecordKind::Contact => kind_call!(
            channel,
            op,
            pb::contact_service_client::ContactServiceClient<tonic::transport::Channel>,
            pb::Contact,
            create_contact,
            CreateContactRequest { contact },
            get_contact,
            update_contact,
            UpdateContactRequest { contact },
            delete_contact,
            list_contacts,
            contacts,
            |a, options| pb::ListContactsRequest {
                options,
                account_id: a.account.clone().unwrap_or_default()
            }
        ),
        RecordKind::Lead => kind_call!(
            channel,
            op,
            pb::lead_service_client::LeadServiceClient<tonic::transport::Channel>,
            pb::Lead,
            create_lead,
            CreateLeadRequest { lead },
            get_lead,
            update_lead,
            UpdateLeadRequest { lead },
            delete_lead,
            list_leads,
            leads,
            |a, options| pb::ListLeadsRequest {
                options,
                status: enum_filter(
                    "status",
                    &a.status,
                    schema::LEAD_STATUSES,
                    |n| pb::LeadStatus::from_str_name(n).map(|e| e as i32),
                    "LEAD_STATUS_"
                )?,
            }
        ),
        RecordKind::Opportunity => kind_call!(
            channel,
            op,
            pb::opportunity_service_client::OpportunityServiceClient<tonic::transport::Channel>,
            pb::Opportunity,
            create_opportunity,
            CreateOpportunityRequest { opportunity },
            get_opportunity,
            update_opportunity,
            UpdateOpportunityRequest { opportunity },
            delete_opportunity,
            list_opportunities,
            opportunities,
            |a, options| pb::ListOpportunitiesRequest {
                options,
                account_id: a.account.clone().unwrap_or_default(),
                stage: enum_filter(
                    "stage",
                    &a.stage,
                    schema::OPPORTUNITY_STAGES,
                    |n| pb::OpportunityStage::from_str_name(n).map(|e| e as i32),
                    "OPPORTUNITY_STAGE_"
                )?,
            }
        ),
        RecordKind::ServiceCase => kind_call!(
            channel,
            op,
            pb::service_case_service_client::ServiceCaseServiceClient<tonic::transport::Channel>,
            pb::ServiceCase,
            create_service_case,
            CreateServiceCaseRequest { service_case },
            get_service_case,
            update_service_case,
            UpdateServiceCaseRequest { service_case },
            delete_service_case,
            list_service_cases,
            service_cases,
            |a, options| pb::ListServiceCasesRequest {
                options,
                account_id: a.account.clone().unwrap_or_default(),
                status: enum_filter(
                    "status",
                    &a.status,
                    schema::CASE_STATUSES,
                    |n| pb::CaseStatus::from_str_name(n).map(|e| e as i32),
                    "CASE_STATUS_"
                )?,
                priority: enum_filter(
                    "priority",
                    &a.priority,
                    schema::CASE_PRIORITIES,
                    |n| pb::CasePriority::from_str_name(n).map(|e| e as i32),
                    "CASE_PRIORITY_"
                )?,
                assigned_org: a.assigned_org.clone().unwrap_or_default(),
            }
        ),
        RecordKind::Activity => kind_call!(
            channel,
            op,
            pb::activity_service_client::ActivityServiceClient<tonic::transport::Channel>,
            pb::Activity,
            create_activity,
            CreateActivityRequest { activity },
            get_activity,
            update_activity,
            UpdateActivityRequest { activity },
            delete_activity,
            list_activities,
            activities,
            |a, options| pb::ListActivitiesRequest {
                options,
                account_id: a.account.clone().unwrap_or_default(),
                related_id: a.related.clone().unwrap_or_default(),
                channel: enum_filter(
                    "channel",
                    &a.channel,
                    schema::ACTIVITY_CHANNELS,
                    |n| pb::ActivityChannel::from_str_name(n).map(|e| e as i32),
                    "ACTIVITY_CHANNEL_"
                )?,
            }
        ),
    })
}

pub async fn run(kind: RecordKind, args: RecordArgs) -> Result<()> {
    let json = args.conn.json;
    if let Action::Fields = args.action {
        output::print_fields(kind);
        return Ok(());
    }
    let channel = args.conn.channel().await?;
    match args.action {
        Action::Fields => Ok(()),
        Action::Create { fields, id_only } => {
            let (fields, _) = parse_pairs(kind, &fields)?;
            let created = call(kind, channel, Op::Create(fields)).await?;
            if id_only && let Outcome::Records(shown, _) = &created {
                for r in shown {
                    println!("{}", r.meta.id);
                }
                return Ok(());
            }
            show(created, json, false)
        }
        Action::Get { id } => show(call(kind, channel, Op::Get(id)).await?, json, false),
        Action::Update { id, fields } => {
            if fields.is_empty() {
                bail!("name at least one field=value to change");
            }
            let (fields, mask) = parse_pairs(kind, &fields)?;
            show(
                call(kind, channel, Op::Update(id, fields, mask)).await?,
                json,
                false,
            )
        }
        Action::Delete { id } => show(call(kind, channel, Op::Delete(id)).await?, json, false),
        Action::List(list) => {
            check_filters(kind, &list)?;
            let mut token = list.page_token.clone();
            let mut all = Vec::new();
            loop {
                let Outcome::Records(mut page, next) =
                    call(kind, channel.clone(), Op::List(&list, token.clone())).await?
                else {
                    bail!("unexpected response");
                };
                all.append(&mut page);
                if !list.all || next.is_empty() {
                    if !next.is_empty() && !json {
                        println!("(more: --page-token {next})");
                    }
                    break;
                }
                token = next;
            }
            output::print_list(kind, &all, json);
            Ok(())
        }
    }
}

fn show(o: Outcome, json: bool, _list: bool) -> Result<()> {
    match o {
        Outcome::Records(records, _) => {
            for r in &records {
                output::print_record(r, json);
            }
        }
        Outcome::Deleted(meta) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": meta.id, "deleted": meta.deleted, "seq": meta.seq})
                );
            } else {
                println!("deleted {} (tombstone at change {})", meta.id, meta.seq);
            }
        }
    }
    Ok(())
}

fn kind_of_name(s: &str) -> Result<i32> {
    let kind = RecordKind::parse(s)
        .or_else(|| (s == "case").then_some(RecordKind::ServiceCase))
        .with_context(|| format!("unknown kind {s:?}"))?;
    Ok(verbund_node::convert::kind_to_pb(kind) as i32)
}

pub async fn search(conn: &Conn, query: String, kinds: Vec<String>, page_size: i32) -> Result<()> {
    let kinds = kinds
        .iter()
        .map(|k| kind_of_name(k))
        .collect::<Result<Vec<_>>>()?;
    let mut c = pb::search_service_client::SearchServiceClient::new(conn.channel().await?);
    let resp = c
        .search(pb::SearchRequest {
            query,
            kinds,
            page_size,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    let results: Vec<Shown> = resp
        .results
        .iter()
        .filter_map(verbund_node::convert::any_record_fields)
        .map(|(kind, fields, meta)| Shown { kind, fields, meta })
        .collect();
    output::print_mixed(&results, conn.json);
    Ok(())
}

/// A Watch that the node ended or that broke with the connection (the node closes streams
/// and connections at `max_connection_age_secs`, restarts, a network blip) is resumed after
/// the last event shown, so `watch` follows until Ctrl-C (or `--limit`), like `tail -F`.
fn watch_may_resume(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled
    )
}

pub async fn watch(conn: &Conn, after_seq: i64, limit: Option<usize>) -> Result<()> {
    const BACKOFF_FIRST: std::time::Duration = std::time::Duration::from_millis(200);
    const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(10);
    let mut c = pb::change_service_client::ChangeServiceClient::new(conn.channel().await?);
    if !conn.json {
        // On stderr, so piped output stays events only.
        eprintln!(
            "changes after sequence number {after_seq}: the history first, then each new change as it is committed (Ctrl-C to stop)"
        );
    }
    let mut last = after_seq;
    let mut n = 0;
    let mut backoff = BACKOFF_FIRST;
    loop {
        let opened = c
            .watch(pb::WatchRequest {
                after_seq: last,
                kinds: vec![],
            })
            .await;
        let mut stream = match opened {
            Ok(s) => s.into_inner(),
            Err(status) if watch_may_resume(&status) => {
                eprintln!(
                    "the node is not reachable ({}); trying again in {:.1} s",
                    status.message(),
                    backoff.as_secs_f64()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        // Set again by every event: only an empty stream makes the next open wait.
        let mut backoff_pending = true;
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => ev,
                // A connection torn down mid-stream (h2 reports some of these as UNKNOWN).
                Err(status)
                    if watch_may_resume(&status) || status.code() == tonic::Code::Unknown =>
                {
                    break;
                }
                Err(status) => return Err(status.into()),
            };
            backoff = BACKOFF_FIRST;
            backoff_pending = false;
            // The event's own seq, not the highest so far: another organization's events
            // carry tokens, which are not ordered (events come in order either way).
            last = ev.seq;
            output::print_event(&ev, conn.json);
            n += 1;
            if limit.is_some_and(|l| n >= l) {
                return Ok(());
            }
        }
        // Ended by the node (its stream age, a restart) or broken: go on after the last
        // event shown; a stream that brought nothing waits first, so a node that keeps
        // ending streams at once is not called in a tight loop.
        tracing::debug!(after_seq = last, "watch stream ended; resuming");
        if backoff_pending {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

pub async fn whoami(conn: &Conn) -> Result<()> {
    let mut c = pb::node_service_client::NodeServiceClient::new(conn.channel().await?);
    let r = c.who_am_i(pb::WhoAmIRequest {}).await?.into_inner();
    if conn.json {
        println!(
            "{}",
            serde_json::json!({"org": r.org, "kind": r.kind, "name": r.name, "node_org": r.node_org, "node_name": r.node_name})
        );
    } else {
        println!(
            "verbund://{}/{}/{} (talking to node {}/{})",
            r.org, r.kind, r.name, r.node_org, r.node_name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_build_fields_and_mask() {
        let (f, mask) = parse_pairs(
            RecordKind::Opportunity,
            &[
                "name=Deal".into(),
                "amount=12.50 EUR".into(),
                "close_date=".into(),
            ],
        )
        .unwrap();
        assert_eq!(mask, vec!["name", "amount", "close_date"]);
        assert_eq!(f.len(), 2);
        assert!(parse_pairs(RecordKind::Opportunity, &["colour=red".into()]).is_err());
        assert!(parse_pairs(RecordKind::Opportunity, &["name".into()]).is_err());
        assert!(parse_pairs(RecordKind::Opportunity, &["probability=lots".into()]).is_err());
    }

    #[test]
    fn filters_must_apply() {
        let a = ListArgs {
            stage: Some("proposal".into()),
            ..Default::default()
        };
        assert!(check_filters(RecordKind::Opportunity, &a).is_ok());
        assert!(check_filters(RecordKind::Account, &a).is_err());
    }
}
