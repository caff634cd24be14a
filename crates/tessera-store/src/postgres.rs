//! The PostgreSQL backend, for running several `tessera serve` nodes on one database.
//!
//! Nodes coordinate only through the database: schema changes and the first-start bootstrap
//! take transaction-scoped advisory locks so that concurrent starts do the work once.
//!
//! Wake-ups between nodes are `NOTIFY`s. PostgreSQL serialises the commits of all transactions
//! that queued a `NOTIFY` behind one cluster-wide lock held until the commit record is flushed,
//! so each such commit waits for the flushes of all the others before it: under load (a burst
//! of fired slots, dozens of workers ending runs) commits queued behind each other one WAL sync
//! at a time. The hot write transactions (`offload`, `write_hot`) therefore queue no `NOTIFY`:
//! their wake-ups are collected while they run and sent after they end, by one connection per
//! node that coalesces them ([`Notifier`]). A wake-up is a hint (workers and schedulers also
//! poll), so one lost with a crash between the commit and its sending costs latency only.

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
/// The first key of the workspace locks (`lock_workspace`).
const WORKSPACE_LOCK_CLASS: i32 = 0x7473_0003;

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    notifier: Notifier,
}

tokio::task_local! {
    /// The wake-ups queued by the hot write running on this task, sent when it ends.
    static DEFERRED: std::cell::RefCell<Vec<Notification>>;
}

impl PgStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let connect =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(options.busy_timeout.max(std::time::Duration::from_secs(5)))
            .connect_with(connect.clone())
            .await?;
        let notifier = Notifier::start(connect);
        Ok(Self { pool, notifier })
    }

    /// Runs `work` (which commits its own transaction) with its wake-ups deferred: they are
    /// sent when it ends, outside its transaction (see the module documentation). They are sent
    /// even when `work` failed: a spurious wake-up costs one empty look, a lost one a poll.
    async fn deferring<T>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let (result, deferred) = DEFERRED
            .scope(std::cell::RefCell::new(Vec::new()), async move {
                let result = work.await;
                (result, DEFERRED.with(|d| d.take()))
            })
            .await;
        self.notifier.send(deferred);
        result
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

    /// Serialises the transactions that write files into one workspace (an advisory lock
    /// keyed by the workspace id's hash, in a key space of its own: two-key locks never meet
    /// the one-key locks above; an unlikely hash collision only makes two workspaces take
    /// turns).
    pub(crate) async fn lock_workspace(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        workspace_id: &str,
    ) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(WORKSPACE_LOCK_CLASS)
            .bind(workspace_id)
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
        self.notifier.close();
        self.pool.close().await;
    }

    /// Runs a hot write transaction (SQLite runs it on its writer thread); here its wake-ups
    /// are sent after it ends instead of from inside it (see [`Self::deferring`]).
    pub(crate) async fn offload<T>(
        &self,
        work: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.deferring(work).await
    }

    /// Queues several `NOTIFY`s in one round trip (a batch of fired slots wakes many threads),
    /// or defers them when called from a hot write.
    pub(crate) async fn notify_many(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        notifications: &[Notification],
    ) -> StoreResult<()> {
        if defer(notifications) {
            return Ok(());
        }
        sqlx::query("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n")
            .bind(CHANNEL)
            .bind(encode_notifications(notifications))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Writes one of the hot writes (runs, tickets) in its own transaction: PostgreSQL runs
    /// concurrent ones on several connections and shares WAL flushes between them itself. A
    /// transaction the database aborted as a deadlock victim runs again.
    pub(crate) async fn write_hot(
        &self,
        job: crate::sql_runs::HotWrite,
    ) -> StoreResult<crate::sql_runs::HotDone> {
        let job = &job;
        crate::retry_transient(|| async move {
            self.deferring(self.do_hot_writes(std::slice::from_ref(job)))
                .await?
                .pop()
                .unwrap_or_else(|| {
                    Err(crate::StoreError::Corrupt(
                        "a write transaction ended without a result".to_owned(),
                    ))
                })
        })
        .await
    }

    /// `rows` as one array per column unpacked by `unnest` (see `bulk.rs`): a short statement
    /// with one parameter per column, whatever the row count. `rows` must not be empty.
    pub(crate) fn push_rows(qb: &mut sqlx::QueryBuilder<'_, Postgres>, rows: crate::bulk::Rows) {
        use crate::bulk::Column;
        let columns = rows.columns();
        let width = columns.len();
        debug_assert!(width > 0, "unnest() of no rows");
        qb.push("SELECT * FROM unnest(");
        let mut args = qb.separated(", ");
        for column in columns {
            match column {
                Column::Text(v) => args.push_bind(v).push_unseparated("::text[]"),
                Column::Int(v) => args.push_bind(v).push_unseparated("::int8[]"),
            };
        }
        qb.push(") AS u(");
        let mut names = qb.separated(", ");
        for i in 1..=width {
            names.push(format!("column{i}"));
        }
        qb.push(")");
    }

    pub(crate) const CLAIM_LOCK: &'static str = " FOR UPDATE SKIP LOCKED";
    pub(crate) const CLAIM_QUEUED: &'static str = crate::sql_runs::CLAIM_QUEUED_POSTGRES;
    /// Slots per claim: nodes claim side by side (`SKIP LOCKED`), and the last claims of a
    /// burst decide its lateness; with smaller claims the nodes split a burst evenly and none
    /// is left alone with a large last one (bench/schedules: 10,000 slots due in one second,
    /// two nodes).
    pub(crate) const SLOT_CLAIM_BATCH: usize = 512;

    /// Makes the claim's queries walk their indexes in order and stop at their limit, whatever
    /// the planner's statistics (see `CLAIM_QUEUED_POSTGRES`): for the rest of the claim's
    /// transaction, no sort and no bitmap scan (which needs one). The claim's other statements
    /// are single-row updates by primary key and an insert, which neither would use.
    pub(crate) async fn pin_claim_plan(
        &self,
        tx: &mut Transaction<'static, Postgres>,
    ) -> StoreResult<()> {
        sqlx::query(
            "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)",
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
    /// Check-then-write transactions lock the row they check, so a concurrent writer waits
    /// instead of acting on a stale check (READ COMMITTED would allow it).
    pub(crate) const ROW_LOCK: &'static str = " FOR UPDATE";
    /// A row checked by writers that may run side by side but must keep it unchanged until
    /// they commit (a project new threads go into: archiving it waits for them).
    pub(crate) const SHARE_LOCK: &'static str = " FOR SHARE";
    /// Hot writes are written one per transaction (no group commit): nothing to write together.
    pub(crate) const BULK_HOT_WRITES: bool = false;
    /// Rows: sqlx decodes PostgreSQL's rows on the caller's task, with no hand-off per row.
    pub(crate) const HISTORY_AS_JSON: bool = false;
    /// A submission checks open runs and questions in statements of their own, after its thread
    /// update: an update that waited for a concurrent submission's lock evaluates its `RETURNING`
    /// subqueries in the snapshot taken before the wait and would miss that submission's run; a
    /// later statement takes a new snapshot (READ COMMITTED) and sees it. The test
    /// `concurrent_rejecting_submissions_to_an_idle_thread_accept_one` fails otherwise.
    pub(crate) const CHECKS_IN_THREAD_UPDATE: bool = false;
    /// An agent spec's `multitask` field, from the agent row `a`.
    pub(crate) const SPEC_MULTITASK: &'static str = "(a.spec::jsonb ->> 'multitask')";

    /// Queues a `NOTIFY` for the other nodes; PostgreSQL delivers it when the transaction
    /// commits (and drops it if it rolls back). From a hot write, defers it instead.
    pub(crate) async fn notify(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        notification: &Notification,
    ) -> StoreResult<()> {
        self.notify_many(tx, std::slice::from_ref(notification))
            .await
    }
}

/// The `LISTEN`/`NOTIFY` channel of Tessera's wake-ups.
const CHANNEL: &str = "tessera";

/// Adds `notifications` to the running hot write's deferred wake-ups; `false` outside one.
fn defer(notifications: &[Notification]) -> bool {
    DEFERRED
        .try_with(|d| d.borrow_mut().extend_from_slice(notifications))
        .is_ok()
}

/// Sends deferred wake-ups on a connection of its own (not the pool's, where it would queue
/// behind the workers), outside any transaction that wrote, so it never waits for a WAL flush
/// while holding PostgreSQL's `NOTIFY` lock. Wake-ups arriving while one is sent are coalesced
/// (duplicates dropped) into the next single statement.
/// How long the notifier keeps its connection without anything to send.
const NOTIFIER_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone)]
struct Notifier {
    tx: tokio::sync::mpsc::UnboundedSender<Vec<Notification>>,
    closed: std::sync::Arc<tokio::sync::Notify>,
}

impl Notifier {
    fn start(connect: PgConnectOptions) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Notification>>();
        let closed = std::sync::Arc::new(tokio::sync::Notify::new());
        let stop = closed.clone();
        // Ends when the store is closed or every clone of it is dropped.
        tokio::spawn(async move {
            let mut conn: Option<sqlx::PgConnection> = None;
            loop {
                let first = tokio::select! {
                    first = rx.recv() => first,
                    () = stop.notified() => None,
                    // A quiet node gives its connection back to the server.
                    () = tokio::time::sleep(NOTIFIER_IDLE), if conn.is_some() => {
                        if let Some(idle) = conn.take() {
                            let _ = sqlx::Connection::close(idle).await;
                        }
                        continue;
                    }
                };
                let Some(first) = first else { break };
                let mut pending = first;
                while let Ok(more) = rx.try_recv() {
                    pending.extend(more);
                }
                let payloads = encode_notifications(&pending);
                if let Err(err) = send_notifications(&mut conn, &connect, &payloads).await {
                    // The wake-ups are lost; the other nodes' polls pick the work up.
                    tracing::warn!(error = %err, "sending wake-ups to other nodes failed");
                    conn = None;
                }
            }
            if let Some(conn) = conn {
                let _ = sqlx::Connection::close(conn).await;
            }
        });
        Self { tx, closed }
    }

    fn close(&self) {
        self.closed.notify_one();
    }

    fn send(&self, notifications: Vec<Notification>) {
        if !notifications.is_empty() {
            // Fails only when the task ended (the runtime is shutting down).
            let _ = self.tx.send(notifications);
        }
    }
}

async fn send_notifications(
    conn: &mut Option<sqlx::PgConnection>,
    connect: &PgConnectOptions,
    payloads: &[String],
) -> Result<(), sqlx::Error> {
    let live = match conn {
        Some(live) => live,
        None => conn.insert(sqlx::ConnectOptions::connect(connect).await?),
    };
    sqlx::query("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(live)
        .await?;
    Ok(())
}

/// The longest payload [`encode_notifications`] makes (PostgreSQL refuses 8,000 bytes and more).
const MAX_PAYLOAD: usize = 7_900;

/// The `NOTIFY` payloads of `notifications`, duplicates dropped. Threads with new events are
/// packed, comma-separated, into as few `events:` payloads as fit [`MAX_PAYLOAD`]: a batch of
/// fired slots wakes thousands of threads, and every listening node receives every payload.
fn encode_notifications(notifications: &[Notification]) -> Vec<String> {
    let mut payloads = std::collections::BTreeSet::new();
    let mut threads = std::collections::BTreeSet::new();
    for n in notifications {
        match n {
            Notification::Runs => payloads.insert("runs".to_owned()),
            Notification::Actions => payloads.insert("actions".to_owned()),
            Notification::CancelRun(run) => payloads.insert(format!("cancel:{run}")),
            Notification::ThreadEvents(thread) => threads.insert(thread.as_str()),
        };
    }
    let mut payloads: Vec<String> = payloads.into_iter().collect();
    let mut packed = String::new();
    for thread in threads {
        if !packed.is_empty() && packed.len() + 1 + thread.len() > MAX_PAYLOAD {
            payloads.push(std::mem::take(&mut packed));
        }
        packed.push_str(if packed.is_empty() { "events:" } else { "," });
        packed.push_str(thread);
    }
    if !packed.is_empty() {
        payloads.push(packed);
    }
    payloads
}

/// The wake-ups of one payload; what cannot be read (another version's payload) is skipped.
fn decode_notifications(payload: &str) -> Vec<Notification> {
    match payload {
        "runs" => return vec![Notification::Runs],
        "actions" => return vec![Notification::Actions],
        _ => {}
    }
    if let Some(threads) = payload.strip_prefix("events:") {
        return threads
            .split(',')
            .filter_map(|thread| ThreadId::parse(thread).ok())
            .map(Notification::ThreadEvents)
            .collect();
    }
    payload
        .strip_prefix("cancel:")
        .and_then(|run| RunId::parse(run).ok())
        .map(Notification::CancelRun)
        .into_iter()
        .collect()
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
        PoolStats::of(&self.pool)
    }

    async fn close(&self) {
        self.notifier.close();
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
                        for n in decode_notifications(message.payload()) {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use super::*;

    #[test]
    fn thread_wake_ups_are_packed_under_the_payload_limit_and_read_back() {
        let threads: Vec<ThreadId> = (0..1_000).map(|_| ThreadId::generate()).collect();
        let mut sent: Vec<Notification> = threads
            .iter()
            .cloned()
            .map(Notification::ThreadEvents)
            .collect();
        let run = RunId::generate();
        sent.extend([
            Notification::Runs,
            Notification::Runs,
            Notification::Actions,
            Notification::CancelRun(run.clone()),
            Notification::ThreadEvents(threads[0].clone()),
        ]);
        let payloads = encode_notifications(&sent);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let events = payloads.iter().filter(|p| p.starts_with("events:")).count();
        let per_payload = MAX_PAYLOAD / (threads[0].as_str().len() + 1);
        assert_eq!(events, threads.len().div_ceil(per_payload), "{payloads:?}");
        let mut received: Vec<Notification> = payloads
            .iter()
            .flat_map(|p| decode_notifications(p))
            .collect();
        assert_eq!(received.len(), threads.len() + 3, "duplicates are dropped");
        let mut woken: Vec<ThreadId> = Vec::new();
        received.retain(|n| match n {
            Notification::ThreadEvents(t) => {
                woken.push(t.clone());
                false
            }
            _ => true,
        });
        let mut expected = threads.clone();
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(woken, expected);
        assert_eq!(received.len(), 3);
        assert!(received.contains(&Notification::Runs));
        assert!(received.contains(&Notification::Actions));
        assert!(received.contains(&Notification::CancelRun(run)));
    }

    #[test]
    fn one_notification_is_one_payload_and_unreadable_ones_are_skipped() {
        let thread = ThreadId::generate();
        assert_eq!(
            encode_notifications(&[Notification::ThreadEvents(thread.clone())]),
            vec![format!("events:{thread}")]
        );
        assert!(encode_notifications(&[]).is_empty());
        assert_eq!(
            decode_notifications(&format!("events:nonsense,{thread}")),
            vec![Notification::ThreadEvents(thread)]
        );
        assert!(decode_notifications("cancel:nonsense").is_empty());
        assert!(decode_notifications("something new").is_empty());
    }
}
