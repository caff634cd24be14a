//! First start on an empty database: create deployment `default` and its first secret key.

use anyhow::Context as _;
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::{DeploymentName, Label};
use tessera_store::{NewSecretKey, Store};

use crate::{Bootstrapped, Config};

pub(crate) const DEFAULT_DEPLOYMENT: &str = "default";

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
