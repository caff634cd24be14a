//! A fresh database per backend and a real `tessera_server::Application` on it, running in this
//! process on `127.0.0.1:0`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::Connection as _;
use tessera_runtime::provider::ProviderConfig;
use tessera_server::config::{DatabaseConfig, RuntimeSettings, SqliteSynchronous};
use tessera_server::{Application, Config};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Args, Backend, Synchronous};

/// A database that exists for one benchmark run.
pub enum Database {
    /// A file in a temporary directory, removed on drop.
    Sqlite { url: String, dir: tempfile::TempDir },
    /// A schema of its own on the PostgreSQL server, selected through `search_path`.
    Postgres {
        url: String,
        admin_url: String,
        schema: String,
    },
}

impl Database {
    pub async fn create(backend: Backend, postgres_url: &str) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("bench-runtime-")
                    .tempdir()
                    .context("cannot create a temporary directory for the SQLite database")?;
                let url = format!("sqlite://{}", dir.path().join("tessera.db").display());
                Ok(Database::Sqlite { url, dir })
            }
            Backend::Postgres => {
                let millis = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default();
                let schema = format!("bench_runtime_{}_{}", std::process::id(), millis);
                let mut conn = sqlx::PgConnection::connect(postgres_url)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot connect to PostgreSQL at {}",
                            tessera_server::redact_url(postgres_url)
                        )
                    })?;
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("cannot create schema {schema}"))?;
                let _ = conn.close().await;
                let sep = if postgres_url.contains('?') { '&' } else { '?' };
                let url = format!("{postgres_url}{sep}options=-c%20search_path%3D{schema}");
                Ok(Database::Postgres {
                    url,
                    admin_url: postgres_url.to_owned(),
                    schema,
                })
            }
        }
    }

    pub fn url(&self) -> &str {
        match self {
            Database::Sqlite { url, .. } | Database::Postgres { url, .. } => url,
        }
    }

    /// Drops the PostgreSQL schema; the SQLite directory goes when `self` is dropped.
    pub async fn remove(self) -> anyhow::Result<()> {
        if let Database::Postgres {
            admin_url, schema, ..
        } = &self
        {
            let mut conn = sqlx::PgConnection::connect(admin_url).await?;
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&mut conn)
                .await
                .with_context(|| format!("cannot drop schema {schema}"))?;
            let _ = conn.close().await;
        }
        Ok(())
    }
}

/// A running server and an SDK client holding its bootstrap key.
pub struct Server {
    pub client: tessera_client::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Builds the application on `database_url` with `providers` and starts serving.
    pub async fn start(
        args: &Args,
        database_url: &str,
        providers: BTreeMap<String, ProviderConfig>,
        default_provider: &str,
    ) -> anyhow::Result<Self> {
        let config = Config {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.to_owned(),
            database: DatabaseConfig {
                max_connections: args.db_connections,
                sqlite_pin_writer: !args.no_pin_writer,
                sqlite_synchronous: match args.sqlite_synchronous {
                    Synchronous::Full => SqliteSynchronous::Full,
                    Synchronous::Normal => SqliteSynchronous::Normal,
                },
                ..DatabaseConfig::default()
            },
            shutdown_timeout_seconds: 5,
            runtime: RuntimeSettings {
                workers: args.workers as usize,
                default_provider: default_provider.to_owned(),
                default_model: "echo".to_owned(),
                ..RuntimeSettings::default()
            },
            providers,
            ..Config::default()
        };
        let app = Application::build(config)
            .await
            .context("the server does not start")?;
        let key = app
            .bootstrapped()
            .and_then(|b| b.secret_key.as_ref())
            .map(|k| k.expose().to_owned())
            .context("a fresh database should have produced a bootstrap secret key")?;
        let base_url = format!("http://{}", app.local_addr());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        Ok(Server {
            client: tessera_client::Client::new(base_url, key),
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops the server (open streams must be dropped first) and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .context("the server did not stop within 15 s")?
            .context("the server task panicked")?
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
