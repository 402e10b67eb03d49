//! The demo's group part: a second subsidiary runs its own node and shares the accounts it
//! tags `group` with the holding, like acme does; the holding's consolidated view recognises
//! the customer both hold, spelled differently, as one: a golden record naming the origin of
//! every value, one person, group figures; a steward's unlink and link; a subsidiary's edit
//! reaching the golden record.

use super::*;

pub(super) async fn group_demo(
    base: &std::path::Path,
    acme: &DemoNode,
    holding: &DemoNode,
    mueller: &str,
) -> Result<DemoNode> {
    step(
        "18. the group's consolidated view: a second subsidiary, acme-logistics, shares with the holding too",
    );
    let logistics = DemoNode::start(base, "acme-logistics").await?;
    println!(
        "node acme-logistics/node1 serving on {}",
        logistics.endpoint
    );
    pin_both(holding, &logistics).await?;
    let policy_file = logistics.cfg.path(&logistics.cfg.policy.file);
    let mut text = std::fs::read_to_string(&policy_file)?;
    text.push_str("g2, holding, holding\n");
    std::fs::write(&policy_file, text)?;
    let mut admin = pb::admin_service_client::AdminServiceClient::new(logistics.admin.clone());
    admin.reload_policy(pb::ReloadPolicyRequest {}).await?;
    admin
        .add_share_rule(pb::AddShareRuleRequest {
            org: "holding".into(),
            rule: "account-tag:group".into(),
            profile: "group".into(),
        })
        .await?;
    hint(
        "verbund share rule add --org holding --rule account-tag:group --profile group --config acme-logistics/node.toml",
    );
    let mut accounts =
        pb::account_service_client::AccountServiceClient::new(logistics.admin.clone());
    let theirs = accounts
        .create_account(pb::CreateAccountRequest {
            account: Some(pb::Account {
                name: s("Mueller Maschinenbau G.m.b.H."),
                domain: s("mueller-maschinenbau.example"),
                vat_id: s("DE 123 456 789"),
                city: s("Stuttgart"),
                country_code: s("DE"),
                tags: vec!["group".into()],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    let theirs_id = id_of(&theirs);
    pb::contact_service_client::ContactServiceClient::new(logistics.admin.clone())
        .create_contact(pb::CreateContactRequest {
            contact: Some(pb::Contact {
                account_id: s(&theirs_id),
                first_name: s("Anna"),
                last_name: s("Weber"),
                email: s("anna.weber@mueller-maschinenbau.example"),
                ..Default::default()
            }),
        })
        .await?;
    pb::opportunity_service_client::OpportunityServiceClient::new(logistics.admin.clone())
        .create_opportunity(pb::CreateOpportunityRequest {
            opportunity: Some(pb::Opportunity {
                account_id: s(&theirs_id),
                name: s("Spare parts logistics 2027"),
                stage: pb::OpportunityStage::ClosedWon as i32,
                amount: money(80_000),
                close_date: s("2026-11-15"),
                ..Default::default()
            }),
        })
        .await?;
    println!(
        "acme-logistics holds the same company as \"Mueller Maschinenbau G.m.b.H.\", tagged group"
    );

    let view =
        pb::consolidation_service_client::ConsolidationServiceClient::new(holding.admin.clone());
    let get = |id: String| {
        let mut v = view.clone();
        async move {
            v.get_customer(pb::GetCustomerRequest { id })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    let took = within("one customer of both subsidiaries at the holding", || {
        let g = get(mueller.to_string());
        async move {
            g.await
                // Both accounts, and the person of each as one (the contact arrives after
                // its account: it is a change of its own).
                .is_some_and(|c| {
                    c.sources.len() == 2 && c.persons.iter().any(|p| p.sources.len() == 2)
                })
        }
    })
    .await?;
    let c = get(mueller.to_string()).await.context("customer")?;
    println!(
        "the holding's node sees one customer after {} ms, from {}:",
        took.as_millis(),
        c.sources
            .iter()
            .map(|s| format!("{} ({})", s.subsidiary, s.name))
            .collect::<Vec<_>>()
            .join(" and ")
    );
    crate::customers::print_customer(&c);
    hint(&format!(
        "verbund customer get {mueller} --config holding/node.toml"
    ));
    hint(&format!(
        "verbund customer explain {mueller} {theirs_id} --config holding/node.toml"
    ));

    step(
        "19. a data steward at the holding unlinks and links; a subsidiary's edit reaches the golden record",
    );
    let mut steward = view.clone();
    steward
        .unlink_record(pb::UnlinkRecordRequest {
            record_id: theirs_id.clone(),
            from_record_id: String::new(),
        })
        .await?;
    let listed = steward
        .list_customers(pb::ListCustomersRequest::default())
        .await?
        .into_inner();
    println!(
        "after the unlink the holding lists {} customers (the decision is stored and wins over the matcher)",
        listed.customers.len()
    );
    hint(&format!(
        "verbund customer unlink {theirs_id} --config holding/node.toml"
    ));
    steward
        .link_records(pb::LinkRecordsRequest {
            record_a: mueller.into(),
            record_b: theirs_id.clone(),
        })
        .await?;
    hint(&format!(
        "verbund customer link {mueller} {theirs_id} --config holding/node.toml"
    ));
    pb::account_service_client::AccountServiceClient::new(acme.admin.clone())
        .update_account(pb::UpdateAccountRequest {
            id: mueller.into(),
            account: Some(pb::Account {
                city: s("Esslingen am Neckar"),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["city".into()],
            }),
        })
        .await?;
    let took = within("acme's edit to reach the golden record", || {
        let g = get(mueller.to_string());
        async move {
            g.await.is_some_and(|c| {
                c.golden
                    .iter()
                    .any(|v| v.field == "city" && v.value == "Esslingen am Neckar")
            })
        }
    })
    .await?;
    let c = get(mueller.to_string()).await.context("customer")?;
    let city = c
        .golden
        .iter()
        .find(|v| v.field == "city")
        .context("golden city")?;
    println!(
        "acme moved the customer to {}; the golden record has it after {} ms, from {} record {} ({})",
        city.value,
        took.as_millis(),
        city.subsidiary,
        city.record_id,
        city.decided_by
    );
    let g = steward
        .group_figures(pb::GroupFiguresRequest {})
        .await?
        .into_inner();
    println!(
        "group figures: {} customers across {}, {} of them served by one subsidiary only",
        g.customers,
        g.subsidiaries.join(", "),
        g.single_subsidiary_customers
    );
    hint("verbund group figures --config holding/node.toml");
    Ok(logistics)
}
