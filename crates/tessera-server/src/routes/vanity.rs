//! The vanity pages (`/vanity/agents`, the ticket form of `/sign-in`), the browser client
//! `/static/tessera.js` and the pages' scripts, and CORS for custom UIs on the app's origin.
//!
//! The pages never change state on GET: their scripts POST the ticket. They send
//! `Referrer-Policy: no-referrer` (a ticket in the address bar never leaks in a `Referer`) and a
//! Content-Security-Policy that allows scripts, styles and requests to this origin only, and no
//! inline script.
//!
//! CORS: the browser API and the exchange answer cross-origin requests from the deployment's
//! `frontend_host` (the app's own origin) and `backend_host`, with credentials, so a custom UI on
//! the app's origin can use the cookie. A configurable list of further origins per deployment
//! does not exist yet.

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_MAX_AGE, CACHE_CONTROL, CONTENT_TYPE, ORIGIN, VARY,
    X_CONTENT_TYPE_OPTIONS,
};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::identity::{deployment_for_request, normalize_origin};
use crate::AppState;

const VANITY_AGENTS_PAGE: &str = include_str!("../../assets/vanity-agents.html");
const SIGN_IN_TICKET_PAGE: &str = include_str!("../../assets/sign-in-ticket.html");
const CLIENT_JS: &str = include_str!("../../assets/tessera.js");
const VANITY_AGENTS_JS: &str = include_str!("../../assets/vanity-agents.js");
const SIGN_IN_TICKET_JS: &str = include_str!("../../assets/sign-in-ticket.js");

/// Scripts, styles and requests from this origin only; no inline script, no framing.
pub(crate) const SCRIPT_PAGE_CSP: &str = "default-src 'none'; script-src 'self'; \
     connect-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

fn script_page(html: &'static str) -> Response {
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        HeaderName::from_static("content-security-policy"),
        HeaderValue::from_static(SCRIPT_PAGE_CSP),
    );
    headers.insert(
        HeaderName::from_static("referrer-policy"),
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        HeaderName::from_static("x-frame-options"),
        HeaderValue::from_static("DENY"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `/vanity/agents`: the chat page (its script redeems `?ticket=`).
pub(crate) async fn vanity_agents() -> Response {
    script_page(VANITY_AGENTS_PAGE)
}

/// `/sign-in?ticket=…`: the page whose script redeems an impersonation ticket.
pub(crate) fn sign_in_ticket_page() -> Response {
    script_page(SIGN_IN_TICKET_PAGE)
}

fn script(body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    // Custom UIs on other origins import the client module.
    headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// `/static/tessera.js`: the browser client (an ES module).
pub(crate) async fn client_js() -> Response {
    script(CLIENT_JS)
}

pub(crate) async fn vanity_agents_js() -> Response {
    script(VANITY_AGENTS_JS)
}

pub(crate) async fn sign_in_ticket_js() -> Response {
    script(SIGN_IN_TICKET_JS)
}

/// Paths whose cross-origin use by the app's own UI is allowed.
fn cors_path(path: &str) -> bool {
    path.starts_with("/agent/") || path == "/agent" || path == "/session/tickets/exchange"
}

/// The request's `Origin` when it is one of its deployment's hosts.
async fn allowed_origin(state: &AppState, headers: &HeaderMap) -> Option<HeaderValue> {
    let origin = headers.get(ORIGIN)?.to_str().ok()?;
    let normalized = normalize_origin(origin)?;
    let deployment = deployment_for_request(state, headers).await.ok()?;
    [&deployment.frontend_host, &deployment.backend_host]
        .iter()
        .any(|host| normalize_origin(host).as_deref() == Some(normalized.as_str()))
        .then(|| HeaderValue::from_str(origin).ok())
        .flatten()
}

/// CORS for the browser API: preflights are answered here; other answers get the
/// `Access-Control-Allow-*` headers when the origin is allowed.
pub(crate) async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if !cors_path(req.uri().path()) || !req.headers().contains_key(ORIGIN) {
        return next.run(req).await;
    }
    let allowed = allowed_origin(&state, req.headers()).await;
    if req.method() == Method::OPTIONS {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(VARY, HeaderValue::from_static("Origin"));
        if let Some(origin) = allowed {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PATCH, DELETE"),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(
                    "authorization, content-type, idempotency-key, last-event-id",
                ),
            );
            headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
        return response;
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.append(VARY, HeaderValue::from_static("Origin"));
    if let Some(origin) = allowed {
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    response
}
