//! Organizations of the deployment's users and their memberships (backend API, secret key).

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::{OrganizationId, UserId, ValidationError};

use crate::auth::Caller;
use crate::convert;
use crate::convert_identity as convert_id;
use crate::error::ApiResult;
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath, IdPath2};
use crate::AppState;

/// Creates an organization; its optional `slug` must be new in the deployment.
#[utoipa::path(
    post, path = "/organizations", operation_id = "createOrganization", tag = "organizations",
    request_body = api::CreateOrganizationRequest,
    responses(
        (status = 201, body = api::Organization),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 409, body = ErrorBody, description = "`organization_slug_taken`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_organization(
    caller: Caller,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::CreateOrganizationRequest>,
) -> ApiResult<(StatusCode, Json<api::Organization>)> {
    let new = convert_id::new_organization(req)?;
    let organization = state.store.create_organization(&caller.scope, &new).await?;
    Ok((
        StatusCode::CREATED,
        Json(convert_id::organization(organization)),
    ))
}

/// Lists organizations, oldest first.
#[utoipa::path(
    get, path = "/organizations", operation_id = "listOrganizations", tag = "organizations",
    params(api::PageParams),
    responses(
        (status = 200, body = api::OrganizationList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_organizations(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::PageParams>,
) -> ApiResult<Json<api::OrganizationList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        OrganizationId::parse(c).map(|_| ())
    })?;
    let organizations = state.store.list_organizations(&caller.scope, &page).await?;
    Ok(Json(
        convert::list(organizations, convert_id::organization, |o| &o.id).into(),
    ))
}

/// Gets an organization by id.
#[utoipa::path(
    get, path = "/organizations/{organization_id}", operation_id = "getOrganization", tag = "organizations",
    params(("organization_id" = String, Path, description = "Organization id (`org_…`)")),
    responses(
        (status = 200, body = api::Organization),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`organization_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_organization(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<OrganizationId>,
) -> ApiResult<Json<api::Organization>> {
    let organization = state.store.get_organization(&caller.scope, &id).await?;
    Ok(Json(convert_id::organization(organization)))
}

/// Adds a user of the deployment to the organization as `admin` or `member`.
#[utoipa::path(
    post, path = "/organizations/{organization_id}/members", operation_id = "addOrganizationMember", tag = "organizations",
    params(("organization_id" = String, Path, description = "Organization id (`org_…`)")),
    request_body = api::AddOrganizationMemberRequest,
    responses(
        (status = 201, body = api::OrganizationMember),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`organization_not_found`, `user_not_found` (field `user_id`)"),
        (status = 409, body = ErrorBody, description = "`already_member`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn add_member(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(organization_id): IdPath<OrganizationId>,
    ApiJson(req): ApiJson<api::AddOrganizationMemberRequest>,
) -> ApiResult<(StatusCode, Json<api::OrganizationMember>)> {
    let user_id =
        UserId::parse(&req.user_id).map_err(|e| ValidationError::new("user_id", e.to_string()))?;
    let membership = state
        .store
        .add_member(
            &caller.scope,
            &organization_id,
            &user_id,
            convert_id::role_in(req.role),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(convert_id::member(membership))))
}

/// Lists the organization's members, oldest membership first.
#[utoipa::path(
    get, path = "/organizations/{organization_id}/members", operation_id = "listOrganizationMembers", tag = "organizations",
    params(("organization_id" = String, Path, description = "Organization id (`org_…`)"), api::PageParams),
    responses(
        (status = 200, body = api::OrganizationMemberList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`organization_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_members(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(organization_id): IdPath<OrganizationId>,
    ApiQuery(q): ApiQuery<api::PageParams>,
) -> ApiResult<Json<api::OrganizationMemberList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        tessera_domain::MembershipId::parse(c).map(|_| ())
    })?;
    let members = state
        .store
        .list_members(&caller.scope, &organization_id, &page)
        .await?;
    Ok(Json(
        convert::list(members, convert_id::member, |m| &m.id).into(),
    ))
}

/// Removes a user from the organization. Browser sessions that had it active lose it.
#[utoipa::path(
    delete, path = "/organizations/{organization_id}/members/{user_id}", operation_id = "removeOrganizationMember", tag = "organizations",
    params(
        ("organization_id" = String, Path, description = "Organization id (`org_…`)"),
        ("user_id" = String, Path, description = "User id (`user_…`)"),
    ),
    responses(
        (status = 200, body = api::RemovedOrganizationMember),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`organization_not_found`, `user_not_found`, `membership_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn remove_member(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(organization_id, user_id): IdPath2<OrganizationId, UserId>,
) -> ApiResult<Json<api::RemovedOrganizationMember>> {
    state
        .store
        .remove_member(&caller.scope, &organization_id, &user_id)
        .await?;
    Ok(Json(api::RemovedOrganizationMember {
        organization_id: organization_id.into_string(),
        user_id: user_id.into_string(),
        removed: true,
    }))
}
