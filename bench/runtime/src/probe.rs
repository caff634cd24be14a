//! The storage floor: how long small write transactions take on this machine's database, with
//! the same durability settings as the server, on an idle process and while the throughput phase
//! runs.
//!
//! The transactions go to scratch tables next to the benchmark's database (a separate SQLite file
//! in the same directory, so they never wait for the server's write lock; a table in the
//! benchmark's PostgreSQL schema). SQLite runs one writer at a time and a transaction holds the
//! lock from `BEGIN IMMEDIATE` to its commit, so how long a write transaction takes bounds
//! SQLite's turns/s: `1 / (write transactions per turn × that time)`. The *loaded* figure shows
//! how much longer a transaction lasts when the process is busy, because every statement is an
//! `await` that must be scheduled again.

use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions as _, Connection as _};
use tokio::task::JoinHandle;

use crate::server::Database;
use crate::stats::Distribution;
use crate::Synchronous;

/// Pause between two loaded transactions, so that the probe itself adds little load.
const LOADED_EVERY: Duration = Duration::from_millis(10);
/// Transactions timed per idle figure (after a few untimed ones).
const SAMPLES: usize = 200;
const WARM_UP: usize = 10;

const CREATE_SQLITE: &str = "CREATE TABLE probe (id INTEGER PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE probe_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, data TEXT);
    INSERT INTO probe_counter (id, n) VALUES (1, 0)";
const CREATE_POSTGRES: &str = "CREATE TABLE probe (id BIGSERIAL PRIMARY KEY, data TEXT NOT NULL);
    CREATE TABLE probe_counter (id BIGINT PRIMARY KEY, n BIGINT NOT NULL, data TEXT);
    INSERT INTO probe_counter (id, n) VALUES (1, 0)";
/// A one-row insert, and an update of one hot row (like a thread's event counter).
const STATEMENTS: [&str; 2] = [
    "INSERT INTO probe (data) VALUES ($1)",
    "UPDATE probe_counter SET n = n + 1, data = $1 WHERE id = 1",
];

/// Sequential write transactions of two sizes, on an idle process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    /// `BEGIN`, one `INSERT`, `COMMIT`.
    pub one_statement: Distribution,
    /// `BEGIN`, four statements (`INSERT`, `UPDATE` of one hot row, `INSERT`, `UPDATE`: the
    /// shape of the runtime's `record_step`), `COMMIT`.
    pub four_statements: Distribution,
}

/// A connection to the scratch tables.
pub enum Probe {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Probe {
    /// Connects and creates the scratch tables.
    pub async fn open(database: &Database, synchronous: Synchronous) -> anyhow::Result<Self> {
        match database {
            Database::Sqlite { dir, .. } => {
                let url = format!("sqlite://{}", dir.path().join("probe.db").display());
                let mut conn = SqliteConnectOptions::from_str(&url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(match synchronous {
                        Synchronous::Full => SqliteSynchronous::Full,
                        Synchronous::Normal => SqliteSynchronous::Normal,
                    })
                    .connect()
                    .await?;
                sqlx::raw_sql(CREATE_SQLITE).execute(&mut conn).await?;
                Ok(Probe::Sqlite(conn))
            }
            Database::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                sqlx::raw_sql(CREATE_POSTGRES).execute(&mut conn).await?;
                Ok(Probe::Postgres(conn))
            }
        }
    }

    /// One write transaction of `statements` statements; how long it took.
    async fn transaction(&mut self, statements: usize, i: usize) -> anyhow::Result<Duration> {
        let started = Instant::now();
        match self {
            Probe::Sqlite(conn) => {
                let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
                for s in 0..statements {
                    sqlx::query(STATEMENTS[s % 2])
                        .bind(format!("row {i}"))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            Probe::Postgres(conn) => {
                let mut tx = conn.begin().await?;
                for s in 0..statements {
                    sqlx::query(STATEMENTS[s % 2])
                        .bind(format!("row {i}"))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
        }
        Ok(started.elapsed())
    }

    /// Times sequential transactions of one and of four statements.
    pub async fn floor(&mut self) -> anyhow::Result<Floor> {
        let mut sizes = [Distribution::default(); 2];
        for (slot, statements) in sizes.iter_mut().zip([1, 4]) {
            let mut times = Vec::with_capacity(SAMPLES);
            for i in 0..SAMPLES + WARM_UP {
                let took = self.transaction(statements, i).await?;
                if i >= WARM_UP {
                    times.push(took);
                }
            }
            *slot = Distribution::of(times);
        }
        Ok(Floor {
            one_statement: sizes[0],
            four_statements: sizes[1],
        })
    }

    /// Runs a four-statement transaction every 10 ms until [`LoadedProbe::finish`].
    pub fn start_loaded(mut self) -> LoadedProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut times = Vec::new();
            let mut i = 0;
            while !flag.load(Ordering::Relaxed) {
                times.push(self.transaction(4, i).await?);
                i += 1;
                tokio::time::sleep(LOADED_EVERY).await;
            }
            self.close().await;
            Ok(times)
        });
        LoadedProbe { stop, task }
    }

    async fn close(self) {
        let _ = match self {
            Probe::Sqlite(conn) => conn.close().await,
            Probe::Postgres(conn) => conn.close().await,
        };
    }
}

/// Transactions timed in the background while the server is busy.
pub struct LoadedProbe {
    stop: Arc<AtomicBool>,
    task: JoinHandle<anyhow::Result<Vec<Duration>>>,
}

impl LoadedProbe {
    pub async fn finish(self) -> anyhow::Result<Distribution> {
        self.stop.store(true, Ordering::Relaxed);
        let times = self.task.await??;
        Ok(Distribution::of(times))
    }
}
