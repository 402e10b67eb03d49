//! The Python client example (`examples/python/`) runs against a real node: stubs generated
//! from `proto/` by grpcio-tools, mutual TLS with the admin's certificate, create, list with
//! a filter, update with a field mask, watch. The example's requirements are installed from
//! PyPI into a virtual environment under the target directory, kept between runs while
//! `requirements.txt` stays the same. Without python3 or PyPI the test fails and says so.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::TestNode;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example_venv() -> PathBuf {
    support::python::venv(
        "python-example-venv",
        &repo().join("examples/python/requirements.txt"),
    )
}

#[test]
fn the_python_example_runs_against_a_real_node() {
    let venv = example_venv();
    let acme = TestNode::start("acme");
    let home = acme.home();
    let out = Command::new(venv.join("bin/python"))
        .arg(repo().join("examples/python/verbund_client.py"))
        .args(["--endpoint", acme.endpoint.trim_start_matches("https://")])
        .arg("--ca")
        .arg(home.join("ca/ca.crt"))
        .arg("--cert")
        .arg(home.join("users/admin.crt"))
        .arg("--key")
        .arg(home.join("users/admin.key"))
        .stdin(Stdio::null())
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the example failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "connected as user admin of acme to acme/node1",
            "created account Python Client GmbH",
            "created opportunity Pilot OPPORTUNITY_STAGE_PROSPECTING",
            "created opportunity Rollout OPPORTUNITY_STAGE_PROPOSAL",
            "listed in OPPORTUNITY_STAGE_PROPOSAL: Rollout",
            "updated Pilot: OPPORTUNITY_STAGE_NEGOTIATION, probability 20",
            "watched CHANGE_OP_CREATE Pilot account_id,name,probability,stage",
            "watched CHANGE_OP_CREATE Rollout account_id,name,probability,stage",
            "watched CHANGE_OP_UPDATE Pilot stage",
            "done",
        ],
        "stderr:\n{stderr}"
    );
    // What the example wrote is what the node holds.
    let o = acme.cli(&["opportunity", "list", "--json"]);
    let listed = support::stdout(&o);
    assert!(
        listed.contains("Pilot") && listed.contains("Rollout"),
        "{listed}"
    );
}
