//! Backup and restore of a SQLite node database.
//!
//! A backup is an online, consistent copy (`VACUUM INTO` on a read connection: one read
//! transaction, so it is the state of one commit, while the node keeps writing). A restore
//! puts such a copy in place of the database while no node process uses it (the same lock
//! file a running node holds), keeps what it replaces beside it, and never mixes the copy with
//! the write-ahead log of the database it replaces. Partners notice that the owner went back
//! in its history by the change marks of their cursors (see the sync's reset).
//!
//! PostgreSQL has its own tools for this (`pg_dump`, base backups with WAL archiving for
//! point-in-time recovery); the README says how, and the node behaves after such a restore as
//! after this one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{ConnectOptions, Connection};

use crate::{Result, StoreError};

/// What a backup file holds, read from the file itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupInfo {
    /// The organization whose node wrote the database (`node_owner`).
    pub org: String,
    /// The node's last change sequence number in the copy.
    pub last_seq: i64,
    pub bytes: u64,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreInfo {
    pub restored: BackupInfo,
    /// Where the replaced database (with its write-ahead log) was kept, if there was one.
    pub previous: Option<PathBuf>,
}

fn config(msg: impl Into<String>) -> StoreError {
    StoreError::Config(msg.into())
}

/// An online, consistent copy of the SQLite database at `db` into the new file `to`, checked
/// after writing (integrity, owner). `to` must not exist: a backup never overwrites a file.
pub async fn backup_sqlite(db: &Path, to: &Path) -> Result<BackupInfo> {
    if !db.exists() {
        return Err(config(format!("no database at {}", db.display())));
    }
    if to.exists() {
        return Err(config(format!(
            "{} exists already; a backup never overwrites a file",
            to.display()
        )));
    }
    let target = to
        .to_str()
        .ok_or_else(|| config(format!("{} is not a UTF-8 path", to.display())))?;
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    sqlx::query("VACUUM INTO $1")
        .bind(target)
        .execute(&mut conn)
        .await
        .map_err(|e| config(format!("backup into {} failed: {e}", to.display())))?;
    conn.close().await?;
    inspect_sqlite(to).await
}

/// Checks a backup file (SQLite integrity check, the owner and the last sequence number).
pub async fn inspect_sqlite(file: &Path) -> Result<BackupInfo> {
    let bytes = std::fs::metadata(file)
        .map_err(|e| config(format!("cannot read {}: {e}", file.display())))?
        .len();
    let mut conn = SqliteConnectOptions::new()
        .filename(file)
        .read_only(true)
        // A backup is a single file; never create or expect a write-ahead log beside it.
        .journal_mode(SqliteJournalMode::Delete)
        .connect()
        .await
        .map_err(|e| {
            config(format!(
                "{} is not a readable database: {e}",
                file.display()
            ))
        })?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| config(format!("{} is not a Verbund backup: {e}", file.display())))?;
    if check != "ok" {
        return Err(config(format!(
            "{} fails SQLite's integrity check: {check}",
            file.display()
        )));
    }
    let org: Option<String> = sqlx::query_scalar("SELECT org FROM node_owner")
        .fetch_optional(&mut conn)
        .await
        .map_err(|e| config(format!("{} is not a Verbund database: {e}", file.display())))?;
    let last_seq: i64 = sqlx::query_scalar("SELECT last_seq FROM node_state")
        .fetch_one(&mut conn)
        .await
        .map_err(|e| config(format!("{} is not a Verbund database: {e}", file.display())))?;
    conn.close().await?;
    let org = org.ok_or_else(|| {
        config(format!(
            "{} names no organization (node_owner is empty)",
            file.display()
        ))
    })?;
    Ok(BackupInfo {
        org,
        last_seq,
        bytes,
    })
}

/// The files SQLite keeps for the database `db` (the database, its write-ahead log and its
/// shared-memory index), which belong together.
fn database_files(db: &Path) -> [PathBuf; 3] {
    let with = |suffix: &str| {
        let mut s = db.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    };
    [db.to_path_buf(), with("-wal"), with("-shm")]
}

/// Puts the backup `from` in place of the database `db` of organization `org`. Refused while a
/// node process holds the database, and for a backup of another organization or one that
/// fails its check. The replaced database and its write-ahead log are kept together as
/// `<db>.before-restore-<at_ms>` (and `-wal`), so nothing is lost by a restore.
pub async fn restore_sqlite(db: &Path, from: &Path, org: &str, at_ms: i64) -> Result<RestoreInfo> {
    let info = inspect_sqlite(from).await?;
    if info.org != org {
        return Err(config(format!(
            "{} is a backup of {}, not of {org}; a database serves one organization",
            from.display(),
            info.org
        )));
    }
    let lock_path = db.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| config(format!("cannot open {}: {e}", lock_path.display())))?;
    lock.try_lock().map_err(|_| {
        config(format!(
            "{} is in use by a running node (lock {} is held); stop it first",
            db.display(),
            lock_path.display()
        ))
    })?;
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| config(format!("cannot create {}: {e}", dir.display())))?;
    // The copy goes next to the database first, complete and on disk, before anything moves.
    let staging = db.with_extension("restoring");
    std::fs::copy(from, &staging)
        .and_then(|_| std::fs::File::open(&staging)?.sync_all())
        .map_err(|e| config(format!("cannot copy {}: {e}", from.display())))?;
    let mut previous = None;
    let [main, wal, shm] = database_files(db);
    if main.exists() {
        let kept = db.with_extension(format!("before-restore-{at_ms}"));
        let [kept_main, kept_wal, _] = database_files(&kept);
        std::fs::rename(&main, &kept_main)
            .map_err(|e| config(format!("cannot move {}: {e}", main.display())))?;
        if wal.exists() {
            std::fs::rename(&wal, &kept_wal)
                .map_err(|e| config(format!("cannot move {}: {e}", wal.display())))?;
        }
        previous = Some(kept_main);
    }
    // The index of the old log must not meet the new database.
    if shm.exists() {
        std::fs::remove_file(&shm)
            .map_err(|e| config(format!("cannot remove {}: {e}", shm.display())))?;
    }
    std::fs::rename(&staging, &main)
        .map_err(|e| config(format!("cannot move the copy into place: {e}")))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| config(format!("cannot sync {}: {e}", dir.display())))?;
    drop(lock);
    Ok(RestoreInfo {
        restored: info,
        previous,
    })
}
