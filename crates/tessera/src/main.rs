//! The `tessera` binary: runs the server, administers the database offline, and calls the API.

use std::process::ExitCode;

use clap::Parser;

mod admin;
mod api;
mod cli;
mod openapi;
mod serve;

use cli::{ApiCommand, Cli, Command, DeploymentsCommand, KeysCommand};

/// The server allocates many short-lived buffers on several threads; mimalloc does that
/// with less CPU than glibc's allocator, and (its `override` feature) also serves SQLite's
/// page caches (ARCHITECTURE.md, "Dependencies worth a note").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: "what failed: because …".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Serve(args) => serve::run(config, args).await,
        Command::Migrate(database) => admin::migrate(config, database).await,
        Command::Deployments(DeploymentsCommand::Create {
            name,
            backend_host,
            frontend_host,
            database,
        }) => admin::create_deployment(config, database, &name, backend_host, frontend_host).await,
        Command::Deployments(DeploymentsCommand::Current { remote }) => {
            api::current_deployment(&remote).await
        }
        Command::Keys(KeysCommand::Create {
            deployment,
            name,
            database,
        }) => admin::create_key(config, database, &deployment, &name).await,
        Command::Keys(KeysCommand::RotateSigning { database }) => {
            admin::rotate_signing(config, database).await
        }
        Command::Api(ApiCommand::List) => api::list(),
        Command::Api(ApiCommand::Describe { operation_id }) => api::describe(&operation_id),
        Command::Api(ApiCommand::Call {
            operation_id,
            body,
            data_file,
            content_type,
            params,
            headers,
            remote,
        }) => {
            let body = match (body, data_file) {
                (_, Some(file)) => api::Body::Raw(file, content_type),
                (Some(json), None) => api::Body::Json(json),
                (None, None) => api::Body::None,
            };
            api::call(&remote, &operation_id, body, &params, &headers).await
        }
    }
}
