//! Test support: a fresh, isolated database per test, on SQLite always and on PostgreSQL when
//! `TESSERA_TEST_POSTGRES_URL` is set.
//!
//! Each PostgreSQL test gets its own schema (selected through the connection's `search_path`),
//! so tests run in parallel without colliding. When the variable is set the database is
//! mandatory: an unreachable server fails the test instead of skipping it.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

/// The environment variable naming the PostgreSQL server used by the test suites.
pub const POSTGRES_ENV: &str = "TESSERA_TEST_POSTGRES_URL";

/// A database that exists for one test.
pub struct TestDatabase {
    /// URL to hand to `tessera_store::open` or `tessera serve --database-url`.
    pub url: String,
    backend: crate::Backend,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDatabase {
    /// A new SQLite file in a temporary directory removed on drop.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
        Self {
            url,
            backend: crate::Backend::Sqlite,
            _dir: Some(dir),
            pg: None,
        }
    }

    /// A new schema on the PostgreSQL server of `TESSERA_TEST_POSTGRES_URL`, or `None` when the
    /// variable is unset. Panics when it is set but the server cannot be used.
    pub async fn postgres() -> Option<Self> {
        let admin = std::env::var(POSTGRES_ENV).ok().filter(|v| !v.is_empty())?;
        let schema = format!(
            "tessera_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            tessera_domain::Timestamp::now().as_millis() % 1_000_000
        );
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("{POSTGRES_ENV} is set but PostgreSQL is unreachable: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("cannot create test schema {schema}: {e}"));
        let _ = conn.close().await;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-c%20search_path%3D{schema}");
        Some(Self {
            url,
            backend: crate::Backend::Postgres,
            _dir: None,
            pg: Some((admin, schema)),
        })
    }

    pub fn backend(&self) -> crate::Backend {
        self.backend
    }

    /// Runs one raw SQL statement on its own connection, binding `args` as text to `$1`, `$2`, …
    /// (PostgreSQL needs a cast in the SQL for other column types: `$1::bigint`); returns the
    /// rows it affected. For what no store method writes: rows of features not
    /// built yet (`apps`), or a clock moved for one row (an expired session).
    pub async fn execute(&self, sql: &str, args: &[&str]) -> u64 {
        // The same statement on either backend's connection type.
        macro_rules! on {
            ($connection:ty) => {
                async {
                    let mut conn = <$connection>::connect(&self.url).await?;
                    let mut query = sqlx::query(sql);
                    for arg in args {
                        query = query.bind(*arg);
                    }
                    let done = query.execute(&mut conn).await?;
                    let _ = conn.close().await;
                    Ok(done.rows_affected())
                }
                .await
            };
        }
        let done: Result<u64, sqlx::Error> = match self.backend {
            crate::Backend::Sqlite => on!(sqlx::SqliteConnection),
            crate::Backend::Postgres => on!(sqlx::PgConnection),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Drops the PostgreSQL schema (call at the end of a passing test; a failing test leaves
    /// it for inspection). SQLite files go with the temporary directory.
    pub async fn cleanup(self) {
        if let Some((admin, schema)) = &self.pg {
            if let Ok(mut conn) = sqlx::PgConnection::connect(admin).await {
                let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                    .execute(&mut conn)
                    .await;
                let _ = conn.close().await;
            }
        }
    }
}

/// An agent specification with `name` and `description` and every other field at its default:
/// no model (the deployment's), tools, sub-agents, tags or approval rules; default limits; the
/// `enqueue` policy.
pub fn agent_spec(name: &str, description: &str) -> tessera_domain::agent::AgentSpec {
    use tessera_domain::validate::{Description, Label};
    tessera_domain::agent::AgentSpec {
        name: Label::parse("name", name).unwrap_or_else(|e| panic!("agent name {name:?}: {e}")),
        description: Description::parse("description", description)
            .unwrap_or_else(|e| panic!("agent description {description:?}: {e}")),
        model: None,
        tool_ids: vec![],
        sub_agent_ids: vec![],
        capability_tags: vec![],
        endpoint_slug: None,
        approval_rules: vec![],
        limits: tessera_domain::agent::AgentLimits::default(),
        multitask: tessera_domain::agent::MultitaskPolicy::Enqueue,
    }
}

/// A message of `run` on `thread` with `role` and `text`, a fresh id and the current time, and
/// nothing else (no tool calls, attachments or usage).
pub fn message(
    thread: &tessera_domain::ThreadId,
    run: &tessera_domain::RunId,
    role: tessera_domain::thread::Role,
    text: &str,
) -> tessera_domain::thread::Message {
    tessera_domain::thread::Message {
        id: tessera_domain::MessageId::generate(),
        thread_id: thread.clone(),
        run_id: Some(run.clone()),
        role,
        content: text.to_owned(),
        tool_calls: vec![],
        tool_call_id: None,
        tool_name: None,
        is_error: false,
        attachments: vec![],
        usage: None,
        created_at: tessera_domain::Timestamp::now(),
    }
}

/// Runs `body` once per available backend, each on a fresh database. Prints a skip notice for
/// PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is unset.
///
/// It expands to modules `sqlite` and `postgres`, so call it once per module:
///
/// ```ignore
/// backend_tests!(creates_actor, lists_actors);
/// async fn creates_actor(db: &TestDatabase) { … }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = $crate::testing::TestDatabase::sqlite();
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(db) = $crate::testing::TestDatabase::postgres().await else {
                        eprintln!(
                            "skipped: {} is not set, PostgreSQL test not run",
                            $crate::testing::POSTGRES_ENV
                        );
                        return;
                    };
                    super::$name(&db).await;
                    db.cleanup().await;
                }
            )*
        }
    };
}

/// A database error with SQLSTATE `code` and nothing else, as a driver would report it: for
/// tests of how errors are classified (`"40P01"`, a deadlock, is transient).
pub fn database_error(code: &'static str) -> crate::StoreError {
    crate::StoreError::Database(sqlx::Error::Database(Box::new(Coded(code))))
}

/// A database error carrying only its SQLSTATE code (see [`database_error`]).
#[derive(Debug)]
struct Coded(&'static str);

impl std::fmt::Display for Coded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sqlstate {}", self.0)
    }
}

impl std::error::Error for Coded {}

impl sqlx::error::DatabaseError for Coded {
    fn message(&self) -> &str {
        self.0
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(std::borrow::Cow::Borrowed(self.0))
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::Other
    }
}
