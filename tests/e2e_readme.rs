//! The README's walk-through runs as written: every shell block marked
//! `<!-- walkthrough -->` is joined, in order, into one script that runs in an empty
//! directory with the built `verbund` on the PATH. A newcomer who follows the README gets
//! what it says, or this test fails.

mod support;

use std::time::{Duration, Instant};

/// The marked blocks of the README, in order.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- walkthrough -->" {
            continue;
        }
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a marked block must follow its marker"
        );
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        blocks.push(body.join("\n"));
    }
    blocks
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let blocks = walkthrough_blocks(&readme);
    assert!(blocks.len() >= 4, "the walk-through has its blocks");
    let bin_dir = std::path::Path::new(support::bin())
        .parent()
        .unwrap()
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    // What the test adds around the README's text: strict mode, and no node left running.
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\nexport PATH={}:$PATH\n{}\n",
        bin_dir.display(),
        blocks.join("\n")
    );
    let path = dir.path().join("walkthrough.sh");
    std::fs::write(&path, &script).unwrap();
    let mut child = std::process::Command::new("bash")
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("VERBUND_CONFIG")
        .env("VERBUND_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a step that waits forever fails the test instead of hanging it.
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the walk-through failed ({:?})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    // What the reader is told they will see.
    assert!(stdout.contains("verbund://acme/user/admin"), "{stdout}");
    assert!(stdout.contains("verbund://acme/user/anna"), "{stdout}");
    assert!(stdout.contains("allow: "), "policy check: {stdout}");
    assert!(stdout.contains("closed_won"), "{stdout}");
    assert!(stdout.contains("audit log intact: "), "{stdout}");
}
