//! Actors: who agents work for.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::validate::{ExternalKey, SubjectType};
use tessera_domain::ActorId;
use tessera_store::ActorFilter;

use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath};
use crate::AppState;

/// Creates an actor; `(subject_type, external_key)` must be new in the deployment.
#[utoipa::path(
    post, path = "/ai/actors", operation_id = "createActor", tag = "actors",
    request_body = api::CreateActorRequest,
    responses(
        (status = 201, body = api::Actor),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 409, body = ErrorBody, description = "`actor_exists`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_actor(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::CreateActorRequest>,
) -> ApiResult<(StatusCode, Json<api::Actor>)> {
    let new = convert::new_actor(req)?;
    let actor = state.store.create_actor(&caller.scope, &new).await?;
    Ok((StatusCode::CREATED, Json(convert::actor(actor))))
}

/// Lists actors, oldest first.
#[utoipa::path(
    get, path = "/ai/actors", operation_id = "listActors", tag = "actors",
    params(api::ListActorsParams),
    responses(
        (status = 200, body = api::ActorList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_actors(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListActorsParams>,
) -> ApiResult<Json<api::ActorList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        ActorId::parse(c).map(|_| ())
    })?;
    let filter = ActorFilter {
        subject_type: q.subject_type,
    };
    let actors = state
        .store
        .list_actors(&caller.scope, &filter, &page)
        .await?;
    Ok(Json(
        convert::list(actors, convert::actor, |a| &a.id).into(),
    ))
}

/// Finds an actor by `(subject_type, external_key)`; `{"actor": null}` when there is none.
#[utoipa::path(
    get, path = "/ai/actors/lookup", operation_id = "lookupActor", tag = "actors",
    params(api::LookupActorParams),
    responses(
        (status = 200, body = api::LookupActorResponse),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn lookup_actor(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::LookupActorParams>,
) -> ApiResult<Json<api::LookupActorResponse>> {
    let subject_type = SubjectType::parse("subject_type", q.subject_type)
        .map_err(|e| ApiError::invalid_parameter("subject_type", e.to_string()))?;
    let external_key = ExternalKey::parse("external_key", q.external_key)
        .map_err(|e| ApiError::invalid_parameter("external_key", e.to_string()))?;
    let actor = state
        .store
        .lookup_actor(&caller.scope, subject_type.as_str(), external_key.as_str())
        .await?;
    Ok(Json(api::LookupActorResponse {
        actor: actor.map(convert::actor),
    }))
}

/// Gets an actor by id.
#[utoipa::path(
    get, path = "/ai/actors/{actor_id}", operation_id = "getActor", tag = "actors",
    params(("actor_id" = String, Path, description = "Actor id (`actor_…`)")),
    responses(
        (status = 200, body = api::Actor),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_actor(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<ActorId>,
) -> ApiResult<Json<api::Actor>> {
    let actor = state.store.get_actor(&caller.scope, &id).await?;
    Ok(Json(convert::actor(actor)))
}
