//! Tessera's HTTP server: routing, authentication, error mapping, OpenAPI and observability.
//!
//! Architecture invariant: this is the only crate that knows HTTP. Handlers are thin: they
//! parse the request into domain values (rejecting bad input with a 4xx naming the field), call
//! the store with the caller's scope, and map the result to wire types. Status codes come from
//! the one error table in `tessera-api`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::serve::ListenerExt as _;
use tessera_domain::records::Deployment;
use tessera_domain::secret::PlainSecret;
use tessera_runtime::board_scheduler::BoardSchedulerHandle;
use tessera_runtime::board_tools::{BoardTools, ToolChain};
use tessera_runtime::code_tools::{CodeToolSettings, CodeTools};
use tessera_runtime::driver::{ModelChoice, Runtime, RuntimeConfig};
use tessera_runtime::hub::Hub;
use tessera_runtime::provider::ProviderRegistry;
use tessera_runtime::tool_net::NetPolicy;
use tessera_runtime::tool_records::ToolRecordsConfig;
use tessera_runtime::tools::InternalTools;
use tessera_store::Store;
use tokio::net::TcpListener;

mod auth;
mod bootstrap;
pub mod config;
mod convert;
mod convert_boards;
mod convert_identity;
mod convert_tools;
mod deployment_cache;
mod error;
mod extract;
mod identity;
mod observe;
mod openapi;
mod routes;
mod stream;

pub use config::{
    Config, IdentitySettings, LogFormat, Overrides, Secret, SessionSettings, ToolSettings,
};
pub use identity::rotate_signing_key;
pub use openapi::openapi_document;

/// What handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<observe::Metrics>,
    pub runtime: Arc<Runtime>,
    pub identity: identity::SharedIdentity,
    /// Wakes this node's board scheduler when an item is created or rescheduled here.
    pub board_scheduler: BoardSchedulerHandle,
    /// Largest accepted workspace upload.
    pub max_upload_bytes: u64,
    /// How long `askAgentPool` waits for a turn (`sessions.ask_wait_seconds`).
    pub ask_wait: Duration,
    /// Deployment records for the hot paths (see `deployment_cache.rs`).
    pub deployments: Arc<deployment_cache::DeploymentCache>,
}

/// What the first start on an empty database created.
pub struct Bootstrapped {
    pub deployment: Deployment,
    /// The generated secret key, to print once. `None` when the operator supplied it through
    /// `TESSERA_BOOTSTRAP_SECRET_KEY` (they already know it).
    pub secret_key: Option<PlainSecret>,
}

/// The console admin a start created (on the first start that found none).
pub struct BootstrappedAdmin {
    pub username: String,
    /// The generated password, to print once. `None` when the operator supplied it through
    /// `TESSERA_BOOTSTRAP_ADMIN_PASSWORD`.
    pub password: Option<PlainSecret>,
}

/// A server bound to its listener and ready to run.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    store: Arc<dyn Store>,
    runtime: Arc<Runtime>,
    board_scheduler: BoardSchedulerHandle,
    public_url: String,
    shutdown_timeout: Duration,
    bootstrapped: Option<Bootstrapped>,
    admin: Option<BootstrappedAdmin>,
}

impl Application {
    /// Opens and migrates the database, creates deployment `default` on an empty database,
    /// binds the listener (port 0 picks a free port) and assembles the routes.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let providers = ProviderRegistry::from_config(&config.providers)
            .map_err(|e| anyhow::anyhow!("invalid [providers] configuration: {e}"))?;
        anyhow::ensure!(
            providers.contains(&config.runtime.default_provider),
            "runtime.default_provider {:?} is not a configured provider",
            config.runtime.default_provider
        );
        let store = tessera_store::open(&config.database_url, &config.connect_options())
            .await
            .with_context(|| {
                format!(
                    "cannot open the database {}",
                    redact_url(&config.database_url)
                )
            })?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let public_url = config.public_url_at(local_addr);
        let bootstrapped = bootstrap::run(store.as_ref(), &config, &public_url).await?;
        let admin = bootstrap::console_admin(store.as_ref(), &config).await?;
        let identity = Arc::new(identity::Identity::new(&config, &public_url)?);
        identity.check_signing_keys(store.as_ref()).await?;
        identity.check_tool_secrets(store.as_ref()).await?;
        // One sandbox for `execute_code` and CodeRunner tools alike.
        let code_tools = Arc::new(CodeTools::new(
            Arc::new(tessera_runtime::sandbox::Sandbox::new(
                config.sandbox.clone(),
            )),
            CodeToolSettings {
                network: config.sandbox.execute_code_network,
                max_file_bytes: config.max_upload_bytes,
                ..CodeToolSettings::default()
            },
        ));
        let toolkits =
            tessera_runtime::toolkits::HttpToolkitProvider::from_config(&config.toolkits)
                .map_err(|e| anyhow::anyhow!("invalid [toolkits] configuration: {e}"))?
                .map(|provider| {
                    tracing::info!(provider = ?provider, "toolkits enabled");
                    Arc::new(tessera_runtime::toolkits::Toolkits::new(
                        Arc::new(provider),
                        Duration::from_secs(config.toolkits.tools_cache_seconds),
                    ))
                });
        let tool_records = Arc::new(ToolRecordsConfig {
            net: NetPolicy::new(&config.tools.allow_hosts)
                .map_err(|e| anyhow::anyhow!("tools.allow_hosts: {e}"))?,
            max_response_bytes: config.tools.max_response_bytes,
            max_redirects: config.tools.max_redirects,
            credentials: Arc::new(identity::ToolKeys {
                identity: identity.clone(),
                store: store.clone(),
            }),
            code: Some(code_tools.clone()),
            mcp: config.mcp,
            mcp_clients: Default::default(),
            toolkits,
            tool_timeout: Duration::from_secs(config.runtime.tool_timeout_seconds),
        });
        let board_scheduler = BoardSchedulerHandle::default();
        let runtime = Arc::new(Runtime {
            store: store.clone(),
            providers,
            tools: Arc::new(ToolChain::new(vec![
                Arc::new(InternalTools),
                Arc::new(BoardTools::new(board_scheduler.clone())),
                code_tools.clone(),
            ])),
            hub: Arc::new(Hub::new()),
            config: RuntimeConfig {
                workers: config.runtime.workers,
                lease: Duration::from_secs(config.runtime.lease_seconds),
                poll_interval: Duration::from_millis(config.runtime.poll_interval_ms),
                default_model: ModelChoice {
                    provider: config.runtime.default_provider.clone(),
                    model: config.runtime.default_model.clone(),
                },
                tool_timeout: Duration::from_secs(config.runtime.tool_timeout_seconds),
                node_id: format!("{}:{}", local_addr, tessera_domain::RequestId::generate()),
                action_expiry_seconds: config.sessions.action_expiry_seconds,
                slot_retention: Duration::from_secs(
                    u64::from(config.runtime.board_slot_retention_days) * 86_400,
                ),
                upload_grace: Duration::from_secs(config.runtime.orphan_upload_grace_seconds),
                burst_hold: tessera_runtime::board_scheduler::FIRST,
            },
            tool_records: Some(tool_records),
        });
        let state = AppState {
            store: store.clone(),
            metrics: Arc::new(observe::Metrics::new()),
            runtime: runtime.clone(),
            identity,
            board_scheduler: board_scheduler.clone(),
            max_upload_bytes: config.max_upload_bytes,
            ask_wait: Duration::from_secs(config.sessions.ask_wait_seconds),
            deployments: Arc::default(),
        };
        let router = routes::router(state, config.max_body_bytes);
        Ok(Self {
            listener,
            router,
            store,
            runtime,
            board_scheduler,
            public_url,
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_seconds),
            bootstrapped,
            admin,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The public origin (configured, or `http://` + the bound address).
    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    /// The database backend in use (`sqlite` or `postgres`).
    pub fn backend(&self) -> &'static str {
        self.store.backend().as_str()
    }

    /// Set when this start created deployment `default`.
    pub fn bootstrapped(&self) -> Option<&Bootstrapped> {
        self.bootstrapped.as_ref()
    }

    /// Set when this start created the console admin.
    pub fn bootstrapped_admin(&self) -> Option<&BootstrappedAdmin> {
        self.admin.as_ref()
    }

    /// Serves until `shutdown` completes, then stops accepting connections, lets in-flight
    /// requests finish (up to the configured timeout) and closes the database.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let (workers_stop, workers_rx) = tokio::sync::watch::channel(false);
        let workers_stop = Arc::new(workers_stop);
        let scheduler = AbortOnDrop(tokio::spawn(
            tessera_runtime::scheduler::run_action_scheduler(
                self.runtime.clone(),
                workers_rx.clone(),
            ),
        ));
        let mut workers = tokio::spawn(tessera_runtime::worker::run_workers(
            self.runtime.clone(),
            workers_rx.clone(),
        ));
        // The board scheduler fires board item slots; it stops with the workers (the action
        // scheduler above expires pending actions).
        let mut board_scheduler =
            tokio::spawn(tessera_runtime::board_scheduler::run_board_scheduler(
                self.runtime.clone(),
                self.board_scheduler.clone(),
                workers_rx,
            ));
        let graceful = {
            let workers_stop = workers_stop.clone();
            async move {
                shutdown.await;
                let _ = workers_stop.send(true);
                let _ = stopping_tx.send(());
            }
        };
        // Streamed answers are many small writes (SSE deltas); without TCP_NODELAY each can
        // wait ~40 ms for the client's delayed ACK (Nagle's algorithm).
        let listener = self.listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let serve = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(graceful);
        let timeout = self.shutdown_timeout;
        let drained = async move {
            // Only starts counting once shutdown was requested.
            if stopping_rx.await.is_ok() {
                tokio::time::sleep(timeout).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = serve => result.context("server error")?,
            () = drained => tracing::warn!(
                timeout_seconds = timeout.as_secs(),
                "in-flight requests did not finish in time; stopping anyway"
            ),
        }
        // The workers release the runs in flight (bounded wait) before the database closes.
        let _ = workers_stop.send(true);
        if tokio::time::timeout(Duration::from_secs(10), &mut workers)
            .await
            .is_err()
        {
            workers.abort();
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut board_scheduler)
            .await
            .is_err()
        {
            board_scheduler.abort();
        }
        drop(scheduler);
        self.store.close().await;
        Ok(())
    }
}

/// Aborts a background task when dropped (also when serving fails early).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A database URL with any password replaced, safe to print.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_owned(),
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://./x.db"), "sqlite://./x.db");
    }
}
