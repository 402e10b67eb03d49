//! `verbund backup` and `verbund restore`: a consistent copy of a node's SQLite database while
//! the node runs, and putting such a copy back while it is stopped. PostgreSQL is backed up
//! with its own tools (`pg_dump`, base backups and WAL archiving); see the README.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use verbund_node::config::NodeConfig;
use verbund_store::backup;

#[derive(Args)]
pub struct BackupArgs {
    #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
    config: PathBuf,
    /// The backup file to write (must not exist).
    #[arg(long)]
    to: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[arg(long, short = 'c', env = "VERBUND_CONFIG")]
    config: PathBuf,
    /// A file written by `verbund backup`.
    #[arg(long)]
    from: PathBuf,
}

/// The SQLite file of the node configured in `config`, or why there is none.
fn sqlite_path(config: &Path) -> Result<(NodeConfig, PathBuf)> {
    let cfg = NodeConfig::load(config)?;
    let url = cfg.database_url();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        bail!(
            "this node uses PostgreSQL: back it up with pg_dump (or base backups with WAL archiving \
             for point-in-time recovery) and restore with pg_restore while the node is stopped; \
             see the README, section \"Backup and restore\""
        );
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(&url)
        .to_string();
    Ok((cfg, PathBuf::from(path)))
}

pub async fn backup(args: BackupArgs) -> Result<()> {
    let (_, db) = sqlite_path(&args.config)?;
    let info = backup::backup_sqlite(&db, &args.to)
        .await
        .with_context(|| format!("backup of {}", db.display()))?;
    println!(
        "backed up {} (organization {}, change {}) to {} ({} bytes)",
        db.display(),
        info.org,
        info.last_seq,
        args.to.display(),
        info.bytes
    );
    Ok(())
}

pub async fn restore(args: RestoreArgs) -> Result<()> {
    let (cfg, db) = sqlite_path(&args.config)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let info = backup::restore_sqlite(&db, &args.from, &cfg.node.org, now_ms)
        .await
        .with_context(|| format!("restore of {}", db.display()))?;
    println!(
        "restored {} from {} (organization {}, change {})",
        db.display(),
        args.from.display(),
        info.restored.org,
        info.restored.last_seq
    );
    if let Some(previous) = info.previous {
        println!("the replaced database is kept as {}", previous.display());
    }
    println!(
        "start the node: partners notice the restore at their next connect and converge \
         (their edits the restored node no longer has are offered again)"
    );
    Ok(())
}
