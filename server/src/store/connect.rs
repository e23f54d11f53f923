//! Opening the database: URL parsing, SQLite pragmas, pools and migrations.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::{ConnectOptions, Connection, SqliteConnection, TransactionManager};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::{Backend, Store, StoreError, StoreResult};

/// An open SQLite write transaction on the writer connection; rolled back when dropped
/// without [`WriteTx::commit`] (the rollback is queued on the connection, so it also happens
/// when the owning future is cancelled).
pub(super) struct WriteTx<'a> {
    conn: &'a mut SqliteConnection,
    open: bool,
}

impl WriteTx<'_> {
    /// Commits the transaction.
    pub(super) async fn commit(mut self) -> Result<(), sqlx::Error> {
        type Manager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;
        Manager::commit(self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn
    }
}

impl std::ops::DerefMut for WriteTx<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn
    }
}

impl Drop for WriteTx<'_> {
    fn drop(&mut self) {
        if self.open {
            <sqlx::Sqlite as sqlx::Database>::TransactionManager::start_rollback(self.conn);
        }
    }
}

/// The single SQLite writer connection, reopened after a fatal connection error.
pub(super) struct SqliteWriter {
    /// `None` once closed.
    conn: Mutex<Option<SqliteConnection>>,
    /// Options to reopen it with.
    options: SqliteConnectOptions,
    /// Set when the connection failed fatally; the next user reopens it.
    broken: AtomicBool,
    /// Set while a transaction begun by the caller's own `BEGIN` (see
    /// [`SqliteWriter::begin_raw`]) may be open; the next [`SqliteWriter::lock`] rolls it back.
    raw_open: AtomicBool,
    /// Set by [`SqliteWriter::close`] (stops the background checkpointer).
    closed: AtomicBool,
}

impl SqliteWriter {
    /// Waits for exclusive use of the writer connection.
    pub(super) async fn lock(&self) -> StoreResult<MappedMutexGuard<'_, SqliteConnection>> {
        let mut guard = self.conn.lock().await;
        if guard.is_some() && self.broken.swap(false, Ordering::AcqRel) {
            match self.options.connect().await {
                Ok(conn) => *guard = Some(conn),
                Err(e) => {
                    self.broken.store(true, Ordering::Release);
                    return Err(e.into());
                }
            }
        }
        let mut conn = MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        if self.raw_open.load(Ordering::Acquire) {
            // The last raw transaction's owner was cancelled or its roll-back failed.
            self.rollback_raw(&mut conn).await?;
        }
        Ok(conn)
    }

    /// Prepares the locked writer connection for a transaction that the caller runs outside
    /// sqlx's transaction manager, so that `BEGIN IMMEDIATE` can travel in the same command
    /// (one round trip to the connection's worker thread) as the transaction's first
    /// statements and `COMMIT` in the same command as its last ones.
    ///
    /// The caller must then either see its `COMMIT` succeed and call
    /// [`SqliteWriter::raw_finished`], or call [`SqliteWriter::rollback_raw`]. Until one of
    /// them has run, the next [`SqliteWriter::lock`] rolls back whatever is still open (the
    /// caller may have been cancelled mid-way), so a transaction nobody owns can never wedge
    /// the writer or be committed by a later statement.
    pub(super) async fn begin_raw(&self, conn: &mut SqliteConnection) -> StoreResult<()> {
        type Manager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;
        if Manager::get_transaction_depth(conn) > 0 {
            Manager::rollback(conn)
                .await
                .inspect_err(|e| self.note_error(e))?;
        }
        self.raw_open.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs `body` as a raw transaction on the locked writer connection `conn`:
    /// [`SqliteWriter::begin_raw`] first; `body`'s own statements begin (`BEGIN IMMEDIATE`)
    /// and, when it succeeds, commit. On an error the connection is marked for reopening if
    /// the error calls for it and the transaction is rolled back (if that fails too, the next
    /// [`SqliteWriter::lock`] rolls back instead); the error is returned.
    pub(super) async fn in_raw_transaction<T>(
        &self,
        conn: &mut SqliteConnection,
        body: impl AsyncFnOnce(&mut SqliteConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        self.begin_raw(conn).await?;
        match body(conn).await {
            Ok(out) => {
                self.raw_finished();
                Ok(out)
            }
            Err(e) => {
                if let StoreError::Database(db) = &e {
                    self.note_error(db);
                }
                let _ = self.rollback_raw(conn).await;
                Err(e)
            }
        }
    }

    /// Records that the raw transaction begun after [`SqliteWriter::begin_raw`] has committed.
    pub(super) fn raw_finished(&self) {
        self.raw_open.store(false, Ordering::Release);
    }

    /// Rolls back the raw transaction begun after [`SqliteWriter::begin_raw`], if one is open.
    pub(super) async fn rollback_raw(&self, conn: &mut SqliteConnection) -> StoreResult<()> {
        match sqlx::query("ROLLBACK").execute(&mut *conn).await {
            // A database error here means that no transaction was open (it never began, or
            // SQLite already rolled it back): nothing is left to undo.
            Ok(_) | Err(sqlx::Error::Database(_)) => {
                self.raw_open.store(false, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                self.note_error(&e);
                Err(e.into())
            }
        }
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE`) on the locked writer connection.
    ///
    /// A caller cancelled between `BEGIN` and its acknowledgement can leave a transaction open
    /// that nobody owns; it is rolled back here first, so one dropped request can never wedge
    /// the writer.
    pub(super) async fn begin<'a>(
        &self,
        conn: &'a mut SqliteConnection,
    ) -> StoreResult<WriteTx<'a>> {
        type Manager = <sqlx::Sqlite as sqlx::Database>::TransactionManager;
        let mut attempt = 0;
        loop {
            if Manager::get_transaction_depth(conn) > 0 {
                Manager::rollback(conn)
                    .await
                    .inspect_err(|e| self.note_error(e))?;
            }
            match Manager::begin(conn, Some("BEGIN IMMEDIATE".into())).await {
                Ok(()) => break,
                Err(sqlx::Error::InvalidSavePointStatement) if attempt < 3 => attempt += 1,
                Err(e) => {
                    self.note_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(WriteTx { conn, open: true })
    }

    /// Marks the connection for reopening if `error` means it is unusable.
    pub(super) fn note_error(&self, error: &sqlx::Error) {
        if matches!(error, sqlx::Error::WorkerCrashed | sqlx::Error::Io(_)) {
            self.broken.store(true, Ordering::Release);
        }
    }

    /// Closes the connection; later uses fail with `PoolClosed`.
    pub(super) async fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(conn) = self.conn.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}

/// WAL pages after which the writer connection checkpoints by itself, inside a commit. Only
/// a backstop: the background checkpointer ([`spawn_checkpointer`]) normally keeps the WAL
/// far smaller, so commits (and the requests waiting for them) do not pay for checkpoints.
const SQLITE_WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// How often the background checkpointer copies the WAL into the database file.
const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// Copies the WAL into the database file every [`SQLITE_CHECKPOINT_INTERVAL`] on a connection
/// of its own (`PRAGMA wal_checkpoint(PASSIVE)`: it never blocks the writer or readers, and
/// its fsyncs happen on that connection's thread instead of inside a commit the writer's
/// callers wait for). Durability is unchanged: a commit is complete once it is in the WAL.
/// Stops when the store is closed or dropped.
fn spawn_checkpointer(writer: std::sync::Weak<SqliteWriter>, options: SqliteConnectOptions) {
    tokio::spawn(async move {
        let mut conn = match options.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "no background WAL checkpointer; the writer checkpoints");
                return;
            }
        };
        let mut tick = tokio::time::interval(SQLITE_CHECKPOINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match writer.upgrade() {
                Some(w) if !w.closed.load(Ordering::Acquire) => {}
                _ => break,
            }
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut conn)
                .await
            {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
        let _ = conn.close().await;
    });
}

/// A pooled PostgreSQL connection idle for longer than this is pinged before use.
const PG_PING_IDLE_AFTER: Duration = Duration::from_secs(5);
/// Longest wait for a pooled PostgreSQL connection. While the database is down every new
/// connection is refused and the pool keeps retrying until this passes; the request then gets
/// a retryable 503, so it should be short. Under normal load a connection is free within
/// milliseconds (queries are short and nothing holds one while waiting for a client).
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections in the PostgreSQL pool of one process.
const PG_MAX_CONNECTIONS: u32 = 16;
/// Reader connections for SQLite (WAL readers run alongside the single writer).
const SQLITE_READERS: u32 = 4;
/// Prepared statements kept per SQLite connection.
const SQLITE_STATEMENT_CACHE: usize = 256;
/// How long SQLite waits for a lock held by another connection or process before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// SQLite durability level, chosen with `?synchronous=normal|full` on the `sqlite://` URL.
///
/// The default is [`SqliteSync::Normal`]: in WAL mode every commit is written to the WAL file
/// (handed to the operating system) before `commit` returns, so a committed transaction survives
/// a crash or `kill -9` of the server process; only an operating-system crash or power loss can
/// lose the last transactions before the next checkpoint. `Full` also fsyncs the WAL on every
/// commit, which survives power loss at the cost of one fsync per (group) commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    /// `PRAGMA synchronous = NORMAL` (default): durable against process crashes.
    Normal,
    /// `PRAGMA synchronous = FULL`: durable against power loss.
    Full,
}

/// A parsed `sqlite://PATH[?synchronous=...]` URL.
struct SqliteUrl {
    path: PathBuf,
    sync: SqliteSync,
}

fn config_error(message: String) -> StoreError {
    StoreError::Database(sqlx::Error::Configuration(message.into()))
}

fn parse_sqlite_url(url: &str) -> StoreResult<SqliteUrl> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| {
            config_error("database_url must start with sqlite:// or postgres://".into())
        })?;
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(config_error("sqlite:// URL has no file path".into()));
    }
    let mut sync = SqliteSync::Normal;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("synchronous", v)) if v.eq_ignore_ascii_case("normal") => {
                sync = SqliteSync::Normal
            }
            Some(("synchronous", v)) if v.eq_ignore_ascii_case("full") => sync = SqliteSync::Full,
            _ => {
                return Err(config_error(format!(
                    "unsupported sqlite URL parameter `{pair}` (only synchronous=normal|full)"
                )))
            }
        }
    }
    Ok(SqliteUrl {
        path: PathBuf::from(path),
        sync,
    })
}

impl Store {
    /// Connects to `sqlite://PATH` (created if missing, WAL) or `postgres://...`, and runs the
    /// migrations for that backend.
    ///
    /// SQLite: the file and its parent directory are created if missing; WAL journal, foreign
    /// keys on, a busy timeout, and `synchronous = NORMAL` unless the URL says
    /// `?synchronous=full` (see [`SqliteSync`]). PostgreSQL: migrations take an advisory lock,
    /// so several processes may start at once.
    pub async fn connect(database_url: &str) -> StoreResult<Store> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(PG_MAX_CONNECTIONS)
                .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                // sqlx pings every connection it hands out by default: a round trip per query.
                // Only connections that sat idle for a while are checked (they are the ones a
                // database restart or a network change could have broken meanwhile).
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for < PG_PING_IDLE_AFTER {
                            return Ok(true);
                        }
                        conn.ping().await.map(|()| true)
                    })
                })
                .connect(database_url)
                .await?;
            sqlx::migrate!("../migrations/postgres").run(&pool).await?;
            return Ok(Store {
                backend: Backend::Postgres(pool),
                tokens: Arc::default(),
                claims: Arc::default(),
                acks: Arc::default(),
            });
        }
        let url = parse_sqlite_url(database_url)?;
        if let Some(parent) = url.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        }
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&url.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match url.sync {
                SqliteSync::Normal => SqliteSynchronous::Normal,
                SqliteSync::Full => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(SQLITE_BUSY_TIMEOUT)
            // Room for every statement of the store plus the size classes of the multi-row
            // group-commit statements, so none is re-prepared.
            .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
            .pragma(
                "wal_autocheckpoint",
                SQLITE_WRITER_AUTOCHECKPOINT_PAGES.to_string(),
            );
        // Migrate through a short-lived one-connection pool (the migrator's future over a bare
        // connection is not `Send`), then open the dedicated writer.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&migrator)
            .await?;
        migrator.close().await;
        let writer = options.connect().await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(SQLITE_READERS)
            // A connection to a local file does not break while idle; the default ping on
            // every acquire would cost one more worker-thread round trip per query.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        let writer = Arc::new(SqliteWriter {
            conn: Mutex::new(Some(writer)),
            options,
            broken: AtomicBool::new(false),
            raw_open: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        spawn_checkpointer(Arc::downgrade(&writer), writer.options.clone());
        Ok(Store {
            backend: Backend::Sqlite { writer, reader },
            tokens: Arc::default(),
            claims: Arc::default(),
            acks: Arc::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls() {
        let u = parse_sqlite_url("sqlite://data/hushd.db").ok();
        assert_eq!(
            u.as_ref().map(|u| u.path.clone()),
            Some(PathBuf::from("data/hushd.db"))
        );
        let u = parse_sqlite_url("sqlite:///tmp/x/h.db?synchronous=FULL").ok();
        assert_eq!(
            u.as_ref().map(|u| (u.path.clone(), u.sync)),
            Some((PathBuf::from("/tmp/x/h.db"), SqliteSync::Full))
        );
        assert!(parse_sqlite_url("sqlite://a.db?mode=memory").is_err());
        assert!(parse_sqlite_url("sqlite://").is_err());
        assert!(parse_sqlite_url("mysql://x").is_err());
    }
}
