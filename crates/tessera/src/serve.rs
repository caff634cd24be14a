//! `tessera serve`: logging set-up, the start-up banner, and running until a stop signal.

use std::io::{IsTerminal as _, Write as _};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use tessera_server::{Application, Config, LogFormat, Overrides};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::ServeArgs;

pub async fn run(config_file: Option<&Path>, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        listen: args.listen,
        public_url: args.public_url,
        database_url: args.database_url,
        log_format: args.log_format.map(Into::into),
        log_level: args.log_level,
    };
    let config = Config::load(config_file, &overrides)?;
    init_tracing(config.log_format, &config.log_level)?;

    let database_url = tessera_server::redact_url(&config.database_url);
    let app = Application::build(config)
        .await
        .context("cannot start the server")?;
    print_banner(&app, &database_url).context("cannot write the banner to standard output")?;

    app.run_until_stopped(tessera_server::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Logs go to standard error, so standard output carries only the banner (which scripts read).
fn init_tracing(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    // The parse error repeats its message in its source; one copy is enough.
    let targets: Targets = filter
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid log_level {filter:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(targets);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.context("cannot install the log subscriber")
}

/// Prints where the server listens, the database, and — on the first start — the deployment and
/// secret key it created. Flushed at once so a parent process reading the pipe sees it.
fn print_banner(app: &Application, database_url: &str) -> std::io::Result<()> {
    let public_url = app.public_url();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "tessera {} listening on http://{}",
        env!("CARGO_PKG_VERSION"),
        app.local_addr()
    )?;
    writeln!(out, "  public URL:  {public_url}")?;
    writeln!(out, "  database:    {} {database_url}", app.backend())?;
    if let Some(bootstrapped) = app.bootstrapped() {
        let deployment = &bootstrapped.deployment;
        writeln!(
            out,
            "  created deployment {} ({})",
            deployment.name, deployment.id
        )?;
        match &bootstrapped.secret_key {
            Some(key) => {
                writeln!(out, "  secret key:  {}", key.expose())?;
                writeln!(
                    out,
                    "               This key will not be shown again: store it now."
                )?;
            }
            None => writeln!(
                out,
                "  secret key:  the key from TESSERA_BOOTSTRAP_SECRET_KEY was installed"
            )?,
        }
    }
    if let Some(admin) = app.bootstrapped_admin() {
        match &admin.password {
            Some(password) => {
                writeln!(
                    out,
                    "  console admin: {} / {}",
                    admin.username,
                    password.expose()
                )?;
                writeln!(
                    out,
                    "               This password will not be shown again: store it now."
                )?;
            }
            None => writeln!(
                out,
                "  console admin: {} (password from TESSERA_BOOTSTRAP_ADMIN_PASSWORD)",
                admin.username
            )?,
        }
    }
    writeln!(
        out,
        "  chat page:   {public_url}/vanity/agents?ticket=… (mint with POST /session/tickets)"
    )?;
    writeln!(out, "  OpenAPI:     {public_url}/openapi.json")?;
    writeln!(out, "  health:      {public_url}/healthz")?;
    writeln!(out, "  metrics:     {public_url}/metrics")?;
    writeln!(out, "Press Ctrl-C to stop.")?;
    out.flush()
}
