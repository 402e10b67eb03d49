//! Harness for end-to-end tests: real `verbund` processes, real certificates, loopback.
#![allow(dead_code)]

pub mod federation;
pub mod node_api;
pub mod postgres;
pub mod python;
pub mod sharing_world;
pub mod trust;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tonic::transport::Channel;
use verbund_node::client::{ClientIdentity, connect};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_verbund")
}

/// A free loopback port for a node that must keep its address across restarts.
///
/// Chosen below the kernel's ephemeral range: a port handed out by `bind(…:0)` is in that
/// range, and between picking it and the node binding it, any outbound connection of any
/// process (another test's node dialing a partner) may take it as its source port; that made
/// a node fail to start with "Address already in use". Below the range only other callers of
/// this function compete, and each checks by binding.
pub fn fixed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (start, end) = if low > 12000 {
        (10000, low)
    } else {
        (61000, 65535)
    };
    let span = end - start;
    // Spread test processes over the range so that they rarely probe the same ports.
    let seed = std::process::id().wrapping_mul(7919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (start + seed.wrapping_add(n.wrapping_mul(104_729)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {start}..{end}");
}

/// Runs the CLI and returns its output.
pub fn verbund(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("VERBUND_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("running verbund")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Where a test node keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The embedded default: a file in the node's directory.
    Sqlite,
    /// A fresh schema of its own on the server of VERBUND_TEST_POSTGRES_URL.
    Postgres,
}

impl Backend {
    /// Whether a test named `what` can run on this backend: SQLite always; PostgreSQL only
    /// when VERBUND_TEST_POSTGRES_URL is set (otherwise it says SKIPPED loudly on stderr).
    pub fn available(self, what: &str) -> bool {
        match self {
            Backend::Sqlite => true,
            Backend::Postgres => postgres::available(what),
        }
    }
}

/// An organization directory made by `verbund init`, and its running node.
pub struct TestNode {
    pub org: String,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub endpoint: String,
    /// Extra environment for the node process (e.g. `VERBUND_CLOCK_OFFSET_MS`).
    pub env: Vec<(String, String)>,
    /// The node's PostgreSQL schema (None: SQLite), dropped after the node is killed.
    pub pg: Option<postgres::NodeSchema>,
}

impl TestNode {
    /// `verbund init` + `verbund run` for a new organization.
    pub fn start(org: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let o = verbund(&[
            "init",
            "--org",
            org,
            "--dir",
            dir.path().join(org).to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(o.status.success(), "init failed: {}", stderr(&o));
        let mut node = TestNode {
            org: org.to_string(),
            dir,
            child: None,
            endpoint: String::new(),
            env: Vec::new(),
            pg: None,
        };
        node.run();
        node
    }

    /// `verbund init` for a new organization listening on a fixed free port (so that it keeps
    /// its endpoint across restarts), not started.
    pub fn init_fixed(org: &str) -> TestNode {
        TestNode::init_fixed_on(org, Backend::Sqlite)
    }

    /// `init_fixed` with the node's database on `backend` (PostgreSQL: a fresh schema of its
    /// own; the test must have checked `backend.available(…)`).
    pub fn init_fixed_on(org: &str, backend: Backend) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let port = fixed_port();
        let home = dir.path().join(org);
        let listen = format!("127.0.0.1:{port}");
        let pg = (backend == Backend::Postgres).then(|| postgres::NodeSchema::create(org));
        let mut args = vec![
            "init",
            "--org",
            org,
            "--dir",
            home.to_str().unwrap(),
            "--listen",
            &listen,
            // Not the default beside the node port: that one may be another test's port.
            "--ops-listen",
            "127.0.0.1:0",
        ];
        if let Some(schema) = &pg {
            args.extend(["--database-url", &schema.url]);
        }
        let o = verbund(&args);
        assert!(o.status.success(), "init failed: {}", stderr(&o));
        let mut node = TestNode::adopt(org, dir);
        node.endpoint = format!("https://127.0.0.1:{port}");
        node.pg = pg;
        node
    }

    /// `verbund init` for a new organization, not started (e.g. to edit its policy first).
    pub fn init(org: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let o = verbund(&[
            "init",
            "--org",
            org,
            "--dir",
            dir.path().join(org).to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(o.status.success(), "init failed: {}", stderr(&o));
        TestNode::adopt(org, dir)
    }

    pub fn policy_path(&self) -> PathBuf {
        self.home().join("policy/policy.csv")
    }

    /// Appends lines to the node's policy file (takes effect at start or reload).
    pub fn append_policy(&self, lines: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.policy_path())
            .unwrap();
        writeln!(f, "{lines}").unwrap();
    }

    /// An organization directory `<dir>/<org>` that a test initialized itself; not started.
    pub fn adopt(org: &str, dir: tempfile::TempDir) -> TestNode {
        TestNode {
            org: org.to_string(),
            dir,
            child: None,
            endpoint: String::new(),
            env: Vec::new(),
            pg: None,
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join(&self.org)
    }

    pub fn config(&self) -> PathBuf {
        self.home().join("node.toml")
    }

    /// Starts the node process and waits until it serves.
    pub fn run(&mut self) {
        if let Err(e) = self.try_run() {
            panic!("{e}");
        }
    }

    /// SIGHUP: the node re-reads its revocation list and partner anchors.
    pub fn hup(&self) {
        let pid = self.child.as_ref().expect("node running").id();
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "could not signal the node");
    }

    /// SIGKILL: no graceful shutdown, so a restart proves durability.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Like `run`, but a node that exits before it serves (e.g. its fixed port is briefly
    /// taken by another socket after a kill) is reported as an error instead of a panic, so
    /// the caller can retry.
    pub fn try_run(&mut self) -> Result<(), String> {
        let mut child = Command::new(bin())
            .args(["run", "--config", self.config().to_str().unwrap()])
            .env("VERBUND_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting verbund run: {e}"))?;
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.split(" serving on ").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => {
                self.endpoint = format!("https://{addr}");
                self.child = Some(child);
                Ok(())
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!(
                    "{} did not report its address ({e}); exit: {status:?}",
                    self.org
                ))
            }
        }
    }

    /// Sends a signal with kill(1), e.g. "-STOP" or "-CONT"; false if it could not be sent.
    pub fn signal(&self, sig: &str) -> bool {
        let Some(child) = self.child.as_ref() else {
            return false;
        };
        Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.home().join(rel)).unwrap()
    }

    pub fn ca_pem(&self) -> String {
        self.read("ca/ca.crt")
    }

    /// The organization's CA certificate and key, to mint certificates in tests.
    pub fn ca_pair(&self) -> verbund_node::pki::CertPair {
        verbund_node::pki::CertPair {
            cert_pem: self.ca_pem(),
            key_pem: self.read("ca/ca.key"),
        }
    }

    pub fn admin_identity(&self) -> ClientIdentity {
        ClientIdentity {
            ca_pem: self.ca_pem(),
            cert_and_key: Some((self.read("users/admin.crt"), self.read("users/admin.key"))),
        }
    }

    pub fn identity_of(&self, user: &str) -> ClientIdentity {
        ClientIdentity {
            ca_pem: self.ca_pem(),
            cert_and_key: Some((
                self.read(&format!("users/{user}.crt")),
                self.read(&format!("users/{user}.key")),
            )),
        }
    }

    pub async fn admin(&self) -> Channel {
        connect(&self.endpoint, &self.admin_identity())
            .await
            .expect("admin connects")
    }

    /// The CLI against this node as admin.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let config = self.config();
        all.extend([
            "--config",
            config.to_str().unwrap(),
            "--node",
            &self.endpoint,
        ]);
        verbund(&all)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Copies a directory tree (a node's home, for a backup or a second process).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
