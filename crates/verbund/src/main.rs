//! `verbund`: the node and its command-line client.

mod backup;
mod bench;
mod bench_consolidation;
mod bench_match;
mod bench_sync;
mod customers;
mod demo;
mod governance;
mod health;
mod init;
mod output;
mod partners;
mod records;
mod sync_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use verbund_node::client::{ClientIdentity, connect};
use verbund_node::config::NodeConfig;
use verbund_node::server::Node;

/// jemalloc serves every allocation of the process, SQLite's too (see Cargo.toml for why).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "verbund",
    version,
    about = "Verbund: a federation of CRM nodes over mutual TLS"
)]
struct Cli {
    /// Log lines as text (default) or as JSON objects, one per line (for log shippers).
    #[arg(long, global = true, value_enum, env = "VERBUND_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs go to stderr, filtered by `VERBUND_LOG` (tracing's env-filter syntax). JSON lines
/// carry the current span's fields (request id, principal, method) with every event.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VERBUND_LOG")
        .unwrap_or_else(|_| "warn,verbund=info,verbund_node=info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

/// How a client command reaches a node.
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// The node's config (node.toml): gives endpoint, CA and the [client] identity.
    #[arg(long, short = 'c', env = "VERBUND_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The node to talk to, e.g. https://127.0.0.1:7443 (overrides the config's address).
    #[arg(long, env = "VERBUND_NODE", global = true)]
    node: Option<String>,
    /// CA certificate (PEM) that issued the node's certificate.
    #[arg(long, env = "VERBUND_NODE_CA", global = true)]
    node_ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, env = "VERBUND_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, env = "VERBUND_KEY", global = true)]
    key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    async fn channel(&self) -> Result<tonic::transport::Channel> {
        let cfg = self
            .config
            .as_ref()
            .map(|p| NodeConfig::load(p))
            .transpose()?;
        let endpoint = match (&self.node, &cfg) {
            (Some(e), _) => e.clone(),
            (None, Some(c)) => c.endpoint(),
            (None, None) => anyhow::bail!(
                "no node given: pass --config <node.toml> or --node with --node-ca, --cert and --key"
            ),
        };
        let mut id = match &cfg {
            Some(c) if self.cert.is_none() => ClientIdentity::from_config(c)?,
            Some(c) => ClientIdentity {
                ca_pem: c.read(&c.tls.ca_cert)?,
                cert_and_key: None,
            },
            None => ClientIdentity {
                ca_pem: String::new(),
                cert_and_key: None,
            },
        };
        if let Some(ca) = &self.node_ca {
            id.ca_pem =
                std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            id.cert_and_key = Some((read(cert)?, read(key)?));
        } else if self.cert.is_some() != self.key.is_some() {
            anyhow::bail!("--cert and --key go together");
        }
        if id.ca_pem.is_empty() {
            anyhow::bail!("no CA certificate: pass --node-ca or --config");
        }
        if id.cert_and_key.is_none() {
            // Said here: the node would only drop the connection ("transport error").
            anyhow::bail!(
                "the node requires a client certificate: pass --cert and --key, or a --config whose [client] names them (make one with `verbund cert issue`)"
            );
        }
        connect(&endpoint, &id).await
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create an organization's CA, a node certificate, an admin certificate, node.toml and the database.
    Init(init::InitArgs),
    /// The consolidated customer view of a group holding's node: customers across
    /// subsidiaries, golden records with lineage, steward links and unlinks.
    #[command(subcommand)]
    Customer(customers::CustomerCommand),
    /// Group figures over the consolidated customers.
    #[command(subcommand)]
    Group(customers::GroupCommand),
    /// Write a consistent copy of the node's database (SQLite; the node may keep running).
    Backup(backup::BackupArgs),
    /// Put a backup in place of the node's database (the node must be stopped).
    Restore(backup::RestoreArgs),
    /// Run a node (mutual TLS only).
    Run {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
    /// Manage certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// This organization's CA: what partners pin.
    #[command(subcommand)]
    Ca(CaCommand),
    /// This organization's certificate revocation list.
    #[command(subcommand)]
    Crl(CrlCommand),
    /// Partner organizations whose CAs this node trusts (admin API of a running node).
    #[command(subcommand)]
    Partner(partners::PartnerCommand),
    /// Shares and share rules: which records partners see (admin API of a running node).
    #[command(subcommand)]
    Share(governance::ShareCommand),
    /// The access policy: explain a decision, reload the files.
    #[command(subcommand)]
    Policy(governance::PolicyCommand),
    /// The tamper-evident audit log of cross-organization access.
    #[command(subcommand)]
    Audit(governance::AuditCommand),
    /// Concurrent edits that lost a merge, kept for review (on the owner's node).
    #[command(subcommand)]
    Conflict(sync_cli::ConflictCommand),
    /// Local edits of partners' records waiting for (or refused by) their owners.
    #[command(subcommand)]
    Outbox(sync_cli::OutboxCommand),
    /// Erase a person (contact or lead; GDPR Art. 17) on the owner's node: personal fields go,
    /// a PII-free tombstone stays, and every partner that received it purges it.
    Erase {
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Erasures: who received an erased record and who has acknowledged purging it.
    #[command(subcommand)]
    Erasure(sync_cli::ErasureCommand),
    /// Accounts (companies).
    Account(records::RecordArgs),
    /// Contacts (people at accounts).
    Contact(records::RecordArgs),
    /// Leads (prospects not yet qualified).
    Lead(records::RecordArgs),
    /// Opportunities (deals).
    Opportunity(records::RecordArgs),
    /// Service cases.
    Case(records::RecordArgs),
    /// Activities (e-mails, calls, meetings, notes, web) of a record.
    Activity(records::RecordArgs),
    /// Search names, e-mail addresses, domains and phone numbers.
    Search {
        /// Text to find (case-insensitive; phone numbers also as bare digits).
        query: String,
        /// Restrict to kinds (account, contact, lead, opportunity, service_case, activity).
        #[arg(long = "kind")]
        kinds: Vec<String>,
        #[arg(long, default_value_t = 50)]
        page_size: i32,
        #[command(flatten)]
        conn: Conn,
    },
    /// Follow the node's change stream.
    Watch {
        /// Start after this change sequence number (0 = from the beginning).
        #[arg(long, default_value_t = 0)]
        after_seq: i64,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show the identity the node sees for this client.
    Whoami {
        #[command(flatten)]
        conn: Conn,
    },
    /// Run a local demonstration on the embedded database in a temporary directory.
    Demo {
        /// Keep the demo's directory instead of deleting it.
        #[arg(long)]
        keep: bool,
        /// Leave the federation (five nodes) running after the demo, until Ctrl-C, and print
        /// how to reach each node.
        #[arg(long)]
        keep_running: bool,
    },
    /// Ask a node's operations endpoint whether it is alive (or, with --ready, ready); for
    /// container health checks. Exits non-zero if not.
    Health(health::HealthArgs),
    /// Benchmarks against a real node over mutual TLS.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Print this organization's revocation list (PEM), e.g. for partners.
    Export {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate and its SHA-256 fingerprint, to give a partner out of band.
    Export {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
    /// Start a CA rollover: a new CA issues from now on; the CA file holds new and old, so
    /// both are trusted during the overlap. Then: SIGHUP the node, give clients the new CA
    /// file, `verbund cert renew-node`, SIGHUP, reissue user certificates, `verbund ca retire`.
    Rollover {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
    /// End a CA rollover: trust only the new CA (SIGHUP the node afterwards).
    Retire {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issue a client certificate for a user of this organization (verbund://<org>/user/<name>).
    Issue {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        user: String,
        /// Where to write <user>.crt and <user>.key (default: users/ next to the config).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Validity in days.
        #[arg(long, default_value_t = verbund_node::pki::LEAF_VALIDITY_DAYS)]
        days: i64,
    },
    /// Renew this node's server certificate (same names, new key, new validity) from the CA.
    /// A running node switches to it on SIGHUP; open connections are not interrupted.
    RenewNode {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
    },
    /// Revoke a certificate of this organization: adds it to the CA's revocation list. A
    /// running node applies the list on SIGHUP (`kill -HUP <pid>`).
    Revoke {
        #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
        config: PathBuf,
        /// The certificate's serial number (hex) or its PEM file.
        certificate: String,
    },
}

fn main() -> ExitCode {
    // Before any thread exists (see the function).
    verbund_store::sqlite_process_setup();
    // One crypto provider everywhere (ring); installing it early avoids rustls' runtime panic
    // should another dependency ever compile in a second one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = {
        use clap::{CommandFactory, FromArgMatches};
        let matches = records::hide_foreign_filters(Cli::command()).get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(e) => e.exit(),
        }
    };
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            output::print_error(&e);
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Init(args) => init::run(args).await,
        Command::Run { config } => run_node(config).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Customer(c) => customers::customer(c).await,
        Command::Group(g) => customers::group(g).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Cert(CertCommand::Issue {
            config,
            user,
            out_dir,
            days,
        }) => init::issue_user(&config, &user, out_dir, days),
        Command::Ca(CaCommand::Export { config }) => partners::ca_export(&config),
        Command::Ca(CaCommand::Rollover { config }) => init::ca_rollover(&config),
        Command::Ca(CaCommand::Retire { config }) => init::ca_retire(&config),
        Command::Crl(CrlCommand::Export { config }) => init::crl_export(&config),
        Command::Cert(CertCommand::Revoke {
            config,
            certificate,
        }) => init::revoke(&config, &certificate),
        Command::Cert(CertCommand::RenewNode { config }) => init::renew_node(&config),
        Command::Partner(p) => partners::run(p).await,
        Command::Conflict(c) => sync_cli::conflict(c).await,
        Command::Outbox(o) => sync_cli::outbox(o).await,
        Command::Erase { id, conn } => sync_cli::erase(&id, &conn).await,
        Command::Erasure(e) => sync_cli::erasure(e).await,
        Command::Share(s) => governance::share(s).await,
        Command::Policy(p) => {
            if governance::policy(p).await? {
                Ok(())
            } else {
                Err(anyhow::anyhow!("the answer is deny"))
            }
        }
        Command::Audit(a) => {
            if governance::audit(a).await? {
                Ok(())
            } else {
                // `audit verify` found a break: fail the command (scripts and cron notice).
                Err(anyhow::anyhow!("the audit log failed verification"))
            }
        }
        Command::Account(a) => records::run(verbund_core::RecordKind::Account, a).await,
        Command::Contact(a) => records::run(verbund_core::RecordKind::Contact, a).await,
        Command::Lead(a) => records::run(verbund_core::RecordKind::Lead, a).await,
        Command::Opportunity(a) => records::run(verbund_core::RecordKind::Opportunity, a).await,
        Command::Case(a) => records::run(verbund_core::RecordKind::ServiceCase, a).await,
        Command::Activity(a) => records::run(verbund_core::RecordKind::Activity, a).await,
        Command::Search {
            query,
            kinds,
            page_size,
            conn,
        } => records::search(&conn, query, kinds, page_size).await,
        Command::Watch {
            after_seq,
            limit,
            conn,
        } => records::watch(&conn, after_seq, limit).await,
        Command::Whoami { conn } => records::whoami(&conn).await,
        Command::Demo { keep, keep_running } => demo::run(keep, keep_running).await,
        Command::Bench(b) => bench::run(b).await,
        Command::Health(h) => health::run(h),
    }
}

async fn run_node(config: PathBuf) -> Result<()> {
    let cfg = NodeConfig::load(&config)?;
    let node = Node::start(&cfg).await?;
    if let Some(ops) = node.ops_addr() {
        println!("ops endpoint on http://{ops} (/metrics, /healthz, /readyz)");
    }
    // Tests and scripts wait for this line.
    println!(
        "verbund node {} serving on {} (database: {})",
        cfg.node_id(),
        node.local_addr,
        node.state.store.backend_name()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    #[cfg(unix)]
    {
        // SIGHUP: re-read the revocation list and the partner anchors without a restart.
        let state = node.state.clone();
        let cfg = cfg.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match verbund_node::server::reload(&state, &cfg).await {
                    Ok(()) => tracing::info!("reloaded revocation list and partner anchors"),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "reload refused; the previous material stays in force")
                    }
                }
            }
        });
    }
    // systemd (Type=notify): listening and the database open; calls are served from here on.
    notify_systemd("READY=1");
    let shutdown = async {
        shutdown_signal().await;
        notify_systemd("STOPPING=1");
    };
    node.serve(shutdown).await?;
    tracing::info!("node stopped");
    Ok(())
}

fn notify_systemd(state: &str) {
    if let Err(e) = verbund_node::ops::notify_systemd(state) {
        tracing::warn!(error = %e, state, "could not notify systemd (NOTIFY_SOCKET)");
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
