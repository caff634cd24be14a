//! Tools (`/ai/tools`): records agents attach through `tool_ids`, and the read-only catalogue of
//! internal tools. Configuration secrets are sealed with the installation's secrets key before
//! they are stored and never served.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::ToolId;
use tessera_store::{Conflict, StoreError};

use crate::auth::Caller;
use crate::convert;
use crate::convert_tools;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath};
use crate::AppState;

/// Creates a tool.
#[utoipa::path(
    post, path = "/ai/tools", operation_id = "createAiTool", tag = "tools",
    request_body = api::CreateToolRequest,
    responses(
        (status = 201, body = api::Tool, description = "The tool; secrets show as `{\"set\": true}`"),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`field` names the problem: a reserved or malformed name, an input_schema that is not a JSON Schema, a missing secret…)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_tool(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::CreateToolRequest>,
) -> ApiResult<(StatusCode, Json<api::Tool>)> {
    let key = state.identity.secrets().await.map_err(ApiError::internal)?;
    let id = ToolId::generate();
    let (spec, sealed) = convert_tools::new_tool(&id, req, key)?;
    let tool = state
        .store
        .create_tool(&caller.scope, &id, &spec, sealed.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json(convert_tools::tool(tool))))
}

/// Lists tools, oldest first.
#[utoipa::path(
    get, path = "/ai/tools", operation_id = "listAiTools", tag = "tools",
    params(api::ListToolsParams),
    responses(
        (status = 200, body = api::ToolList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_tools(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListToolsParams>,
) -> ApiResult<Json<api::ToolList>> {
    let page = page_request(q.limit, q.before, q.after, |c| ToolId::parse(c).map(|_| ()))?;
    let tools = state.store.list_tools(&caller.scope, &page).await?;
    let parts = convert::list(tools, convert_tools::tool, |t| &t.id);
    Ok(Json(api::ToolList {
        data: parts.data,
        has_more: parts.has_more,
        first_id: parts.first_id,
        last_id: parts.last_id,
    }))
}

/// The internal tools every agent has, with their input schemas.
#[utoipa::path(
    get, path = "/ai/tools/internal", operation_id = "listInternalTools", tag = "tools",
    responses(
        (status = 200, body = api::InternalToolList),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_internal_tools(
    _caller: Caller,
    State(state): State<AppState>,
) -> ApiResult<Json<api::InternalToolList>> {
    let data = state
        .runtime
        .tools
        .specs()
        .into_iter()
        .map(|s| api::InternalTool {
            name: s.name,
            description: s.description,
            input_schema: s.parameters,
        })
        .collect();
    Ok(Json(api::InternalToolList { data }))
}

/// Gets a tool by id.
#[utoipa::path(
    get, path = "/ai/tools/{tool_id}", operation_id = "getAiToolById", tag = "tools",
    params(("tool_id" = String, Path, description = "Tool id (`tool_…`)")),
    responses(
        (status = 200, body = api::Tool),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`tool_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_tool(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ToolId>,
) -> ApiResult<Json<api::Tool>> {
    let tool = state.store.get_tool(&caller.scope, &id).await?;
    Ok(Json(convert_tools::tool(tool)))
}

/// Changes a tool: absent fields stay; a configuration without its secret keeps the stored one.
#[utoipa::path(
    patch, path = "/ai/tools/{tool_id}", operation_id = "updateAiTool", tag = "tools",
    params(("tool_id" = String, Path, description = "Tool id (`tool_…`)")),
    request_body = api::UpdateToolRequest,
    responses(
        (status = 200, body = api::Tool),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`tool_not_found`"),
        (status = 409, body = ErrorBody, description = "`concurrent_update`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (also a new name that another tool of an agent using this one has)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn update_tool(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ToolId>,
    ApiJson(req): ApiJson<api::UpdateToolRequest>,
) -> ApiResult<Json<api::Tool>> {
    let key = state.identity.secrets().await.map_err(ApiError::internal)?;
    let mut attempts = 0;
    loop {
        let current = state.store.get_tool(&caller.scope, &id).await?;
        let (spec, change) = convert_tools::patch_tool(&current, req.clone(), key)?;
        match state
            .store
            .update_tool(&caller.scope, &id, current.version, &spec, &change)
            .await
        {
            Err(StoreError::Conflict(Conflict::StaleVersion)) if attempts < 3 => attempts += 1,
            result => return Ok(Json(convert_tools::tool(result?))),
        }
    }
}

/// Deletes a tool. Refused (`tool_in_use`) while an agent attaches it: detach it first.
#[utoipa::path(
    delete, path = "/ai/tools/{tool_id}", operation_id = "deleteAiTool", tag = "tools",
    params(("tool_id" = String, Path, description = "Tool id (`tool_…`)")),
    responses(
        (status = 200, body = api::DeletedTool),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`tool_not_found`"),
        (status = 409, body = ErrorBody, description = "`tool_in_use`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn delete_tool(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ToolId>,
) -> ApiResult<Json<api::DeletedTool>> {
    state.store.delete_tool(&caller.scope, &id).await?;
    Ok(Json(api::DeletedTool {
        id: id.into_string(),
        deleted: true,
    }))
}
