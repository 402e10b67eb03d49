//! Opening a store: the database named by a URL, SQLite with its lock file, PostgreSQL with
//! its advisory lock (alone or shared by several processes of a node), migrations, and the
//! writer task with what it keeps in memory (`WriterMemory`).

use super::*;

/// The writer connection's page cache (SQLite), as `cache_size` takes it: negative is KiB.
/// Big enough for the upper levels of every b-tree a write touches at a million records; it
/// fills only as far as it is used.
const WRITER_CACHE_KIB: &str = "-32768";

/// Rows a SQLite connection's worker thread may step ahead of the task reading them (sqlx
/// hands them over through a bounded channel, 50 by default). A snapshot batch reads
/// thousands of rows at once; with 50 the worker stopped and was woken again dozens of times
/// per query, and the owner of a 100k share switched threads 36,600 times instead of 14,000
/// (BENCHMARKS.md). The rows are only buffered while the reader lags, and a query reads at
/// most one batch.
const ROW_BUFFER: usize = 4096;

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`:
    /// `postgres://…`/`postgresql://…`, `sqlite://path`, or a plain file path for SQLite.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts =
                PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
            return Store::open_postgres(opts).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() || path.contains(":memory:") {
            return Err(StoreError::Config(
                "an in-memory SQLite database would lose all data; give a file path".into(),
            ));
        }
        Store::open_sqlite(std::path::Path::new(path)).await
    }

    pub async fn open_sqlite(path: &std::path::Path) -> Result<Store> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a confirmed write survives a power loss, not only a crash. Group commit
            // keeps the cost of that fsync shared between many writes.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Erasure (GDPR Art. 17) must not leave the person in free pages: deleted and
            // overwritten content is zeroed on disk, not only unlinked.
            .pragma("secure_delete", "ON")
            .busy_timeout(Duration::from_secs(10))
            .row_buffer_size(ROW_BUFFER);
        // The cache and the single writer assume this process alone writes the file.
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Config(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            StoreError::Config(format!(
                "{} is in use by another verbund process (lock {} is held)",
                path.display(),
                lock_path.display()
            ))
        })?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // An embedded database has no connection that goes stale: a ping before each
            // acquire was one more round trip to the connection's thread per statement.
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        let mut store = Store::with_backend(Backend::Sqlite(pool)).await?;
        store._lock = Some(Arc::new(lock));
        Ok(store)
    }

    /// Opens a PostgreSQL database that several processes of one node use at once (on
    /// purpose: `shared = true` in `[database]`): each holds the database's advisory lock in
    /// shared mode, so a process that wants it alone is refused, and each partner's sync link
    /// runs in one process at a time (`try_link_lease`). SQLite is one process only.
    pub async fn open_shared(url: &str) -> Result<Store> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Config(
                "several processes of one node need PostgreSQL; SQLite is one process only (remove shared = true)".into(),
            ));
        }
        let opts =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::Config(e.to_string()))?;
        Store::open_postgres_with(opts, true).await
    }

    pub async fn open_postgres(opts: PgConnectOptions) -> Result<Store> {
        Store::open_postgres_with(opts, false).await
    }

    async fn open_postgres_with(opts: PgConnectOptions, shared: bool) -> Result<Store> {
        // One process per node, as with SQLite's lock file: a session-level advisory lock on
        // the database and schema, held by a connection of its own for the process's life
        // (the pool's connections come and go). Processes that share the database on purpose
        // hold it in shared mode.
        let (host, port) = (opts.get_host().to_string(), opts.get_port());
        let unreachable = |why: String| {
            StoreError::Config(format!(
                "cannot connect to PostgreSQL at {host}:{port}: {why}"
            ))
        };
        let mut holder = {
            use sqlx::Connection;
            match tokio::time::timeout(
                Duration::from_secs(10),
                sqlx::PgConnection::connect_with(&opts),
            )
            .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(unreachable(e.to_string())),
                Err(_) => return Err(unreachable("no answer within 10 s".into())),
            }
        };
        // A process killed a moment ago may still hold it until its session ends: wait a
        // little before refusing.
        let mut held = false;
        for _ in 0..25 {
            held = sqlx::query_scalar(if shared {
                "SELECT pg_try_advisory_lock_shared(hashtext('verbund:' || current_database() || '/' || current_schema()))"
            } else {
                "SELECT pg_try_advisory_lock(hashtext('verbund:' || current_database() || '/' || current_schema()))"
            })
            .fetch_one(&mut holder)
            .await?;
            if held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !held {
            return Err(StoreError::Config(if shared {
                "another verbund process serves this PostgreSQL database (and schema) alone; set shared = true in [database] of every process of the node".into()
            } else {
                "another verbund process serves this PostgreSQL database (and schema); one process per node, unless every process sets shared = true in [database]".into()
            }));
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        PG_MIGRATIONS.run(&pool).await?;
        let mut store = Store::with_backend(Backend::Postgres(pool)).await?;
        store._pg_lock = Some(Arc::new(tokio::sync::Mutex::new(holder)));
        if shared {
            store.shared_pg = Some(Arc::new(opts));
        }
        Ok(store)
    }

    /// Binds the database to organization `org` on first use; any other organization is
    /// refused (two organizations must never share a database).
    pub async fn claim_for(&self, org: &str) -> Result<()> {
        let mut owner: Option<String> = dispatch!(self, node_owner())?;
        if owner.is_none() {
            // Written by the writer; the first claim stays (another process of a node on
            // PostgreSQL may have claimed it in between), so it is read again.
            self.admin(AdminWrite::Owner(org.to_string())).await?;
            owner = dispatch!(self, node_owner())?;
        }
        match owner {
            Some(o) if o == org => Ok(()),
            Some(o) => Err(StoreError::Config(format!(
                "this database belongs to organization {o:?}; {org:?} cannot use it (give each organization its own database)"
            ))),
            None => Err(StoreError::Corrupt(
                "the organization written to node_owner is not there".into(),
            )),
        }
    }

    /// The node's secret `name`: made up (random) and stored the first time it is asked
    /// for, the same ever after (also by other processes of the node).
    pub async fn node_secret(&self, name: &str) -> Result<String> {
        if let Some(secret) = dispatch!(self, node_secret(name))? {
            return Ok(secret);
        }
        let fresh = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let secret = AdminWrite::Secret {
            name: name.to_string(),
            fresh,
        };
        self.admin(secret).await?;
        dispatch!(self, node_secret(name))?
            .ok_or_else(|| StoreError::Corrupt(format!("the secret {name:?} written is not there")))
    }

    async fn with_backend(backend: Backend) -> Result<Store> {
        let last_seq = match &backend {
            Backend::Sqlite(p) => sqlite_impl::last_seq(p).await?,
            Backend::Postgres(p) => pg_impl::last_seq(p).await?,
        };
        let commits = Arc::new(watch::channel(last_seq).0);
        let writer_commits = commits.clone();
        let (writes, mut rx) = mpsc::channel::<WriteJob>(4 * MAX_BATCH);
        // SQLite: the writer keeps one connection of its own. A connection drops its whole
        // page cache when it finds that another connection wrote since its last transaction;
        // taking whichever connection of the shared pool was idle meant every write batch
        // began with a cold cache and read each b-tree page it touched back from the file
        // (most of the time of a single update's statements). Only this connection writes, so
        // its cache stays valid from one batch to the next.
        let writer_pool = match &backend {
            Backend::Sqlite(p) => Some(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .test_before_acquire(false)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(
                        (*p.connect_options())
                            .clone()
                            .pragma("cache_size", WRITER_CACHE_KIB),
                    )
                    .await?,
            ),
            Backend::Postgres(_) => None,
        };
        let writer = match &writer_pool {
            Some(p) => Backend::Sqlite(p.clone()),
            None => backend.clone(),
        };
        let cache =
            matches!(backend, Backend::Sqlite(_)).then(|| Arc::new(RecordCache::new(CACHE_BUDGET)));
        let recent = matches!(backend, Backend::Sqlite(_))
            .then(|| Arc::new(RecentChanges::new(recent::RECENT_CHANGES)));
        let rules = matches!(backend, Backend::Sqlite(_)).then(|| Arc::new(RuleCache::default()));
        let mut memory = WriterMemory {
            cache: cache.clone(),
            recent: recent.clone(),
            rules: rules.clone(),
            last_seq: None,
            audit_head: None,
            keeps_seq: matches!(backend, Backend::Sqlite(_)),
        };
        let batch_hook = ops::BatchHook::default();
        let writer_hook = batch_hook.clone();
        tokio::spawn(async move {
            // SQLite: the next batch's transaction, begun while the writer waits for jobs, so
            // that BEGIN's hand-off to the connection's thread is off the way of a write.
            // Deferred: it takes no lock until its first statement, so an idle writer holds
            // nothing (a checkpoint or a backup is not kept waiting). Only this connection
            // writes, so taking the write lock at the first write instead of at BEGIN finds
            // the same database. Dropped (rolled back) when the store closes, which waits for
            // every connection to come back.
            let mut begun: Option<sqlx::Transaction<'static, sqlx::Sqlite>> = None;
            loop {
                let next = match (&begun, &writer) {
                    (Some(_), Backend::Sqlite(p)) => {
                        tokio::select! {
                            job = rx.recv() => job,
                            () = p.close_event() => {
                                begun = None;
                                continue;
                            }
                        }
                    }
                    _ => rx.recv().await,
                };
                let Some(first) = next else {
                    break;
                };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let (jobs, audit_entries) = (
                    batch.len(),
                    batch.iter().map(|j| j.audit.len()).sum::<usize>(),
                );
                let started = std::time::Instant::now();
                let committed = match &writer {
                    Backend::Sqlite(p) => {
                        sqlite_impl::write_batch(
                            p,
                            begun.take(),
                            batch,
                            &mut memory,
                            &writer_commits,
                        )
                        .await
                    }
                    Backend::Postgres(p) => {
                        pg_impl::write_batch(p, None, batch, &mut memory, &writer_commits).await
                    }
                };
                writer_hook.report(&ops::BatchReport {
                    jobs,
                    audit_entries,
                    committed,
                    elapsed: started.elapsed(),
                });
                if let Backend::Sqlite(p) = &writer
                    && !p.is_closed()
                {
                    // Not begun (the pool closed meanwhile, say): the next batch begins its own.
                    begun = p.begin_with("BEGIN DEFERRED").await.ok();
                }
            }
        });
        Ok(Store {
            backend,
            writer_pool,
            writes,
            commits,
            _lock: None,
            _pg_lock: None,
            shared_pg: None,
            cache,
            recent,
            rules,
            batch_hook,
        })
    }
}
