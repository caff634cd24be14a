//! The command line: every subcommand, flag and environment variable of `tessera`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Tessera: a self-hosted agent session server.
///
/// `tessera serve` runs the server; `migrate`, `deployments create` and `keys create` work
/// directly on the database; `deployments current` and `api call` talk to a running server.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file to read (default: `tessera.toml` in the working directory, when it
    /// exists). Used by `serve`, `migrate`, `deployments create` and `keys create`.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the server (API, browser pages, workers) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Apply pending database migrations and print the schema version.
    Migrate(DatabaseArgs),
    /// Create deployments (on the database) or show the caller's deployment (through the API).
    #[command(subcommand)]
    Deployments(DeploymentsCommand),
    /// Create secret keys and rotate the token signing key (on the database).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// List, describe and call the API's operations by operationId.
    #[command(subcommand)]
    Api(ApiCommand),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Public origin clients reach the server at [default: http://{listen}].
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`
    /// [default: sqlite://./tessera-data/tessera.db].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Log line format (logs go to standard error) [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Log filter: a level (`info`) or per-target levels (`warn,tessera_server=debug`)
    /// [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for tessera_server::LogFormat {
    fn from(value: LogFormatArg) -> Self {
        match value {
            LogFormatArg::Text => tessera_server::LogFormat::Text,
            LogFormatArg::Json => tessera_server::LogFormat::Json,
        }
    }
}

/// The database of the offline commands; the configuration's when not given.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// `sqlite://…` or `postgres://…` [default: from the configuration].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// Where the API is and how to authenticate to it.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Base URL of the Tessera server.
    #[arg(
        long,
        env = "TESSERA_URL",
        value_name = "URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub url: String,
    /// Secret key (`tsk_…`) of the deployment to act as.
    #[arg(
        long,
        env = "TESSERA_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentsCommand {
    /// Create a deployment and its first secret key, directly on the database.
    Create {
        /// Name: 1-63 characters, lowercase letters, digits and `-`, starting with a letter or
        /// digit.
        name: String,
        /// Origin of the backend API and vanity pages [default: the configured public URL].
        #[arg(long, value_name = "URL")]
        backend_host: Option<String>,
        /// Origin of the deployment's own app [default: the configured public URL].
        #[arg(long, value_name = "URL")]
        frontend_host: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Print the deployment the API key belongs to (`getCurrentDeployment`), as JSON.
    Current {
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a secret key for a deployment, directly on the database; prints it once.
    Create {
        /// The deployment's id (`dep_…`) or name.
        #[arg(long, value_name = "ID_OR_NAME")]
        deployment: String,
        /// A label for the key, shown in key lists.
        #[arg(long, value_name = "NAME", default_value = "cli")]
        name: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Make a new current key for signing user tokens, directly on the database. Older keys
    /// stay published in /.well-known/jwks.json until the tokens they signed expired. Needs
    /// the same secrets key as the servers (TESSERA_SECRETS_KEY or the key file).
    RotateSigning {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiCommand {
    /// List every operation: operationId, method, path and summary.
    List,
    /// Show an operation's parameters, request body and response schema.
    Describe {
        /// The operation, e.g. `createActor` (see `tessera api list`).
        operation_id: String,
    },
    /// Call an operation on a running server and print the JSON answer.
    ///
    /// Exits with status 1 and prints the answer to standard error when the server answers
    /// with a non-2xx status.
    Call {
        /// The operation, e.g. `createActor` (see `tessera api list`).
        operation_id: String,
        /// JSON request body: inline, `@file.json`, or `@-` for standard input.
        #[arg(long, value_name = "JSON", allow_hyphen_values = true)]
        body: Option<String>,
        /// A raw (non-JSON) request body read from a file, or `-` for standard input: file
        /// uploads (`uploadProjectTaskBoardItemFilesystemFile`).
        #[arg(long, value_name = "FILE", conflicts_with = "body")]
        data_file: Option<std::path::PathBuf>,
        /// The media type of `--data-file`.
        #[arg(
            long,
            value_name = "TYPE",
            default_value = "application/octet-stream",
            requires = "data_file"
        )]
        content_type: String,
        /// A parameter: fills the `{KEY}` placeholder of the path, or else becomes a query
        /// parameter. Repeatable.
        #[arg(long = "param", short = 'p', value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// An extra request header, e.g. `-H 'Idempotency-Key: order-17'`. Repeatable.
        #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
        headers: Vec<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
