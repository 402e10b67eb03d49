//! deploy/ checked as far as this machine allows without a container engine or a cluster:
//! the systemd unit's exposure (`systemd-analyze security --offline`, where installed), the
//! Kubernetes manifests against the bundled schemas (`kubernetes-validate --strict`), the
//! compose file and Containerfile (`deploy/check.py`), the shell scripts' syntax, and the
//! node.toml of the Kubernetes ConfigMap through the node's own config parser.

mod support;

use std::path::Path;
use std::process::Command;

use verbund_node::config::NodeConfig;

fn deploy() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

/// The overall exposure `systemd-analyze security` reports, or None without systemd-analyze.
fn systemd_exposure(unit: &Path) -> Option<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure in systemd-analyze's output:\n{text}"));
    let score = line
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable exposure line: {line}"));
    Some(score)
}

#[test]
fn the_systemd_unit_is_hardened() {
    let unit = deploy().join("systemd/verbund.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for directive in [
        "Type=notify",
        "User=verbund",
        "After=network-online.target postgresql.service",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
    ] {
        assert!(text.contains(directive), "{directive} missing");
    }
    let sysusers = std::fs::read_to_string(deploy().join("systemd/verbund.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u verbund ")));
    match systemd_exposure(&unit) {
        Some(score) => assert!(score <= 2.0, "exposure {score} > 2.0"),
        None => eprintln!("systemd-analyze is not installed: exposure not measured here"),
    }
}

#[test]
fn the_kubernetes_manifests_compose_file_and_image_pass_offline_validation() {
    let venv = support::python::venv("deploy-validate-venv", &deploy().join("requirements.txt"));
    let manifests: Vec<_> = std::fs::read_dir(deploy().join("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(!manifests.is_empty());
    let out = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("running kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate:\n{report}");
    for kind in ["deployment", "service", "configmap", "secret"] {
        assert!(
            report.contains(&format!("passed for resource {kind}/")),
            "{kind}: {report}"
        );
    }

    let extracted = tempfile::tempdir().unwrap();
    let out = Command::new(venv.join("bin/python"))
        .arg(deploy().join("check.py"))
        .arg(deploy())
        .arg(extracted.path())
        .output()
        .expect("running deploy/check.py");
    assert!(
        out.status.success(),
        "deploy/check.py:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The ConfigMap's node.toml is one the node accepts.
    let cfg = NodeConfig::load(&extracted.path().join("verbund-acme-config.node.toml"))
        .expect("the ConfigMap's node.toml parses");
    assert_eq!(cfg.node.org, "acme");
    assert_eq!(cfg.ops_listen(), Some("0.0.0.0:9464".parse().unwrap()));
    assert!(cfg.database_url().starts_with("postgres://"));

    for script in ["compose/init.sh", "compose/federate.sh"] {
        let out = Command::new("sh")
            .arg("-n")
            .arg(deploy().join(script))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
