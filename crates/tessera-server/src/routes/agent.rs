//! The browser API of agent sessions (`/agent/…`): the session, its conversations
//! ("contexts": threads of the session's actor × agents × context group), their messages, sending,
//! cancelling, deciding on pending actions and the event stream.
//!
//! Authenticated by the browser session cookie (its active agent session; writes must pass the
//! Origin check) or by the exchange's `session_token` as `Authorization: Bearer` (no ambient
//! credential, so no Origin check). Every store call carries the session, and a conversation
//! outside its partition is `404 context_not_found`, exactly like a missing one.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::Json;
use futures_util::stream::Stream;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::agent::Agent;
use tessera_domain::records::{Actor, Deployment};
use tessera_domain::secret::SecretHash;
use tessera_domain::ticket::{AgentSession, Issuer, SESSION_TOKEN_PREFIX};
use tessera_domain::validate::Label;
use tessera_domain::{ActionId, AgentId, MessageId, Scope, ThreadId, Timestamp};
use tessera_store::{Entity, Order, StoreError};

use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery};
use crate::identity::{bearer, check_origin, current_session, deployment_for_request};
use crate::routes::sessions::{action_resolved, resolve_action, resolved_status};
use crate::routes::threads::{
    announce_stops, cancel_runs, idempotency_key, request_hash, send_message, Sender,
};
use crate::AppState;

/// A browser (or bearer-token client) with a live agent session.
#[derive(Debug, Clone)]
pub(crate) struct AgentCaller {
    pub scope: Scope,
    pub deployment: Deployment,
    pub session: AgentSession,
    /// Authenticated by the cookie (ambient: writes need the Origin check).
    pub by_cookie: bool,
    /// The browser session's impersonator, if it is an impersonation session.
    pub impersonator: Option<Issuer>,
}

fn no_session() -> ApiError {
    ApiError::unauthorized(
        "no agent session: open a ticket link (or send the exchange's session_token as a bearer token)",
    )
}

/// The agent session of a request; `Ok(None)` when it carries no credential at all or its
/// browser session has no live agent session.
pub(crate) async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
) -> ApiResult<Option<AgentCaller>> {
    let deployment = deployment_for_request(state, headers).await?;
    let scope = Scope::deployment(deployment.id.clone());
    let now = Timestamp::now();
    if let Some(token) = bearer(headers)? {
        if !token.starts_with(SESSION_TOKEN_PREFIX) {
            return Err(ApiError::unauthorized("invalid session token"));
        }
        let session = state
            .store
            .agent_session_by_token(&scope, &SecretHash::of(token), now)
            .await?
            .ok_or_else(|| ApiError::unauthorized("invalid or expired session token"))?;
        return Ok(Some(AgentCaller {
            scope,
            deployment,
            session,
            by_cookie: false,
            impersonator: None,
        }));
    }
    let Some((browser, _)) = current_session(state, headers, &scope).await? else {
        return Ok(None);
    };
    let session = state
        .store
        .active_agent_session(&scope, &browser.id, now)
        .await?;
    Ok(session.map(|session| AgentCaller {
        scope,
        deployment,
        session,
        by_cookie: true,
        impersonator: browser.impersonator,
    }))
}

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        resolve(state, &parts.headers).await?.ok_or_else(no_session)
    }
}

impl AgentCaller {
    /// Writes authenticated by the cookie must come from the deployment's own origins.
    fn check_write(&self, headers: &HeaderMap) -> ApiResult<()> {
        if self.by_cookie {
            check_origin(headers, &self.deployment)?;
        }
        Ok(())
    }

    async fn context(
        &self,
        state: &AppState,
        id: &ThreadId,
    ) -> ApiResult<tessera_domain::thread::Thread> {
        Ok(state
            .store
            .get_context(&self.scope, &self.session, id)
            .await?)
    }
}

/// A conversation id from the path; anything malformed is `context_not_found`.
pub(crate) struct ContextPath(pub ThreadId);

impl<S: Send + Sync> FromRequestParts<S> for ContextPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(Entity::Context))?;
        ThreadId::parse(&raw)
            .map(ContextPath)
            .map_err(|_| ApiError::not_found(Entity::Context))
    }
}

/// A conversation id and an action id from the path. A malformed conversation id is
/// `context_not_found`; the action id is parsed by the handler after the conversation was found
/// in the session's partition, so that another session's conversation is answered the same way
/// whatever action id comes with it.
pub(crate) struct ContextActionPath(pub ThreadId, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ContextActionPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path((context, action)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found(Entity::Context))?;
        let context =
            ThreadId::parse(&context).map_err(|_| ApiError::not_found(Entity::Context))?;
        Ok(ContextActionPath(context, action))
    }
}

/// The wire form of an agent session: its actor, its agents (deleted ones left out), the
/// context group, and the browser's impersonator if any.
pub(crate) async fn session_info(
    state: &AppState,
    scope: &Scope,
    session: &AgentSession,
    impersonator: Option<&Issuer>,
) -> ApiResult<api::AgentSession> {
    // The actor and the agents are independent reads: they run together.
    let (actor, found) = futures_util::future::join(
        state.store.get_actor(scope, &session.actor_id),
        futures_util::future::join_all(
            session
                .agent_ids
                .iter()
                .map(|id| state.store.get_agent(scope, id)),
        ),
    )
    .await;
    let actor = actor?;
    let mut agents = Vec::with_capacity(session.agent_ids.len());
    for agent in found {
        match agent {
            Ok(agent) => agents.push(agent),
            Err(StoreError::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(session_view(session, actor, agents, impersonator))
}

/// The browser's view of an agent session, given its actor and those of its agents that exist.
pub(crate) fn session_view(
    session: &AgentSession,
    actor: Actor,
    agents: Vec<Agent>,
    impersonator: Option<&Issuer>,
) -> api::AgentSession {
    let agents: Vec<_> = agents
        .into_iter()
        .map(|agent| api::SessionAgent {
            id: agent.id.as_str().to_owned(),
            name: agent.spec.name.as_str().to_owned(),
            description: Some(agent.spec.description.as_str().to_owned()).filter(|d| !d.is_empty()),
        })
        .collect();
    api::AgentSession {
        has_session: true,
        id: Some(session.id.as_str().to_owned()),
        actor: Some(convert::actor(actor)),
        active_agent: agents.first().cloned(),
        agents,
        context_group: Some(session.context_group.as_str().to_owned()),
        session_name: session.session_name.clone(),
        expires_at: Some(session.expires_at.to_rfc3339()),
        impersonated_by: impersonator.map(|i| api::Impersonator {
            kind: i.kind().to_owned(),
            id: i.id().to_owned(),
        }),
    }
}

fn context(t: tessera_domain::thread::Thread) -> api::AgentContext {
    api::AgentContext {
        id: t.id.into_string(),
        title: t.title,
        agent_id: t.agent_id.into_string(),
        status: t.status.as_str().to_owned(),
        created_at: t.created_at.to_rfc3339(),
        updated_at: t.updated_at.to_rfc3339(),
    }
}

/// The browser's agent session (`has_session: false` when it has none).
#[utoipa::path(
    get, path = "/agent/session", operation_id = "getAgentSession", tag = "agent sessions",
    responses(
        (status = 200, body = api::AgentSession),
        (status = 401, body = ErrorBody, description = "`unauthorized`: an invalid bearer session token"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn get_agent_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json<api::AgentSession>> {
    match resolve(&state, &headers).await? {
        Some(caller) => Ok(Json(
            session_info(
                &state,
                &caller.scope,
                &caller.session,
                caller.impersonator.as_ref(),
            )
            .await?,
        )),
        None => Ok(Json(api::AgentSession {
            has_session: false,
            id: None,
            actor: None,
            agents: Vec::new(),
            active_agent: None,
            context_group: None,
            session_name: None,
            expires_at: None,
            impersonated_by: None,
        })),
    }
}

/// The session's conversations, oldest first.
#[utoipa::path(
    get, path = "/agent/contexts", operation_id = "listAgentContexts", tag = "agent sessions",
    params(api::ListAgentContextsParams),
    responses(
        (status = 200, body = api::AgentContextList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn list_agent_contexts(
    caller: AgentCaller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::ListAgentContextsParams>,
) -> ApiResult<Json<api::AgentContextList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        ThreadId::parse(c).map(|_| ())
    })?;
    let contexts = state
        .store
        .list_contexts(&caller.scope, &caller.session, &page)
        .await?;
    Ok(Json(convert::list(contexts, context, |c| &c.id).into()))
}

/// Starts a conversation with one of the session's agents.
#[utoipa::path(
    post, path = "/agent/contexts", operation_id = "createAgentContext", tag = "agent sessions",
    request_body = api::CreateAgentContextRequest,
    responses(
        (status = 201, body = api::AgentContext),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`agent_not_found`: not one of the session's agents (or deleted)"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn create_agent_context(
    caller: AgentCaller,
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::extract::ApiJsonOrDefault(req): crate::extract::ApiJsonOrDefault<
        api::CreateAgentContextRequest,
    >,
) -> ApiResult<(StatusCode, Json<api::AgentContext>)> {
    caller.check_write(&headers)?;
    let title = Label::parse("title", req.title.unwrap_or_else(|| "New chat".to_owned()))?;
    let agent = match req.agent_id {
        Some(raw) => AgentId::parse(&raw).map_err(|e| {
            ApiError::from(tessera_domain::ValidationError::new(
                "agent_id",
                e.to_string(),
            ))
        })?,
        None => caller
            .session
            .agent_ids
            .first()
            .cloned()
            .ok_or_else(|| ApiError::not_found(Entity::Agent))?,
    };
    let thread = state
        .store
        .create_context(&caller.scope, &caller.session, &agent, &title)
        .await?;
    Ok((StatusCode::CREATED, Json(context(thread))))
}

/// Renames a conversation.
#[utoipa::path(
    patch, path = "/agent/contexts/{context_id}", operation_id = "updateAgentContext", tag = "agent sessions",
    params(("context_id" = String, Path, description = "Conversation id (`thread_…`)")),
    request_body = api::UpdateAgentContextRequest,
    responses(
        (status = 200, body = api::AgentContext),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn update_agent_context(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::UpdateAgentContextRequest>,
) -> ApiResult<Json<api::AgentContext>> {
    caller.check_write(&headers)?;
    let title = Label::parse("title", req.title)?;
    let thread = state
        .store
        .rename_context(&caller.scope, &caller.session, &id, &title)
        .await?;
    Ok(Json(context(thread)))
}

/// Deletes a conversation from the session (its runs are cancelled; the backend keeps the
/// thread).
#[utoipa::path(
    delete, path = "/agent/contexts/{context_id}", operation_id = "deleteAgentContext", tag = "agent sessions",
    params(("context_id" = String, Path, description = "Conversation id (`thread_…`)")),
    responses(
        (status = 200, body = api::DeletedAgentContext),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn delete_agent_context(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    headers: HeaderMap,
) -> ApiResult<Json<api::DeletedAgentContext>> {
    caller.check_write(&headers)?;
    // Hidden and its runs stopped in one transaction (a message sent meanwhile is refused or
    // its run stopped too).
    let stopped = state
        .store
        .hide_context(&caller.scope, &caller.session, &id)
        .await?;
    announce_stops(&state, &id, &stopped);
    Ok(Json(api::DeletedAgentContext {
        id: id.into_string(),
        deleted: true,
    }))
}

/// A conversation's messages (user, assistant and tool), oldest or newest first.
#[utoipa::path(
    get, path = "/agent/contexts/{context_id}/messages", operation_id = "listAgentContextMessages", tag = "agent sessions",
    params(("context_id" = String, Path, description = "Conversation id (`thread_…`)"), api::ListMessagesParams),
    responses(
        (status = 200, body = api::MessageList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn list_agent_context_messages(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    ApiQuery(q): ApiQuery<api::ListMessagesParams>,
) -> ApiResult<Json<api::MessageList>> {
    caller.context(&state, &id).await?;
    let page = page_request(q.limit, q.before, q.after, |c| {
        MessageId::parse(c).map(|_| ())
    })?;
    let order = match q.order.unwrap_or_default() {
        api::MessageOrder::Asc => Order::OldestFirst,
        api::MessageOrder::Desc => Order::NewestFirst,
    };
    let messages = state
        .store
        .list_messages(&caller.scope, &id, &page, order)
        .await?;
    Ok(Json(
        convert::list(messages, convert::message, |m| &m.id).into(),
    ))
}

/// Sends a message: stored, and a run queued to answer it (202). With an `Idempotency-Key`,
/// a retry returns the first answer and starts nothing.
#[utoipa::path(
    post, path = "/agent/contexts/{context_id}/messages", operation_id = "sendAgentContextMessage", tag = "agent sessions",
    params(
        ("context_id" = String, Path, description = "Conversation id (`thread_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe (kept 24 h)."),
    ),
    request_body = api::SendAgentMessageRequest,
    responses(
        (status = 202, body = api::RunAccepted),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
        (status = 409, body = ErrorBody, description = "`run_active` (multitask `reject`), `session_closed` (the backend closed this conversation's session), `idempotency_key_reused`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn send_agent_context_message(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::SendAgentMessageRequest>,
) -> ApiResult<(StatusCode, Json<api::RunAccepted>)> {
    caller.check_write(&headers)?;
    caller.context(&state, &id).await?;
    let idempotency = idempotency_key(&headers)?.map(|key| {
        (
            format!("sendAgentContextMessage:{id}"),
            key,
            request_hash(&req),
        )
    });
    let message = api::NewMessage {
        content: req.content,
        files: None,
    };
    let accepted = send_message(
        &state,
        &caller.scope,
        &id,
        message,
        idempotency,
        Sender::AgentSession,
    )
    .await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Cancels the conversation's queued and active runs.
#[utoipa::path(
    post, path = "/agent/contexts/{context_id}/cancel", operation_id = "cancelAgentContext", tag = "agent sessions",
    params(("context_id" = String, Path, description = "Conversation id (`thread_…`)")),
    responses(
        (status = 202, body = api::RunAccepted),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
        (status = 409, body = ErrorBody, description = "`run_not_active`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn cancel_agent_context(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    headers: HeaderMap,
) -> ApiResult<(StatusCode, Json<api::RunAccepted>)> {
    caller.check_write(&headers)?;
    caller.context(&state, &id).await?;
    let accepted = cancel_runs(&state, &caller.scope, &id, None).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Confirms or cancels a pending action of the conversation (the browser side of
/// `resolvePendingAction`): a confirmed action executes once and the run resumes (202
/// `processing` with its `callback_id`); a cancelled one is refused to the agent (200
/// `cancelled`). Of concurrent decisions one wins; the others get `409 action_already_decided`.
#[utoipa::path(
    post, path = "/agent/contexts/{context_id}/actions/{action_id}", operation_id = "resolveAgentContextAction", tag = "agent sessions",
    params(
        ("context_id" = String, Path, description = "Conversation id (`thread_…`)"),
        ("action_id" = String, Path, description = "Action id (`act_…`), from the stream's `pending_action.created`"),
    ),
    request_body = api::ResolveActionRequest,
    responses(
        (status = 200, body = api::ActionResolved, description = "Cancelled."),
        (status = 202, body = api::ActionResolved, description = "Confirmed: the action executes."),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 403, body = ErrorBody, description = "`origin_not_allowed`"),
        (status = 404, body = ErrorBody, description = "`context_not_found` / `action_not_found`"),
        (status = 409, body = ErrorBody, description = "`action_already_decided`"),
        (status = 410, body = ErrorBody, description = "`action_expired`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn resolve_agent_context_action(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextActionPath(id, action): ContextActionPath,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::ResolveActionRequest>,
) -> ApiResult<(StatusCode, Json<api::ActionResolved>)> {
    caller.check_write(&headers)?;
    caller.context(&state, &id).await?;
    let action_id = ActionId::parse(&action).map_err(|_| ApiError::not_found(Entity::Action))?;
    // The store finds the action only on this conversation's thread.
    let action = resolve_action(&state, &caller.scope, &id, &action_id, req.confirmed).await?;
    let answer = action_resolved(&id, action, req.confirmed);
    Ok((resolved_status(&answer), Json(answer)))
}

/// The conversation's events as Server-Sent Events (the same events and resumption as
/// `streamAgentThread`).
#[utoipa::path(
    get, path = "/agent/contexts/{context_id}/stream", operation_id = "streamAgentContext", tag = "agent sessions",
    params(
        ("context_id" = String, Path, description = "Conversation id (`thread_…`)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id."),
        ("after" = Option<i64>, Query, description = "Resume after this event id."),
    ),
    responses(
        (status = 200, description = "`text/event-stream`", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`: no agent session"),
        (status = 404, body = ErrorBody, description = "`context_not_found`"),
    ),
    security(("session_cookie" = []), ("session_token" = []))
)]
pub(crate) async fn stream_agent_context(
    caller: AgentCaller,
    State(state): State<AppState>,
    ContextPath(id): ContextPath,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<crate::stream::StreamParams>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>> {
    caller.context(&state, &id).await?;
    crate::stream::open(&state, caller.scope, id, &headers, q.after)
}
