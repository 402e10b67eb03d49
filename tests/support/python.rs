//! Python virtual environments for tests that run Python tools (the client example, the
//! offline validation of deploy/): one per requirements file under the target directory,
//! installed from PyPI on first use and kept while the file stays the same. Without python3
//! or PyPI the calling test fails and says why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The virtual environment `name` with `requirements` installed.
pub fn venv(name: &str, requirements: &Path) -> PathBuf {
    let wanted = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("{}: {e}", requirements.display()));
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let marker = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return venv;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed here ({e})"));
    assert!(
        made.status.success(),
        "python3 -m venv failed: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let pip = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(requirements)
        .stdin(Stdio::null())
        .output()
        .expect("running pip");
    assert!(
        pip.status.success(),
        "pip could not install {} (is PyPI reachable?):\n{}",
        requirements.display(),
        String::from_utf8_lossy(&pip.stderr)
    );
    std::fs::write(&marker, wanted).unwrap();
    venv
}
