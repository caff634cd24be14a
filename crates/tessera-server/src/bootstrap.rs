//! First start on an empty database: create deployment `default` and its first secret key.

use anyhow::Context as _;
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::{DeploymentName, Label};
use tessera_store::{NewSecretKey, Store};

use crate::{Bootstrapped, BootstrappedAdmin, Config};

pub(crate) const DEFAULT_DEPLOYMENT: &str = "default";
/// The console admin created on the first start.
pub(crate) const DEFAULT_ADMIN: &str = "admin";
/// Prefix of generated console admin passwords (`tap_` + 256 random bits).
const ADMIN_PASSWORD_PREFIX: &str = "tap";

/// Creates deployment `default` when no deployment exists yet. Safe when several nodes start at
/// once: the store creates it in one serialised transaction, and only that caller gets `Some`.
pub(crate) async fn run(
    store: &dyn Store,
    config: &Config,
    public_url: &str,
) -> anyhow::Result<Option<Bootstrapped>> {
    let (secret, operator_supplied) = match &config.bootstrap_secret_key {
        Some(key) => (PlainSecret::from_operator(key.expose().to_owned()), true),
        None => (PlainSecret::generate(SECRET_KEY_PREFIX), false),
    };
    let new = NewDeployment {
        name: DeploymentName::parse("name", DEFAULT_DEPLOYMENT)?,
        backend_host: public_url.to_owned(),
        frontend_host: public_url.to_owned(),
    };
    let key = NewSecretKey {
        name: Label::parse("name", "bootstrap")?,
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    let created = store
        .bootstrap_deployment(&new, &key)
        .await
        .context("cannot create the default deployment")?;
    Ok(created.map(|(deployment, _)| {
        tracing::info!(deployment_id = %deployment.id, "created deployment `default` on an empty database");
        Bootstrapped {
            deployment,
            secret_key: (!operator_supplied).then_some(secret),
        }
    }))
}

/// Creates console admin `admin` when the installation has none: with
/// `TESSERA_BOOTSTRAP_ADMIN_PASSWORD`, or a generated password returned to be printed once.
/// Runs on every start (also on databases created before the console existed); concurrent
/// nodes create one admin.
pub(crate) async fn console_admin(
    store: &dyn Store,
    config: &Config,
) -> anyhow::Result<Option<BootstrappedAdmin>> {
    if store
        .console_admin_credentials(DEFAULT_ADMIN)
        .await
        .context("cannot read the console admins")?
        .is_some()
    {
        return Ok(None);
    }
    let (password, supplied) = match &config.bootstrap_admin_password {
        Some(p) => (PlainSecret::from_operator(p.expose().to_owned()), true),
        None => (PlainSecret::generate(ADMIN_PASSWORD_PREFIX), false),
    };
    let presented =
        tessera_domain::identity::Password::presented("password", password.expose().to_owned())?;
    let hash =
        tokio::task::spawn_blocking(move || tessera_domain::password::hash_password(&presented))
            .await
            .context("hashing the admin password")?
            .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {e}"))?;
    let created = store
        .bootstrap_console_admin(DEFAULT_ADMIN, &hash)
        .await
        .context("cannot create the console admin")?;
    Ok(created.map(|admin| {
        tracing::info!(admin_id = %admin.id, "created console admin `admin`");
        BootstrappedAdmin {
            username: admin.username,
            password: (!supplied).then_some(password),
        }
    }))
}
