//! Session tickets: minting by a backend (secret key) or a console admin, and the browser's
//! exchange, which opens an agent session (agent_access) or signs the browser in as a user
//! (impersonation).
//!
//! Agent-access mints and exchanges are high-volume and are not written to the audit log (they
//! are logged at debug level); impersonation tickets, impersonations and replayed tickets are.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::records::Deployment;
use tessera_domain::secret::{PlainSecret, SecretHash};
use tessera_domain::ticket::{
    Issuer, TicketLimits, TicketRequest, TicketSpec, TicketType, SESSION_TOKEN_PREFIX,
    TICKET_PREFIX,
};
use tessera_domain::{DeploymentId, Scope, Timestamp};
use tessera_store::{ExchangeOutcome, ExchangeTicket, NewTicket, StoreError};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::ApiJson;
use crate::identity::{check_origin, deployment_for_request, session_cookie_value, ClientInfo};
use crate::routes::agent::session_view;
use crate::routes::console::AdminCaller;
use crate::AppState;

/// Longest string worth hashing as a ticket.
const MAX_TICKET_LEN: usize = 128;

fn ticket_request(req: api::CreateSessionTicketRequest) -> TicketRequest {
    TicketRequest {
        ticket_type: req.ticket_type,
        agent_ids: req.agent_ids,
        actor_id: req.actor_id,
        user_id: req.user_id,
        agent_session_identifier: req.agent_session_identifier,
        context_group: req.context_group,
        expires_in: req.expires_in,
        api_auth_app_slug: req.api_auth_app_slug,
        webhook_app_slug: req.webhook_app_slug,
    }
}

/// The URL that redeems a ticket: its type's page on the backend or frontend host.
pub(crate) fn ticket_url(deployment: &Deployment, ticket_type: TicketType, ticket: &str) -> String {
    let host = if ticket_type.on_frontend() {
        &deployment.frontend_host
    } else {
        &deployment.backend_host
    };
    format!(
        "{}{}?ticket={ticket}",
        host.trim_end_matches('/'),
        ticket_type.page()
    )
}

async fn mint(
    state: &AppState,
    scope: &Scope,
    deployment: &Deployment,
    issuer: Issuer,
    client: &ClientInfo,
    req: api::CreateSessionTicketRequest,
) -> ApiResult<(StatusCode, Json<api::SessionTicket>)> {
    let sessions = &state.identity.sessions;
    let spec = TicketSpec::parse(
        ticket_request(req),
        TicketLimits {
            default_expires_in: sessions.ticket_default_expires_in_seconds,
            max_expires_in: sessions.ticket_max_expires_in_seconds,
        },
    )?;
    let now = Timestamp::now();
    let secret = PlainSecret::generate_ordered(TICKET_PREFIX, now);
    let expires_at = now.plus_secs(i64::from(spec.expires_in));
    let ticket_type = spec.grant.ticket_type();
    let stored = state
        .store
        .create_ticket(
            scope,
            &NewTicket {
                hash: secret.hash(),
                grant: spec.grant,
                issuer: issuer.clone(),
                now,
                expires_at,
                client: client.audit(),
            },
        )
        .await?;
    tracing::debug!(ticket_id = %stored.id, ticket_type = ticket_type.as_str(), "session ticket minted");
    Ok((
        StatusCode::CREATED,
        Json(api::SessionTicket {
            url: ticket_url(deployment, ticket_type, secret.expose()),
            ticket: secret.expose().to_owned(),
            expires_at: expires_at.as_secs(),
        }),
    ))
}

/// Mints a single-use, time-bound session ticket and the URL that redeems it.
#[utoipa::path(
    post, path = "/session/tickets", operation_id = "createBackendSessionTicket", tag = "session tickets",
    request_body = api::CreateSessionTicketRequest,
    responses(
        (status = 201, body = api::SessionTicket, description = "The ticket (shown once) and its URL: agent_access → `{backend_host}/vanity/agents?ticket=…`, impersonation → `{frontend_host}/sign-in?ticket=…`, api_auth_access → `{backend_host}/vanity/api-auth?ticket=…`, webhook_app_access → `{backend_host}/vanity/webhook?ticket=…`."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found` (field `agent_ids[i]`), `actor_not_found`, `user_not_found`, `app_not_found`"),
        (status = 409, body = ErrorBody, description = "`user_disabled`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`: a field rule (the field is named)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_backend_session_ticket(
    caller: Caller,
    State(state): State<AppState>,
    client: ClientInfo,
    ApiJson(req): ApiJson<api::CreateSessionTicketRequest>,
) -> ApiResult<(StatusCode, Json<api::SessionTicket>)> {
    let deployment = state
        .deployments
        .get(state.store.as_ref(), &caller.scope)
        .await?;
    let issuer = Issuer::SecretKey(caller.key_id.clone());
    mint(&state, &caller.scope, &deployment, issuer, &client, req).await
}

/// The same as `createBackendSessionTicket`, for a console admin acting on any deployment.
#[utoipa::path(
    post, path = "/console/api/deployments/{deployment_id}/session/tickets", operation_id = "createSessionTicket", tag = "console",
    params(("deployment_id" = String, Path, description = "Deployment id (`dep_…`)")),
    request_body = api::CreateSessionTicketRequest,
    responses(
        (status = 201, body = api::SessionTicket),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: not signed in to the console"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed` (cookie-authenticated writes)"),
        (status = 404, body = ErrorBody, description = "`deployment_not_found`, `agent_not_found`, `actor_not_found`, `user_not_found`, `app_not_found`"),
        (status = 409, body = ErrorBody, description = "`user_disabled`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("console_session" = []), ("console_token" = []))
)]
pub(crate) async fn create_session_ticket(
    admin: AdminCaller,
    State(state): State<AppState>,
    // A segment that is not even UTF-8 names no deployment, like any other malformed id.
    deployment_id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    client: ClientInfo,
    ApiJson(req): ApiJson<api::CreateSessionTicketRequest>,
) -> ApiResult<(StatusCode, Json<api::SessionTicket>)> {
    admin.check_write(&state, &headers).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::DeploymentNotFound,
            "no deployment with this id exists",
        )
    };
    let id = deployment_id
        .ok()
        .and_then(|Path(raw)| DeploymentId::parse(&raw).ok())
        .ok_or_else(not_found)?;
    let scope = Scope::deployment(id);
    let deployment = match state.store.get_deployment(&scope).await {
        Ok(d) => d,
        Err(StoreError::NotFound { .. }) => return Err(not_found()),
        Err(err) => return Err(err.into()),
    };
    let issuer = Issuer::ConsoleAdmin(admin.admin.id.clone());
    mint(&state, &scope, &deployment, issuer, &client, req).await
}

fn invalid_ticket() -> ApiError {
    ApiError::new(
        ErrorCode::InvalidTicket,
        "this ticket is unknown, expired or already used; ask for a new link",
    )
}

/// Redeems a ticket from the browser. agent_access opens an agent session that replaces the
/// browser session's previous one; impersonation signs the browser in as the user for at most
/// 30 minutes. A ticket works once, ever.
#[utoipa::path(
    post, path = "/session/tickets/exchange", operation_id = "exchangeSessionTicket", tag = "session tickets",
    request_body = api::ExchangeSessionTicketRequest,
    responses(
        (status = 200, body = api::ExchangedSessionTicket, description = "Redeemed. The browser session cookie is set when the browser had none (agent_access) or replaced (impersonation)."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`invalid_ticket` (unknown, expired or used: one answer), `signin_required` (signin session, nobody signed in; the ticket is kept)"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`actor_not_found` / `user_not_found` (deleted since minting), `app_not_found`"),
        (status = 409, body = ErrorBody, description = "`user_disabled`"),
    ),
    security(())
)]
pub(crate) async fn exchange_session_ticket(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    ApiJson(req): ApiJson<api::ExchangeSessionTicketRequest>,
) -> ApiResult<Response> {
    let deployment = deployment_for_request(&state, &headers).await?;
    check_origin(&headers, &deployment)?;
    let ticket = req.ticket.trim();
    if ticket.is_empty() || ticket.len() > MAX_TICKET_LEN {
        return Err(invalid_ticket());
    }
    let scope = Scope::deployment(deployment.id.clone());
    let identity = &state.identity;
    let (browser_secret, new_browser_session) = identity.new_session(None, None, None);
    let now = Timestamp::now();
    let token = PlainSecret::generate_ordered(SESSION_TOKEN_PREFIX, now);
    let seconds_ms = |s: u64| {
        i64::try_from(s)
            .unwrap_or(i64::MAX / 2_000)
            .saturating_mul(1000)
    };
    let exchange = ExchangeTicket {
        hash: SecretHash::of(ticket),
        now,
        browser_session: session_cookie_value(&headers).map(|v| SecretHash::of(&v)),
        new_browser_session,
        session_token: token.hash(),
        session_lifetime_ms: seconds_ms(identity.sessions.agent_session_lifetime_seconds),
        impersonation_ms: seconds_ms(identity.sessions.impersonation_seconds),
        // Time-ordered like ids (80 random bits under a millisecond timestamp): the actors'
        // unique key index then grows at its end instead of at a random page per exchange.
        anonymous_key: format!("anon_{}", tessera_domain::id::new_body(now)),
        client: client.audit(),
    };
    let outcome = state.store.exchange_ticket(&scope, &exchange).await?;
    let (body, cookie) = match outcome {
        ExchangeOutcome::Agent {
            ticket,
            session,
            browser,
            browser_created,
            actor,
            agents,
        } => {
            tracing::debug!(ticket_id = %ticket.id, agent_session_id = %session.id, "session ticket exchanged");
            let info = session_view(&session, actor, agents, browser.impersonator.as_ref());
            let cookie = browser_created
                .then(|| identity.session_cookie(&browser_secret, browser.expires_at));
            (
                api::ExchangedSessionTicket {
                    ticket_type: TicketType::AgentAccess.as_str().to_owned(),
                    session_token: Some(token.expose().to_owned()),
                    session: Some(info),
                    impersonation: None,
                    redirect_url: TicketType::AgentAccess.page().to_owned(),
                },
                cookie,
            )
        }
        ExchangeOutcome::Impersonation {
            ticket,
            user,
            browser,
        } => {
            // The store recorded `user.impersonation_started` in the exchange's transaction.
            (
                api::ExchangedSessionTicket {
                    ticket_type: TicketType::Impersonation.as_str().to_owned(),
                    session_token: None,
                    session: None,
                    impersonation: Some(api::Impersonation {
                        user_id: user.id.as_str().to_owned(),
                        email: user.email,
                        impersonated_by: api::Impersonator {
                            kind: ticket.issuer.kind().to_owned(),
                            id: ticket.issuer.id().to_owned(),
                        },
                        expires_at: browser.expires_at.to_rfc3339(),
                    }),
                    redirect_url: TicketType::Impersonation.page().to_owned(),
                },
                Some(identity.session_cookie(&browser_secret, browser.expires_at)),
            )
        }
        ExchangeOutcome::Invalid { replayed } => {
            if let Some(ticket) = replayed {
                // Revoked and recorded in the audit log by the exchange's transaction.
                tracing::warn!(ticket_id = %ticket.id, "a used session ticket was presented again; its sessions were revoked");
            }
            return Err(invalid_ticket());
        }
        ExchangeOutcome::SigninRequired => {
            return Err(ApiError::new(
                ErrorCode::SigninRequired,
                "this ticket opens a session for the signed-in user: sign in first, then open the link again",
            ))
        }
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(cookie) = cookie {
        if let Ok(value) = HeaderValue::from_str(&cookie) {
            response.headers_mut().append(SET_COOKIE, value);
        }
    }
    Ok(response)
}
