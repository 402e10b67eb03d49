//! Admin operations on shares, share rules, the policy and the audit log. Own organization
//! only (the administer right); every change to sharing is audited in its own transaction.

use std::collections::BTreeSet;

use tonic::Status;
use uuid::Uuid;
use verbund_core::RecordKind;
use verbund_core::access::{RuleMatch, Share, ShareRule};
use verbund_policy::{Act, Subject};
use verbund_proto::v1 as pb;
use verbund_store::{AuditQuery, ShareOp};

use crate::auth::{self, RecordAccess};
use crate::convert::parse_id as parse_uuid;
use crate::convert::{self, invalid, ms_to_timestamp};
use crate::error::NodeError;
use crate::identity::{Principal, parse_principal_uri};
use crate::state::{NodeState, now_ms};

fn share_to_pb(s: &Share) -> pb::Share {
    pb::Share {
        id: s.id.to_string(),
        record_id: s.record_id.to_string(),
        kind: convert::kind_to_pb(s.kind) as i32,
        org: s.org.clone(),
        profile: s.profile.clone(),
        create_time: Some(ms_to_timestamp(s.created_at_ms)),
        created_by: s.created_by.clone(),
    }
}

fn rule_to_pb(r: &ShareRule) -> pb::ShareRule {
    pb::ShareRule {
        id: r.id.to_string(),
        org: r.org.clone(),
        rule: r.rule.describe(),
        profile: r.profile.clone(),
        create_time: Some(ms_to_timestamp(r.created_at_ms)),
        created_by: r.created_by.clone(),
    }
}

impl NodeState {
    /// A registered partner (not ourselves), for sharing.
    async fn partner_org(&self, org: &str) -> Result<String, NodeError> {
        if !verbund_core::schema::is_valid_org_id(org) {
            return Err(invalid("org", format!("{org:?} is not an organization id")).into());
        }
        if org == self.org {
            return Err(invalid(
                "org",
                "is this node's own organization, which sees everything by policy already",
            )
            .into());
        }
        let partners = self.store.list_partners().await?;
        if !partners.iter().any(|p| p.org == org) {
            return Err(Status::failed_precondition(format!(
                "{org} is not a registered partner; add it first (verbund partner add)"
            ))
            .into());
        }
        Ok(org.to_string())
    }

    fn check_profile(&self, profile: &str) -> Result<(), Status> {
        let policy = self.policy();
        if profile.is_empty() {
            return Err(invalid("profile", "is required"));
        }
        if !policy.has_profile(profile) {
            let known: Vec<&str> = policy.profiles().collect();
            return Err(invalid(
                "profile",
                format!(
                    "the policy defines no share profile {profile:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
        Ok(())
    }

    pub async fn add_share(
        &self,
        p: &Principal,
        req: pb::AddShareRequest,
    ) -> Result<pb::Share, NodeError> {
        self.administer(p, "add share").await?;
        let record_id = parse_uuid("record_id", &req.record_id)?;
        let org = self.partner_org(&req.org).await?;
        self.check_profile(&req.profile)?;
        let rec = self
            .store
            .get(record_id)
            .await?
            .filter(|r| !r.is_deleted())
            .ok_or_else(|| Status::not_found(format!("record {record_id} not found")))?;
        if rec.owner_org != self.org {
            return Err(Status::failed_precondition(format!(
                "record {record_id} belongs to {}; only its owner shares it",
                rec.owner_org
            ))
            .into());
        }
        // A share the policy turns into nothing is a mistake worth saying so.
        auth::may_share(&self.policy(), &org, rec.kind, &req.profile)
            .map_err(|why| Status::failed_precondition(why.0))?;
        let share = Share {
            id: Uuid::now_v7(),
            record_id,
            kind: rec.kind,
            org: org.clone(),
            profile: req.profile.clone(),
            created_at_ms: now_ms(),
            created_by: p.uri(),
        };
        let draft = Self::audit_draft(
            p,
            "share",
            Some(rec.kind),
            Some(record_id.to_string()),
            Vec::new(),
            "allow",
            format!("shared with {org} under profile {}", req.profile),
        );
        self.store
            .share(ShareOp::Add(share.clone()), self.tick(), draft)
            .await?;
        tracing::info!(record = %record_id, org, profile = %req.profile, by = %p, "shared");
        Ok(share_to_pb(&share))
    }

    pub async fn list_shares(
        &self,
        p: &Principal,
        req: pb::ListSharesRequest,
    ) -> Result<pb::ListSharesResponse, NodeError> {
        self.administer(p, "list shares").await?;
        let record = if req.record_id.is_empty() {
            None
        } else {
            Some(parse_uuid("record_id", &req.record_id)?)
        };
        let org = (!req.org.is_empty()).then_some(req.org.as_str());
        let shares = self.store.list_shares(org, record).await?;
        Ok(pb::ListSharesResponse {
            shares: shares.iter().map(share_to_pb).collect(),
        })
    }

    pub async fn revoke_share(
        &self,
        p: &Principal,
        req: pb::RevokeShareRequest,
    ) -> Result<pb::RevokeShareResponse, NodeError> {
        self.administer(p, "revoke share").await?;
        let record_id = parse_uuid("record_id", &req.record_id)?;
        if !verbund_core::schema::is_valid_org_id(&req.org) {
            return Err(invalid("org", format!("{:?} is not an organization id", req.org)).into());
        }
        let draft = Self::audit_draft(
            p,
            "revoke",
            None,
            Some(record_id.to_string()),
            Vec::new(),
            "allow",
            format!("share with {} revoked", req.org),
        );
        self.store
            .share(
                ShareOp::Revoke {
                    record_id,
                    org: req.org.clone(),
                },
                self.tick(),
                draft,
            )
            .await?;
        tracing::info!(record = %record_id, org = %req.org, by = %p, "share revoked");
        Ok(pb::RevokeShareResponse {})
    }

    pub async fn add_share_rule(
        &self,
        p: &Principal,
        req: pb::AddShareRuleRequest,
    ) -> Result<pb::ShareRule, NodeError> {
        self.administer(p, "add share rule").await?;
        let org = self.partner_org(&req.org).await?;
        let rule = RuleMatch::parse(req.rule.trim()).ok_or_else(|| {
            invalid(
                "rule",
                format!(
                    "{:?} is not a rule (case-assigned, or account-tag:<tag>)",
                    req.rule
                ),
            )
        })?;
        self.check_profile(&req.profile)?;
        let rule = ShareRule {
            id: Uuid::now_v7(),
            org: org.clone(),
            rule,
            profile: req.profile.clone(),
            created_at_ms: now_ms(),
            created_by: p.uri(),
        };
        let draft = Self::audit_draft(
            p,
            "rule-add",
            None,
            None,
            Vec::new(),
            "allow",
            format!(
                "rule {} {} with {org} under profile {}",
                rule.id,
                rule.rule.describe(),
                rule.profile
            ),
        );
        self.store
            .share(ShareOp::AddRule(rule.clone()), self.tick(), draft)
            .await?;
        Ok(rule_to_pb(&rule))
    }

    pub async fn list_share_rules(
        &self,
        p: &Principal,
        req: pb::ListShareRulesRequest,
    ) -> Result<pb::ListShareRulesResponse, NodeError> {
        self.administer(p, "list share rules").await?;
        let org = (!req.org.is_empty()).then_some(req.org.as_str());
        let rules = self.store.list_share_rules(org).await?;
        Ok(pb::ListShareRulesResponse {
            rules: rules.iter().map(rule_to_pb).collect(),
        })
    }

    pub async fn remove_share_rule(
        &self,
        p: &Principal,
        req: pb::RemoveShareRuleRequest,
    ) -> Result<pb::RemoveShareRuleResponse, NodeError> {
        self.administer(p, "remove share rule").await?;
        let id = parse_uuid("id", &req.id)?;
        let draft = Self::audit_draft(
            p,
            "rule-remove",
            None,
            None,
            Vec::new(),
            "allow",
            format!("rule {id} removed"),
        );
        self.store
            .share(ShareOp::RemoveRule(id), self.tick(), draft)
            .await?;
        Ok(pb::RemoveShareRuleResponse {})
    }

    pub async fn reload_policy(
        &self,
        p: &Principal,
    ) -> Result<pb::ReloadPolicyResponse, NodeError> {
        self.administer(p, "reload policy").await?;
        let outcome = self.policy.reload().await;
        let (decision, reason) = match &outcome {
            Ok(()) => ("allow", "policy reloaded".to_string()),
            Err(e) => ("failed", format!("policy refused, previous stays: {e}")),
        };
        self.audit(vec![Self::audit_draft(
            p,
            "policy-reload",
            None,
            None,
            Vec::new(),
            decision,
            reason,
        )])
        .await?;
        if let Err(e) = outcome {
            tracing::error!(error = %e, "the access policy was not reloaded; the previous one stays in force");
            return Err(Status::failed_precondition(format!(
                "policy not reloaded, the previous one stays in force: {e}"
            ))
            .into());
        }
        let (model, policy) = self.policy.paths();
        Ok(pb::ReloadPolicyResponse {
            model_path: model.display().to_string(),
            policy_path: policy.display().to_string(),
            profiles: self.policy().profiles().map(str::to_string).collect(),
        })
    }

    /// Explains what the enforcement point decides, without executing anything.
    pub async fn check_access(
        &self,
        p: &Principal,
        req: pb::CheckAccessRequest,
    ) -> Result<pb::CheckAccessResponse, NodeError> {
        self.administer(p, "check access").await?;
        let who = parse_principal_uri(req.principal.trim())
            .map_err(|e| invalid("principal", e.to_string()))?;
        let act = match req.action.as_str() {
            "read" => Act::Read,
            "write" => Act::Write,
            "create" => Act::Create,
            "delete" => Act::Delete,
            other => {
                return Err(invalid(
                    "action",
                    format!("{other:?} is not read, write, create or delete"),
                )
                .into());
            }
        };
        let record_id = parse_uuid("record_id", &req.record_id)?;
        let rec = self
            .store
            .get(record_id)
            .await?
            .ok_or_else(|| Status::not_found(format!("record {record_id} not found")))?;
        let field = req.field.trim();
        if !field.is_empty() && verbund_core::schema::field(rec.kind, field).is_none() {
            return Err(invalid("field", format!("{} has no field {field:?}", rec.kind)).into());
        }
        let access: RecordAccess = self.access_to(&who, &rec).await?;
        let foreign = who.org != self.org;
        let fields_of = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>();
        let policy = self.policy();
        let subject = auth::subject(&who);
        let decision = auth::decide(&policy, &self.org, &who, &rec, &access, act, field);
        let allowed = decision.is_ok();
        let reason = match decision {
            Ok(r) | Err(r) => r.0,
        };
        let assigned = rec.text("assigned_org") == Some(who.org.as_str());
        let object = if act == Act::Create {
            RecordKind::Activity
        } else {
            rec.kind
        };
        let probe = |fields: &BTreeSet<String>| -> String {
            if !field.is_empty() {
                field.to_string()
            } else if act.is_per_field() {
                fields.iter().next().cloned().unwrap_or_else(|| "*".into())
            } else {
                "*".into()
            }
        };
        let probe_field = probe(if act == Act::Write {
            &access.writable
        } else {
            &access.readable
        });
        let mut policy_lines = Vec::new();
        if allowed {
            let e = policy.explain(&subject, object.as_str(), act, &probe_field, assigned);
            policy_lines.extend(e.rules);
            if foreign {
                let mut profiles: Vec<&str> =
                    access.grants.iter().map(|g| g.profile.as_str()).collect();
                profiles.sort();
                profiles.dedup();
                for profile in profiles {
                    let e = policy.explain(
                        &Subject::profile(profile),
                        object.as_str(),
                        act,
                        &probe_field,
                        false,
                    );
                    policy_lines.extend(e.rules);
                }
            }
        }
        Ok(pb::CheckAccessResponse {
            allowed,
            kind: convert::kind_to_pb(rec.kind) as i32,
            readable_fields: fields_of(&access.readable),
            writable_fields: fields_of(&access.writable),
            policy_lines,
            role_lines: policy
                .explain(&subject, object.as_str(), act, &probe_field, assigned)
                .roles,
            grants: access
                .grants
                .iter()
                .map(|g| format!("{} (profile {})", g.source, g.profile))
                .collect(),
            reason,
        })
    }

    pub async fn list_audit(
        &self,
        p: &Principal,
        req: pb::ListAuditRequest,
    ) -> Result<pb::ListAuditResponse, NodeError> {
        self.administer(p, "list audit").await?;
        let limit = match req.page_size {
            n if n < 0 => return Err(invalid("page_size", "must not be negative").into()),
            0 => 100,
            n => i64::from(n).min(1000),
        };
        if req.after_seq < 0 {
            return Err(invalid("after_seq", "must not be negative").into());
        }
        let time = |field: &str, t: &Option<prost_types::Timestamp>| {
            t.as_ref()
                .map(|t| convert::timestamp_to_ms(field, t))
                .transpose()
        };
        let q = AuditQuery {
            org: (!req.org.is_empty()).then(|| req.org.clone()),
            record_id: (!req.record_id.is_empty()).then(|| req.record_id.clone()),
            since_ms: time("since", &req.since)?,
            until_ms: time("until", &req.until)?,
            after_seq: req.after_seq,
            limit: limit + 1,
        };
        let mut entries = self.store.list_audit(&q).await?;
        let next_after_seq = if entries.len() as i64 > limit {
            entries.truncate(limit as usize);
            entries.last().map_or(0, |e| e.seq)
        } else {
            0
        };
        Ok(pb::ListAuditResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::AuditEntry {
                    seq: e.seq,
                    time: Some(ms_to_timestamp(e.draft.at_ms)),
                    principal: e.draft.principal,
                    org: e.draft.org,
                    action: e.draft.action,
                    kind: e.draft.kind.unwrap_or_default(),
                    record_id: e.draft.record_id.unwrap_or_default(),
                    fields: e.draft.fields,
                    decision: e.draft.decision,
                    reason: e.draft.reason,
                    prev_hash: e.prev_hash,
                    hash: e.hash,
                })
                .collect(),
            next_after_seq,
        })
    }

    pub async fn verify_audit(&self, p: &Principal) -> Result<pb::VerifyAuditResponse, NodeError> {
        self.administer(p, "verify audit").await?;
        let report = self.store.verify_audit().await?;
        Ok(pb::VerifyAuditResponse {
            intact: report.broken.is_none(),
            checked: report.checked,
            head_seq: report.head_seq,
            head_hash: report.head_hash,
            problem: report.broken.map(|b| b.to_string()).unwrap_or_default(),
        })
    }
}
