//! Browser endpoints of signed-in users: the `/sign-in` page, `POST /sign-in`, `POST
//! /sign-out`, `GET /me`, `POST /me/active-organization`, and the public `/.well-known/jwks.json`.
//!
//! `POST /sign-in` answers JSON to JSON callers and, to the page's form post, a `303` redirect
//! on success or the page again with the error shown inline: the page works without JavaScript.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE, X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::identity::{AuditActor, AuditKind, Email, Password, User};
use tessera_domain::{OrganizationId, Scope, Timestamp};
use tessera_store::{Entity, Throttle};

use crate::convert_identity as convert_id;
use crate::error::{ApiError, ApiResult};
use crate::extract::parse_json;
use crate::identity::{
    audit, check_counted_password, check_origin, count_sign_in, current_session,
    deployment_for_request, event, session_actor, sign_in_buckets, sign_in_succeeded, ClientInfo,
    UserCaller, Via,
};
use crate::AppState;

const SIGN_IN_PAGE: &str = include_str!("../../assets/sign-in.html");
const SIGNED_IN_PAGE: &str = include_str!("../../assets/signed-in.html");
const STYLESHEET: &str = include_str!("../../assets/tessera.css");

/// The pages load nothing but their own stylesheet, run no script and cannot be framed.
const PAGE_CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Where the page goes after signing in when no `redirect_url` is given: the page itself, which
/// then shows who is signed in.
const DEFAULT_LANDING: &str = "/sign-in";

/// `redirect_url` when it is a same-origin path: it starts with one `/` (not `//` or `/\`,
/// which browsers treat as another host), holds only visible ASCII without backslashes, and is
/// at most 2048 characters. Anything else (`https://…`, `javascript:…`, `//evil`) is `None`.
pub(crate) fn safe_redirect(raw: &str) -> Option<&str> {
    let bytes = raw.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 2048
        && bytes[0] == b'/'
        && bytes.get(1).is_none_or(|&b| b != b'/' && b != b'\\')
        && bytes
            .iter()
            .all(|&b| (0x21..=0x7e).contains(&b) && b != b'\\');
    ok.then_some(raw)
}

fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Headers of every page: strict CSP, no sniffing, no framing, no caching.
fn page_headers(headers: &mut HeaderMap) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(PAGE_CSP),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, html).into_response();
    page_headers(response.headers_mut());
    response
}

fn sign_in_page(status: StatusCode, error: &str, email: &str, redirect_url: &str) -> Response {
    let html = SIGN_IN_PAGE
        .replace("{{error}}", &escape(error))
        .replace("{{email}}", &escape(email))
        .replace("{{redirect_url}}", &escape(redirect_url))
        .replace(
            "{{invalid}}",
            if error.is_empty() {
                ""
            } else {
                " aria-invalid=\"true\""
            },
        );
    page(status, html)
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(SET_COOKIE, value);
    }
    response
}

/// The `/sign-in` page: the form, or who is signed in (with a sign-out button).
pub(crate) async fn sign_in_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    // An impersonation ticket is redeemed by the page's script (POST), never by this GET.
    if form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .any(|(k, _)| k == "ticket")
    {
        return crate::routes::vanity::sign_in_ticket_page();
    }
    let redirect = form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "redirect_url")
        .map(|(_, v)| v.into_owned())
        .filter(|v| safe_redirect(v).is_some())
        .unwrap_or_default();
    if let Ok(deployment) = deployment_for_request(&state, &headers).await {
        let scope = Scope::deployment(deployment.id);
        if let Ok(Some((session, _))) = current_session(&state, &headers, &scope).await {
            if let Some(user_id) = session.user_id {
                // A disabled user has no session in effect (sessions end when a user is
                // disabled; this also covers a sign-in racing the disable).
                if let Ok(user) = state
                    .store
                    .get_user(&scope, &user_id)
                    .await
                    .map_err(|_| ())
                    .and_then(|u| if u.disabled { Err(()) } else { Ok(u) })
                {
                    let banner = match &session.impersonator {
                        Some(who) => format!(
                            "<p id=\"impersonation\" class=\"banner\" role=\"status\">Impersonation: \
                             signed in as this user on behalf of {} {}, until {}.</p>",
                            escape(who.kind()),
                            escape(who.id()),
                            escape(&session.expires_at.to_rfc3339())
                        ),
                        None => String::new(),
                    };
                    let html = SIGNED_IN_PAGE
                        .replace("{{email}}", &escape(&user.email))
                        .replace("{{banner}}", &banner);
                    return page(StatusCode::OK, html);
                }
            }
        }
    }
    sign_in_page(StatusCode::OK, "", "", &redirect)
}

/// `/static/tessera.css`, the pages' stylesheet.
pub(crate) async fn stylesheet() -> Response {
    let mut response = STYLESHEET.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body exceeds the size limit",
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("cannot read the request body: {rejection}"),
            )
        }
    })
}

/// Signs the browser in: a new session (new cookie value) replaces any previous one.
#[utoipa::path(
    post, path = "/sign-in", operation_id = "signIn", tag = "browser",
    request_body(content = api::SignInRequest, description = "JSON, or the same fields form-encoded (`application/x-www-form-urlencoded`) as the `/sign-in` page posts them; the form gets a `303` redirect or the page with the error."),
    responses(
        (status = 200, body = api::Me, description = "Signed in; `Set-Cookie: tessera_session=…` (HttpOnly, SameSite=Lax, Secure on https)."),
        (status = 303, description = "Form post: signed in, redirected to `redirect_url`."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`invalid_credentials` (the same for an unknown email, a wrong password and a disabled user)"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
        (status = 429, body = ErrorBody, description = "`too_many_attempts`, with `Retry-After`"),
    ),
    security(())
)]
pub(crate) async fn sign_in(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let form = is_form(&headers);
    let (email, redirect, result) = if form {
        let bytes = match body_bytes(body) {
            Ok(bytes) => bytes,
            Err(err) => {
                return sign_in_page(
                    StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::BAD_REQUEST),
                    &err.message,
                    "",
                    "",
                )
            }
        };
        let mut req = api::SignInRequest::default();
        for (key, value) in form_urlencoded::parse(&bytes) {
            match key.as_ref() {
                "email" => req.email = value.into_owned(),
                "password" => req.password = value.into_owned(),
                "redirect_url" => {
                    req.redirect_url = Some(value.into_owned()).filter(|v| !v.is_empty())
                }
                _ => {}
            }
        }
        let email = req.email.clone();
        let redirect = req.redirect_url.clone().unwrap_or_default();
        (
            email,
            redirect,
            attempt(&state, &headers, &client, req).await,
        )
    } else {
        let parsed = check_json_type(&headers)
            .and_then(|()| body_bytes(body))
            .and_then(|bytes| parse_json::<api::SignInRequest>(&bytes));
        match parsed {
            Ok(req) => (
                String::new(),
                String::new(),
                attempt(&state, &headers, &client, req).await,
            ),
            Err(err) => return err.into_response(),
        }
    };
    match (form, result) {
        (false, Ok(done)) => with_cookie(Json(done.me).into_response(), &done.cookie),
        (false, Err(err)) => err.into_response(),
        (true, Ok(done)) => {
            let target = safe_redirect(&redirect).unwrap_or(DEFAULT_LANDING);
            let mut response = StatusCode::SEE_OTHER.into_response();
            if let Ok(location) = HeaderValue::from_str(target) {
                response.headers_mut().insert(LOCATION, location);
            }
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            with_cookie(response, &done.cookie)
        }
        (true, Err(err)) => {
            let status = StatusCode::from_u16(err.code.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let message = match err.code {
                ErrorCode::InvalidCredentials => "Wrong email or password.".to_owned(),
                ErrorCode::TooManyAttempts => format!(
                    "Too many failed attempts. Try again in {} seconds.",
                    err.retry_after.unwrap_or(60)
                ),
                ErrorCode::OriginNotAllowed => {
                    "This form was sent from another site and was refused.".to_owned()
                }
                _ => err.message.clone(),
            };
            let safe = safe_redirect(&redirect).unwrap_or_default();
            let mut response = sign_in_page(status, &message, &email, safe);
            if let Some(seconds) = err.retry_after {
                if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                    response
                        .headers_mut()
                        .insert(axum::http::header::RETRY_AFTER, value);
                }
            }
            response
        }
    }
}

fn check_json_type(headers: &HeaderMap) -> ApiResult<()> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "expected application/json or application/x-www-form-urlencoded, got {essence:?}"
            ),
        ))
    }
}

struct SignedIn {
    me: api::Me,
    cookie: String,
}

fn not_a_member() -> ApiError {
    ApiError::new(
        ErrorCode::OrganizationNotFound,
        "organization_id: the user is not a member of this organization",
    )
    .with_field("organization_id")
}

fn invalid_credentials() -> ApiError {
    ApiError::new(ErrorCode::InvalidCredentials, "wrong email or password")
}

/// One sign-in attempt: origin, input, throttling, password, then a rotated session.
async fn attempt(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
    req: api::SignInRequest,
) -> ApiResult<SignedIn> {
    let deployment = deployment_for_request(state, headers).await?;
    check_origin(headers, &deployment)?;
    let scope = Scope::deployment(deployment.id.clone());
    if let Some(redirect) = &req.redirect_url {
        if safe_redirect(redirect).is_none() {
            return Err(ApiError::new(
                ErrorCode::ValidationFailed,
                "redirect_url: must be a path on this site, such as /agents",
            )
            .with_field("redirect_url"));
        }
    }
    let email = Email::parse("email", &req.email)?;
    let password = Password::presented("password", req.password)?;

    // Counted before the password is checked; a refused attempt (never checked) and a success
    // take their attempt back.
    let throttle = Throttle::Deployment(&scope);
    let buckets = sign_in_buckets(
        &state.identity.settings,
        format!("account:{email}"),
        client.ip.as_ref().map(|ip| format!("ip:{ip}")),
    );
    let windows = count_sign_in(state, throttle, &buckets).await?;

    // Verified always: an unknown email, a user without password and a disabled user cost the
    // same time as a wrong password.
    let (credentials, matches) = check_counted_password(
        state,
        throttle,
        (&buckets, &windows),
        async { Ok(state.store.user_credentials(&scope, &email).await?) },
        (
            password,
            |c: &Option<tessera_domain::identity::UserCredentials>| {
                c.as_ref().and_then(|c| c.password_hash.clone())
            },
        ),
    )
    .await?;
    let user = match credentials {
        Some(c) if matches && !c.user.disabled => c.user,
        other => {
            audit(
                state,
                &scope,
                event(
                    AuditKind::SignInFailed,
                    AuditActor::Anonymous,
                    other.map(|c| c.user.id.into_string()),
                    client,
                    json!({"email": email.as_str()}),
                ),
            )
            .await;
            return Err(invalid_credentials());
        }
    };
    sign_in_succeeded(state, throttle, (&buckets, &windows)).await?;

    // Session fixation: whatever session the browser had is replaced by a new one with a new
    // cookie value, in one transaction.
    let old = current_session(state, headers, &scope).await?;
    let (secret, new) = state
        .identity
        .new_session(Some(user.id.clone()), None, None);
    // Recorded by the sign-in's own transaction.
    let signed_in = event(
        AuditKind::SignedIn,
        AuditActor::User(user.id.clone()),
        Some(user.id.as_str().to_owned()),
        client,
        json!({"method": "password"}),
    );
    let session = match state
        .store
        .replace_session(
            &scope,
            old.as_ref().map(|(_, hash)| hash),
            &new,
            Some(&signed_in),
        )
        .await
    {
        Ok(session) => session,
        // Disabled or deleted between the password check and now.
        Err(tessera_store::StoreError::NotFound { .. }) => return Err(invalid_credentials()),
        Err(err) => return Err(err.into()),
    };
    let expires = session.idle_expires_at.min(session.expires_at);
    let me = me(state, &scope, user, None, "session", expires).await?;
    Ok(SignedIn {
        me,
        cookie: state.identity.session_cookie(&secret, session.expires_at),
    })
}

async fn me(
    state: &AppState,
    scope: &Scope,
    user: User,
    active: Option<&OrganizationId>,
    authenticated_by: &str,
    expires_at: Timestamp,
) -> ApiResult<api::Me> {
    let memberships = state.store.user_memberships(scope, &user.id).await?;
    let active_organization = active.and_then(|id| {
        memberships
            .iter()
            .find(|(_, o)| &o.id == id)
            .map(|(_, o)| convert_id::organization(o.clone()))
    });
    Ok(api::Me {
        user: convert_id::user(user),
        memberships: memberships
            .into_iter()
            .map(convert_id::me_membership)
            .collect(),
        active_organization,
        authenticated_by: authenticated_by.to_owned(),
        expires_at: expires_at.to_rfc3339(),
    })
}

/// Ends the browser session: its row is deleted (the cookie value is dead) and the cookie
/// cleared; the next need creates a new session.
#[utoipa::path(
    post, path = "/sign-out", operation_id = "signOut", tag = "browser",
    responses(
        (status = 200, body = api::SignedOut, description = "Signed out; the cookie is cleared. A form post is redirected (`303`) to `/sign-in`."),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 409, body = ErrorBody, description = "`no_browser_session` (called with a user token)"),
    ),
    security(("session_cookie" = []))
)]
pub(crate) async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
) -> ApiResult<Response> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(no_browser_session());
    }
    let deployment = deployment_for_request(&state, &headers).await?;
    check_origin(&headers, &deployment)?;
    let scope = Scope::deployment(deployment.id.clone());
    if let Some((session, hash)) = current_session(&state, &headers, &scope).await? {
        // A signed-in session's end is recorded by the deletion's transaction.
        let signed_out = session.user_id.as_ref().map(|user_id| {
            event(
                AuditKind::SignedOut,
                session_actor(&session, user_id),
                Some(user_id.as_str().to_owned()),
                &client,
                json!({}),
            )
        });
        state
            .store
            .delete_session(&scope, &hash, signed_out.as_ref())
            .await?;
    }
    let clear = state.identity.clear_cookie();
    if is_form(&headers) {
        let mut response = StatusCode::SEE_OTHER.into_response();
        response
            .headers_mut()
            .insert(LOCATION, HeaderValue::from_static(DEFAULT_LANDING));
        return Ok(with_cookie(response, &clear));
    }
    Ok(with_cookie(
        Json(api::SignedOut { signed_out: true }).into_response(),
        &clear,
    ))
}

fn no_browser_session() -> ApiError {
    ApiError::new(
        ErrorCode::NoBrowserSession,
        "this changes the browser session; a user token has none",
    )
}

/// The signed-in user (browser session cookie or user token), their organizations and the
/// session's active organization.
#[utoipa::path(
    get, path = "/me", operation_id = "getMe", tag = "browser",
    responses(
        (status = 200, body = api::Me),
        (status = 401, body = ErrorBody, description = "`unauthorized`: not signed in"),
    ),
    security(("session_cookie" = []), ("user_token" = []))
)]
pub(crate) async fn get_me(
    caller: UserCaller,
    State(state): State<AppState>,
) -> ApiResult<Json<api::Me>> {
    let (active, by, expires) = match &caller.via {
        Via::Session(session, _) => (
            session.active_organization_id.clone(),
            "session",
            session.idle_expires_at.min(session.expires_at),
        ),
        Via::Token { expires_at } => (
            None,
            "token",
            Timestamp::from_millis(expires_at.saturating_mul(1000)),
        ),
    };
    let me = me(
        &state,
        &caller.scope,
        caller.user,
        active.as_ref(),
        by,
        expires,
    )
    .await?;
    Ok(Json(me))
}

/// Chooses the browser session's active organization (one the user is a member of). The
/// session is rotated: the answer sets a new cookie value and the old one stops working.
#[utoipa::path(
    post, path = "/me/active-organization", operation_id = "setActiveOrganization", tag = "browser",
    request_body = api::SetActiveOrganizationRequest,
    responses(
        (status = 200, body = api::Me, description = "The new cookie value is in `Set-Cookie`."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: not signed in"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`organization_not_found`: unknown, or the user is not a member"),
        (status = 409, body = ErrorBody, description = "`no_browser_session` (called with a user token)"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("session_cookie" = []))
)]
pub(crate) async fn set_active_organization(
    caller: UserCaller,
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    crate::extract::ApiJson(req): crate::extract::ApiJson<api::SetActiveOrganizationRequest>,
) -> ApiResult<Response> {
    let Via::Session(session, hash) = &caller.via else {
        return Err(no_browser_session());
    };
    check_origin(&headers, &caller.deployment)?;
    let organization_id = OrganizationId::parse(&req.organization_id).map_err(|e| {
        ApiError::new(ErrorCode::ValidationFailed, format!("organization_id: {e}"))
            .with_field("organization_id")
    })?;
    let memberships = state
        .store
        .user_memberships(&caller.scope, &caller.user.id)
        .await?;
    if !memberships.iter().any(|(_, o)| o.id == organization_id) {
        return Err(not_a_member());
    }
    // The session keeps its absolute limit and, for an impersonation, its impersonator and
    // ticket (the store carries them over).
    let (secret, new) = state.identity.new_session(
        Some(caller.user.id.clone()),
        Some(organization_id.clone()),
        Some(session.expires_at),
    );
    let changed = event(
        AuditKind::ActiveOrganizationChanged,
        session_actor(session, &caller.user.id),
        Some(caller.user.id.as_str().to_owned()),
        &client,
        json!({"organization_id": organization_id.as_str()}),
    );
    let rotated = match state
        .store
        .rotate_session(&caller.scope, hash, &new, Some(&changed))
        .await
    {
        Ok(session) => session,
        // The membership was removed since it was read above.
        Err(tessera_store::StoreError::NotFound {
            entity: Entity::Organization,
            ..
        }) => return Err(not_a_member()),
        Err(tessera_store::StoreError::NotFound { .. }) => {
            return Err(ApiError::unauthorized("not signed in"))
        }
        Err(err) => return Err(err.into()),
    };
    let expires = rotated.idle_expires_at.min(rotated.expires_at);
    let me = me(
        &state,
        &caller.scope,
        caller.user,
        Some(&organization_id),
        "session",
        expires,
    )
    .await?;
    Ok(with_cookie(
        Json(me).into_response(),
        &state.identity.session_cookie(&secret, rotated.expires_at),
    ))
}

/// The public keys that verify user tokens (RFC 7517 JWK Set, OKP/Ed25519).
#[utoipa::path(
    get, path = "/.well-known/jwks.json", operation_id = "getJwks", tag = "browser",
    responses((status = 200, body = api::Jwks)),
    security(())
)]
pub(crate) async fn jwks(State(state): State<AppState>) -> ApiResult<Response> {
    let keys = state.identity.published_keys(state.store.as_ref()).await?;
    let mut response = Json(json!({ "keys": keys })).into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_paths_are_safe_redirects() {
        for ok in [
            "/",
            "/agents",
            "/a/b?c=d&e=%2F%2Fx#frag",
            "/sign-in?x=https://e.x",
        ] {
            assert_eq!(safe_redirect(ok), Some(ok), "{ok}");
        }
        for bad in [
            "",
            "//evil.example",
            "//evil.example/path",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example",
            "http:/evil.example",
            "javascript:alert(1)",
            "evil.example",
            "/a\\b",
            "/with space",
            "/tab\there",
            "/new\nline",
            "/ünïcode",
            " /leading-space",
        ] {
            assert_eq!(safe_redirect(bad), None, "{bad:?}");
        }
        assert!(safe_redirect(&format!("/{}", "a".repeat(2047))).is_some());
        assert!(safe_redirect(&format!("/{}", "a".repeat(2048))).is_none());
    }

    #[test]
    fn page_values_are_escaped() {
        assert_eq!(
            escape(r#"<script>"a"&'b'</script>"#),
            "&lt;script&gt;&quot;a&quot;&amp;&#39;b&#39;&lt;/script&gt;"
        );
        let response = sign_in_page(StatusCode::UNAUTHORIZED, "x<y", "\"><img>", "/ok");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"));
    }
}
