//! The demo's sync part: the partner's own node holds a replica of the shared deal; edits
//! go both ways and a revoke takes the copy away, each timed.

use super::*;

/// Polls `check` every 20 ms for up to 30 s; returns how long it took.
pub(super) async fn within<F, Fut>(what: &str, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if check().await {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not happen within 30 s")
}

pub(super) async fn sync_demo(
    acme_node: &DemoNode,
    globex_node: &DemoNode,
    deal: &str,
) -> Result<()> {
    step("17. globex's own node: acme's shared deal is replicated there and kept in step");
    let acme = &acme_node.admin;
    let globex = &globex_node.admin;
    let mut acme_admin = pb::admin_service_client::AdminServiceClient::new(acme.clone());
    acme_admin
        .add_share(pb::AddShareRequest {
            record_id: deal.into(),
            org: "globex".into(),
            profile: "joint-deal".into(),
        })
        .await?;
    println!("acme shares the deal with globex again (joint-deal)");
    hint(&format!(
        "verbund opportunity get {deal} --config globex/node.toml   (the replica, on globex's node)"
    ));
    let mut globex_opps =
        pb::opportunity_service_client::OpportunityServiceClient::new(globex.clone());
    let mut acme_opps = pb::opportunity_service_client::OpportunityServiceClient::new(acme.clone());
    let get = |c: &pb::opportunity_service_client::OpportunityServiceClient<Channel>| {
        let mut c = c.clone();
        let id = deal.to_string();
        async move {
            c.get_opportunity(pb::GetRecordRequest { id })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    let took = within("the replica to appear at globex", || {
        let g = get(&globex_opps);
        async move { g.await.is_some() }
    })
    .await?;
    let replica = get(&globex_opps).await.context("replica")?;
    println!(
        "replica on globex's node after {} ms, owner {}:",
        took.as_millis(),
        replica
            .meta
            .as_ref()
            .map(|m| m.owner_org.as_str())
            .unwrap_or("?")
    );
    output::print_record(&shown(&replica)?, false);

    let step_text = "Termin bei Müller am Montag";
    globex_opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                next_step: s(step_text),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["next_step".into()],
            }),
        })
        .await?;
    let took = within("globex's edit to reach acme", || {
        let g = get(&acme_opps);
        async move { g.await.and_then(|o| o.next_step).as_deref() == Some(step_text) }
    })
    .await?;
    println!(
        "globex edited next_step on its own node; acme (the merge point) has it after {} ms",
        took.as_millis()
    );
    acme_opps
        .update_opportunity(pb::UpdateOpportunityRequest {
            id: deal.into(),
            opportunity: Some(pb::Opportunity {
                amount: money(265_000),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["amount".into()],
            }),
        })
        .await?;
    let took = within("acme's edit to reach globex", || {
        let g = get(&globex_opps);
        async move { g.await.and_then(|o| o.amount).map(|m| m.minor_units) == Some(26_500_000) }
    })
    .await?;
    println!(
        "acme raised the amount; globex's replica has it after {} ms",
        took.as_millis()
    );
    let status = pb::admin_service_client::AdminServiceClient::new(globex.clone())
        .sync_status(pb::SyncStatusRequest {})
        .await?
        .into_inner();
    for p in &status.partners {
        println!(
            "globex's link to {}: {}, cursor {}, lag {}, outbox {}, replicas {}",
            p.org, p.state, p.cursor, p.lag, p.outbox_depth, p.replicas
        );
    }
    acme_admin
        .revoke_share(pb::RevokeShareRequest {
            record_id: deal.into(),
            org: "globex".into(),
        })
        .await?;
    let took = within("the revoke to reach globex", || {
        let g = get(&globex_opps);
        async move { g.await.is_none() }
    })
    .await?;
    println!(
        "acme revoked the share; globex's copy is gone after {} ms",
        took.as_millis()
    );
    hint("verbund partner status --config globex/node.toml");
    Ok(())
}
