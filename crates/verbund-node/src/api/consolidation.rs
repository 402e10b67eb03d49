//! The consolidated customer view's API (`ConsolidationService`): customers across
//! subsidiaries with golden records, lineage and figures, and a data steward's links and
//! unlinks. Own organization only (`auth::may_view_consolidation`, `auth::may_steward`);
//! denials are audited, and so is every steward decision.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use tonic::{Request, Response, Status};
use uuid::Uuid;
use verbund_consolidation::StewardDecision;
use verbund_consolidation::figures::{self, Figures, Money};
use verbund_consolidation::golden::{self, GoldenRecord};
use verbund_consolidation::normalize::fold;
use verbund_core::{Record, RecordKind};
use verbund_store::{StewardDecisionRow, StewardVerdict};

use crate::api::Api;
use crate::api::records::{decode_token, encode_token, fingerprint, page_size};
use crate::auth;
use crate::consolidation::{ConsolidatedView, ViewError, figures_input, source_record};
use crate::convert::{hlc_to_pb, invalid, ms_to_timestamp, parse_id};
use crate::error::NodeError;
use crate::identity::Principal;
use crate::pb;
use crate::state::{NodeState, now_ms};

fn view_status(e: ViewError) -> Status {
    match e {
        ViewError::Disabled => Status::failed_precondition(e.to_string()),
        ViewError::Building => Status::unavailable(e.to_string()),
    }
}

fn money_pb(m: &Money) -> (Vec<pb::MoneyTotal>, Option<pb::ConvertedTotal>) {
    let totals = |per: &BTreeMap<String, i64>| {
        per.iter()
            .map(|(c, a)| pb::MoneyTotal {
                currency_code: c.clone(),
                minor_units: *a,
            })
            .collect::<Vec<_>>()
    };
    let converted = m.converted.as_ref().map(|c| pb::ConvertedTotal {
        currency_code: c.base.clone(),
        minor_units: c.amount_minor,
        rate_date: c.rate_date.clone(),
        unconverted: totals(&c.unconverted),
    });
    (totals(&m.per_currency), converted)
}

fn figures_pb(f: &Figures) -> pb::Figures {
    let (open_pipeline, open_pipeline_converted) = money_pb(&f.open_pipeline);
    let (won_last_12_months, won_last_12_months_converted) = money_pb(&f.won_last_12_months);
    pb::Figures {
        open_pipeline,
        won_last_12_months,
        open_pipeline_converted,
        won_last_12_months_converted,
        open_cases: f.open_cases,
        resolved_cases: f.resolved_cases,
        mean_resolution_secs: f.mean_resolution_secs.unwrap_or(0),
        last_interaction: f.last_interaction.map(|s| ms_to_timestamp(s * 1000)),
        served_by: f.served_by.iter().cloned().collect(),
        not_served_by: f.not_served_by.iter().cloned().collect(),
    }
}

/// The golden values with their lineage (the real version of each surviving field).
fn golden_pb(golden: &GoldenRecord, sources: &[Record]) -> Vec<pb::GoldenValue> {
    golden
        .iter()
        .map(|(field, g)| {
            let version = sources
                .iter()
                .find(|r| r.id.to_string() == g.lineage.record_id)
                .and_then(|r| r.versions.get(field))
                .map(hlc_to_pb);
            pb::GoldenValue {
                field: field.clone(),
                value: g.value.clone(),
                subsidiary: g.lineage.subsidiary.clone(),
                record_id: g.lineage.record_id.clone(),
                version,
                decided_by: g
                    .decided_by
                    .map(|r| format!("{r:?}"))
                    .map(|r| snake(&r))
                    .unwrap_or_default(),
                candidates: g.candidates as i32,
            }
        })
        .collect()
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}

fn sources_pb(records: &[Record]) -> Vec<pb::SourceRecord> {
    records
        .iter()
        .map(|r| pb::SourceRecord {
            record_id: r.id.to_string(),
            subsidiary: r.owner_org.clone(),
            name: match r.kind {
                RecordKind::Contact => [r.text("first_name"), r.text("last_name")]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" "),
                _ => r.text("name").unwrap_or_default().to_string(),
            },
        })
        .collect()
}

impl NodeState {
    fn view(&self) -> Result<&Arc<ConsolidatedView>, Status> {
        self.consolidation
            .get()
            .ok_or_else(|| view_status(ViewError::Disabled))
    }

    async fn may_view(&self, p: &Principal, action: &str) -> Result<(), Status> {
        if let Err(why) = auth::may_view_consolidation(&self.policy(), &self.org, p) {
            let draft = Self::audit_draft(p, action, None, None, Vec::new(), "deny", why.0.clone());
            return Err(self.deny(draft, Status::permission_denied(why.0)).await);
        }
        Ok(())
    }

    /// The live account or contact `id` in the view, with its kind.
    async fn view_record(&self, field: &str, id: &str) -> Result<Record, NodeError> {
        let uuid = parse_id(field, id)?;
        self.store
            .get(uuid)
            .await?
            .filter(|r| {
                !r.is_deleted() && matches!(r.kind, RecordKind::Account | RecordKind::Contact)
            })
            .ok_or_else(|| {
                Status::not_found(format!("no account or contact with id {uuid}")).into()
            })
    }

    pub async fn list_customers(
        &self,
        p: &Principal,
        req: pb::ListCustomersRequest,
    ) -> Result<pb::ListCustomersResponse, NodeError> {
        self.may_view(p, "list customers").await?;
        let limit = page_size(req.page_size)? as usize;
        let query = fold(req.query.trim());
        let fp = fingerprint(&format!("customers|{query}|{}", req.subsidiary));
        let after = decode_token(&req.page_token, fp)?;
        let view = self.view()?;
        // The page's customers (cluster ids in order) with their account record ids.
        let mut page: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let more;
        {
            let read = view.read().map_err(view_status)?;
            let accounts = read.engine().accounts();
            let mut clusters: BTreeMap<String, Vec<String>> = BTreeMap::new();
            accounts.for_each_record(|record, cluster| {
                if after.as_deref().is_none_or(|a| cluster > a) {
                    clusters
                        .entry(cluster.to_string())
                        .or_default()
                        .push(record.to_string());
                }
            });
            let wanted = |members: &Vec<String>| {
                let by_sub = req.subsidiary.is_empty()
                    || members
                        .iter()
                        .any(|m| read.subsidiary_of(m) == Some(req.subsidiary.as_str()));
                let by_name = query.is_empty()
                    || members.iter().any(|m| {
                        accounts
                            .features_of(m)
                            .is_some_and(|f| f.name.contains(query.as_str()))
                    });
                by_sub && by_name
            };
            let mut matching = clusters.into_iter().filter(|(_, m)| wanted(m));
            for (cluster, members) in matching.by_ref().take(limit) {
                page.insert(cluster, members);
            }
            more = matching.next().is_some();
        }
        let ids: Vec<Uuid> = page
            .values()
            .flatten()
            .filter_map(|m| Uuid::parse_str(m).ok())
            .collect();
        let records: HashMap<String, Record> = self
            .store
            .get_many(&ids)
            .await?
            .into_iter()
            .map(|r| (r.id.to_string(), r))
            .collect();
        let config = &view.settings.survivorship;
        let customers = page
            .iter()
            .map(|(cluster, members)| {
                let sources: Vec<Record> = members
                    .iter()
                    .filter_map(|m| records.get(m).cloned())
                    .collect();
                let golden = golden::golden_record(
                    config,
                    &sources.iter().map(source_record).collect::<Vec<_>>(),
                );
                let subsidiaries: BTreeSet<String> =
                    sources.iter().map(|r| r.owner_org.clone()).collect();
                pb::CustomerSummary {
                    id: cluster.clone(),
                    name: golden
                        .get("name")
                        .map(|g| g.value.clone())
                        .unwrap_or_default(),
                    subsidiaries: subsidiaries.into_iter().collect(),
                    accounts: members.len() as i32,
                }
            })
            .collect();
        let next_page_token = match (more, page.keys().last()) {
            (true, Some(last)) => encode_token(last, fp),
            _ => String::new(),
        };
        Ok(pb::ListCustomersResponse {
            customers,
            next_page_token,
        })
    }

    pub async fn get_customer(
        &self,
        p: &Principal,
        req: pb::GetCustomerRequest,
    ) -> Result<pb::Customer, NodeError> {
        self.may_view(p, "get customer").await?;
        let id = parse_id("id", &req.id)?.to_string();
        let view = self.view()?;
        let (cluster, members, subsidiaries) = {
            let read = view.read().map_err(view_status)?;
            let accounts = read.engine().accounts();
            let cluster = accounts
                .cluster_of(&id)
                .ok_or_else(|| Status::not_found(format!("no customer with id {id}")))?
                .to_string();
            let members: Vec<String> = accounts
                .cluster_members(&id)
                .into_iter()
                .map(str::to_string)
                .collect();
            (cluster, members, read.subsidiaries())
        };
        let ids: Vec<Uuid> = members
            .iter()
            .filter_map(|m| Uuid::parse_str(m).ok())
            .collect();
        let accounts = self.store.get_many(&ids).await?;
        let related = self.store.records_of_accounts(&members).await?;
        let config = &view.settings.survivorship;
        let golden = golden::golden_record(
            config,
            &accounts.iter().map(source_record).collect::<Vec<_>>(),
        );
        // Persons: the contact clusters of the customer's contacts.
        let contacts: Vec<&Record> = related
            .iter()
            .filter(|r| r.kind == RecordKind::Contact && !r.is_deleted())
            .collect();
        let mut persons: BTreeMap<String, Vec<Record>> = BTreeMap::new();
        {
            let read = view.read().map_err(view_status)?;
            for c in &contacts {
                let key = c.id.to_string();
                if let Some(person) = read.engine().contacts().cluster_of(&key) {
                    persons
                        .entry(person.to_string())
                        .or_default()
                        .push((*c).clone());
                }
            }
        }
        let persons = persons
            .into_iter()
            .map(|(id, records)| pb::Person {
                golden: golden_pb(
                    &golden::golden_record(
                        config,
                        &records.iter().map(source_record).collect::<Vec<_>>(),
                    ),
                    &records,
                ),
                sources: sources_pb(&records),
                id,
            })
            .collect();
        let customer_of: BTreeMap<String, String> = members
            .iter()
            .map(|m| (m.clone(), cluster.clone()))
            .collect();
        let mut all = accounts.clone();
        all.extend(related);
        let input = figures_input(&all, &customer_of, subsidiaries);
        let figures = figures::group_figures(&input, now_ms() / 1000, view.settings.fx.as_ref());
        Ok(pb::Customer {
            golden: golden_pb(&golden, &accounts),
            sources: sources_pb(&accounts),
            persons,
            figures: figures.customers.get(&cluster).map(figures_pb),
            id: cluster,
        })
    }

    /// Persists a steward's decisions, then applies them to the view (a crash in between
    /// loses nothing: the view is rebuilt from the stored decisions).
    async fn steward(
        &self,
        p: &Principal,
        kind: RecordKind,
        decisions: Vec<(String, String, StewardVerdict)>,
        action: &str,
    ) -> Result<(), NodeError> {
        if let Err(why) = auth::may_steward(&self.policy(), &self.org, p, kind) {
            let draft = Self::audit_draft(
                p,
                action,
                Some(kind),
                None,
                Vec::new(),
                "deny",
                why.0.clone(),
            );
            return Err(self
                .deny(draft, Status::permission_denied(why.0))
                .await
                .into());
        }
        let mut drafts = Vec::new();
        for (a, b, verdict) in &decisions {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            let row = StewardDecisionRow {
                kind,
                record_a: parse_id("record_a", a)?,
                record_b: parse_id("record_b", b)?,
                decision: *verdict,
                decided_by: p.uri(),
                decided_at_ms: now_ms(),
            };
            self.store.save_steward_decision(&row).await?;
            drafts.push(Self::audit_draft(
                p,
                action,
                Some(kind),
                Some(a.clone()),
                Vec::new(),
                "allow",
                format!("{} with {b} (consolidated view)", verdict.as_str()),
            ));
        }
        Ok(self.audit(drafts).await?)
    }

    pub async fn link_records(
        &self,
        p: &Principal,
        req: pb::LinkRecordsRequest,
    ) -> Result<pb::StewardDecisionResponse, NodeError> {
        self.may_view(p, "link records").await?;
        let a = self.view_record("record_a", &req.record_a).await?;
        let b = self.view_record("record_b", &req.record_b).await?;
        if a.kind != b.kind {
            return Err(invalid(
                "record_b",
                format!(
                    "is a {}, record_a a {}: link two accounts or two contacts",
                    b.kind, a.kind
                ),
            )
            .into());
        }
        if a.id == b.id {
            return Err(invalid("record_b", "is record_a itself").into());
        }
        let (ka, kb) = (a.id.to_string(), b.id.to_string());
        let view = self.view()?;
        view.read().map_err(view_status)?;
        self.steward(
            p,
            a.kind,
            vec![(ka.clone(), kb.clone(), StewardVerdict::Link)],
            "link",
        )
        .await?;
        let decision = StewardDecision::Link(ka.clone(), kb.clone());
        view.write(|engine| match a.kind {
            RecordKind::Account => engine.decide_accounts(decision),
            _ => engine.decide_contacts(decision),
        })
        .map_err(view_status)?;
        self.clusters_of(a.kind, &ka, &kb)
    }

    pub async fn unlink_record(
        &self,
        p: &Principal,
        req: pb::UnlinkRecordRequest,
    ) -> Result<pb::StewardDecisionResponse, NodeError> {
        self.may_view(p, "unlink record").await?;
        let rec = self.view_record("record_id", &req.record_id).await?;
        let key = rec.id.to_string();
        let view = self.view()?;
        let others: Vec<String> = if req.from_record_id.is_empty() {
            let read = view.read().map_err(view_status)?;
            let engine = read.engine();
            let members = match rec.kind {
                RecordKind::Account => engine.accounts().cluster_members(&key),
                _ => engine.contacts().cluster_members(&key),
            };
            members
                .into_iter()
                .filter(|m| *m != key)
                .map(str::to_string)
                .collect()
        } else {
            let other = self
                .view_record("from_record_id", &req.from_record_id)
                .await?;
            if other.kind != rec.kind {
                return Err(invalid(
                    "from_record_id",
                    format!("is a {}, record_id a {}", other.kind, rec.kind),
                )
                .into());
            }
            if other.id == rec.id {
                return Err(invalid("from_record_id", "is record_id itself").into());
            }
            vec![other.id.to_string()]
        };
        if others.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{key} is alone in its cluster already; name from_record_id to keep it apart from a record for good"
            )).into());
        }
        let decisions = others
            .iter()
            .map(|o| (key.clone(), o.clone(), StewardVerdict::Unlink))
            .collect();
        self.steward(p, rec.kind, decisions, "unlink").await?;
        view.write(|engine| {
            for o in &others {
                let d = StewardDecision::Unlink(key.clone(), o.clone());
                match rec.kind {
                    RecordKind::Account => engine.decide_accounts(d),
                    _ => engine.decide_contacts(d),
                };
            }
        })
        .map_err(view_status)?;
        let first = others.first().cloned().unwrap_or_default();
        self.clusters_of(rec.kind, &key, &first)
    }

    fn clusters_of(
        &self,
        kind: RecordKind,
        a: &str,
        b: &str,
    ) -> Result<pb::StewardDecisionResponse, NodeError> {
        let view = self.view()?;
        let read = view.read().map_err(view_status)?;
        let cluster = |r: &str| {
            let e = read.engine();
            match kind {
                RecordKind::Account => e.accounts().cluster_of(r),
                _ => e.contacts().cluster_of(r),
            }
            .unwrap_or_default()
            .to_string()
        };
        Ok(pb::StewardDecisionResponse {
            cluster_a: cluster(a),
            cluster_b: cluster(b),
        })
    }

    pub async fn explain_match(
        &self,
        p: &Principal,
        req: pb::ExplainMatchRequest,
    ) -> Result<pb::MatchExplanation, NodeError> {
        self.may_view(p, "explain match").await?;
        let a = self.view_record("record_a", &req.record_a).await?;
        let b = self.view_record("record_b", &req.record_b).await?;
        if a.kind != b.kind {
            return Err(invalid(
                "record_b",
                format!("is a {}, record_a a {}", b.kind, a.kind),
            )
            .into());
        }
        let (ka, kb) = (a.id.to_string(), b.id.to_string());
        let view = self.view()?;
        let read = view.read().map_err(view_status)?;
        let e = match a.kind {
            RecordKind::Account => read.engine().accounts().explain(&ka, &kb),
            _ => read.engine().contacts().explain(&ka, &kb),
        }
        .ok_or_else(|| {
            Status::unavailable("the consolidated view has not taken in these records yet")
        })?;
        Ok(pb::MatchExplanation {
            evidence: e
                .evidence
                .iter()
                .map(|x| pb::Evidence {
                    attribute: x.attribute.to_string(),
                    finding: x.finding.clone(),
                    points: x.points,
                })
                .collect(),
            score: e.score,
            threshold: e.threshold,
            constraint: e.conflict.map(|c| c.to_string()).unwrap_or_default(),
            steward: match &e.steward {
                Some(StewardDecision::Link(..)) => "link".into(),
                Some(StewardDecision::Unlink(..)) => "unlink".into(),
                None => String::new(),
            },
            decision: e.decision.to_string(),
            same_cluster: e.same_cluster,
        })
    }

    pub async fn group_figures(
        &self,
        p: &Principal,
        _req: pb::GroupFiguresRequest,
    ) -> Result<pb::GroupFiguresResponse, NodeError> {
        self.may_view(p, "group figures").await?;
        let view = self.view()?;
        let (customer_of, subsidiaries) = {
            let read = view.read().map_err(view_status)?;
            let mut customer_of = BTreeMap::new();
            read.engine().accounts().for_each_record(|record, cluster| {
                customer_of.insert(record.to_string(), cluster.to_string());
            });
            (customer_of, read.subsidiaries())
        };
        let ids: Vec<String> = customer_of.keys().cloned().collect();
        let mut records = Vec::new();
        for chunk in ids.chunks(500) {
            let uuids: Vec<Uuid> = chunk
                .iter()
                .filter_map(|m| Uuid::parse_str(m).ok())
                .collect();
            records.extend(self.store.get_many(&uuids).await?);
            records.extend(self.store.records_of_accounts(chunk).await?);
        }
        let input = figures_input(&records, &customer_of, subsidiaries.clone());
        let figures = figures::group_figures(&input, now_ms() / 1000, view.settings.fx.as_ref());
        Ok(pb::GroupFiguresResponse {
            group: Some(figures_pb(&figures.group)),
            customers: figures.customers.len() as u64,
            single_subsidiary_customers: figures.single_subsidiary_customers,
            subsidiaries: subsidiaries.into_iter().collect(),
        })
    }
}

#[tonic::async_trait]
impl pb::consolidation_service_server::ConsolidationService for Api {
    async fn list_customers(
        &self,
        req: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.list_customers(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn get_customer(
        &self,
        req: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::Customer>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.get_customer(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn link_records(
        &self,
        req: Request<pb::LinkRecordsRequest>,
    ) -> Result<Response<pb::StewardDecisionResponse>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.link_records(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn unlink_record(
        &self,
        req: Request<pb::UnlinkRecordRequest>,
    ) -> Result<Response<pb::StewardDecisionResponse>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.unlink_record(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn explain_match(
        &self,
        req: Request<pb::ExplainMatchRequest>,
    ) -> Result<Response<pb::MatchExplanation>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.explain_match(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }

    async fn group_figures(
        &self,
        req: Request<pb::GroupFiguresRequest>,
    ) -> Result<Response<pb::GroupFiguresResponse>, Status> {
        let p = auth::principal(&req)?;
        let r = self.state.group_figures(&p, req.into_inner()).await?;
        Ok(Response::new(r))
    }
}
