//! One node, several processes on one PostgreSQL database (`shared = true`): both processes
//! serve the API, each partner's sync link runs in exactly one of them, and when that process
//! is killed (`kill -9`) during sync the other takes the link over: nothing lost, nothing
//! applied twice. Needs VERBUND_TEST_POSTGRES_URL (a fresh schema); skipped loudly without it.

mod support;

use std::path::Path;

use support::federation::*;
use support::postgres::fresh_schema;
use support::*;

/// Rewrites a line `key = …` of the section `[section]` of a node.toml.
fn set_line(config: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    let mut done = false;
    for line in text.lines() {
        if line.starts_with('[') {
            if current == section && !done {
                out.push(format!("{key} = {value}"));
                done = true;
            }
            current = line.trim_matches(['[', ']']).to_string();
        }
        if current == section && line.starts_with(&format!("{key} =")) {
            out.push(format!("{key} = {value}"));
            done = true;
            continue;
        }
        out.push(line.to_string());
    }
    if !done {
        out.push(format!("[{section}]\n{key} = {value}"));
    }
    std::fs::write(config, out.join("\n") + "\n").unwrap();
}

fn link_state(node: &TestNode, partner: &str) -> String {
    status_of(node, partner)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_process_takes_over_the_link_when_its_holder_is_killed() {
    let Some((admin, schema, db_url)) =
        fresh_schema("verbund_procs", "PostgreSQL multi-process test", "").await
    else {
        return;
    };

    // acme: one node, two processes on one database.
    let dir = tempfile::tempdir().unwrap();
    let port = fixed_port();
    let o = verbund(&[
        "init",
        "--org",
        "acme",
        "--dir",
        dir.path().join("acme").to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        // Any free port for the ops listener (its default, the node's port + 2021, may be
        // taken on a busy machine).
        "--ops-listen",
        "127.0.0.1:0",
        "--database-url",
        &db_url,
    ]);
    assert!(o.status.success(), "init failed: {}", stderr(&o));
    let mut first = TestNode::adopt("acme", dir);
    first.endpoint = format!("https://127.0.0.1:{port}");
    set_line(&first.config(), "database", "shared", "true");
    let mut globex = TestNode::init_fixed("globex");
    globex.append_policy("g2, acme, partner");
    first.run();
    globex.run();
    pin(&first, &globex);
    pin(&globex, &first);
    // A process that wants the database alone is refused while shared ones run.
    let lone = tempfile::tempdir().unwrap();
    copy_dir(&first.home(), &lone.path().join("acme"));
    let mut lone = TestNode::adopt("acme", lone);
    set_line(&lone.config(), "database", "shared", "false");
    set_line(
        &lone.config(),
        "node",
        "listen",
        &format!("\"127.0.0.1:{}\"", fixed_port()),
    );
    set_line(
        &lone.config(),
        "ops",
        "listen",
        &format!("\"127.0.0.1:{}\"", fixed_port()),
    );
    let refused = lone.try_run();
    assert!(
        refused.is_err(),
        "a lone process started beside shared ones"
    );

    let copy = tempfile::tempdir().unwrap();
    copy_dir(&first.home(), &copy.path().join("acme"));
    let mut second = TestNode::adopt("acme", copy);
    let port2 = fixed_port();
    second.endpoint = format!("https://127.0.0.1:{port2}");
    set_line(
        &second.config(),
        "node",
        "listen",
        &format!("\"127.0.0.1:{port2}\""),
    );
    set_line(
        &second.config(),
        "ops",
        "listen",
        &format!("\"127.0.0.1:{}\"", fixed_port()),
    );
    second.run();

    // Exactly one process runs the link to globex; the other stands by.
    wait_until("one process holds the link, the other stands by", || {
        let (a, b) = (link_state(&first, "globex"), link_state(&second, "globex"));
        (a == "connected" && b == "standby") || (a == "standby" && b == "connected")
    });
    // Both serve the API, on the same data.
    let own = create(&first, "account", &["name=Eigen GmbH"]);
    assert!(get(&second, "account", &own).is_some());

    share_rule(&globex, "acme", "account-tag:shared", "partner-account");
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(create(
            &globex,
            "account",
            &[&format!("name=Kunde {i} AG"), "tags=shared"],
        ));
    }
    let holder_is_first = link_state(&first, "globex") == "connected";
    let (mut holder, standby) = if holder_is_first {
        (first, second)
    } else {
        (second, first)
    };
    // Killed while changes flow; more arrive after.
    holder.kill();
    for i in 40..80 {
        ids.push(create(
            &globex,
            "account",
            &[&format!("name=Kunde {i} AG"), "tags=shared"],
        ));
    }
    wait_until(
        "the standby took over and holds every shared account",
        || {
            link_state(&standby, "globex") == "connected"
                && ids.iter().all(|id| get(&standby, "account", id).is_some())
        },
    );
    // Nothing applied twice: one change per replica (each was created once and never changed).
    let twice: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT record_id, count(*) FROM {schema}.changes WHERE record_id <> $1 GROUP BY record_id HAVING count(*) > 1"
    )))
    .bind(&own)
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(twice.is_empty(), "applied more than once: {twice:?}");
    let replicas: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {schema}.replicas WHERE owner_org = 'globex'"
    )))
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(replicas, 80);
    drop(holder);
}

/// Every connection of the node's processes to PostgreSQL is cut twice while a client keeps
/// writing (what a server restart looks like from the node): the calls that fail say so
/// cleanly (UNAVAILABLE, or UNKNOWN for a commit whose outcome the database did not confirm),
/// the node serves again without a restart, and every write it confirmed is there.
#[tokio::test(flavor = "multi_thread")]
async fn writes_survive_the_database_dropping_every_connection() {
    let app = format!(
        "verbund-drop-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    );
    let Some((admin, _schema, db_url)) = fresh_schema(
        "verbund_drop",
        "PostgreSQL connection-loss test",
        &format!("&application_name={app}"),
    )
    .await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let o = verbund(&[
        "init",
        "--org",
        "acme",
        "--dir",
        dir.path().join("acme").to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &db_url,
    ]);
    assert!(o.status.success(), "init failed: {}", stderr(&o));
    let mut node = TestNode::adopt("acme", dir);
    node.run();
    let channel = node.admin().await;
    let mut accounts =
        verbund_node::pb::account_service_client::AccountServiceClient::new(channel.clone());
    let cut = |admin: sqlx::PgPool, app: String| async move {
        let n: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(app)
        .fetch_all(&admin)
        .await
        .unwrap();
        n.len()
    };
    let mut confirmed = Vec::new();
    let mut failures = Vec::new();
    let mut cuts = 0;
    for i in 0..120 {
        if i == 30 || i == 70 {
            cuts += cut(admin.clone(), app.clone()).await;
        }
        let r = accounts
            .create_account(verbund_node::pb::CreateAccountRequest {
                account: Some(verbund_node::pb::Account {
                    name: Some(format!("Durable {i} GmbH")),
                    ..Default::default()
                }),
            })
            .await;
        match r {
            Ok(a) => confirmed.push(a.into_inner().meta.unwrap_or_default().id),
            Err(s) => failures.push(s.code()),
        }
    }
    assert!(cuts > 0, "no connection of the node was cut");
    for code in &failures {
        assert!(
            matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown),
            "a call failed with {code:?}: {failures:?}"
        );
    }
    // Serving again without a restart; every confirmed write is there.
    assert!(
        confirmed.len() >= 100,
        "only {} of 120 writes went through: {failures:?}",
        confirmed.len()
    );
    for id in &confirmed {
        assert!(
            get(&node, "account", id).is_some(),
            "confirmed {id} is lost"
        );
    }
    let after = create(&node, "account", &["name=After the cuts AG"]);
    assert!(get(&node, "account", &after).is_some());
}
