//! The caller's deployment and its secret keys.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::Label;
use tessera_domain::SecretKeyId;
use tessera_store::NewSecretKey;

use crate::auth::Caller;
use crate::convert;
use crate::error::ApiResult;
use crate::extract::{page_request, ApiJson, ApiJsonOrDefault, ApiQuery, IdPath};
use crate::identity::ClientInfo;
use crate::AppState;

/// The deployment the caller's secret key belongs to.
#[utoipa::path(
    get, path = "/deployments/current", operation_id = "getCurrentDeployment", tag = "deployments",
    responses(
        (status = 200, body = api::Deployment),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_current_deployment(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<api::Deployment>> {
    let deployment = state.store.get_deployment(&caller.scope).await?;
    Ok(Json(convert::deployment(deployment)))
}

/// Updates the caller's deployment: its settings (the default model of agents that name none).
#[utoipa::path(
    patch, path = "/deployments/current", operation_id = "updateCurrentDeployment", tag = "deployments",
    request_body = api::UpdateDeploymentRequest,
    responses(
        (status = 200, body = api::Deployment),
        (status = 400, body = ErrorBody, description = "`invalid_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (e.g. `settings.default_model.provider` is not a configured provider)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn update_current_deployment(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::UpdateDeploymentRequest>,
) -> ApiResult<Json<api::Deployment>> {
    let deployment = match req.settings {
        Some(settings) => {
            let settings = convert::deployment_settings(settings)?;
            if let Some(model) = &settings.default_model {
                super::agents::check_model_provider(
                    &state,
                    model,
                    "settings.default_model.provider",
                )?;
            }
            let updated = state
                .store
                .update_deployment_settings(&caller.scope, &settings)
                .await?;
            state.deployments.forget(&updated.id);
            updated
        }
        None => state.store.get_deployment(&caller.scope).await?,
    };
    Ok(Json(convert::deployment(deployment)))
}

/// Creates a secret key for the caller's deployment. The key is returned once, here.
#[utoipa::path(
    post, path = "/secret-keys", operation_id = "createSecretKey", tag = "secret keys",
    request_body(content = api::CreateSecretKeyRequest, description = "Optional; `{}` or no body names the key `default`."),
    responses(
        (status = 201, body = api::CreatedSecretKey),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_secret_key(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    ApiJsonOrDefault(req): ApiJsonOrDefault<api::CreateSecretKeyRequest>,
) -> ApiResult<(StatusCode, Json<api::CreatedSecretKey>)> {
    let name = Label::parse("name", req.name.unwrap_or_else(|| "default".to_owned()))?;
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let record = state
        .store
        .create_key(
            &caller.scope,
            &NewSecretKey {
                name,
                hash: secret.hash(),
                prefix: secret.display_prefix(),
            },
            &client.by_key(&caller),
        )
        .await?;
    let listed = convert::secret_key(record);
    Ok((
        StatusCode::CREATED,
        Json(api::CreatedSecretKey {
            id: listed.id,
            name: listed.name,
            prefix: listed.prefix,
            created_at: listed.created_at,
            key: secret.expose().to_owned(),
        }),
    ))
}

/// Lists the deployment's secret keys (prefixes only, never the keys).
#[utoipa::path(
    get, path = "/secret-keys", operation_id = "listSecretKeys", tag = "secret keys",
    params(api::PageParams),
    responses(
        (status = 200, body = api::SecretKeyList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_secret_keys(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::PageParams>,
) -> ApiResult<Json<api::SecretKeyList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        SecretKeyId::parse(c).map(|_| ())
    })?;
    let keys = state.store.list_keys(&caller.scope, &page).await?;
    Ok(Json(
        convert::list(keys, convert::secret_key, |k| &k.id).into(),
    ))
}

/// Revokes a secret key; it stops working at once. The last active key cannot be revoked.
#[utoipa::path(
    post, path = "/secret-keys/{key_id}/revoke", operation_id = "revokeSecretKey", tag = "secret keys",
    params(("key_id" = String, Path, description = "Secret key id (`key_…`)")),
    responses(
        (status = 200, body = api::SecretKey),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`secret_key_not_found`"),
        (status = 409, body = ErrorBody, description = "`last_active_key`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn revoke_secret_key(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    IdPath(id): IdPath<SecretKeyId>,
) -> ApiResult<Json<api::SecretKey>> {
    // Recorded in the audit log by the revocation's transaction (a revoked key's revocation
    // changes nothing and is not recorded again).
    let key = state
        .store
        .revoke_key(&caller.scope, &id, &client.by_key(&caller))
        .await?;
    Ok(Json(convert::secret_key(key)))
}
