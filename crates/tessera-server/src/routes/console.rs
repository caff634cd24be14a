//! The console API's admin sign-in: `POST /console/api/sign-in` and `/sign-out`, and the
//! [`AdminCaller`] extractor of console routes.
//!
//! Console admins operate the installation (not one deployment). The first start creates admin
//! `admin` (password from `TESSERA_BOOTSTRAP_ADMIN_PASSWORD`, or generated and printed once);
//! the password is stored as an argon2id hash. Signing in returns a console token (`tca_` + 256
//! random bits, stored as SHA-256) both as the `tessera_console` cookie (HttpOnly,
//! SameSite=Strict, Path=/console) and in the body, for `Authorization: Bearer` callers such as
//! the CLI. Failed sign-ins are throttled with the same database counters as user sign-ins.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{CACHE_CONTROL, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::identity::Password;
use tessera_domain::secret::{PlainSecret, SecretHash};
use tessera_domain::ticket::{ConsoleAdmin, CONSOLE_TOKEN_PREFIX};
use tessera_domain::Timestamp;
use tessera_store::Throttle;

use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::identity::{
    bearer, check_counted_password, check_origin, cookie_value, count_sign_in,
    deployment_for_request, sign_in_buckets, sign_in_succeeded, ClientInfo,
};
use crate::AppState;

/// The console session cookie.
const CONSOLE_COOKIE: &str = "tessera_console";

/// A signed-in console admin. Taking it as a handler argument makes a route admin-only.
#[derive(Debug, Clone)]
pub(crate) struct AdminCaller {
    pub admin: ConsoleAdmin,
    /// Authenticated by the cookie (ambient: writes need the Origin check).
    by_cookie: bool,
    hash: SecretHash,
}

impl AdminCaller {
    /// Cookie-authenticated writes must come from one of the serving deployment's origins.
    pub async fn check_write(&self, state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
        if self.by_cookie {
            let deployment = deployment_for_request(state, headers).await?;
            check_origin(headers, &deployment)?;
        }
        Ok(())
    }
}

fn console_token(headers: &HeaderMap) -> ApiResult<Option<(String, bool)>> {
    if let Some(token) = bearer(headers)? {
        return Ok(Some((token.to_owned(), false)));
    }
    Ok(cookie_value(headers, CONSOLE_COOKIE).map(|v| (v, true)))
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let refused =
            || ApiError::unauthorized("not signed in to the console: POST /console/api/sign-in");
        let (token, by_cookie) = console_token(&parts.headers)?.ok_or_else(refused)?;
        if !token.starts_with(CONSOLE_TOKEN_PREFIX) {
            return Err(refused());
        }
        let hash = SecretHash::of(&token);
        let (admin, _) = state
            .store
            .find_console_session(&hash, Timestamp::now())
            .await?
            .ok_or_else(refused)?;
        Ok(AdminCaller {
            admin,
            by_cookie,
            hash,
        })
    }
}

fn with_no_store(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Signs a console admin in.
#[utoipa::path(
    post, path = "/console/api/sign-in", operation_id = "consoleSignIn", tag = "console",
    request_body = api::ConsoleSignInRequest,
    responses(
        (status = 200, body = api::ConsoleSession, description = "Signed in; also `Set-Cookie: tessera_console=…` (HttpOnly, SameSite=Strict, Path=/console)."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`invalid_credentials`"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
        (status = 429, body = ErrorBody, description = "`too_many_attempts`, with `Retry-After`"),
        (status = 503, body = ErrorBody, description = "`busy` (too many password checks in progress), with `Retry-After`"),
    ),
    security(())
)]
pub(crate) async fn console_sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    ApiJson(req): ApiJson<api::ConsoleSignInRequest>,
) -> ApiResult<Response> {
    let deployment = deployment_for_request(&state, &headers).await?;
    check_origin(&headers, &deployment)?;
    // Console admins belong to the installation: their failures are counted once, whichever
    // deployment's host the request names.
    let throttle = Throttle::Console;
    let username = req
        .username
        .unwrap_or_else(|| crate::bootstrap::DEFAULT_ADMIN.to_owned());
    if username.is_empty() || username.len() > 64 {
        return Err(ApiError::new(
            ErrorCode::ValidationFailed,
            "username: must be 1-64 characters",
        )
        .with_field("username"));
    }
    let password = Password::presented("password", req.password)?;
    // Counted before the password is checked (as for users' sign-in); a refused attempt
    // (never checked) and a success take their attempt back.
    let buckets = sign_in_buckets(
        &state.identity.settings,
        format!("console:{username}"),
        client.ip.as_ref().map(|ip| format!("console-ip:{ip}")),
    );
    let now = Timestamp::now();
    let windows = count_sign_in(&state, throttle, &buckets).await?;
    // Always verified (against a dummy hash for an unknown name): the same time either way.
    // Bounded like every password check (`503 busy` when no slot frees up).
    let (credentials, matches) = check_counted_password(
        &state,
        throttle,
        (&buckets, &windows),
        async { Ok(state.store.console_admin_credentials(&username).await?) },
        (password, |c: &Option<_>| {
            c.as_ref()
                .map(|(_, hash): &(_, tessera_domain::password::PasswordHash)| hash.clone())
        }),
    )
    .await?;
    let admin = match credentials {
        Some((admin, _)) if matches => admin,
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidCredentials,
                "wrong username or password",
            ));
        }
    };
    sign_in_succeeded(&state, throttle, (&buckets, &windows)).await?;
    let token = PlainSecret::generate(CONSOLE_TOKEN_PREFIX);
    let seconds = state.identity.sessions.console_session_seconds;
    let expires_at = now.plus_secs(i64::try_from(seconds).unwrap_or(3600));
    state
        .store
        .create_console_session(&admin.id, &token.hash(), now, expires_at)
        .await?;
    tracing::info!(admin_id = %admin.id, "console admin signed in");
    let cookie = format!(
        "{CONSOLE_COOKIE}={}; Path=/console; Max-Age={seconds}; HttpOnly; SameSite=Strict{}",
        token.expose(),
        if state.identity.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    let body = api::ConsoleSession {
        admin: api::ConsoleAdmin {
            id: admin.id.into_string(),
            username: admin.username,
        },
        token: token.expose().to_owned(),
        expires_at: expires_at.to_rfc3339(),
    };
    Ok(with_no_store(Json(body).into_response(), &cookie))
}

/// Ends the console session (cookie or bearer token).
#[utoipa::path(
    post, path = "/console/api/sign-out", operation_id = "consoleSignOut", tag = "console",
    responses(
        (status = 200, body = api::ConsoleSignedOut),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
    ),
    security(("console_session" = []), ("console_token" = []))
)]
pub(crate) async fn console_sign_out(
    admin: AdminCaller,
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    admin.check_write(&state, &headers).await?;
    state.store.delete_console_session(&admin.hash).await?;
    let clear = format!(
        "{CONSOLE_COOKIE}=; Path=/console; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if state.identity.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    );
    Ok(with_no_store(
        Json(api::ConsoleSignedOut { signed_out: true }).into_response(),
        &clear,
    ))
}
