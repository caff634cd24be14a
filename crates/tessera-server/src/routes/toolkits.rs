//! Third-party toolkits (`/ai/toolkits`, `/ai/actors/{actor_id}/toolkits`): the `Virtual`
//! tools. The deployment enables toolkits of the server's toolkit provider; an actor connects
//! one (a connected account at the provider, authorized by the end user at its
//! `redirect_url`), and from then on its tools surface to that actor's runs.
//!
//! Statuses come from the provider: `listActorToolkits` and `connectActorToolkit` ask it about
//! the connections they show, and runs ask about pending ones when they start.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::toolkit::{
    check_redirect_url, ConnectionStatus, Toolkit, ToolkitConnection, ToolkitSettings, ToolkitSlug,
};
use tessera_domain::{ActorId, ConnectionId, Timestamp};
use tessera_runtime::toolkits::{ToolkitError, Toolkits};
use tessera_store::Entity;

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiJsonOrDefault, IdPath, IdPath2, PathId};
use crate::AppState;

impl PathId for ToolkitSlug {
    const ENTITY: Entity = Entity::Toolkit;
    fn parse_id(raw: &str) -> Option<Self> {
        ToolkitSlug::parse("toolkit", raw).ok()
    }
}

/// The node's toolkit provider, or 409 when the operator configured none.
fn toolkits(state: &AppState) -> ApiResult<std::sync::Arc<Toolkits>> {
    state
        .runtime
        .tool_records
        .as_ref()
        .and_then(|c| c.toolkits.clone())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ToolkitsNotConfigured,
                "this server has no toolkit provider: set [toolkits] base_url (docs/toolkits.md)",
            )
        })
}

fn provider_failed(err: ToolkitError) -> ApiError {
    ApiError::new(ErrorCode::ToolkitProviderFailed, err.to_string())
}

fn toolkit(t: Toolkit) -> api::Toolkit {
    api::Toolkit {
        toolkit: t.slug.as_str().to_owned(),
        name: t.name,
        requires_confirmation: t.settings.requires_confirmation,
        confirmation_expires_in_seconds: t.settings.confirmation_expires_in_seconds,
        timeout_seconds: t.settings.timeout_seconds,
        created_at: t.created_at.to_rfc3339(),
        updated_at: t.updated_at.to_rfc3339(),
    }
}

fn status(s: ConnectionStatus) -> api::ToolkitConnectionStatus {
    match s {
        ConnectionStatus::Pending => api::ToolkitConnectionStatus::Pending,
        ConnectionStatus::Connected => api::ToolkitConnectionStatus::Connected,
        ConnectionStatus::Failed => api::ToolkitConnectionStatus::Failed,
        ConnectionStatus::Expired => api::ToolkitConnectionStatus::Expired,
    }
}

fn actor_toolkit(t: Toolkit, c: Option<ToolkitConnection>) -> api::ActorToolkit {
    api::ActorToolkit {
        toolkit: t.slug.as_str().to_owned(),
        name: t.name,
        status: c
            .as_ref()
            .map_or(api::ToolkitConnectionStatus::NotConnected, |c| {
                status(c.status)
            }),
        connection_id: c.as_ref().map(|c| c.id.as_str().to_owned()),
        redirect_url: c
            .as_ref()
            .filter(|c| c.status == ConnectionStatus::Pending)
            .and_then(|c| c.redirect_url.clone()),
        updated_at: c.as_ref().map(|c| c.updated_at.to_rfc3339()),
    }
}

fn connection(c: ToolkitConnection) -> api::ToolkitConnection {
    api::ToolkitConnection {
        connection_id: c.id.as_str().to_owned(),
        toolkit: c.toolkit.as_str().to_owned(),
        actor_id: c.actor_id.as_str().to_owned(),
        status: status(c.status),
        redirect_url: c
            .redirect_url
            .filter(|_| c.status == ConnectionStatus::Pending),
        created_at: c.created_at.to_rfc3339(),
    }
}

/// Revokes connected accounts at the provider without making the request wait; a failure is
/// logged (the account stays usable at the provider, but Tessera no longer uses it).
fn revoke_later(toolkits: Option<std::sync::Arc<Toolkits>>, accounts: Vec<ToolkitConnection>) {
    let Some(toolkits) = toolkits else { return };
    if accounts.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for c in accounts {
            if let Err(err) = toolkits.provider().delete_account(&c.account_id).await {
                tracing::warn!(connection_id = %c.id, error = %err,
                    "revoking a connected account at the toolkit provider failed");
            }
        }
    });
}

/// Enables a toolkit of the provider for the deployment (idempotent: enabling it again
/// replaces its settings).
#[utoipa::path(
    post, path = "/ai/toolkits", operation_id = "enableToolkit", tag = "toolkits",
    request_body = api::EnableToolkitRequest,
    responses(
        (status = 201, body = api::Toolkit, description = "Enabled by this request"),
        (status = 200, body = api::Toolkit, description = "Already enabled; its settings are now the request's"),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 409, body = ErrorBody, description = "`toolkits_not_configured`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (a malformed slug, a toolkit the provider does not have, limits)"),
        (status = 502, body = ErrorBody, description = "`toolkit_provider_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn enable_toolkit(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::EnableToolkitRequest>,
) -> ApiResult<(StatusCode, Json<api::Toolkit>)> {
    let slug = ToolkitSlug::parse("toolkit", req.toolkit)?;
    let settings = ToolkitSettings {
        requires_confirmation: req.requires_confirmation.unwrap_or(false),
        confirmation_expires_in_seconds: req.confirmation_expires_in_seconds,
        timeout_seconds: req.timeout_seconds,
    };
    settings.check()?;
    let toolkits = toolkits(&state)?;
    let info = toolkits
        .provider()
        .toolkit(&slug)
        .await
        .map_err(provider_failed)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::ValidationFailed,
                format!("toolkit: the toolkit provider has no toolkit `{slug}`"),
            )
            .with_field("toolkit")
        })?;
    let name: String = info.name.chars().take(200).collect();
    let (enabled, created) = state
        .store
        .enable_toolkit(&caller.scope, &slug, &name, &settings)
        .await?;
    let code = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((code, Json(toolkit(enabled))))
}

/// The toolkits enabled for the deployment, by slug.
#[utoipa::path(
    get, path = "/ai/toolkits", operation_id = "listToolkits", tag = "toolkits",
    responses(
        (status = 200, body = api::ToolkitList),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_toolkits(
    caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<api::ToolkitList>> {
    let data = state.store.list_toolkits(&caller.scope).await?;
    Ok(Json(api::ToolkitList {
        data: data.into_iter().map(toolkit).collect(),
    }))
}

/// Disables a toolkit: its tools stop surfacing, and every actor's connection to it is
/// removed (and revoked at the provider).
#[utoipa::path(
    delete, path = "/ai/toolkits/{toolkit}", operation_id = "disableToolkit", tag = "toolkits",
    params(("toolkit" = String, Path, description = "Toolkit slug")),
    responses(
        (status = 200, body = api::DisabledToolkit),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`toolkit_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn disable_toolkit(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(slug): IdPath<ToolkitSlug>,
) -> ApiResult<Json<api::DisabledToolkit>> {
    let gone = state.store.disable_toolkit(&caller.scope, &slug).await?;
    let removed = u32::try_from(gone.len()).unwrap_or(u32::MAX);
    revoke_later(toolkits(&state).ok(), gone);
    Ok(Json(api::DisabledToolkit {
        toolkit: slug.as_str().to_owned(),
        disabled: true,
        connections_removed: removed,
    }))
}

/// Every enabled toolkit with the actor's connection status (asked of the provider for the
/// actor's pending and connected connections).
#[utoipa::path(
    get, path = "/ai/actors/{actor_id}/toolkits", operation_id = "listActorToolkits", tag = "toolkits",
    params(("actor_id" = String, Path, description = "Actor id (`actor_…`)")),
    responses(
        (status = 200, body = api::ActorToolkitList),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_actor_toolkits(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(actor): IdPath<ActorId>,
) -> ApiResult<Json<api::ActorToolkitList>> {
    let listed = state.store.actor_toolkits(&caller.scope, &actor).await?;
    let provider = toolkits(&state).ok();
    let refreshed = futures_util::future::join_all(listed.into_iter().map(|(t, c)| {
        let provider = provider.clone();
        let state = &state;
        let scope = &caller.scope;
        async move {
            let c = match (c, provider) {
                (Some(c), Some(p))
                    if matches!(
                        c.status,
                        ConnectionStatus::Pending | ConnectionStatus::Connected
                    ) =>
                {
                    Some(p.refresh(state.store.as_ref(), scope, c).await?)
                }
                (c, _) => c,
            };
            Ok::<_, tessera_store::StoreError>(actor_toolkit(t, c))
        }
    }))
    .await;
    let data = refreshed.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(Json(api::ActorToolkitList { data }))
}

/// Starts the actor's connection to an enabled toolkit: a connected account at the provider,
/// `pending` until the end user authorizes it at `redirect_url`. A connection that is still
/// `connected` is returned as it is (200); any other is replaced.
#[utoipa::path(
    post, path = "/ai/actors/{actor_id}/toolkits/{toolkit}/connect", operation_id = "connectActorToolkit", tag = "toolkits",
    params(
        ("actor_id" = String, Path, description = "Actor id (`actor_…`)"),
        ("toolkit" = String, Path, description = "Toolkit slug"),
    ),
    request_body = api::ConnectToolkitRequest,
    responses(
        (status = 201, body = api::ToolkitConnection, description = "A new connection, usually `pending` with the provider's `redirect_url`"),
        (status = 200, body = api::ToolkitConnection, description = "The actor is already connected"),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found`, `toolkit_not_found` (not enabled)"),
        (status = 409, body = ErrorBody, description = "`toolkits_not_configured`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`redirect_url`)"),
        (status = 502, body = ErrorBody, description = "`toolkit_provider_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn connect_actor_toolkit(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(actor, slug): IdPath2<ActorId, ToolkitSlug>,
    ApiJsonOrDefault(req): ApiJsonOrDefault<api::ConnectToolkitRequest>,
) -> ApiResult<(StatusCode, Json<api::ToolkitConnection>)> {
    if let Some(url) = &req.redirect_url {
        check_redirect_url("redirect_url", url)?;
    }
    let listed = state.store.actor_toolkits(&caller.scope, &actor).await?;
    let (_, current) = listed
        .into_iter()
        .find(|(t, _)| t.slug == slug)
        .ok_or_else(|| ApiError::not_found(Entity::Toolkit))?;
    let toolkits = toolkits(&state)?;
    if let Some(c) = current {
        if c.status == ConnectionStatus::Connected {
            let c = toolkits
                .refresh(state.store.as_ref(), &caller.scope, c)
                .await?;
            if c.status == ConnectionStatus::Connected {
                return Ok((StatusCode::OK, Json(connection(c))));
            }
        }
    }
    let account = toolkits
        .provider()
        .create_account(&slug, actor.as_str(), req.redirect_url.as_deref())
        .await
        .map_err(provider_failed)?;
    if let Some(url) = &account.redirect_url {
        check_redirect_url("redirect_url", url).map_err(|_| {
            provider_failed(ToolkitError::Invalid(
                "the connected account's redirect_url is not an http(s) URL".into(),
            ))
        })?;
    }
    let now = Timestamp::now();
    let new = ToolkitConnection {
        id: ConnectionId::generate_at(now),
        actor_id: actor,
        toolkit: slug,
        account_id: account.id,
        status: account.status,
        redirect_url: account.redirect_url,
        created_at: now,
        updated_at: now,
    };
    let previous = state
        .store
        .put_toolkit_connection(&caller.scope, &new)
        .await?;
    revoke_later(
        Some(toolkits),
        previous
            .into_iter()
            .filter(|p| p.account_id != new.account_id)
            .collect(),
    );
    Ok((StatusCode::CREATED, Json(connection(new))))
}

/// Removes the actor's connection to a toolkit (and revokes it at the provider): its tools
/// stop surfacing to the actor's runs. Removing a connection that does not exist is not an
/// error.
#[utoipa::path(
    delete, path = "/ai/actors/{actor_id}/toolkits/{toolkit}", operation_id = "disconnectActorToolkit", tag = "toolkits",
    params(
        ("actor_id" = String, Path, description = "Actor id (`actor_…`)"),
        ("toolkit" = String, Path, description = "Toolkit slug"),
    ),
    responses(
        (status = 200, body = api::DisconnectedToolkit),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found`, `toolkit_not_found` (not enabled)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn disconnect_actor_toolkit(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(actor, slug): IdPath2<ActorId, ToolkitSlug>,
) -> ApiResult<Json<api::DisconnectedToolkit>> {
    let gone = state
        .store
        .delete_toolkit_connection(&caller.scope, &actor, &slug)
        .await?;
    let removed = gone.is_some();
    revoke_later(toolkits(&state).ok(), gone.into_iter().collect());
    Ok(Json(api::DisconnectedToolkit {
        toolkit: slug.as_str().to_owned(),
        actor_id: actor.into_string(),
        status: api::ToolkitConnectionStatus::NotConnected,
        removed,
    }))
}
