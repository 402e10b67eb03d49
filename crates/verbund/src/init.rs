//! `verbund init` and `verbund cert issue`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use verbund_node::config::{NodeConfig, render_node_toml};
use verbund_node::identity::PrincipalKind;
use verbund_node::pki::{self, CertPair};
use verbund_store::Store;

#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Organization id (lowercase DNS-like name, e.g. acme or acme-logistics).
    #[arg(long)]
    pub org: String,
    /// Directory to create the node in.
    #[arg(long)]
    pub dir: PathBuf,
    /// Node name inside the organization.
    #[arg(long, default_value = "node1")]
    pub name: String,
    /// Listen address of the node.
    #[arg(long, default_value = "127.0.0.1:7443")]
    pub listen: SocketAddr,
    /// Address of the operations endpoint (metrics, health; plain HTTP). Default: loopback,
    /// the node's port + 2021 (7443 → 9464; 0 → 0).
    #[arg(long)]
    pub ops_listen: Option<SocketAddr>,
    /// Extra DNS names for the node's server certificate (localhost is always included).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// Database URL; default: embedded SQLite at data/verbund.db.
    #[arg(long)]
    pub database_url: Option<String>,
}

pub struct Initialized {
    pub config_path: PathBuf,
    pub ca_fingerprint: String,
    /// The names the node certificate carries (DNS and IP SANs).
    pub node_names: String,
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    if path.exists() {
        bail!("{} exists already; refusing to overwrite", path.display());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mode = if secret { 0o600 } else { 0o644 };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(contents.as_bytes())?;
    }
    #[cfg(not(unix))]
    {
        let _ = secret;
        std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn write_pair(dir: &Path, stem: &str, pair: &CertPair) -> Result<()> {
    write_file(&dir.join(format!("{stem}.crt")), &pair.cert_pem, false)?;
    write_file(&dir.join(format!("{stem}.key")), &pair.key_pem, true)
}

/// The casbin model and example policy shipped in `policies/`.
pub const POLICY_MODEL: &str = include_str!("../../../policies/model.conf");
pub const POLICY_EXAMPLE: &str = include_str!("../../../policies/policy.csv");

pub async fn init(args: &InitArgs) -> Result<Initialized> {
    let config_path = args.dir.join("node.toml");
    if config_path.exists() {
        bail!(
            "{} exists already; refusing to overwrite an organization's keys",
            config_path.display()
        );
    }
    let ca = pki::new_ca(&args.org)?;
    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()];
    // An address given as a name is an IP SAN: a client reaching the node by that address
    // checks the certificate against IP SANs, never DNS names.
    for name in &args.dns {
        match name
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
        {
            Ok(ip) if !ips.contains(&ip) => ips.push(ip),
            Ok(_) => {}
            Err(_) => dns.push(name.clone()),
        }
    }
    if !args.listen.ip().is_unspecified() && !ips.contains(&args.listen.ip()) {
        ips.push(args.listen.ip());
    }
    let node = pki::issue(
        &ca,
        &args.org,
        PrincipalKind::Node,
        &args.name,
        &dns,
        &ips,
        pki::LEAF_VALIDITY_DAYS,
    )?;
    let admin = pki::issue(
        &ca,
        &args.org,
        PrincipalKind::User,
        "admin",
        &[],
        &[],
        pki::LEAF_VALIDITY_DAYS,
    )?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let made = Made::new(&args.dir);
    let result = write_organization(args, &config_path, &ca, &node, &admin).await;
    match result {
        Ok(()) => made.keep(),
        Err(e) => {
            // Nothing half-made stays behind: a retry starts clean.
            made.remove();
            return Err(e);
        }
    }
    let ca_der = pki::parse_certs(&ca.cert_pem)?.remove(0);
    Ok(Initialized {
        config_path,
        ca_fingerprint: pki::fingerprint(&ca_der),
        node_names: dns
            .iter()
            .map(|d| format!("DNS:{d}"))
            .chain(ips.iter().map(|i| format!("IP:{i}")))
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// What `init` creates in an organization's directory, to remove again if it fails.
struct Made {
    paths: Vec<std::path::PathBuf>,
}

impl Made {
    fn new(dir: &Path) -> Made {
        let paths = ["node.toml", "ca", "tls", "users", "policy", "data"]
            .iter()
            .map(|p| dir.join(p))
            .filter(|p| !p.exists())
            .collect();
        Made { paths }
    }

    fn keep(self) {}

    fn remove(self) {
        for p in &self.paths {
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

async fn write_organization(
    args: &InitArgs,
    config_path: &Path,
    ca: &pki::CertPair,
    node: &pki::CertPair,
    admin: &pki::CertPair,
) -> Result<()> {
    write_pair(&args.dir.join("ca"), "ca", ca)?;
    write_pair(&args.dir.join("tls"), "node", node)?;
    write_pair(&args.dir.join("users"), "admin", admin)?;
    std::fs::create_dir_all(args.dir.join("data"))?;
    // The shipped model and example policy; the admin identity gets the admin role. The
    // operator reviews and extends the file (partners' roles, people's roles) in git.
    write_file(&args.dir.join("policy/model.conf"), POLICY_MODEL, false)?;
    write_file(
        &args.dir.join("policy/policy.csv"),
        &format!(
            "{POLICY_EXAMPLE}\n# Written by `verbund init`: the admin identity administers this node.\ng, verbund://{}/user/admin, admin\n",
            args.org
        ),
        false,
    )?;
    let db_url = args
        .database_url
        .clone()
        .unwrap_or_else(|| "sqlite://data/verbund.db".to_string());
    write_file(
        config_path,
        &render_node_toml(
            &args.org,
            &args.name,
            args.listen,
            args.ops_listen
                .unwrap_or(verbund_node::config::default_ops_listen(args.listen)),
            &db_url,
        ),
        false,
    )?;
    // Create and migrate the database now, so a broken URL shows up at init, not at first
    // start; and bind it to this organization (another's database is refused).
    let cfg = NodeConfig::load(config_path)?;
    let store = Store::open(&cfg.database_url())
        .await
        .context("creating the database")?;
    let claimed = store.claim_for(&args.org).await;
    store.close().await;
    claimed.context("the database")?;
    Ok(())
}

pub async fn run(args: InitArgs) -> Result<()> {
    let done = init(&args).await?;
    println!(
        "Initialized organization {:?}, node {:?} in {}",
        args.org,
        args.name,
        args.dir.display()
    );
    println!("  config:          {}", done.config_path.display());
    println!("  node names:      {}", done.node_names);
    println!(
        "  CA certificate:  {}",
        args.dir.join("ca/ca.crt").display()
    );
    println!(
        "  CA fingerprint:  {} (SHA-256; give it to partners out of band)",
        done.ca_fingerprint
    );
    println!(
        "  admin identity:  verbund://{}/user/admin ({})",
        args.org,
        args.dir.join("users/admin.crt").display()
    );
    println!(
        "Start it with:     verbund run --config {}",
        done.config_path.display()
    );
    Ok(())
}

pub fn issue_user(config: &Path, user: &str, out_dir: Option<PathBuf>, days: i64) -> Result<()> {
    if !(1..=pki::LEAF_VALIDITY_DAYS).contains(&days) {
        bail!("--days must be between 1 and {}", pki::LEAF_VALIDITY_DAYS);
    }
    let cfg = NodeConfig::load(config)?;
    let ca_key = cfg
        .tls
        .ca_key
        .as_ref()
        .context("the config names no tls.ca_key; issue certificates where the CA key is")?;
    let ca = CertPair {
        cert_pem: cfg.read(&cfg.tls.ca_cert)?,
        key_pem: cfg.read(ca_key)?,
    };
    let pair = pki::issue(
        &ca,
        &cfg.node.org,
        PrincipalKind::User,
        user,
        &[],
        &[],
        days,
    )?;
    let dir = out_dir.unwrap_or_else(|| cfg.path(Path::new("users")));
    write_pair(&dir, user, &pair)?;
    let der = pki::parse_certs(&pair.cert_pem)?.remove(0);
    println!("Issued verbund://{}/user/{user}", cfg.node.org);
    println!(
        "  certificate: {}",
        dir.join(format!("{user}.crt")).display()
    );
    println!(
        "  key:         {}",
        dir.join(format!("{user}.key")).display()
    );
    println!("  fingerprint: {}", pki::fingerprint(&der));
    Ok(())
}

fn org_ca(cfg: &NodeConfig) -> Result<CertPair> {
    let ca_key = cfg
        .tls
        .ca_key
        .as_ref()
        .context("the config names no tls.ca_key; revoke where the CA key is")?;
    Ok(CertPair {
        cert_pem: cfg.read(&cfg.tls.ca_cert)?,
        key_pem: cfg.read(ca_key)?,
    })
}

/// `verbund cert revoke`: adds a serial to the CA's revocation list (written atomically).
pub fn revoke(config: &Path, certificate: &str) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let ca = org_ca(&cfg)?;
    let serial = if Path::new(certificate).is_file() {
        let pem = std::fs::read_to_string(certificate)
            .with_context(|| format!("reading {certificate}"))?;
        let der = pki::parse_certs(&pem)?.remove(0);
        let ca_der = pki::parse_certs(&ca.cert_pem)?.remove(0);
        let ok = verbund_node::tls::issued_by(&der, &ca_der);
        if !ok {
            bail!("{certificate} was not issued by this organization's CA");
        }
        pki::serial_of(&pem)?
    } else {
        pki::parse_serial_hex(certificate)?
    };
    let crl_path = cfg.path(&cfg.tls.crl);
    let existing = match std::fs::read_to_string(&crl_path) {
        Ok(pem) => Some(pem),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", crl_path.display())),
    };
    let (pem, added) = pki::revoke(&ca, existing.as_deref(), std::slice::from_ref(&serial))?;
    let tmp = crl_path.with_extension("pem.tmp");
    std::fs::write(&tmp, &pem).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &crl_path)
        .with_context(|| format!("replacing {}", crl_path.display()))?;
    let hex_serial = hex::encode(&serial);
    if added {
        println!(
            "revoked serial {hex_serial}; revocation list {}",
            crl_path.display()
        );
    } else {
        println!(
            "serial {hex_serial} was already revoked; revocation list {} re-signed",
            crl_path.display()
        );
    }
    println!(
        "apply it on a running node with SIGHUP; give partners the output of `verbund crl export`"
    );
    Ok(())
}

/// `verbund crl export`.
pub fn crl_export(config: &Path) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let path = cfg.path(&cfg.tls.crl);
    let pem = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no revocation list at {} (nothing revoked yet?)",
            path.display()
        )
    })?;
    pki::parse_crl(&pem)?;
    print!("{pem}");
    Ok(())
}

/// Replaces a file atomically (write a sibling, then rename), with owner-only permissions
/// for secrets.
fn replace_file(path: &Path, contents: &str, secret: bool) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, contents, secret)?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// `verbund cert renew-node`: a new key and certificate for this node, with the names of the
/// current one.
pub fn renew_node(config: &Path) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let ca = org_ca(&cfg)?;
    let current = pki::parse_certs(&cfg.read(&cfg.tls.cert)?)?.remove(0);
    let (dns, ips) = pki::dns_and_ips(&current)?;
    let pair = pki::issue(
        &ca,
        &cfg.node.org,
        PrincipalKind::Node,
        &cfg.node.name,
        &dns,
        &ips,
        pki::LEAF_VALIDITY_DAYS,
    )?;
    // Key first: a node reloading between the two renames would fail to pair them and keep
    // its current certificate (reload refuses a mismatched pair).
    replace_file(&cfg.path(&cfg.tls.key), &pair.key_pem, true)?;
    replace_file(&cfg.path(&cfg.tls.cert), &pair.cert_pem, false)?;
    let der = pki::parse_certs(&pair.cert_pem)?.remove(0);
    println!(
        "renewed verbund://{}/node/{} (names: {}; fingerprint {})",
        cfg.node.org,
        cfg.node.name,
        dns.join(", "),
        pki::fingerprint(&der)
    );
    println!("apply it on the running node with SIGHUP; open connections are not interrupted");
    Ok(())
}

/// `verbund ca rollover`: new CA first in the CA file, old one second; the new key issues.
pub fn ca_rollover(config: &Path) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let old = org_ca(&cfg)?;
    if pki::parse_certs(&old.cert_pem)?.len() != 1 {
        bail!(
            "a rollover is already in progress (the CA file holds two CAs); finish it with `verbund ca retire`"
        );
    }
    let new = pki::new_ca(&cfg.node.org)?;
    let ca_key = cfg.path(
        cfg.tls
            .ca_key
            .as_ref()
            .context("the config names no tls.ca_key")?,
    );
    let old_key = ca_key.with_extension("old.key");
    replace_file(&old_key, &old.key_pem, true)?;
    replace_file(&ca_key, &new.key_pem, true)?;
    replace_file(
        &cfg.path(&cfg.tls.ca_cert),
        &format!("{}{}", new.cert_pem, old.cert_pem),
        false,
    )?;
    let der = pki::parse_certs(&new.cert_pem)?.remove(0);
    println!(
        "new CA of {} (SHA-256 {}) issues from now on; both CAs are trusted",
        cfg.node.org,
        pki::fingerprint(&der)
    );
    println!(
        "next: SIGHUP the node; give clients and partners the new CA file; verbund cert renew-node; SIGHUP;"
    );
    println!(
        "      reissue user certificates; then verbund ca retire and SIGHUP (old key kept at {})",
        old_key.display()
    );
    Ok(())
}

/// `verbund ca retire`: trust only the new CA.
pub fn ca_retire(config: &Path) -> Result<()> {
    let cfg = NodeConfig::load(config)?;
    let path = cfg.path(&cfg.tls.ca_cert);
    let pem = cfg.read(&cfg.tls.ca_cert)?;
    let certs = pki::parse_certs(&pem)?;
    if certs.len() != 2 {
        bail!(
            "no rollover in progress (the CA file holds {} CA)",
            certs.len()
        );
    }
    let new_pem = pem_of_first(&pem).context("cannot split the CA file")?;
    replace_file(&path, &new_pem, false)?;
    println!(
        "old CA retired: only {} is trusted after SIGHUP",
        pki::fingerprint(certs[0].as_ref())
    );
    Ok(())
}

/// The first PEM block of a text.
fn pem_of_first(pem: &str) -> Option<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let end = pem.find(END)? + END.len();
    Some(format!("{}\n", pem[..end].trim_start()))
}
