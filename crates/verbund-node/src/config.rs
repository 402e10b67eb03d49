//! `node.toml`: one file configures a node. Relative paths are relative to the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub database: DatabaseSection,
    pub tls: TlsSection,
    #[serde(default)]
    pub client: Option<ClientSection>,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub consolidation: ConsolidationSection,
    /// The operations endpoint (metrics, health); see `ops_listen`.
    #[serde(default)]
    pub ops: OpsSection,
    /// The directory of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub org: String,
    pub name: String,
    pub listen: SocketAddr,
    #[serde(default = "default_skew")]
    pub max_clock_skew_ms: u64,
    /// Connections are closed (gracefully) after this many seconds; clients reconnect and pass
    /// the handshake again, so a removed partner or a revoked certificate loses access at the
    /// latest after this time.
    #[serde(default = "default_max_connection_age")]
    pub max_connection_age_secs: u64,
    /// A connection on which nothing arrives for this many seconds is closed (live clients
    /// answer the node's HTTP/2 keepalive pings every 30 s).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: u64,
}

fn default_max_connection_age() -> u64 {
    600
}

fn default_idle_timeout() -> u64 {
    90
}

fn default_skew() -> u64 {
    60_000
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://data/verbund.db` (relative to this file) or `postgres://…`.
    pub url: String,
    /// Several processes of this node use this PostgreSQL database at once (for availability
    /// and read throughput): every process serves the APIs, and each partner's sync link runs
    /// in one of them at a time. Every process of the node must set it.
    #[serde(default)]
    pub shared: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub ca_cert: PathBuf,
    /// Needed only to issue certificates (`verbund cert issue`); keep it offline if you can.
    pub ca_key: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// This organization's revocation list (written by `verbund cert revoke`); optional file.
    #[serde(default = "default_crl")]
    pub crl: PathBuf,
}

fn default_crl() -> PathBuf {
    PathBuf::from("ca/crl.pem")
}

/// The access policy files (casbin model and policy; see `policies/`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    #[serde(default = "default_policy_model")]
    pub model: PathBuf,
    #[serde(default = "default_policy_file")]
    pub file: PathBuf,
}

impl Default for PolicySection {
    fn default() -> Self {
        PolicySection {
            model: default_policy_model(),
            file: default_policy_file(),
        }
    }
}

fn default_policy_model() -> PathBuf {
    PathBuf::from("policy/model.conf")
}

fn default_policy_file() -> PathBuf {
    PathBuf::from("policy/policy.csv")
}

/// The consolidated customer view of a group holding's node (off by default: it keeps the
/// matching state of every account and contact in memory).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsolidationSection {
    #[serde(default)]
    pub enabled: bool,
    /// Survivorship rules of the golden record (TOML); default: source priority as listed
    /// there, then the most recent value.
    pub survivorship: Option<PathBuf>,
    /// Exchange rates for converted group figures: units of `fx_base` per unit of each
    /// currency, from `fx_rate_date` (shown with every converted figure). Without them,
    /// figures stay per currency.
    pub fx_base: Option<String>,
    pub fx_rate_date: Option<String>,
    #[serde(default)]
    pub fx_rates: std::collections::BTreeMap<String, f64>,
}

/// The operations endpoint: plain HTTP without client certificates (`/metrics`, `/healthz`,
/// `/readyz`), so keep it on loopback or a private network.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpsSection {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Default: loopback, port = the node's port + 2021 (7443 → 9464), 0 if that is 0.
    pub listen: Option<SocketAddr>,
}

impl Default for OpsSection {
    fn default() -> Self {
        OpsSection {
            enabled: true,
            listen: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The ops port beside a node port: a fixed offset, so the default node port 7443 gets 9464
/// (the usual exporter port) and nodes on one host get distinct ones.
pub const OPS_PORT_OFFSET: u16 = 2021;

/// The default ops address for a node listening on `listen`.
pub fn default_ops_listen(listen: SocketAddr) -> SocketAddr {
    let port = match listen.port() {
        0 => 0,
        p => p.checked_add(OPS_PORT_OFFSET).unwrap_or(0),
    };
    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

/// The identity the CLI uses when talking to this node with `--config`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSection {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))?;
        cfg.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if cfg.base_dir.as_os_str().is_empty() {
            cfg.base_dir = PathBuf::from(".");
        }
        if !verbund_core::schema::is_valid_org_id(&cfg.node.org) {
            bail!("node.org {:?} is not a valid organization id", cfg.node.org);
        }
        if !crate::identity::is_valid_name(&cfg.node.name) {
            bail!("node.name {:?} is not a valid node name", cfg.node.name);
        }
        Ok(cfg)
    }

    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn read(&self, p: &Path) -> Result<String> {
        let full = self.path(p);
        std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
    }

    /// The database URL with a relative SQLite path resolved against the config directory.
    pub fn database_url(&self) -> String {
        let url = &self.database.url;
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return url.clone();
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        format!("sqlite://{}", self.path(Path::new(path)).display())
    }

    /// The URL clients use to reach this node.
    pub fn endpoint(&self) -> String {
        let mut addr = self.node.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("https://{addr}")
    }

    /// Where the operations endpoint listens; None when disabled.
    pub fn ops_listen(&self) -> Option<SocketAddr> {
        self.ops.enabled.then(|| {
            self.ops
                .listen
                .unwrap_or(default_ops_listen(self.node.listen))
        })
    }

    /// The node id used in versions: `<org>/<name>`.
    pub fn node_id(&self) -> String {
        format!("{}/{}", self.node.org, self.node.name)
    }
}

/// The commented `node.toml` that `verbund init` writes.
pub fn render_node_toml(
    org: &str,
    name: &str,
    listen: SocketAddr,
    ops_listen: SocketAddr,
    database_url: &str,
) -> String {
    format!(
        r#"# Verbund node configuration, written by `verbund init`.
# Relative paths are relative to this file.

[node]
# This organization's id (lowercase DNS-like name). It is part of every certificate's
# identity (verbund://{org}/...) and of every record this node owns.
org = "{org}"
# The node's name inside the organization.
name = "{name}"
# Address of the mutual-TLS gRPC listener. There is no plaintext port.
listen = "{listen}"
# Updates stamped further than this in the future are rejected (hybrid logical clock bound).
max_clock_skew_ms = 60000
# Open connections are closed after this many seconds and must pass the handshake again:
# the longest a removed partner or a revoked certificate keeps an open connection.
max_connection_age_secs = 600
# A connection on which nothing arrives for this long is closed (live clients answer the
# node's keepalive pings every 30 s, so only silent ones are).
idle_timeout_secs = 90

[database]
# Embedded SQLite (a file below this directory) by default; for production use PostgreSQL:
# url = "postgres://verbund@db.example.internal/verbund"
url = "{database_url}"

[tls]
# This organization's CA. Clients must present certificates issued by it.
ca_cert = "ca/ca.crt"
# The CA key signs new certificates (`verbund cert issue`). Move it offline when you can;
# the running node does not need it.
ca_key = "ca/ca.key"
# The node's server certificate (SANs: its DNS names/IPs and verbund://{org}/node/{name}).
cert = "tls/node.crt"
key = "tls/node.key"
# Revocation list of this CA, maintained by `verbund cert revoke`; the node reloads it on
# SIGHUP. Certificates listed there are refused at the handshake.
crl = "ca/crl.pem"

[policy]
# Who may do what on which record type and field (casbin; see policies/README.md). The node
# refuses to start without a valid policy, and re-reads it on SIGHUP or `verbund policy
# reload`; a malformed file is refused and the policy in force stays.
model = "policy/model.conf"
file = "policy/policy.csv"

[ops]
# Metrics (/metrics, Prometheus/OpenMetrics text), liveness (/healthz) and readiness
# (/readyz) over plain HTTP without client certificates: keep it on loopback or a private
# network. `enabled = false` turns it off.
enabled = true
listen = "{ops_listen}"

[client]
# The identity the verbund CLI uses with `--config` (verbund://{org}/user/admin).
cert = "users/admin.crt"
key = "users/admin.key"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_config_parses() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        std::fs::write(
            &p,
            render_node_toml(
                "acme",
                "node1",
                "127.0.0.1:7443".parse().unwrap(),
                "127.0.0.1:9464".parse().unwrap(),
                "sqlite://data/verbund.db",
            ),
        )
        .unwrap();
        let cfg = NodeConfig::load(&p).unwrap();
        assert_eq!(cfg.node.org, "acme");
        assert_eq!(cfg.endpoint(), "https://127.0.0.1:7443");
        assert!(cfg.database_url().ends_with("data/verbund.db"));
        assert_eq!(cfg.node_id(), "acme/node1");
        assert_eq!(cfg.ops_listen(), Some("127.0.0.1:9464".parse().unwrap()));
        std::fs::write(&p, "[node]\norg = \"Bad Org\"\nname = \"n\"\nlisten = \"127.0.0.1:1\"\n[database]\nurl = \"x\"\n[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n").unwrap();
        assert!(NodeConfig::load(&p).is_err());
    }

    #[test]
    fn the_ops_address_defaults_beside_the_node_port_and_can_be_turned_off() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(default_ops_listen(at("0.0.0.0:7443")), at("127.0.0.1:9464"));
        assert_eq!(
            default_ops_listen(at("127.0.0.1:7444")),
            at("127.0.0.1:9465")
        );
        assert_eq!(default_ops_listen(at("127.0.0.1:0")), at("127.0.0.1:0"));
        assert_eq!(default_ops_listen(at("127.0.0.1:65000")), at("127.0.0.1:0"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("node.toml");
        let base = "[node]\norg = \"acme\"\nname = \"n\"\nlisten = \"127.0.0.1:7443\"\n[database]\nurl = \"x\"\n[tls]\nca_cert = \"a\"\ncert = \"b\"\nkey = \"c\"\n";
        std::fs::write(&p, base).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap().ops_listen(),
            Some(at("127.0.0.1:9464"))
        );
        std::fs::write(&p, format!("{base}[ops]\nenabled = false\n")).unwrap();
        assert_eq!(NodeConfig::load(&p).unwrap().ops_listen(), None);
        std::fs::write(&p, format!("{base}[ops]\nlisten = \"10.0.0.5:9100\"\n")).unwrap();
        assert_eq!(
            NodeConfig::load(&p).unwrap().ops_listen(),
            Some(at("10.0.0.5:9100"))
        );
    }
}
