//! The admin API: partner registry. Own organization only.

use tonic::{Request, Response, Status};
use verbund_proto::v1 as pb;
use verbund_store::{Partner, PartnerStatus};

use crate::api::Api;
use crate::auth;
use crate::convert::{invalid, ms_to_timestamp};
use crate::error::NodeError;
use crate::pki;
use crate::state::{NodeState, now_ms};
use crate::tls::single_ca;

/// `https://host:port` with a host and a port.
fn check_endpoint(endpoint: &str) -> Result<(), Status> {
    let bad = || invalid("endpoint", format!("{endpoint:?} is not https://host:port"));
    let rest = endpoint.strip_prefix("https://").ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || host.contains(['/', '?', '#', '@'])
        || host.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        _ => Err(bad()),
    }
}

/// Lowercase hex without separators.
pub fn normalize_fingerprint(text: &str) -> String {
    text.chars()
        .filter(|c| !matches!(c, ':' | ' ' | '-'))
        .collect::<String>()
        .to_ascii_lowercase()
}

fn to_pb(p: &Partner) -> pb::Partner {
    pb::Partner {
        org: p.org.clone(),
        endpoint: p.endpoint.clone(),
        fingerprint: p.fingerprint.clone(),
        status: p.status.as_str().to_string(),
        add_time: Some(ms_to_timestamp(p.added_at_ms)),
        last_contact_time: p.last_contact_ms.map(ms_to_timestamp),
    }
}

impl NodeState {
    /// Loads the partner anchors from the store into the TLS verifier.
    pub async fn reload_partners(&self) -> Result<(), NodeError> {
        let partners = self.store.list_partners().await?;
        let anchors: Vec<crate::tls::PartnerAnchor> = partners
            .into_iter()
            .map(|p| crate::tls::PartnerAnchor {
                org: p.org,
                ca_pem: p.ca_pem,
                crl_pem: p.crl_pem,
            })
            .collect();
        self.trust.set_partners(&anchors).map_err(|e| {
            tracing::error!(error = %e, "partner anchors could not be loaded; the previous ones stay in force");
            Status::internal("partner anchors could not be loaded; see the node's log").into()
        })
    }

    pub async fn add_partner(
        &self,
        p: &crate::identity::Principal,
        req: pb::AddPartnerRequest,
    ) -> Result<pb::Partner, NodeError> {
        self.administer(p, "add partner").await?;
        if !verbund_core::schema::is_valid_org_id(&req.org) {
            return Err(invalid(
                "org",
                format!(
                    "{:?} is not a valid organization id (lowercase letters, digits, '-' and '.')",
                    req.org
                ),
            )
            .into());
        }
        if req.org == self.org {
            return Err(invalid("org", "is this node's own organization").into());
        }
        check_endpoint(&req.endpoint)?;
        let ca = single_ca(&req.ca_pem).map_err(|e| invalid("ca_pem", format!("{e:#}")))?;
        // A partner's CA names the partner as its organization (subject O=<org>): only then
        // can it vouch for that organization's identities, and nobody else's.
        crate::tls::org_cas(&req.ca_pem, &req.org).map_err(|e| {
            invalid(
                "ca_pem",
                format!(
                    "must be {}'s CA, whose subject names O={}: {e:#}",
                    req.org, req.org
                ),
            )
        })?;
        let computed = pki::fingerprint(ca.as_ref());
        let given = normalize_fingerprint(&req.fingerprint);
        if given.is_empty() {
            return Err(invalid(
                "fingerprint",
                "is required: compare it with the partner out of band",
            )
            .into());
        }
        if given != computed {
            return Err(invalid(
                "fingerprint",
                // Only the one given is named: the right one must come from the partner, out
                // of band, never from this message.
                format!(
                    "{} does not match the CA certificate; nothing was trusted. Check the fingerprint with {} out of band",
                    crate::convert::clip(&given, 100),
                    req.org
                ),
            ).into());
        }
        let partner = Partner {
            org: req.org.clone(),
            ca_pem: req.ca_pem.clone(),
            fingerprint: computed,
            endpoint: req.endpoint.clone(),
            status: PartnerStatus::Active,
            added_at_ms: now_ms(),
            last_contact_ms: None,
            crl_pem: None,
        };
        self.store.add_partner(&partner).await?;
        if let Err(e) = self.reload_partners().await {
            // Do not keep a partner the verifier could not load.
            let _ = self.store.remove_partner(&partner.org).await;
            return Err(e);
        }
        tracing::info!(partner = %partner.org, fingerprint = %partner.fingerprint, principal = %p, "partner added");
        Ok(to_pb(&partner))
    }

    pub async fn list_partners(
        &self,
        p: &crate::identity::Principal,
    ) -> Result<pb::ListPartnersResponse, NodeError> {
        self.administer(p, "list partners").await?;
        let partners = self.store.list_partners().await?;
        Ok(pb::ListPartnersResponse {
            partners: partners.iter().map(to_pb).collect(),
        })
    }

    pub async fn remove_partner(
        &self,
        p: &crate::identity::Principal,
        org: &str,
    ) -> Result<pb::RemovePartnerResponse, NodeError> {
        self.administer(p, "remove partner").await?;
        if org.is_empty() {
            return Err(invalid("org", "is required").into());
        }
        self.store.remove_partner(org).await?;
        self.reload_partners().await?;
        tracing::info!(partner = %org, principal = %p, "partner removed");
        Ok(pb::RemovePartnerResponse {})
    }
}

impl NodeState {
    /// Replaces a partner's pinned CA(s): during the partner's CA rollover, its old and new CA
    /// (both naming the partner); afterwards its new CA alone. Every certificate must be
    /// confirmed by a fingerprint received out of band.
    pub async fn update_partner_ca(
        &self,
        p: &crate::identity::Principal,
        req: pb::UpdatePartnerCaRequest,
    ) -> Result<pb::Partner, NodeError> {
        self.administer(p, "update partner ca").await?;
        let partners = self.store.list_partners().await?;
        let partner = partners
            .iter()
            .find(|x| x.org == req.org)
            .ok_or_else(|| Status::not_found(format!("partner {} not found", req.org)))?;
        let cas = crate::tls::org_cas(&req.ca_pem, &req.org)
            .map_err(|e| invalid("ca_pem", format!("{e:#}")))?;
        if cas.is_empty() {
            return Err(invalid("ca_pem", "holds no certificate").into());
        }
        let given: Vec<String> = req
            .fingerprints
            .iter()
            .map(|f| normalize_fingerprint(f))
            .collect();
        let mut computed = Vec::new();
        for ca in &cas {
            let fp = pki::fingerprint(ca.as_ref());
            if !given.contains(&fp) {
                return Err(invalid(
                    "fingerprints",
                    format!(
                        "none of the fingerprints given matches CA {} of the file; nothing was changed. Check them with {} out of band",
                        cas.iter().position(|c| c == ca).unwrap_or(0) + 1,
                        req.org
                    ),
                ).into());
            }
            computed.push(fp);
        }
        let mut updated = partner.clone();
        updated.ca_pem = req.ca_pem.clone();
        updated.fingerprint = computed.join(",");
        // A loaded revocation list must still match one of the CAs.
        if let Some(crl) = &updated.crl_pem
            && crate::tls::check_crl_issuer(crl, &updated.ca_pem, &updated.org).is_err()
        {
            updated.crl_pem = None;
        }
        self.store.set_partner_anchor(&updated).await?;
        if let Err(e) = self.reload_partners().await {
            // Put the previous anchor back; the verifier kept it in force meanwhile.
            let _ = self.store.set_partner_anchor(partner).await;
            return Err(e);
        }
        tracing::info!(partner = %updated.org, fingerprints = %updated.fingerprint, principal = %p, "partner CA updated");
        Ok(to_pb(&updated))
    }

    /// Applies a partner's revocation list. It must be well-formed and signed by the partner's
    /// pinned CA; otherwise it is refused and the previous list stays in force.
    pub async fn load_partner_crl(
        &self,
        p: &crate::identity::Principal,
        org: &str,
        crl_pem: &str,
    ) -> Result<pb::Partner, NodeError> {
        self.administer(p, "load partner crl").await?;
        let partners = self.store.list_partners().await?;
        let partner = partners
            .iter()
            .find(|x| x.org == org)
            .ok_or_else(|| Status::not_found(format!("partner {org} not found")))?;
        let fetched;
        let crl_pem = if crl_pem.is_empty() {
            fetched = self.fetch_partner_crl(partner).await?;
            fetched.as_str()
        } else {
            crl_pem
        };
        crate::tls::check_crl_issuer(crl_pem, &partner.ca_pem, &partner.org)
            .map_err(|e| invalid("crl_pem", format!("{e:#}")))?;
        let previous = partner.crl_pem.clone();
        self.store.set_partner_crl(org, Some(crl_pem)).await?;
        if let Err(e) = self.reload_partners().await {
            let _ = self.store.set_partner_crl(org, previous.as_deref()).await;
            return Err(e);
        }
        tracing::info!(partner = %org, principal = %p, "partner revocation list loaded");
        let mut updated = partner.clone();
        updated.crl_pem = Some(crl_pem.to_string());
        Ok(to_pb(&updated))
    }

    /// Fetches a partner's revocation list from its node (mutual TLS, pinned CA).
    async fn fetch_partner_crl(&self, partner: &Partner) -> Result<String, Status> {
        let channel = self.partner_channel(partner).await?;
        let crl = pb::node_service_client::NodeServiceClient::new(channel)
            .get_revocation_list(pb::GetRevocationListRequest {})
            .await
            .map_err(|e| {
                Status::failed_precondition(format!(
                    "partner {} refused: {}: {}",
                    partner.org,
                    e.code(),
                    e.message()
                ))
            })?
            .into_inner()
            .crl_pem;
        if crl.is_empty() {
            return Err(Status::failed_precondition(format!(
                "partner {} has not revoked anything (no revocation list)",
                partner.org
            )));
        }
        Ok(crl)
    }

    pub async fn ping_partner(
        &self,
        p: &crate::identity::Principal,
        org: &str,
    ) -> Result<pb::PingPartnerResponse, NodeError> {
        self.administer(p, "ping partner").await?;
        let partner = self
            .store
            .list_partners()
            .await?
            .into_iter()
            .find(|x| x.org == org)
            .ok_or_else(|| Status::not_found(format!("partner {org} not found")))?;
        let started = std::time::Instant::now();
        let channel = self.partner_channel(&partner).await?;
        let who = pb::node_service_client::NodeServiceClient::new(channel)
            .who_am_i(pb::WhoAmIRequest {})
            .await
            .map_err(|e| {
                let why = crate::dial::partner_refusal(&e, org, &self.org)
                    .unwrap_or_else(|| format!("{}: {}", e.code(), e.message()));
                Status::failed_precondition(format!("partner {org} refused the call: {why}"))
            })?
            .into_inner();
        let _ = self.store.touch_partner(org, now_ms()).await;
        Ok(pb::PingPartnerResponse {
            seen_as_org: who.org,
            seen_as_kind: who.kind,
            seen_as_name: who.name,
            partner_org: who.node_org,
            partner_node: who.node_name,
            round_trip_ms: started.elapsed().as_millis() as u64,
        })
    }
}

#[tonic::async_trait]
impl pb::admin_service_server::AdminService for Api {
    async fn sync_status(
        &self,
        req: Request<pb::SyncStatusRequest>,
    ) -> Result<Response<pb::SyncStatusResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(self.state.sync_status(&p).await?))
    }

    async fn list_outbox(
        &self,
        req: Request<pb::ListOutboxRequest>,
    ) -> Result<Response<pb::ListOutboxResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.list_outbox(&p, req.into_inner()).await?,
        ))
    }

    async fn list_conflicts(
        &self,
        req: Request<pb::ListConflictsRequest>,
    ) -> Result<Response<pb::ListConflictsResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.list_conflicts(&p, req.into_inner()).await?,
        ))
    }

    async fn resolve_conflict(
        &self,
        req: Request<pb::ResolveConflictRequest>,
    ) -> Result<Response<pb::Conflict>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.resolve_conflict(&p, req.into_inner()).await?,
        ))
    }

    async fn erase_record(
        &self,
        req: Request<pb::EraseRecordRequest>,
    ) -> Result<Response<pb::ErasureStatusResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.erase_record(&p, req.into_inner()).await?,
        ))
    }

    async fn erasure_status(
        &self,
        req: Request<pb::ErasureStatusRequest>,
    ) -> Result<Response<pb::ErasureStatusResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.erasure_status(&p, req.into_inner()).await?,
        ))
    }

    async fn add_share(
        &self,
        req: Request<pb::AddShareRequest>,
    ) -> Result<Response<pb::Share>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.add_share(&p, req.into_inner()).await?,
        ))
    }

    async fn list_shares(
        &self,
        req: Request<pb::ListSharesRequest>,
    ) -> Result<Response<pb::ListSharesResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.list_shares(&p, req.into_inner()).await?,
        ))
    }

    async fn revoke_share(
        &self,
        req: Request<pb::RevokeShareRequest>,
    ) -> Result<Response<pb::RevokeShareResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.revoke_share(&p, req.into_inner()).await?,
        ))
    }

    async fn add_share_rule(
        &self,
        req: Request<pb::AddShareRuleRequest>,
    ) -> Result<Response<pb::ShareRule>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.add_share_rule(&p, req.into_inner()).await?,
        ))
    }

    async fn list_share_rules(
        &self,
        req: Request<pb::ListShareRulesRequest>,
    ) -> Result<Response<pb::ListShareRulesResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.list_share_rules(&p, req.into_inner()).await?,
        ))
    }

    async fn remove_share_rule(
        &self,
        req: Request<pb::RemoveShareRuleRequest>,
    ) -> Result<Response<pb::RemoveShareRuleResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.remove_share_rule(&p, req.into_inner()).await?,
        ))
    }

    async fn check_access(
        &self,
        req: Request<pb::CheckAccessRequest>,
    ) -> Result<Response<pb::CheckAccessResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.check_access(&p, req.into_inner()).await?,
        ))
    }

    async fn reload_policy(
        &self,
        req: Request<pb::ReloadPolicyRequest>,
    ) -> Result<Response<pb::ReloadPolicyResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(self.state.reload_policy(&p).await?))
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.list_audit(&p, req.into_inner()).await?,
        ))
    }

    async fn verify_audit(
        &self,
        req: Request<pb::VerifyAuditRequest>,
    ) -> Result<Response<pb::VerifyAuditResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(self.state.verify_audit(&p).await?))
    }

    async fn update_partner_ca(
        &self,
        req: Request<pb::UpdatePartnerCaRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.update_partner_ca(&p, req.into_inner()).await?,
        ))
    }

    async fn load_partner_crl(
        &self,
        req: Request<pb::LoadPartnerCrlRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let p = auth::principal(&req)?;
        let r = req.into_inner();
        Ok(Response::new(
            self.state.load_partner_crl(&p, &r.org, &r.crl_pem).await?,
        ))
    }

    async fn ping_partner(
        &self,
        req: Request<pb::PingPartnerRequest>,
    ) -> Result<Response<pb::PingPartnerResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.ping_partner(&p, &req.get_ref().org).await?,
        ))
    }

    async fn add_partner(
        &self,
        req: Request<pb::AddPartnerRequest>,
    ) -> Result<Response<pb::Partner>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.add_partner(&p, req.into_inner()).await?,
        ))
    }

    async fn list_partners(
        &self,
        req: Request<pb::ListPartnersRequest>,
    ) -> Result<Response<pb::ListPartnersResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(self.state.list_partners(&p).await?))
    }

    async fn remove_partner(
        &self,
        req: Request<pb::RemovePartnerRequest>,
    ) -> Result<Response<pb::RemovePartnerResponse>, Status> {
        let p = auth::principal(&req)?;
        Ok(Response::new(
            self.state.remove_partner(&p, &req.get_ref().org).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_fingerprints() {
        assert!(check_endpoint("https://globex.example:7443").is_ok());
        assert!(check_endpoint("https://10.0.0.5:7443/").is_ok());
        for bad in [
            "http://globex.example:7443",
            "https://globex.example",
            "https://:7443",
            "https://g:0",
            "https://g:99999",
            "https://u@g:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
        assert_eq!(normalize_fingerprint("AB:cd 01"), "abcd01");
    }
}
