//! The PostgreSQL backend, for running several `tessera serve` nodes on one database.
//!
//! Nodes coordinate only through the database: schema changes and the first-start bootstrap
//! take transaction-scoped advisory locks so that concurrent starts do the work once.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use sqlx::postgres::PgListener;
use tessera_domain::{RunId, ThreadId};

use crate::migrate;
use crate::{Backend, ConnectOptions, Notification, PoolStats, StoreError, StoreResult};

/// Advisory lock keys (arbitrary constants, unique within Tessera).
const MIGRATION_LOCK: i64 = 0x7465_7373_0001;
const BOOTSTRAP_LOCK: i64 = 0x7465_7373_0002;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let connect =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.busy_timeout.max(std::time::Duration::from_secs(5)))
            .connect_with(connect)
            .await?;
        Ok(Self { pool })
    }

    pub(crate) fn reader(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn begin_write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        Ok(self.pool.begin().await?)
    }

    pub(crate) async fn lock_bootstrap(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(BOOTSTRAP_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The transaction migrations run in (PostgreSQL DDL is transactional), holding an
    /// advisory lock so that nodes starting together migrate once.
    pub(crate) async fn begin_migration(&self) -> StoreResult<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    pub(crate) const MIGRATIONS: &'static [migrate::Migration] = migrate::POSTGRES;

    pub(crate) async fn close_pools(&self) {
        self.pool.close().await;
    }

    /// Concurrent workers skip rows another worker is claiming instead of waiting on them.
    /// Runs a write transaction (SQLite runs it on its writer thread; PostgreSQL needs not).
    pub(crate) async fn offload<T>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        work.await
    }

    /// Queues several `NOTIFY`s in one round trip (a batch of fired slots wakes many threads).
    pub(crate) async fn notify_many(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        notifications: &[Notification],
    ) -> StoreResult<()> {
        let payloads: Vec<String> = notifications.iter().map(encode_notification).collect();
        sqlx::query("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n")
            .bind(CHANNEL)
            .bind(payloads)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Writes one of the hot writes (runs, tickets) in its own transaction: PostgreSQL runs
    /// concurrent ones on several connections and shares WAL flushes between them itself.
    pub(crate) async fn write_hot(
        &self,
        job: crate::sql_runs::HotWrite,
    ) -> StoreResult<crate::sql_runs::HotDone> {
        self.do_hot_writes(std::slice::from_ref(&job))
            .await?
            .pop()
            .unwrap_or_else(|| {
                Err(crate::StoreError::Corrupt(
                    "a write transaction ended without a result".to_owned(),
                ))
            })
    }

    pub(crate) const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    /// Check-then-write transactions lock the row they check, so a concurrent writer waits
    /// instead of acting on a stale check (READ COMMITTED would allow it).
    pub(crate) const ROW_LOCK: &'static str = " FOR UPDATE";

    /// Queues a `NOTIFY` for the other nodes; PostgreSQL delivers it when the transaction
    /// commits (and drops it if it rolls back).
    pub(crate) async fn notify(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        notification: &Notification,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(encode_notification(notification))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The `LISTEN`/`NOTIFY` channel of Tessera's wake-ups.
const CHANNEL: &str = "tessera";

fn encode_notification(n: &Notification) -> String {
    match n {
        Notification::Runs => "runs".to_owned(),
        Notification::ThreadEvents(thread) => format!("events:{thread}"),
        Notification::CancelRun(run) => format!("cancel:{run}"),
        Notification::Actions => "actions".to_owned(),
    }
}

fn decode_notification(payload: &str) -> Option<Notification> {
    if payload == "runs" {
        return Some(Notification::Runs);
    }
    if payload == "actions" {
        return Some(Notification::Actions);
    }
    if let Some(thread) = payload.strip_prefix("events:") {
        return ThreadId::parse(thread).ok().map(Notification::ThreadEvents);
    }
    payload
        .strip_prefix("cancel:")
        .and_then(|run| RunId::parse(run).ok())
        .map(Notification::CancelRun)
}

crate::sql::impl_sql_store!(PgStore, Postgres);
crate::sql_runs::impl_run_sql!(PgStore, Postgres);
crate::sql_identity::impl_identity_sql!(PgStore, Postgres);
crate::sql_tickets::impl_ticket_sql!(PgStore, Postgres);
crate::sql_sessions::impl_session_sql!(PgStore, Postgres);
crate::sql_boards::impl_board_sql!(PgStore, Postgres);
crate::sql_tools::impl_tool_sql!(PgStore, Postgres);
crate::sql_toolkits::impl_toolkit_sql!(PgStore, Postgres);

#[async_trait::async_trait]
impl crate::Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
        }
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn listen(&self) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Notification>>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    // Nobody listens any more (the node is stopping): give the connection back.
                    () = tx.closed() => return,
                    received = listener.recv() => received,
                };
                match received {
                    Ok(message) => {
                        if let Some(n) = decode_notification(message.payload()) {
                            // A full channel means the node is far behind; the slow poll and the
                            // next notification catch it up, so dropping one is safe.
                            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) =
                                tx.try_send(n)
                            {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        // PgListener reconnects on the next recv; notifications sent meanwhile
                        // are lost, which the workers' slow poll covers.
                        tracing::warn!(error = %err, "LISTEN connection failed; reconnecting");
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                        }
                    }
                }
            }
        });
        Ok(Some(rx))
    }
}
