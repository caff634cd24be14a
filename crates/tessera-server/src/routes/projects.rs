//! Actor projects: one actor and one agent; threads and board items live inside.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::{ActorId, AgentId, ProjectId};
use tessera_store::{Entity, ProjectFilter, StoreError};

use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath};
use crate::AppState;

/// Creates a project binding the actor of `?actor_id=` to an agent.
#[utoipa::path(
    post, path = "/ai/actor-projects", operation_id = "createActorProjectFlat", tag = "actor projects",
    params(api::CreateActorProjectParams),
    request_body = api::CreateActorProjectRequest,
    responses(
        (status = 201, body = api::ActorProject),
        (status = 400, body = ErrorBody, description = "`invalid_parameter` / `malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found` / `agent_not_found` (`field` names which)"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_actor_project(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::CreateActorProjectParams>,
    ApiJson(req): ApiJson<api::CreateActorProjectRequest>,
) -> ApiResult<(StatusCode, Json<api::ActorProject>)> {
    let actor_id = ActorId::parse(&q.actor_id)
        .map_err(|_| ApiError::from(StoreError::not_found_at(Entity::Actor, "actor_id")))?;
    let new = match convert::new_project(actor_id, req) {
        Ok(new) => new,
        // A malformed agent id cannot name an agent: same answer as an unknown one.
        Err(e) if e.field == "agent_id" => {
            return Err(StoreError::not_found_at(Entity::Agent, "agent_id").into())
        }
        Err(e) => return Err(e.into()),
    };
    let project = state.store.create_project(&caller.scope, &new).await?;
    Ok((StatusCode::CREATED, Json(convert::project(project))))
}

/// Lists projects, oldest first.
#[utoipa::path(
    get, path = "/ai/actor-projects", operation_id = "listActorProjects", tag = "actor projects",
    params(api::ListActorProjectsParams),
    responses(
        (status = 200, body = api::ActorProjectList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_actor_projects(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListActorProjectsParams>,
) -> ApiResult<Json<api::ActorProjectList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        ProjectId::parse(c).map(|_| ())
    })?;
    let filter = ProjectFilter {
        actor_id: q
            .actor_id
            .map(|id| ActorId::parse(&id))
            .transpose()
            .map_err(|e| ApiError::invalid_parameter("actor_id", e.to_string()))?,
        agent_id: q
            .agent_id
            .map(|id| AgentId::parse(&id))
            .transpose()
            .map_err(|e| ApiError::invalid_parameter("agent_id", e.to_string()))?,
        status: q.status.map(convert::project_status),
    };
    let projects = state
        .store
        .list_projects(&caller.scope, &filter, &page)
        .await?;
    Ok(Json(
        convert::list(projects, convert::project, |p| &p.id).into(),
    ))
}

/// Gets a project by id.
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}", operation_id = "getActorProject", tag = "actor projects",
    params(("project_id" = String, Path, description = "Project id (`proj_…`)")),
    responses(
        (status = 200, body = api::ActorProject),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_actor_project(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ProjectId>,
) -> ApiResult<Json<api::ActorProject>> {
    let project = state.store.get_project(&caller.scope, &id).await?;
    Ok(Json(convert::project(project)))
}

/// Archives a project (idempotent).
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/archive", operation_id = "archiveActorProject", tag = "actor projects",
    params(("project_id" = String, Path, description = "Project id (`proj_…`)")),
    responses(
        (status = 200, body = api::ActorProject),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn archive_actor_project(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ProjectId>,
) -> ApiResult<Json<api::ActorProject>> {
    let project = state.store.archive_project(&caller.scope, &id).await?;
    Ok(Json(convert::project(project)))
}
