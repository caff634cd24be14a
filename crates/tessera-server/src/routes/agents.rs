//! Agents: model, tools, routing and limits. No instructions or schedule (those belong to
//! threads and board items).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::validate::EndpointSlug;
use tessera_domain::AgentId;
use tessera_store::{AgentFilter, Conflict, StoreError};

use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath};
use crate::AppState;

/// An agent may only name a provider this server is configured with.
fn check_provider(
    state: &AppState,
    spec: &tessera_domain::agent::AgentSpec,
) -> Result<(), ApiError> {
    match &spec.model {
        Some(model) => check_model_provider(state, model, "model.provider"),
        None => Ok(()),
    }
}

/// A model may only name a provider this server is configured with; `field` names it.
pub(crate) fn check_model_provider(
    state: &AppState,
    model: &tessera_domain::agent::ModelRef,
    field: &str,
) -> Result<(), ApiError> {
    let providers = &state.runtime.providers;
    if providers.contains(model.provider.as_str()) {
        return Ok(());
    }
    let known: Vec<&str> = providers.names().collect();
    Err(ApiError::from(tessera_domain::ValidationError::new(
        field.to_owned(),
        format!(
            "unknown provider `{}`; configured providers: {}",
            model.provider,
            known.join(", ")
        ),
    )))
}

/// Creates an agent.
#[utoipa::path(
    post, path = "/ai/agents", operation_id = "createAiAgent", tag = "agents",
    request_body = api::CreateAgentRequest,
    responses(
        (status = 201, body = api::Agent),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found` / `tool_not_found` for a referenced id (`field` names it)"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_agent(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::CreateAgentRequest>,
) -> ApiResult<(StatusCode, Json<api::Agent>)> {
    let spec = convert::agent_spec(req)?;
    check_provider(&state, &spec)?;
    let agent = state.store.create_agent(&caller.scope, &spec).await?;
    Ok((StatusCode::CREATED, Json(convert::agent(agent))))
}

/// Lists agents, oldest first.
#[utoipa::path(
    get, path = "/ai/agents", operation_id = "listAiAgents", tag = "agents",
    params(api::ListAgentsParams),
    responses(
        (status = 200, body = api::AgentList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_agents(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListAgentsParams>,
) -> ApiResult<Json<api::AgentList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        AgentId::parse(c).map(|_| ())
    })?;
    let endpoint_slug = q
        .endpoint_slug
        .map(|s| EndpointSlug::parse("endpoint_slug", s))
        .transpose()
        .map_err(|e| ApiError::invalid_parameter("endpoint_slug", e.to_string()))?;
    let filter = AgentFilter {
        endpoint_slug: endpoint_slug.map(EndpointSlug::into_string),
    };
    let agents = state
        .store
        .list_agents(&caller.scope, &filter, &page)
        .await?;
    Ok(Json(
        convert::list(agents, convert::agent, |a| &a.id).into(),
    ))
}

/// Gets an agent by id.
#[utoipa::path(
    get, path = "/ai/agents/{agent_id}", operation_id = "getAiAgentById", tag = "agents",
    params(("agent_id" = String, Path, description = "Agent id (`agent_…`)")),
    responses(
        (status = 200, body = api::Agent),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_agent(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<AgentId>,
) -> ApiResult<Json<api::Agent>> {
    let agent = state.store.get_agent(&caller.scope, &id).await?;
    Ok(Json(convert::agent(agent)))
}

/// Changes an agent: absent fields stay, `null` clears `model` or `endpoint_slug`.
#[utoipa::path(
    patch, path = "/ai/agents/{agent_id}", operation_id = "updateAiAgent", tag = "agents",
    params(("agent_id" = String, Path, description = "Agent id (`agent_…`)")),
    request_body = api::UpdateAgentRequest,
    responses(
        (status = 200, body = api::Agent),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found` (also for a referenced sub-agent) / `tool_not_found`"),
        (status = 409, body = ErrorBody, description = "`concurrent_update`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn update_agent(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<AgentId>,
    ApiJson(req): ApiJson<api::UpdateAgentRequest>,
) -> ApiResult<Json<api::Agent>> {
    // Optimistic concurrency: re-read and re-apply when another update won the race.
    let mut attempts = 0;
    loop {
        let current = state.store.get_agent(&caller.scope, &id).await?;
        let spec = convert::patch_agent_spec(&id, current.spec, req.clone())?;
        check_provider(&state, &spec)?;
        match state
            .store
            .update_agent(&caller.scope, &id, current.version, &spec)
            .await
        {
            Err(StoreError::Conflict(Conflict::StaleVersion)) if attempts < 3 => attempts += 1,
            result => return Ok(Json(convert::agent(result?))),
        }
    }
}

/// Deletes an agent. Refused while an active project uses it.
#[utoipa::path(
    delete, path = "/ai/agents/{agent_id}", operation_id = "deleteAiAgent", tag = "agents",
    params(("agent_id" = String, Path, description = "Agent id (`agent_…`)")),
    responses(
        (status = 200, body = api::DeletedAgent),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found`"),
        (status = 409, body = ErrorBody, description = "`agent_in_use`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn delete_agent(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<AgentId>,
) -> ApiResult<Json<api::DeletedAgent>> {
    state.store.delete_agent(&caller.scope, &id).await?;
    Ok(Json(api::DeletedAgent {
        id: id.into_string(),
        deleted: true,
    }))
}
