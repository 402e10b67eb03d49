//! The partner's proposed edits (Push): each checked, decided through the enforcement
//! point and merged per field in the writer; the verdict is stored under its key.

use super::*;

/// The edits of one proposed change, checked: known fields, present versions.
fn edits_from_pb(
    org: &str,
    kind: RecordKind,
    change: &pb::ProposedChange,
) -> Result<Vec<FieldEdit>, NodeError> {
    if change.edits.is_empty() {
        return Err(convert::invalid("changes.edits", "must name at least one field").into());
    }
    let names: Vec<String> = change.edits.iter().map(|e| e.name.clone()).collect();
    let canonical = verbund_core::write::check_mask(kind, &names)?;
    if canonical.len() != names.len() {
        return Err(convert::invalid("changes.edits", "names a field more than once").into());
    }
    // Versions carry the node that made them: a partner stamps only as itself.
    let own_prefix = format!("{org}/");
    change
        .edits
        .iter()
        .zip(canonical)
        .map(|(e, name)| {
            let version = hlc_from_pb("changes.edits.version", e.version.as_ref())?;
            if !version.node.starts_with(&own_prefix) {
                return Err(convert::invalid(
                    "changes.edits.version",
                    format!("node_id must be one of {org}'s nodes ({own_prefix}…)"),
                ));
            }
            Ok(FieldEdit {
                field: name.to_string(),
                value: value_from_pb(e.value.as_ref()),
                version,
                base: e
                    .base
                    .as_ref()
                    .map(|b| hlc_from_pb("changes.edits.base", Some(b)))
                    .transpose()?,
            })
        })
        .collect::<Result<_, Status>>()
        .map_err(NodeError::from)
}

impl NodeState {
    /// Decides one proposed change; the verdict is stored under its idempotency key. A
    /// refusal on the merits is a rejected verdict; a transient failure (the store, the
    /// audit log) fails the whole Push so the partner retries (decided keys stay decided).
    pub(super) async fn push_one(
        &self,
        p: &Principal,
        change: &pb::ProposedChange,
    ) -> Result<pb::Verdict, Status> {
        // Stamped before anything is decided: a refusal reflects at least the state of then
        // (a partner whose cursor is beyond it was sent something read later, and keeps its
        // copy; the stream tells it if it must go).
        let as_of_seq = self.stamp_now(&p.org).await.map_err(Status::from)?;
        // The status it would get decides: a refusal on the merits becomes a verdict.
        match self
            .push_checked(p, change, as_of_seq)
            .await
            .map_err(Status::from)
        {
            Ok(v) => Ok(v),
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::PermissionDenied
                        | tonic::Code::FailedPrecondition
                ) =>
            {
                if status.code() != tonic::Code::NotFound {
                    // Refused before any record was looked at (malformed, forged): a denial.
                    // NOT_FOUND was audited where it was decided.
                    let draft = Self::audit_draft(
                        p,
                        "push",
                        convert::kind_from_pb("kind", change.kind).ok(),
                        Some(convert::clip(&change.record_id, 40)),
                        Vec::new(),
                        "deny",
                        format!("push rejected: {}", convert::clip(status.message(), 120)),
                    );
                    self.audit(vec![draft]).await?;
                }
                Ok(pb::Verdict {
                    key: change.key.clone(),
                    outcome: pb::VerdictOutcome::Rejected as i32,
                    reason: format!("{}: {}", status.code(), status.message()),
                    record: None,
                    // Not shared (or gone): the partner's copy goes, as with a revoke.
                    revoked: status.code() == tonic::Code::NotFound,
                    as_of_seq,
                })
            }
            Err(status) => Err(status),
        }
    }

    async fn push_checked(
        &self,
        p: &Principal,
        change: &pb::ProposedChange,
        as_of_seq: i64,
    ) -> Result<pb::Verdict, NodeError> {
        if change.key.is_empty() || change.key.len() > 128 {
            return Err(convert::invalid("changes.key", "must be 1 to 128 characters").into());
        }
        let id = Uuid::parse_str(&change.record_id)
            .map_err(|_| convert::invalid("changes.record_id", "not a UUID"))?;
        let kind = convert::kind_from_pb("changes.kind", change.kind)?;
        let edits = edits_from_pb(&p.org, kind, change)?;
        if let Some(stored) = self.store.push_verdict(&p.org, &change.key).await? {
            // A retry: the same verdict, nothing applied twice.
            return self.verdict(p, &change.key, &stored).await;
        }
        let now = now_ms();
        for e in &edits {
            if let Some(reason) = merge::too_far_ahead(
                &e.version,
                now.max(0) as u64,
                self.max_clock_skew_ms,
                &self.org,
            ) {
                // Not decided (and not stored): the clocks may agree again, and the partner
                // re-stamps the edit once its clock is right. Only this change waits.
                let draft = Self::audit_draft(
                    p,
                    "push",
                    Some(kind),
                    Some(id.to_string()),
                    vec![e.field.clone()],
                    "deny",
                    "push deferred: the version is beyond the clock-skew bound",
                );
                self.audit(vec![draft]).await?;
                return Ok(pb::Verdict {
                    key: change.key.clone(),
                    outcome: pb::VerdictOutcome::Deferred as i32,
                    reason: format!("{}: {reason}", e.field),
                    record: None,
                    revoked: false,
                    as_of_seq,
                });
            }
        }
        let not_shared = || Status::not_found(format!("{kind} {id} is not shared with {}", p.org));
        let rec = match self.store.get(id).await? {
            Some(r) if r.kind == kind && r.owner_org == self.org => r,
            _ => return Err(not_shared().into()),
        };
        let access = self.access_to(p, &rec).await?;
        if !access.visible() {
            let draft = Self::audit_draft(
                p,
                "push",
                Some(kind),
                Some(id.to_string()),
                edits.iter().map(|e| e.field.clone()).collect(),
                "deny",
                "not shared",
            );
            return Err(self.deny(draft, not_shared()).await.into());
        }
        for e in &edits {
            self.observe(&e.version);
        }
        let audit = vec![Self::audit_draft(
            p,
            "push",
            Some(kind),
            Some(id.to_string()),
            edits.iter().map(|e| e.field.clone()).collect(),
            "allow",
            auth::reason_of(&access),
        )];
        let (policy, node_org, who, grants, org) = (
            self.policy(),
            self.org.clone(),
            p.clone(),
            access.grants.clone(),
            p.org.clone(),
        );
        let (_, stored) = self
            .store
            .merge_push(
                &p.org,
                &change.key,
                kind,
                id,
                move |cur| {
                    let now_access = auth::record_access(&policy, &node_org, &who, cur, &grants);
                    merge::plan_merge(
                        cur,
                        now_access.visible(),
                        &now_access.writable,
                        &org,
                        &edits,
                        now,
                    )
                },
                audit,
            )
            .await?;
        self.verdict(p, &change.key, &stored).await
    }

    async fn verdict(
        &self,
        p: &Principal,
        key: &str,
        stored: &verbund_store::StoredVerdict,
    ) -> Result<pb::Verdict, NodeError> {
        // The record as it is now, read and stamped under the partner's stamp lock: the
        // stamp orders it among the states the partner receives (stream, repairs), and a
        // partner whose cursor is beyond it keeps its copy rather than apply a revoke.
        let mut lock = self.stamp_lock(&p.org).await?;
        let rec = self.store.get(stored.record_id).await?;
        let mut record = match rec {
            Some(r) if !r.is_deleted() => {
                let access = self.access_to(p, &r).await?;
                access
                    .visible()
                    .then(|| state_to_pb(&project(&r, &access.readable), &access.writable))
            }
            _ => None,
        };
        let as_of_seq = lock.next(self).await?;
        drop(lock);
        if let Some(st) = record.as_mut() {
            st.owner_seq = as_of_seq;
        }
        // The partner no longer sees the record (unshared, deleted): its copy goes.
        let revoked = record.is_none();
        Ok(pb::Verdict {
            key: key.to_string(),
            outcome: match stored.outcome {
                VerdictOutcome::Applied => pb::VerdictOutcome::Applied,
                VerdictOutcome::AppliedWithConflict => pb::VerdictOutcome::AppliedWithConflict,
                VerdictOutcome::Rejected => pb::VerdictOutcome::Rejected,
            } as i32,
            reason: stored.reason.clone(),
            record,
            revoked,
            as_of_seq,
        })
    }
}
