//! Users of the deployment's app (backend API, secret key): create, read, update, delete,
//! disable/enable, and mint user tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::json;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::identity::{AuditKind, Email, NewUser, Password, UserPatch};
use tessera_domain::password::{hash_password, PasswordHash};
use tessera_domain::{Timestamp, UserId};
use tessera_store::UserFilter;

use crate::auth::Caller;
use crate::convert;
use crate::convert_identity as convert_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiJsonOrDefault, ApiQuery, IdPath};
use crate::identity::ClientInfo;
use crate::AppState;

/// Hashes on a blocking thread, bounded with the sign-in checks: argon2id deliberately takes
/// tens of milliseconds of CPU and ~19 MiB of memory.
pub(crate) async fn hash(state: &AppState, password: Password) -> ApiResult<PasswordHash> {
    state
        .identity
        .password_work(move || hash_password(&password))
        .await?
        .map_err(ApiError::internal)
}

/// Creates a user. The email is stored trimmed and lower-cased and must be new in the
/// deployment; the password (optional) is stored as an argon2id hash and never returned.
#[utoipa::path(
    post, path = "/users", operation_id = "createUser", tag = "users",
    request_body = api::CreateUserRequest,
    responses(
        (status = 201, body = api::User),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 409, body = ErrorBody, description = "`email_taken`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_user(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    ApiJson(req): ApiJson<api::CreateUserRequest>,
) -> ApiResult<(StatusCode, Json<api::User>)> {
    let input = convert_id::new_user(req)?;
    let password_hash = match input.password {
        Some(password) => Some(hash(&state, password).await?),
        None => None,
    };
    let new = NewUser {
        email: input.email,
        first_name: input.first_name,
        last_name: input.last_name,
        password_hash,
        metadata: input.metadata,
    };
    let user = state
        .store
        .create_user(&caller.scope, &new, &client.by_key(&caller))
        .await?;
    Ok((StatusCode::CREATED, Json(convert_id::user(user))))
}

/// Lists users, oldest first; `email` finds one user by address.
#[utoipa::path(
    get, path = "/users", operation_id = "listUsers", tag = "users",
    params(api::ListUsersParams),
    responses(
        (status = 200, body = api::UserList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_users(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListUsersParams>,
) -> ApiResult<Json<api::UserList>> {
    let page = page_request(q.limit, q.before, q.after, |c| UserId::parse(c).map(|_| ()))?;
    let email = q
        .email
        .map(|e| Email::parse("email", e))
        .transpose()
        .map_err(|e| ApiError::invalid_parameter("email", e.to_string()))?;
    let filter = UserFilter {
        email: email.map(Email::into_string),
    };
    let users = state
        .store
        .list_users(&caller.scope, &filter, &page)
        .await?;
    Ok(Json(
        convert::list(users, convert_id::user, |u| &u.id).into(),
    ))
}

/// Gets a user by id.
#[utoipa::path(
    get, path = "/users/{user_id}", operation_id = "getUser", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    responses(
        (status = 200, body = api::User),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_user(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
) -> ApiResult<Json<api::User>> {
    let user = state.store.get_user(&caller.scope, &id).await?;
    Ok(Json(convert_id::user(user)))
}

/// Changes a user: absent fields stay; `null` clears `first_name`, `last_name` or `password`.
#[utoipa::path(
    patch, path = "/users/{user_id}", operation_id = "updateUser", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    request_body = api::UpdateUserRequest,
    responses(
        (status = 200, body = api::User),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
        (status = 409, body = ErrorBody, description = "`email_taken`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn update_user(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
    ApiJson(req): ApiJson<api::UpdateUserRequest>,
) -> ApiResult<Json<api::User>> {
    let input = convert_id::user_patch(req)?;
    let password_hash = match input.password {
        Some(Some(password)) => Some(Some(hash(&state, password).await?)),
        Some(None) => Some(None),
        None => None,
    };
    let patch = UserPatch {
        email: input.email,
        first_name: input.first_name,
        last_name: input.last_name,
        password_hash,
        metadata: input.metadata,
    };
    let user = state.store.update_user(&caller.scope, &id, &patch).await?;
    Ok(Json(convert_id::user(user)))
}

/// Deletes a user with their memberships and sessions (the audit log keeps their id).
#[utoipa::path(
    delete, path = "/users/{user_id}", operation_id = "deleteUser", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    responses(
        (status = 200, body = api::DeletedUser),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn delete_user(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
) -> ApiResult<Json<api::DeletedUser>> {
    state
        .store
        .delete_user(&caller.scope, &id, &client.by_key(&caller))
        .await?;
    Ok(Json(api::DeletedUser {
        id: id.into_string(),
        deleted: true,
    }))
}

/// Disables a user: they cannot sign in, their browser sessions end at once, and their user
/// tokens stop working. Disabling a disabled user changes nothing.
#[utoipa::path(
    post, path = "/users/{user_id}/disable", operation_id = "disableUser", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    responses(
        (status = 200, body = api::User),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn disable_user(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
) -> ApiResult<Json<api::User>> {
    let (user, _) = state
        .store
        .set_user_disabled(&caller.scope, &id, true, &client.by_key(&caller))
        .await?;
    Ok(Json(convert_id::user(user)))
}

/// Enables a disabled user again.
#[utoipa::path(
    post, path = "/users/{user_id}/enable", operation_id = "enableUser", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    responses(
        (status = 200, body = api::User),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn enable_user(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
) -> ApiResult<Json<api::User>> {
    let (user, _) = state
        .store
        .set_user_disabled(&caller.scope, &id, false, &client.by_key(&caller))
        .await?;
    Ok(Json(convert_id::user(user)))
}

/// Mints a short-lived user token (EdDSA-signed JWT with `kid`, `iss`, `aud`, `sub`, `exp`,
/// `iat` and the deployment as `dep`) that authenticates as the user on `/me` and the other
/// user endpoints. Verify it with `/.well-known/jwks.json`.
#[utoipa::path(
    post, path = "/users/{user_id}/tokens", operation_id = "createUserToken", tag = "users",
    params(("user_id" = String, Path, description = "User id (`user_…`)")),
    request_body(content = api::CreateUserTokenRequest, description = "Optional; `{}` or no body gives the default lifetime."),
    responses(
        (status = 201, body = api::UserToken),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`user_not_found`"),
        (status = 409, body = ErrorBody, description = "`user_disabled`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_user_token(
    caller: Caller,
    client: ClientInfo,
    State(state): State<AppState>,
    IdPath(id): IdPath<UserId>,
    ApiJsonOrDefault(req): ApiJsonOrDefault<api::CreateUserTokenRequest>,
) -> ApiResult<(StatusCode, Json<api::UserToken>)> {
    let settings = &state.identity.settings;
    let seconds = req
        .expires_in
        .unwrap_or(settings.user_token_default_seconds);
    if !(60..=settings.user_token_max_seconds).contains(&seconds) {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            format!(
                "expires_in: must be between 60 and {} seconds",
                settings.user_token_max_seconds
            ),
        )
        .with_field("expires_in"));
    }
    let user = state.store.get_user(&caller.scope, &id).await?;
    if user.disabled {
        return Err(ApiError::new(
            ErrorCode::UserDisabled,
            "the user is disabled; enable them before minting a token",
        ));
    }
    let (token, exp) = state
        .identity
        .mint_user_token(
            state.store.as_ref(),
            caller.scope.deployment_id(),
            &user.id,
            seconds,
        )
        .await?;
    let expires_at = Timestamp::from_millis(exp.saturating_mul(1000)).to_rfc3339();
    // A token is a signature, not a row: the event is its only trace, so no token is handed
    // out unless its event is stored.
    state
        .store
        .record_audit(
            &caller.scope,
            &client.by_key(&caller).event(
                AuditKind::UserTokenCreated,
                Some(user.id.as_str().to_owned()),
                json!({"expires_at": expires_at}),
            ),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::UserToken {
            token,
            token_type: "Bearer".to_owned(),
            expires_in: seconds,
            expires_at,
        }),
    ))
}
