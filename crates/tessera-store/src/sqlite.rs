//! The SQLite backend: one embedded database file in WAL mode.
//!
//! Writes go through a single-connection pool and start with `BEGIN IMMEDIATE`, so a
//! read-then-write transaction takes the write lock up front and never fails to upgrade; reads
//! use a separate pool and run concurrently with the writer (WAL).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::group::{deliver, GroupCommit};
use crate::migrate;
use crate::sql_runs::{HotDone, HotWrite};
use crate::{Backend, ConnectOptions, PoolStats, StoreError, StoreResult};

#[derive(Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
    /// Group commit of the hot writes (see `group.rs`).
    groups: std::sync::Arc<Groups>,
}

/// The writes that share transactions between concurrent callers.
#[derive(Default)]
struct Groups {
    hot: GroupCommit<HotWrite, HotDone>,
}

/// The thread that drives write transactions (see [`SqliteStore::offload`]).
fn writer_runtime() -> StoreResult<&'static tokio::runtime::Handle> {
    static HANDLE: std::sync::OnceLock<Result<tokio::runtime::Handle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let handle = runtime.handle().clone();
            std::thread::Builder::new()
                .name("tessera-sqlite-writer".to_owned())
                .spawn(move || runtime.block_on(std::future::pending::<()>()))
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .as_ref()
        .map_err(|e| StoreError::Corrupt(format!("cannot start the SQLite writer thread: {e}")))
}

impl SqliteStore {
    /// Opens (creating if missing, with its directory) the database file named by `url`.
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let path = base.get_filename().to_owned();
        if path.as_os_str().is_empty() || path.to_string_lossy().contains(":memory:") {
            return Err(StoreError::InvalidUrl(
                "in-memory SQLite is not supported; name a database file".to_owned(),
            ));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::InvalidUrl(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let connect = base
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if options.sqlite_synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true);
        // The writer is opened first so that it creates the file before readers open it.
        // A local file has no connection that silently breaks: skip the ping sqlx otherwise
        // sends before handing out every pooled connection.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(connect.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect)
            .await?;
        Ok(Self {
            reader,
            writer,
            groups: std::sync::Arc::default(),
        })
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// Runs a hot write transaction on a dedicated thread. Each statement is a round trip to
    /// sqlx's connection thread while the single writer is held; on a busy runtime every
    /// round trip would also wait for a worker thread to poll the transaction's task again,
    /// stretching how long everyone else waits for the writer.
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        writer_runtime()?
            .spawn(work)
            .await
            .map_err(|e| StoreError::Corrupt(format!("the write transaction's task failed: {e}")))?
    }

    pub(crate) async fn begin_write(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// `BEGIN IMMEDIATE` already serialises writers; nothing more to lock.
    pub(crate) async fn lock_bootstrap(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
    ) -> StoreResult<()> {
        Ok(())
    }

    /// The transaction migrations run in: `BEGIN IMMEDIATE` already excludes other writers.
    pub(crate) async fn begin_migration(&self) -> StoreResult<Transaction<'static, Sqlite>> {
        self.begin_write().await
    }

    pub(crate) const MIGRATIONS: &'static [migrate::Migration] = migrate::SQLITE;

    pub(crate) async fn close_pools(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// `BEGIN IMMEDIATE` makes the claiming transaction the only writer; no row locks needed.
    pub(crate) const CLAIM_LOCK: &'static str = "";
    pub(crate) const CLAIM_QUEUED: &'static str = crate::sql_runs::CLAIM_QUEUED_SQLITE;

    /// SQLite's planner already walks the claim's index in order (see `CLAIM_QUEUED_SQLITE`).
    pub(crate) async fn pin_claim_plan(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
    ) -> StoreResult<()> {
        Ok(())
    }
    /// Likewise for check-then-write transactions.
    pub(crate) const ROW_LOCK: &'static str = "";

    /// Writes one of the hot writes, sharing the transaction with concurrent ones (group
    /// commit): under load, many turns' submissions, steps and ends, and many tickets' mints and
    /// exchanges, cost one commit.
    pub(crate) async fn write_hot(&self, job: HotWrite) -> StoreResult<HotDone> {
        let this = self.clone();
        self.groups
            .hot
            .submit(job, move |batch| {
                let this = this.clone();
                async move {
                    let (jobs, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let store = this.clone();
                    // On the writer thread, to completion even if this caller goes away.
                    let _ = this
                        .offload(async move {
                            deliver(senders, Ok(store.do_hot_writes_isolated(&jobs).await));
                            Ok(())
                        })
                        .await;
                }
            })
            .await
    }

    /// Every writer is in this process, which wakes itself; nothing to send.
    pub(crate) async fn notify_many(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _notifications: &[crate::Notification],
    ) -> StoreResult<()> {
        Ok(())
    }

    /// Every writer is in this process, which wakes itself; nothing to send.
    pub(crate) async fn notify(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _notification: &crate::Notification,
    ) -> StoreResult<()> {
        Ok(())
    }
}

crate::sql::impl_sql_store!(SqliteStore, Sqlite);
crate::sql_runs::impl_run_sql!(SqliteStore, Sqlite);
crate::sql_identity::impl_identity_sql!(SqliteStore, Sqlite);
crate::sql_tickets::impl_ticket_sql!(SqliteStore, Sqlite);
crate::sql_sessions::impl_session_sql!(SqliteStore, Sqlite);
crate::sql_boards::impl_board_sql!(SqliteStore, Sqlite);
crate::sql_tools::impl_tool_sql!(SqliteStore, Sqlite);

#[async_trait::async_trait]
impl crate::Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.reader.size() + self.writer.size(),
            idle: (self.reader.num_idle() + self.writer.num_idle()) as u32,
        }
    }

    async fn close(&self) {
        self.close_pools().await;
    }

    async fn listen(
        &self,
    ) -> StoreResult<Option<tokio::sync::mpsc::Receiver<crate::Notification>>> {
        Ok(None)
    }
}
