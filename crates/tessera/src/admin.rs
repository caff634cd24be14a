//! Offline operator commands that work directly on the database: `migrate`,
//! `deployments create`, `keys create` and `keys rotate-signing`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use tessera_domain::identity::{AuditActor, AuditBy, AuditClient};
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::{DeploymentName, Label};
use tessera_domain::Scope;
use tessera_server::{Config, Overrides};
use tessera_store::{Conflict, NewSecretKey, Store, StoreError};

use crate::cli::DatabaseArgs;

/// The name of the key `deployments create` makes along with the deployment.
const FIRST_KEY_NAME: &str = "first key";

fn load_config(config_file: Option<&Path>, database: DatabaseArgs) -> anyhow::Result<Config> {
    Config::load(
        config_file,
        &Overrides {
            database_url: database.database_url,
            ..Overrides::default()
        },
    )
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    tessera_store::open(&config.database_url, &config.connect_options())
        .await
        .with_context(|| {
            format!(
                "cannot open the database {}",
                tessera_server::redact_url(&config.database_url)
            )
        })
}

/// A fresh secret key: the plaintext to print once and the form that is stored.
fn new_key(name: &str) -> anyhow::Result<(PlainSecret, NewSecretKey)> {
    let name = Label::parse("name", name).map_err(|e| anyhow::anyhow!("invalid key {e}"))?;
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let key = NewSecretKey {
        name,
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    Ok((secret, key))
}

fn print_secret(secret: &PlainSecret) {
    println!("secret key: {}", secret.expose());
    println!("This key will not be shown again: store it now.");
}

pub async fn migrate(
    config_file: Option<&Path>,
    database: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_file, database)?;
    let url = tessera_server::redact_url(&config.database_url);
    let report = tessera_store::migrate(&config.database_url, &config.connect_options())
        .await
        .with_context(|| format!("cannot migrate the database {url}"))?;
    if report.applied.is_empty() {
        println!("{url} is up to date");
    } else {
        println!("applied to {url}:");
        for (version, name) in &report.applied {
            println!("  {version:>4}  {name}");
        }
    }
    println!("schema version: {}", report.current_version);
    Ok(ExitCode::SUCCESS)
}

pub async fn create_deployment(
    config_file: Option<&Path>,
    database: DatabaseArgs,
    name: &str,
    backend_host: Option<String>,
    frontend_host: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_file, database)?;
    let name = DeploymentName::parse("name", name)
        .map_err(|e| anyhow::anyhow!("invalid deployment {e}"))?;
    let backend_host = origin("--backend-host", backend_host, &config)?;
    let frontend_host = origin("--frontend-host", frontend_host, &config)?;
    let (secret, key) = new_key(FIRST_KEY_NAME)?;
    let new = NewDeployment {
        name: name.clone(),
        backend_host,
        frontend_host,
    };

    let store = open_store(&config).await?;
    let created = store.create_deployment(&new, &key).await;
    store.close().await;
    let (deployment, _) = match created {
        Ok(created) => created,
        Err(StoreError::Conflict(Conflict::DeploymentNameTaken)) => {
            anyhow::bail!("a deployment named {name} already exists")
        }
        Err(err) => return Err(err).context("cannot create the deployment"),
    };
    println!("created deployment {} ({})", deployment.name, deployment.id);
    println!("backend host:  {}", deployment.backend_host);
    println!("frontend host: {}", deployment.frontend_host);
    print_secret(&secret);
    Ok(ExitCode::SUCCESS)
}

/// A host flag's value, or the configured public URL; an origin without a trailing slash.
fn origin(flag: &str, value: Option<String>, config: &Config) -> anyhow::Result<String> {
    let Some(value) = value else {
        return Ok(config.public_url());
    };
    anyhow::ensure!(
        value.starts_with("http://") || value.starts_with("https://"),
        "{flag} must start with http:// or https:// (got {value:?})"
    );
    Ok(value.trim_end_matches('/').to_owned())
}

pub async fn create_key(
    config_file: Option<&Path>,
    database: DatabaseArgs,
    deployment: &str,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_file, database)?;
    let (secret, key) = new_key(name)?;
    let store = open_store(&config).await?;
    let result = async {
        let found = store
            .find_deployment(deployment)
            .await
            .context("cannot look up the deployment")?
            .with_context(|| format!("no deployment has the id or name {deployment:?}"))?;
        let record = store
            .create_key(
                &Scope::deployment(found.id.clone()),
                &key,
                &AuditBy {
                    actor: AuditActor::Operator,
                    client: AuditClient::default(),
                },
            )
            .await
            .context("cannot create the key")?;
        anyhow::Ok((found, record))
    }
    .await;
    store.close().await;
    let (deployment, record) = result?;
    println!(
        "created secret key {:?} ({}) for deployment {} ({})",
        record.name, record.id, deployment.name, deployment.id
    );
    print_secret(&secret);
    Ok(ExitCode::SUCCESS)
}

pub async fn rotate_signing(
    config_file: Option<&Path>,
    database: DatabaseArgs,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_file, database)?;
    let store = open_store(&config).await?;
    let result = tessera_server::rotate_signing_key(&config, store.as_ref()).await;
    store.close().await;
    let kid = result?;
    println!("new signing key: {kid}");
    println!(
        "New user tokens are signed with it; tokens signed before stay valid until they expire."
    );
    Ok(ExitCode::SUCCESS)
}
