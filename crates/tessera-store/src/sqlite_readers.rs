//! The SQLite readers: connections handed out without sqlx's test on release.
//!
//! sqlx returns a pooled connection to its pool by spawning a task that first pings it (a
//! round trip to the connection's thread), to catch connections left broken by a cancelled
//! query. For an embedded SQLite file that ping finds little: a connection breaks only with
//! the file or its thread, and sqlx's connection thread finishes (or, once nobody reads the
//! rows, stops) a cancelled query's command before it runs the next one, resetting the
//! statement. Yet the ping cost every read a second round trip and a task: in the runtime
//! benchmark, about ten of a lone turn's 125 context switches.
//!
//! [`Readers`] keeps the connections it got from the pool: a read takes one from its idle
//! list (or from the pool while fewer than `max_connections` are out) and puts it back when it
//! is done, in the same thread, without a ping. What the ping was for is kept:
//! - a read through [`Readers`] as an executor puts its connection back on top of the list
//!   only once its answer was read to the end; a connection whose read was cancelled, or one
//!   handed out by [`Readers::acquire`] for a caller's own queries (which may have been
//!   cancelled half-way), goes to the far end, where it is taken last (its thread may still be
//!   running that query);
//! - a connection whose read failed as a broken one does (its thread gone, or I/O) goes back
//!   to the pool, which tests it and closes it.
//!
//! Every use of the reader pool goes through [`Readers`] (the checkpointer's too), so a
//! connection kept here is never one the pool waits for. A semaphore with one permit per
//! connection makes a read wait when every connection is busy, as the pool would, and for as
//! long as the pool's acquire timeout. [`Readers::close`] hands the kept connections back to the
//! pool before closing it.

use std::sync::{Arc, Mutex};

use futures_util::{future, stream, FutureExt as _, StreamExt as _};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteQueryResult, SqliteRow, SqliteStatement, SqliteTypeInfo};
use sqlx::{Either, Execute, Executor, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The reader connections (see the module documentation).
#[derive(Clone)]
pub(crate) struct Readers {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    /// Connections taken from `pool` and not in use; `None` once closing.
    idle: Mutex<Option<Vec<PoolConnection<Sqlite>>>>,
    /// One permit per connection `pool` may open.
    permits: Arc<Semaphore>,
}

/// A reader connection in use; it goes back to the idle list when dropped.
pub(crate) struct Reader {
    conn: Option<PoolConnection<Sqlite>>,
    inner: Arc<Inner>,
    /// What the connection is known to be doing, for where it goes when dropped.
    state: State,
    _permit: OwnedSemaphorePermit,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing of ours runs on it.
    Ready,
    /// Handed out, and no read through the executor has ended on it: if dropped so (a
    /// cancelled read, or a caller's own queries), sqlx's connection thread may still be
    /// running one.
    Busy,
    /// It failed as a broken connection does (its thread gone, or I/O).
    Broken,
}

impl Readers {
    /// Readers over `pool`, one permit per connection it may open. The pool keeps no minimum
    /// of connections (a kept connection dropped at the end then spawns nothing).
    pub(crate) fn new(pool: SqlitePool) -> Self {
        debug_assert_eq!(pool.options().get_min_connections(), 0);
        let permits = pool.options().get_max_connections().max(1) as usize;
        Self {
            inner: Arc::new(Inner {
                pool,
                idle: Mutex::new(Some(Vec::new())),
                permits: Arc::new(Semaphore::new(permits)),
            }),
        }
    }

    /// `read` on a connection, which goes back on top of the idle list only if `read`
    /// finished (see [`Reader::finished`]).
    async fn on_reader<T>(
        &self,
        read: impl AsyncFnOnce(&mut SqliteConnection) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        let mut conn = self.acquire().await?;
        let result = read(&mut conn).await;
        conn.finished(result.as_ref().err());
        result
    }

    /// A connection: an idle one, else a new one from the pool. Waits while all are in use,
    /// up to the pool's acquire timeout (then `PoolTimedOut`, as the pool would); the pool
    /// may take as long again to open a new one.
    pub(crate) async fn acquire(&self) -> Result<Reader, sqlx::Error> {
        let wait = self.inner.pool.options().get_acquire_timeout();
        let permit = tokio::time::timeout(wait, Arc::clone(&self.inner.permits).acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        let kept = match self.inner.lock().as_mut() {
            Some(idle) => idle.pop(),
            None => return Err(sqlx::Error::PoolClosed),
        };
        let conn = match kept {
            Some(conn) => conn,
            // With a permit, fewer than `max_connections` are out (every connection of the
            // pool is handed out here): the pool opens one.
            None => self.inner.pool.acquire().await?,
        };
        Ok(Reader {
            conn: Some(conn),
            inner: Arc::clone(&self.inner),
            // Until a read through the executor says otherwise (see the module documentation).
            state: State::Busy,
            _permit: permit,
        })
    }

    /// Whether [`Self::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.inner.permits.is_closed()
    }

    /// Connections open and idle (kept here or in the pool), for the pool metrics.
    pub(crate) fn stats(&self) -> crate::PoolStats {
        let kept = self.inner.lock().as_ref().map_or(0, Vec::len);
        let kept = u32::try_from(kept).unwrap_or(u32::MAX);
        let pool = crate::PoolStats::of(&self.inner.pool);
        crate::PoolStats {
            size: pool.size,
            idle: pool.idle.saturating_add(kept).min(pool.size),
        }
    }

    /// Refuses new reads, hands the kept connections back to the pool and closes it (waiting
    /// for reads in progress, as `Pool::close` does).
    pub(crate) async fn close(&self) {
        self.inner.permits.close();
        // Taken under the lock that `Reader::drop` puts connections back under: none is put
        // back after this, and the pool's close waits for the ones still in use.
        let kept = self.inner.lock().take();
        drop(kept);
        self.inner.pool.close().await;
    }
}

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Vec<PoolConnection<Sqlite>>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl std::ops::Deref for Reader {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        // Present from construction until `drop`.
        self.conn.as_deref().unwrap_or_else(|| unreachable!())
    }
}

impl std::ops::DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_deref_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Reader {
    /// The query's answer was read to the end, with `failure` if it failed.
    fn finished(&mut self, failure: Option<&sqlx::Error>) {
        self.state = match failure {
            Some(err) if is_broken(err) => State::Broken,
            _ => State::Ready,
        };
    }
}

/// An error after which the connection is not used again.
fn is_broken(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::WorkerCrashed | sqlx::Error::Io(_))
}

impl Drop for Reader {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut idle = self.inner.lock();
        match (idle.as_mut(), self.state) {
            (Some(idle), State::Ready) => idle.push(conn),
            // Taken last: the next read gets a connection that is free now, not one still
            // running a cancelled query.
            (Some(idle), State::Busy) => idle.insert(0, conn),
            // Broken, or closing: back to the pool, which tests it and closes it if need be
            // (outside the lock).
            (_, State::Broken) | (None, _) => {
                drop(idle);
                drop(conn);
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone. Dropping a kept connection would spawn sqlx's return to
        // the pool, which needs a runtime that may be gone by now: detached instead, each
        // connection closes as its thread sees its channel close.
        let idle = self
            .idle
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(kept) = idle.take() {
            for conn in kept {
                drop(conn.detach());
            }
        }
    }
}

impl<'c> Executor<'c> for &'c Readers {
    type Database = Sqlite;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> stream::BoxStream<'e, Result<Either<SqliteQueryResult, SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        // The results are read to the end before they are handed on, so that the connection
        // is back before the caller (which reads them all anyway) goes on.
        async move {
            let mut conn = self.acquire().await?;
            let items: Vec<_> = (&mut *conn).fetch_many(query).collect().await;
            conn.finished(items.iter().find_map(|item| item.as_ref().err()));
            Ok::<_, sqlx::Error>(items)
        }
        .map(|read| match read {
            Ok(items) => stream::iter(items).left_stream(),
            Err(err) => stream::once(future::ready(Err(err))).right_stream(),
        })
        .flatten_stream()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> future::BoxFuture<'e, Result<Option<SqliteRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Sqlite>,
    {
        self.on_reader(async |conn| conn.fetch_optional(query).await)
            .boxed()
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [SqliteTypeInfo],
    ) -> future::BoxFuture<'e, Result<SqliteStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.on_reader(async |conn| conn.prepare_with(sql, parameters).await)
            .boxed()
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> future::BoxFuture<'e, Result<sqlx::Describe<Sqlite>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.on_reader(async |conn| conn.describe(sql).await)
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use sqlx::{Connection as _, Row as _};

    use super::*;

    fn file(dir: &tempfile::TempDir) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(dir.path().join("readers.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
    }

    async fn readers_waiting(dir: &tempfile::TempDir, max: u32, wait: Duration) -> Readers {
        let pool = SqlitePoolOptions::new()
            .max_connections(max)
            .acquire_timeout(wait)
            .connect_with(file(dir))
            .await
            .expect("pool");
        Readers::new(pool)
    }

    async fn readers(dir: &tempfile::TempDir, max: u32) -> Readers {
        readers_waiting(dir, max, Duration::from_secs(30)).await
    }

    /// A query that keeps its connection's thread busy for a while (seconds here).
    const SLOW: &str =
        "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 5000000)
                        SELECT count(*) FROM c";

    /// The id of the thread a connection's statements run on.
    async fn connection_thread(conn: &mut SqliteConnection) -> std::thread::ThreadId {
        crate::sqlite_affinity::on_connection_thread(conn, || std::thread::current().id())
            .await
            .expect("statement")
            .expect("the progress handler ran")
    }

    #[tokio::test]
    async fn a_read_keeps_its_connection_for_the_next_instead_of_returning_it_to_the_pool() {
        let dir = tempfile::tempdir().expect("temp dir");
        let readers = readers(&dir, 4).await;
        let first = connection_thread(&mut readers.acquire().await.expect("reader")).await;
        for i in 0..20_i64 {
            let row = sqlx::query("SELECT ?1 + 1 AS n")
                .bind(i)
                .fetch_one(&readers)
                .await
                .expect("read");
            assert_eq!(row.get::<i64, _>("n"), i + 1);
        }
        let rows = sqlx::query("SELECT 1 UNION ALL SELECT 2")
            .fetch_all(&readers)
            .await
            .expect("read");
        assert_eq!(rows.len(), 2);
        // One connection served every read, one after the other, and it is kept here: the
        // pool has none idle.
        assert_eq!(
            connection_thread(&mut readers.acquire().await.expect("reader")).await,
            first
        );
        assert_eq!(readers.inner.pool.size(), 1);
        assert_eq!(readers.inner.pool.num_idle(), 0);
        let stats = readers.stats();
        assert_eq!((stats.size, stats.idle), (1, 1));
        readers.close().await;
    }

    #[tokio::test]
    async fn a_read_waits_while_every_connection_is_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let readers = readers(&dir, 2).await;
        let a = readers.acquire().await.expect("first");
        let b = readers.acquire().await.expect("second");
        let third = tokio::spawn({
            let readers = readers.clone();
            async move {
                sqlx::query("SELECT 3")
                    .fetch_one(&readers)
                    .await
                    .map(|row| row.get::<i64, _>(0))
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!third.is_finished(), "a third connection was opened");
        drop(a);
        let n = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the read went ahead once a connection was free")
            .expect("task")
            .expect("read");
        assert_eq!(n, 3);
        assert_eq!(readers.inner.pool.size(), 2);
        drop(b);
        readers.close().await;
    }

    #[tokio::test]
    async fn a_read_cancelled_half_way_leaves_its_connection_usable_and_current() {
        let dir = tempfile::tempdir().expect("temp dir");
        // One connection: the next reads get the very one the cancelled read used.
        let readers = readers(&dir, 1).await;
        let mut writer = sqlx::SqliteConnection::connect_with(&file(&dir))
            .await
            .expect("writer");
        sqlx::query("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1)")
            .execute(&mut writer)
            .await
            .expect("table");
        // The connection is open before the slow read, so that read starts at once.
        sqlx::query("SELECT 1")
            .fetch_one(&readers)
            .await
            .expect("read");
        let sql = format!("{SLOW} UNION ALL SELECT count(*) FROM t");
        let slow = sqlx::query(&sql).fetch_all(&readers);
        assert!(
            tokio::time::timeout(Duration::from_millis(5), slow)
                .await
                .is_err(),
            "the slow read should still be running"
        );
        // A row written after the cancelled read began is seen by the next read: the
        // cancelled statement left no read transaction holding an older snapshot.
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut writer)
            .await
            .expect("insert");
        for _ in 0..3 {
            let row = tokio::time::timeout(
                Duration::from_secs(60),
                sqlx::query("SELECT count(*) AS n FROM t").fetch_one(&readers),
            )
            .await
            .expect("the next read is answered")
            .expect("read");
            assert_eq!(row.get::<i64, _>("n"), 2);
        }
        readers.close().await;
    }

    #[tokio::test]
    async fn the_connection_of_a_cancelled_read_is_taken_last() {
        let dir = tempfile::tempdir().expect("temp dir");
        let readers = readers(&dir, 2).await;
        let mut a = readers.acquire().await.expect("reader");
        let mut b = readers.acquire().await.expect("reader");
        let (on_a, on_b) = (
            connection_thread(&mut a).await,
            connection_thread(&mut b).await,
        );
        // The slow read gets `b`, the only one free.
        drop(b);
        // Boxed, so that dropping it below cancels it.
        let mut slow = Box::pin(sqlx::query(SLOW).fetch_one(&readers));
        assert!(
            tokio::time::timeout(Duration::from_millis(5), &mut slow)
                .await
                .is_err(),
            "the slow read should still be running"
        );
        // `a` goes back, then the slow read is cancelled: `b` may still be running the slow
        // query, so it is taken after `a`.
        drop(a);
        drop(slow);
        let next = connection_thread(&mut readers.acquire().await.expect("reader")).await;
        assert_eq!(next, on_a);
        assert_ne!(next, on_b);
        readers.close().await;
    }

    #[tokio::test]
    async fn a_read_gives_up_after_the_pools_acquire_timeout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let readers = readers_waiting(&dir, 1, Duration::from_secs(2)).await;
        let held = readers.acquire().await.expect("reader");
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            sqlx::query("SELECT 1").fetch_one(&readers),
        )
        .await
        .expect("the read gave up instead of waiting on")
        .err()
        .expect("no connection is free");
        assert!(matches!(err, sqlx::Error::PoolTimedOut), "{err:?}");
        drop(held);
        sqlx::query("SELECT 1")
            .fetch_one(&readers)
            .await
            .expect("a connection is free again");
        readers.close().await;
    }

    #[tokio::test]
    async fn close_waits_for_reads_in_progress_and_refuses_new_ones() {
        let dir = tempfile::tempdir().expect("temp dir");
        let readers = readers(&dir, 2).await;
        // One connection kept idle, one in use.
        let idle = readers.acquire().await.expect("reader");
        let busy = readers.acquire().await.expect("reader");
        drop(idle);
        assert_eq!(readers.inner.pool.size(), 2);
        let closing = tokio::spawn({
            let readers = readers.clone();
            async move { readers.close().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !closing.is_finished(),
            "close waits for the read in progress"
        );
        assert!(readers.is_closed());
        let refused = readers.acquire().await.err().expect("refused");
        assert!(matches!(refused, sqlx::Error::PoolClosed), "{refused:?}");
        drop(busy);
        tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .expect("close finished once the read ended")
            .expect("task");
        assert_eq!(readers.inner.pool.size(), 0, "every connection was closed");
    }
}
