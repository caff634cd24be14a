//! The SQLite backend: one embedded database file in WAL mode.
//!
//! Writes go through a single-connection pool and start with `BEGIN IMMEDIATE`, so a
//! read-then-write transaction takes the write lock up front and never fails to upgrade; reads
//! use a separate pool and run concurrently with the writer (WAL).
//!
//! Checkpoints (copying the WAL back into the database file, with its syncs) are not left to the
//! writer: SQLite's automatic checkpoint would run inside whichever commit crosses 1,000 WAL
//! pages and hold the single writer meanwhile, a stall every concurrent write waits behind. A
//! background task runs a `PASSIVE` checkpoint on a reader connection every
//! [`CHECKPOINT_EVERY`] instead; it never blocks the writer.
//!
//! SQLite starts the WAL over only at a write that finds every frame copied into the database
//! file. Under a steady write load a checkpoint on a reader never gets there (commits land while
//! it copies), and the WAL would grow by every page written for as long as the load lasts. Once
//! the WAL holds more than [`WAL_RESTART_FRAMES`], the task runs a second `PASSIVE` checkpoint on
//! the writer connection, queued like any write: no commit can land meanwhile, it copies only
//! the frames that arrived during the first, and the next write starts the WAL over. A read
//! that started before the step ended and is still running then keeps the WAL as it is (every
//! read holds the part of the WAL it started with); the next round tries again. The step is
//! skipped when the reader's checkpoint left more than [`WAL_RESTART_LEFT_FRAMES`] of what it
//! saw (the writer would be held too long).

use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::group::{deliver, wait, GroupCommit};
use crate::migrate;
use crate::sql_runs::{HotDone, HotWrite};
use crate::sqlite_affinity as affinity;
use crate::sqlite_readers::Readers;
use crate::{Backend, ConnectOptions, PoolStats, StoreError, StoreResult};

#[derive(Clone)]
pub struct SqliteStore {
    reader: Readers,
    writer: SqlitePool,
    /// Group commit of the hot writes (see `group.rs`).
    groups: std::sync::Arc<Groups>,
    /// Alive while any clone of the store is; the checkpoint task stops once it is gone.
    _alive: std::sync::Arc<()>,
}

/// Statements the writer connection keeps prepared (sqlx's default is 100): every kind of write,
/// plus the group-commit batches' ten padded statements, each in a few sizes (powers of two up
/// to 128 rows, or up to 1,024 for a batch's messages and events: about 85 texts in all, see
/// `bulk::padded_rows`).
const WRITER_STATEMENT_CACHE: usize = 400;

/// The writer connection's page cache, in KiB (`PRAGMA cache_size` with a negative value; SQLite's
/// default is 2,000 KiB). Every write walks its tables' and indexes' B-trees from the root, and
/// the writer is the one connection whose cache survives other connections' commits (a reader's
/// is dropped whenever the database changed): with the default, the indexes keyed by random
/// token hashes outgrew it and most writes read pages back from the OS. Not larger: every page
/// written passes through this cache, so a 50 MiB upload (stored in chunks) fills it, and the
/// server's memory grows by as much (the streaming test of `crates/tessera/tests/cli/boards.rs`
/// allows half the file; 32 MiB went over).
const WRITER_CACHE_KIB: i64 = 8 * 1024;

/// How often the background task checkpoints the WAL (see the module documentation).
pub(crate) const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// WAL frames (pages) past which a checkpoint is finished on the writer connection, so that the
/// WAL starts over (see the module documentation): 32 MiB of 4 KiB pages. That step holds the
/// writer for the copy of the last frames and two syncs (2–4 ms measured under the ticket
/// benchmark's load, where the WAL passes this size about every 0.6 s); a lower bound would
/// stall the writer that often more for little gain, as the file is overwritten in place once
/// it has grown.
pub(crate) const WAL_RESTART_FRAMES: i64 = 8_192;

/// The most frames a checkpoint on the writer connection may be left to copy: the step is meant
/// to copy what arrived during the checkpoint on a reader, not to hold the writer for a long
/// copy.
const WAL_RESTART_LEFT_FRAMES: i64 = 2_048;

/// The WAL file is cut back to this size when it starts over (`PRAGMA journal_size_limit`): a
/// burst that grew it gives the disk space back.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Checkpoints the WAL on a reader connection every [`CHECKPOINT_EVERY`] until the store is
/// dropped or closed, and finishes a checkpoint on the writer connection once the WAL holds
/// more than [`WAL_RESTART_FRAMES`].
fn spawn_checkpointer(reader: Readers, writer: SqlitePool, alive: std::sync::Weak<()>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if alive.strong_count() == 0 || reader.is_closed() {
                return;
            }
            let (frames, copied) = match checkpoint(&reader).await {
                Ok(progress) => progress,
                Err(_) if reader.is_closed() => return,
                Err(err) => {
                    tracing::warn!(error = %err, "SQLite WAL checkpoint failed; retrying");
                    continue;
                }
            };
            // `frames` is what the checkpoint saw when it began; commits that landed while it
            // copied are left for the writer. Far behind (a read kept an old snapshot): the
            // writer would be held for the whole copy, so the next round tries again.
            if frames <= WAL_RESTART_FRAMES || frames - copied > WAL_RESTART_LEFT_FRAMES {
                continue;
            }
            // On the writer's own thread, like every write.
            let step = {
                let writer = writer.clone();
                async move { Ok(checkpoint(&writer).await?) }
            };
            if let Err(err) = on_writer_thread(step).await {
                if writer.is_closed() {
                    return;
                }
                tracing::warn!(error = %err, "SQLite WAL checkpoint on the writer failed");
            }
        }
    });
}

/// A `PASSIVE` checkpoint on a connection of `pool`: it copies what it can without waiting for
/// anyone. Answers how many frames the WAL holds and how many of them are copied.
async fn checkpoint<'c, E>(pool: E) -> Result<(i64, i64), sqlx::Error>
where
    E: sqlx::Executor<'c, Database = Sqlite>,
{
    let (_busy, frames, copied): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(pool)
        .await?;
    Ok((frames, copied))
}

// A submission learns its agent's multitask policy from its thread update (see
// `CHECKS_IN_THREAD_UPDATE`), after any row lock it would have taken before that update: only
// a backend without row locks may answer the checks there.
const _: () = assert!(!SqliteStore::CHECKS_IN_THREAD_UPDATE || SqliteStore::ROW_LOCK.is_empty());

/// The writes that share transactions between concurrent callers.
#[derive(Default)]
struct Groups {
    hot: std::sync::Arc<GroupCommit<HotWrite, HotDone>>,
}

/// The CPU the writer's threads are kept on, chosen once per process (see `sqlite_affinity.rs`).
fn writer_cpu() -> Option<usize> {
    static CPU: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *CPU.get_or_init(affinity::writer_cpu)
}

/// The thread that drives write transactions (see [`SqliteStore::offload`] and
/// [`SqliteStore::write_hot`]).
fn writer_runtime() -> StoreResult<&'static tokio::runtime::Handle> {
    static HANDLE: std::sync::OnceLock<Result<tokio::runtime::Handle, String>> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Timers (sqlx's pool timeouts) but no I/O driver: nothing here does I/O through
            // tokio, and the thread then parks on a futex instead of `epoll_wait`, woken
            // without an `eventfd` write at every statement's hand-off.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
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

/// Runs `work` on the writer's dedicated thread (see [`SqliteStore::offload`]).
async fn on_writer_thread<T: Send + 'static>(
    work: impl std::future::Future<Output = StoreResult<T>> + Send + 'static,
) -> StoreResult<T> {
    writer_runtime()?
        .spawn(work)
        .await
        .map_err(|e| StoreError::Corrupt(format!("the write transaction's task failed: {e}")))?
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
        // The writer thread and the writer connection's thread share one CPU.
        let pin = options.sqlite_pin_writer.then(writer_cpu).flatten();
        if let Some(cpu) = pin {
            let pinned = writer_runtime()?
                .spawn(async move { affinity::pin_current_thread(cpu) })
                .await
                .unwrap_or(false);
            if !pinned {
                tracing::debug!(cpu, "could not keep the SQLite writer thread on one CPU");
            }
        }
        // The writer is opened first so that it creates the file before readers open it.
        // A local file has no connection that silently breaks: skip the ping sqlx otherwise
        // sends before handing out every pooled connection, and keep the one connection (with
        // its warm page and statement caches) instead of replacing it after sqlx's default idle
        // time and lifetime.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .idle_timeout(None)
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    // A connection that cannot run `SELECT 1` is refused like any broken one.
                    // Were this future dropped half-way, the connection (and the progress
                    // handler with it) would be dropped too: sqlx hands out only connections
                    // whose set-up finished.
                    if let Some(cpu) = pin {
                        let pinned = affinity::on_connection_thread(conn, move || {
                            affinity::pin_current_thread(cpu)
                        })
                        .await?;
                        if pinned != Some(true) {
                            tracing::debug!(
                                cpu,
                                "could not keep the SQLite writer connection on one CPU"
                            );
                        }
                    }
                    Ok(())
                })
            })
            // Checkpoints run in the background (see the module documentation). The writer
            // keeps more statements prepared than sqlx's default 100: a group-commit batch's
            // statements come in one text per padded size (`bulk::padded_rows`).
            .connect_with(
                connect
                    .clone()
                    .pragma("wal_autocheckpoint", "0")
                    .pragma("journal_size_limit", WAL_SIZE_LIMIT_BYTES.to_string())
                    .pragma("temp_store", "memory")
                    .pragma("cache_size", (-WRITER_CACHE_KIB).to_string())
                    .statement_cache_capacity(WRITER_STATEMENT_CACHE),
            )
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .test_before_acquire(false)
            .connect_with(connect)
            .await?;
        let alive = std::sync::Arc::new(());
        let reader = Readers::new(reader);
        spawn_checkpointer(
            reader.clone(),
            writer.clone(),
            std::sync::Arc::downgrade(&alive),
        );
        Ok(Self {
            reader,
            writer,
            groups: std::sync::Arc::default(),
            _alive: alive,
        })
    }

    pub(crate) fn reader(&self) -> &Readers {
        &self.reader
    }

    /// Runs a hot write transaction on a dedicated thread (kept on one CPU with the writer
    /// connection's thread, see `sqlite_affinity.rs`; a thread started from it, such as a
    /// connection's, inherits that CPU). Each statement is a round trip to
    /// sqlx's connection thread while the single writer is held; on a busy runtime every
    /// round trip would also wait for a worker thread to poll the transaction's task again,
    /// stretching how long everyone else waits for the writer.
    pub(crate) async fn offload<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        on_writer_thread(work).await
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

    /// `BEGIN IMMEDIATE` already serialises writers; nothing more to lock.
    pub(crate) async fn lock_workspace(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
        _workspace_id: &str,
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
    /// Slots per claim: one node, whose every claim waits for the single writer behind the
    /// workers' transactions, so a burst should cost few claims (binds per statement stay under
    /// SQLite's limit: 14 per message row).
    pub(crate) const SLOT_CLAIM_BATCH: usize = 2048;

    /// SQLite's planner already walks the claim's index in order (see `CLAIM_QUEUED_SQLITE`).
    pub(crate) async fn pin_claim_plan(
        &self,
        _tx: &mut Transaction<'static, Sqlite>,
    ) -> StoreResult<()> {
        Ok(())
    }
    /// Likewise for check-then-write transactions.
    pub(crate) const ROW_LOCK: &'static str = "";
    /// Likewise for shared locks.
    pub(crate) const SHARE_LOCK: &'static str = "";
    /// A group-commit batch writes its mints in one statement and its fresh browsers' exchanges
    /// of static anonymous tickets in a few (see `bulk_in`).
    pub(crate) const BULK_HOT_WRITES: bool = true;
    /// A thread's history is read as one JSON value (`sql_runs::HISTORY_JSON`).
    pub(crate) const HISTORY_AS_JSON: bool = true;
    /// A submission's thread update also tells whether the thread has an open run and an open
    /// question (subqueries in its `RETURNING`): the transaction is the only writer from
    /// `BEGIN IMMEDIATE` on, so what the update sees is what later statements would.
    pub(crate) const CHECKS_IN_THREAD_UPDATE: bool = true;
    /// An agent spec's `multitask` field, from the agent row `a`.
    pub(crate) const SPEC_MULTITASK: &'static str = "json_extract(a.spec, '$.multitask')";

    /// Writes one of the hot writes, sharing the transaction with concurrent ones (group
    /// commit): under load, many turns' submissions, steps and ends, and many tickets' mints and
    /// exchanges, cost one commit.
    pub(crate) async fn write_hot(&self, job: HotWrite) -> StoreResult<HotDone> {
        let (answer, batch_loop) = self.groups.hot.push(job);
        if let Some(batch_loop) = batch_loop {
            // The loop runs on the writer thread, to the end even if this caller goes away. A
            // loop that never runs (no writer thread: `?` drops it) fails the queue.
            let store = self.clone();
            writer_runtime()?.spawn(async move {
                let store = &store;
                batch_loop
                    .run(|batch| async move {
                        let (jobs, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                        deliver(senders, Ok(store.do_hot_writes_isolated(&jobs).await));
                    })
                    .await;
            });
        }
        wait(answer).await
    }

    /// `rows` as a `VALUES` list, one bind per cell (see `bulk.rs`).
    pub(crate) fn push_rows(qb: &mut sqlx::QueryBuilder<'_, Sqlite>, rows: crate::bulk::Rows) {
        use crate::bulk::Val;
        qb.push_values(rows.rows(), |mut b, row| {
            for cell in row {
                match cell {
                    Val::Text(v) => b.push_bind(v),
                    Val::Int(v) => b.push_bind(v),
                };
            }
        });
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
crate::sql_toolkits::impl_toolkit_sql!(SqliteStore, Sqlite);

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
        self.reader.stats().plus(PoolStats::of(&self.writer))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// With several CPUs, the writer thread and the writer connection's thread are kept on the
    /// same one, and the readers' threads are left to the system; with pinning off, the writer
    /// connection's thread is left alone too.
    #[tokio::test]
    async fn the_writer_thread_and_the_writer_connection_share_one_cpu() {
        let Some(cpu) = writer_cpu() else {
            eprintln!("skipped: this process may run on one CPU only, nothing to pin");
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("pin.db").display());
        let store = SqliteStore::connect(&url, &ConnectOptions::default())
            .await
            .expect("open");
        let on_writer = writer_runtime()
            .expect("writer thread")
            .spawn(async { affinity::allowed_cpus() })
            .await
            .expect("probe on the writer thread");
        assert_eq!(on_writer, vec![cpu], "the writer thread");

        // The thread a connection's statements run on, and the CPUs it may use.
        async fn probe(conn: &mut sqlx::SqliteConnection) -> (std::thread::ThreadId, Vec<usize>) {
            affinity::on_connection_thread(conn, || {
                (std::thread::current().id(), affinity::allowed_cpus())
            })
            .await
            .expect("statement")
            .expect("the progress handler ran")
        }
        let (thread, cpus) = probe(&mut store.writer.acquire().await.expect("writer")).await;
        assert_ne!(
            thread,
            std::thread::current().id(),
            "the probe runs on the connection's own thread"
        );
        assert_eq!(cpus, vec![cpu], "the writer connection's thread");
        let (_, cpus) = probe(&mut store.reader.acquire().await.expect("reader")).await;
        assert!(cpus.len() > 1, "a reader's thread is not pinned: {cpus:?}");
        store.close_pools().await;

        let url = format!("sqlite://{}", dir.path().join("unpinned.db").display());
        let options = ConnectOptions {
            sqlite_pin_writer: false,
            ..ConnectOptions::default()
        };
        let store = SqliteStore::connect(&url, &options).await.expect("open");
        let (_, cpus) = probe(&mut store.writer.acquire().await.expect("writer")).await;
        assert!(cpus.len() > 1, "pinning off: {cpus:?}");
        store.close_pools().await;
    }

    /// The writer's one connection is never replaced for being idle or old (its caches stay
    /// warm), and it has the large page cache; readers keep SQLite's default.
    #[tokio::test]
    async fn the_writer_keeps_its_connection_and_a_large_page_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("cache.db").display());
        let store = SqliteStore::connect(&url, &ConnectOptions::default())
            .await
            .expect("open");
        let options = store.writer.options();
        assert_eq!(options.get_idle_timeout(), None, "idle timeout");
        assert_eq!(options.get_max_lifetime(), None, "lifetime");
        let (writer,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(writer, -WRITER_CACHE_KIB, "the writer's cache, in KiB");
        let (reader,): (i64,) = sqlx::query_as("PRAGMA cache_size")
            .fetch_one(&mut *store.reader.acquire().await.expect("reader"))
            .await
            .expect("pragma");
        assert_eq!(reader, -2000, "a reader keeps SQLite's default");
        store.close_pools().await;
    }

    /// The writer never checkpoints by itself, and the background task moves committed pages
    /// from the WAL into the database file without anyone asking.
    #[tokio::test]
    async fn the_wal_is_checkpointed_in_the_background_not_by_the_writer() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("wal.db");
        let store = SqliteStore::connect(
            &format!("sqlite://{}", path.display()),
            &ConnectOptions::default(),
        )
        .await
        .expect("open");
        let (auto,): (i64,) = sqlx::query_as("PRAGMA wal_autocheckpoint")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(auto, 0, "the writer must not checkpoint inside commits");

        sqlx::query("CREATE TABLE filler (body BLOB NOT NULL)")
            .execute(&store.writer)
            .await
            .expect("create");
        // Let a checkpoint take the table's creation, then measure the file.
        tokio::time::sleep(CHECKPOINT_EVERY * 3).await;
        let before = std::fs::metadata(&path).expect("db file").len();
        for _ in 0..100 {
            sqlx::query("INSERT INTO filler (body) VALUES (zeroblob(4000))")
                .execute(&store.writer)
                .await
                .expect("insert");
        }
        // ~100 pages, far below SQLite's own 1,000-page threshold: only the background task
        // can have copied them into the database file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let now = std::fs::metadata(&path).expect("db file").len();
            if now >= before + 100 * 4000 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the database file did not grow ({before} → {now} bytes): no checkpoint ran"
            );
            tokio::time::sleep(CHECKPOINT_EVERY).await;
        }
        store.close_pools().await;
    }

    /// The WAL starts over while writes never pause: SQLite restarts it only at a write that
    /// finds every frame copied into the database file, which a checkpoint on a reader cannot
    /// achieve while commits keep landing, so without the checkpointer's step on the writer the
    /// file would grow by every page written until the load stops.
    #[tokio::test]
    async fn the_wal_starts_over_under_writes_that_never_pause() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("restart.db");
        let wal = dir.path().join("restart.db-wal");
        let store = SqliteStore::connect(
            &format!("sqlite://{}", path.display()),
            &ConnectOptions::default(),
        )
        .await
        .expect("open");
        let (limit,): (i64,) = sqlx::query_as("PRAGMA journal_size_limit")
            .fetch_one(&store.writer)
            .await
            .expect("pragma");
        assert_eq!(limit, WAL_SIZE_LIMIT_BYTES, "the WAL's size limit");
        sqlx::query("CREATE TABLE filler (body BLOB NOT NULL)")
            .execute(&store.writer)
            .await
            .expect("create");
        // The WAL header's checkpoint sequence number (bytes 12..16, big-endian) goes up by one
        // each time the WAL starts over.
        let restarts = || {
            use std::io::Read as _;
            let mut header = [0u8; 16];
            std::fs::File::open(&wal)
                .and_then(|mut file| file.read_exact(&mut header))
                .expect("wal header");
            u32::from_be_bytes([header[12], header[13], header[14], header[15]])
        };
        let first = restarts();
        // Reads run all along, as on a busy server: each holds the part of the WAL it started
        // with while it runs.
        let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (reader, reading) = (store.reader.clone(), reading.clone());
                tokio::spawn(async move {
                    let mut reads = 0u64;
                    while reading.load(std::sync::atomic::Ordering::Relaxed) {
                        let _: (Option<i64>,) = sqlx::query_as("SELECT max(rowid) FROM filler")
                            .fetch_one(&reader)
                            .await
                            .expect("read");
                        reads += 1;
                    }
                    reads
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut commits = 0u32;
        // Each commit writes 32 pages or more, with nothing in between but the next commit.
        while restarts().wrapping_sub(first) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL never started over during {commits} back-to-back commits \
                 ({} bytes)",
                std::fs::metadata(&wal).map_or(0, |m| m.len())
            );
            let mut tx = store.begin_write().await.expect("begin");
            for _ in 0..32 {
                sqlx::query("INSERT INTO filler (body) VALUES (zeroblob(4000))")
                    .execute(&mut *tx)
                    .await
                    .expect("insert");
            }
            tx.commit().await.expect("commit");
            commits += 1;
        }
        reading.store(false, std::sync::atomic::Ordering::Relaxed);
        for reader in readers {
            assert!(reader.await.expect("reader") > 0, "no read ran");
        }
        store.close_pools().await;
    }
}
