//! Session management (`/api/v1`): the pool endpoint and its responses, closing a session,
//! context variables, decisions on pending actions, and usage.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::records::{NewActor, NewProject, ProjectStatus};
use tessera_domain::session::{self, PendingAction, UsageGroup, VariablePatch};
use tessera_domain::thread::{Message, NewThread, Role, RunStatus, ThreadPurpose};
use tessera_domain::validate::{EndpointSlug, ExternalKey, Label, Metadata, SubjectType};
use tessera_domain::{ActionId, AgentId, MessageId, ResponseId, RunId, Scope, ThreadId, Timestamp};
use tessera_runtime::hub::Stop;
use tessera_store::{
    Conflict, Entity, Idempotency, IdempotentWrite, PageRequest, ProjectFilter, ResponseView,
    StoreError, SubmitOutcome, SubmitRun, ThreadEvent, Written,
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiQuery, IdPath, IdPath2};
use crate::routes::threads::{idempotency_key, request_hash};
use crate::AppState;

/// The actor pool sessions belong to: `pool` / the endpoint slug.
const POOL_SUBJECT: &str = "pool";

/// The response id of a run, and back: the same body under another prefix.
fn response_id(run: &RunId) -> String {
    format!(
        "{}_{}",
        ResponseId::PREFIX,
        &run.as_str()[RunId::PREFIX.len() + 1..]
    )
}

fn run_of(response: &ResponseId) -> Option<RunId> {
    let body = &response.as_str()[ResponseId::PREFIX.len() + 1..];
    RunId::parse(&format!("{}_{body}", RunId::PREFIX)).ok()
}

fn action_view(a: &PendingAction) -> api::PendingActionView {
    api::PendingActionView {
        action_id: a.id.to_string(),
        tool: a.tool.clone(),
        preview: a.preview.clone(),
        expires_at: a.expires_at.to_rfc3339(),
    }
}

/// A finished (or paused) turn is final; a queued or running one is still processing.
fn is_settled(status: RunStatus) -> bool {
    status.is_terminal() || status == RunStatus::WaitingForInput
}

/// The open `ask_user` question of a response, as the API shows it.
fn question_view(q: &PendingAction) -> api::QuestionView {
    api::QuestionView {
        call_id: q.call_id.clone(),
        question: q
            .preview
            .get("question")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned(),
        choices: q
            .preview
            .get("choices")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect(),
        expires_at: q.expires_at.to_rfc3339(),
    }
}

/// The session's next steps for the caller: decide each open pending action, answer the open
/// question (on the pool `slug`), set the variables the agent asked for. A closed session has
/// none.
fn suggested_actions(view: &ResponseView, slug: Option<&str>) -> Vec<api::SuggestedAction> {
    if view.session.closed.is_some() {
        return Vec::new();
    }
    let thread = view.thread.id.as_str();
    let mut steps = Vec::new();
    if let (Some(q), Some(slug)) = (view.questions.first(), slug) {
        let q = question_view(q);
        let answer = |label: String, body: Option<serde_json::Value>| api::SuggestedAction {
            kind: "answer_question".to_owned(),
            label,
            method: "POST".to_owned(),
            path: format!("/api/v1/ask/{slug}"),
            body,
            action_id: None,
            variables: None,
        };
        if q.choices.is_empty() {
            steps.push(answer(q.question.clone(), None));
        }
        for choice in &q.choices {
            steps.push(answer(
                choice.clone(),
                Some(serde_json::json!({"content": choice, "thread_id": thread})),
            ));
        }
    }
    for a in &view.pending {
        for (kind, label, confirmed) in [
            ("confirm_action", "Confirm", true),
            ("cancel_action", "Cancel", false),
        ] {
            steps.push(api::SuggestedAction {
                kind: kind.to_owned(),
                label: format!("{label} {}", a.tool),
                method: "POST".to_owned(),
                path: format!("/api/v1/sessions/{thread}/actions/{}", a.id),
                body: Some(serde_json::json!({ "confirmed": confirmed })),
                action_id: Some(a.id.to_string()),
                variables: None,
            });
        }
    }
    if !view.session.requested_variables.is_empty() {
        steps.push(api::SuggestedAction {
            kind: "set_variables".to_owned(),
            label: format!("Provide {}", view.session.requested_variables.join(", ")),
            method: "PATCH".to_owned(),
            path: format!("/api/v1/sessions/{thread}"),
            body: None,
            action_id: None,
            variables: Some(view.session.requested_variables.clone()),
        });
    }
    steps
}

/// The pool slug to answer a response's open question on: its agent's (none without a
/// question, or when the agent left the pool).
async fn answer_slug(state: &AppState, scope: &Scope, view: &ResponseView) -> Option<String> {
    if view.questions.is_empty() {
        return None;
    }
    let agent = state
        .store
        .get_agent(scope, &view.thread.agent_id)
        .await
        .ok()?;
    agent.spec.endpoint_slug.map(|s| s.as_str().to_owned())
}

fn ask_response(view: ResponseView, slug: Option<&str>) -> api::AskResponse {
    let status = match view.run.status {
        RunStatus::Queued | RunStatus::Running => "processing",
        RunStatus::WaitingForInput => "waiting_for_input",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    };
    let settled = is_settled(view.run.status);
    let suggested_actions = suggested_actions(&view, slug);
    let question = view.questions.first().map(question_view);
    let timestamp = view
        .answer
        .as_ref()
        .map(|m| m.created_at)
        .or(view.run.finished_at)
        .unwrap_or(view.run.created_at);
    api::AskResponse {
        thread_id: view.thread.id.to_string(),
        response_id: response_id(&view.run.id),
        agent_id: view.thread.agent_id.to_string(),
        status: status.to_owned(),
        content: match &question {
            Some(q) => Some(q.question.clone()),
            None => view
                .answer
                .as_ref()
                .filter(|_| settled)
                .map(|m| m.content.clone()),
        },
        timestamp: timestamp.to_rfc3339(),
        pending_action: view.pending.first().map(action_view),
        question,
        requested_variables: view.session.requested_variables.clone(),
        files: view
            .answer
            .map(|m| m.attachments)
            .filter(|_| settled)
            .unwrap_or_default(),
        suggested_actions,
        action_results: view
            .action_results
            .iter()
            .map(|a| api::ActionResult {
                action_id: a.id.to_string(),
                tool: a.tool.clone(),
                status: a.status.as_str().to_owned(),
                callback_id: a.callback_id.as_ref().map(|c| c.to_string()),
                result: a.result.clone(),
            })
            .collect(),
        error: view
            .run
            .error
            .filter(|_| view.run.status == RunStatus::Failed),
    }
}

/// Waits (at most `wait`) for the run to finish or pause, then answers: 200 when it did, 202
/// with `status: processing` when it still works.
async fn answer(
    state: &AppState,
    scope: &Scope,
    thread_id: &ThreadId,
    run_id: &RunId,
    wait: Duration,
) -> ApiResult<(StatusCode, Json<api::AskResponse>)> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut live = state.runtime.hub.subscribe(thread_id);
    loop {
        let run = state.store.get_run(scope, thread_id, run_id).await?;
        if is_settled(run.status) {
            let view = state.store.response_view(scope, run_id, true).await?;
            let slug = answer_slug(state, scope, &view).await;
            return Ok((StatusCode::OK, Json(ask_response(view, slug.as_deref()))));
        }
        if tokio::time::Instant::now() >= deadline {
            let view = state.store.response_view(scope, run_id, false).await?;
            let slug = answer_slug(state, scope, &view).await;
            return Ok((
                StatusCode::ACCEPTED,
                Json(ask_response(view, slug.as_deref())),
            ));
        }
        // Woken by the thread's events (this node's, or relayed from others); the short sleep
        // is a safety net for a lagging subscription.
        tokio::select! {
            _ = live.recv() => {}
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// The pool's session actor, created on first use.
async fn pool_actor(
    state: &AppState,
    scope: &Scope,
    slug: &EndpointSlug,
) -> ApiResult<tessera_domain::ActorId> {
    if let Some(actor) = state
        .store
        .lookup_actor(scope, POOL_SUBJECT, slug.as_str())
        .await?
    {
        return Ok(actor.id);
    }
    let new = NewActor {
        subject_type: SubjectType::parse("subject_type", POOL_SUBJECT)?,
        external_key: ExternalKey::parse("external_key", slug.as_str())?,
        display_name: Some(Label::parse(
            "display_name",
            format!("pool {}", slug.as_str()),
        )?),
        metadata: Metadata::parse("metadata", serde_json::json!({}))?,
    };
    match state.store.create_actor(scope, &new).await {
        Ok(actor) => Ok(actor.id),
        // Created concurrently by another request: use that one.
        Err(StoreError::Conflict(Conflict::ActorExists)) => state
            .store
            .lookup_actor(scope, POOL_SUBJECT, slug.as_str())
            .await?
            .map(|a| a.id)
            .ok_or_else(|| ApiError::internal(anyhow::anyhow!("pool actor vanished"))),
        Err(err) => Err(err.into()),
    }
}

/// A new session on `agent`: a thread in the pool actor's project for that agent (found or
/// created here), to be created by the ask's submission.
async fn new_session(
    state: &AppState,
    scope: &Scope,
    slug: &EndpointSlug,
    agent: &AgentId,
) -> ApiResult<NewThread> {
    let actor = pool_actor(state, scope, slug).await?;
    let filter = ProjectFilter {
        actor_id: Some(actor.clone()),
        agent_id: Some(agent.clone()),
        status: Some(ProjectStatus::Active),
    };
    let existing = state
        .store
        .list_projects(scope, &filter, &PageRequest::first(1))
        .await?;
    let project = match existing.items.into_iter().next() {
        Some(p) => p.id,
        None => {
            let new = NewProject {
                actor_id: actor,
                agent_id: agent.clone(),
                name: Label::parse("name", format!("pool {}", slug.as_str()))?,
            };
            state.store.create_project(scope, &new).await?.id
        }
    };
    Ok(NewThread {
        project_id: project,
        title: Label::parse("title", format!("pool {} session", slug.as_str()))?,
        system_instructions: None,
        purpose: ThreadPurpose::Conversation,
        capability_tags: Vec::new(),
        context_group: None,
    })
}

/// The least busy agent of the pool; ties are broken at random so that replicas share work.
fn pick_agent(pool: &[(AgentId, i64)]) -> Option<AgentId> {
    let least = pool.iter().map(|(_, load)| *load).min()?;
    let idle: Vec<&AgentId> = pool
        .iter()
        .filter(|(_, load)| *load == least)
        .map(|(a, _)| a)
        .collect();
    let mut byte = [0u8; 1];
    tessera_domain::id::random_bytes(&mut byte);
    idle.get(usize::from(byte[0]) % idle.len())
        .map(|a| (*a).clone())
}

/// Sends a message to an agent pool and waits (up to `sessions.ask_wait_seconds`) for the turn
/// to finish or pause for a confirmation.
#[utoipa::path(
    post, path = "/api/v1/ask/{endpoint_slug}", operation_id = "askAgentPool", tag = "sessions",
    params(
        ("endpoint_slug" = String, Path, description = "The `endpoint_slug` of the pool's agents"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the same response and start nothing (kept 24 h)."),
    ),
    request_body = api::AskRequest,
    responses(
        (status = 200, body = api::AskResponse, description = "The turn finished or paused (`pending_action`)."),
        (status = 202, body = api::AskResponse, description = "The turn still works: poll `getPoolResponse`."),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`endpoint_not_found` / `thread_not_found`"),
        (status = 409, body = ErrorBody, description = "`session_closed`, `run_active`, `idempotency_key_reused`"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn ask_agent_pool(
    caller: Caller,
    State(state): State<AppState>,
    // A segment that is not even UTF-8 names no pool, like any other malformed slug.
    slug: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::AskRequest>,
) -> ApiResult<(StatusCode, Json<api::AskResponse>)> {
    let scope = &caller.scope;
    let slug = slug
        .ok()
        .and_then(|Path(slug)| EndpointSlug::parse("endpoint_slug", slug).ok())
        .ok_or_else(|| ApiError::not_found(Entity::Endpoint))?;
    session::check_ask_content("content", &req.content)?;
    let patch = match &req.context_variables {
        Some(vars) => VariablePatch::parse("context_variables", vars)?,
        None => VariablePatch::default(),
    };
    let requested_thread = req
        .thread_id
        .as_deref()
        .map(|raw| {
            ThreadId::parse(raw).map_err(|_| StoreError::not_found_at(Entity::Thread, "thread_id"))
        })
        .transpose()?;
    let key = idempotency_key(&headers)?;
    let operation = format!("askAgentPool:{}", slug.as_str());
    let hash = request_hash(&req);
    if let Some(key) = &key {
        if let Some(result) = state
            .store
            .idempotent_result(scope, &operation, key, &hash)
            .await?
        {
            return replay(&state, scope, result).await;
        }
    }
    let pool = state.store.pool_agents(scope, slug.as_str()).await?;
    let (thread_id, new_thread) = match requested_thread {
        Some(thread_id) => {
            let thread = state
                .store
                .get_thread(scope, &thread_id)
                .await
                .map_err(|e| match e {
                    StoreError::NotFound {
                        entity: Entity::Thread,
                        ..
                    } => StoreError::not_found_at(Entity::Thread, "thread_id"),
                    other => other,
                })?;
            // Sticky: a session stays with its agent, which must still serve this pool.
            if !pool.iter().any(|(agent, _)| *agent == thread.agent_id) {
                return Err(StoreError::not_found_at(Entity::Thread, "thread_id").into());
            }
            (thread_id, None)
        }
        None => {
            let agent = pick_agent(&pool).ok_or_else(|| ApiError::not_found(Entity::Endpoint))?;
            // A new session has no variables yet: variables over the limits are refused before
            // anything is made.
            patch.apply("context_variables", &Default::default())?;
            // The session's thread is created by the submission's transaction: a refused or
            // failed ask leaves no session behind, and a retry with the same key makes none.
            let new = new_session(&state, scope, &slug, &agent).await?;
            (ThreadId::generate(), Some(Box::new(new)))
        }
    };
    let run_id = RunId::generate();
    let record = serde_json::json!({"thread_id": thread_id.as_str(), "run_id": run_id.as_str()});
    let submit = SubmitRun {
        message: Message {
            id: MessageId::generate(),
            thread_id: thread_id.clone(),
            run_id: Some(run_id.clone()),
            role: Role::User,
            content: req.content,
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
            attachments: Vec::new(),
            usage: None,
            created_at: Timestamp::now(),
        },
        run_id: run_id.clone(),
        // The agent's, read by the submission's transaction.
        policy: None,
        idempotency: key.map(|key| Idempotency {
            operation,
            key,
            request_hash: hash,
            result: record,
        }),
        new_thread,
        refuse_hidden: false,
        // Merged in the submission's transaction: a refused ask changes nothing.
        variables: patch,
        start: None,
    };
    match super::threads::submit_and_start(&state, scope, &thread_id, submit).await? {
        SubmitOutcome::Created { run, .. } => {
            // An answer to `ask_user` resumes the waiting run: this response is that run's.
            answer(&state, scope, &thread_id, &run.id, state.ask_wait).await
        }
        SubmitOutcome::Replayed { result } => replay(&state, scope, result).await,
    }
}

/// The answer to a retried request: the same response, waited for again.
async fn replay(
    state: &AppState,
    scope: &Scope,
    record: serde_json::Value,
) -> ApiResult<(StatusCode, Json<api::AskResponse>)> {
    let field = |name: &str| {
        record
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let (Ok(thread_id), Ok(run_id)) = (
        ThreadId::parse(&field("thread_id")),
        RunId::parse(&field("run_id")),
    ) else {
        return Err(ApiError::internal(anyhow::anyhow!(
            "stored idempotent answer: {record}"
        )));
    };
    answer(state, scope, &thread_id, &run_id, state.ask_wait).await
}

/// A pool response: the turn's state and, once it settled, its answer.
#[utoipa::path(
    get, path = "/api/v1/responses/{response_id}", operation_id = "getPoolResponse", tag = "sessions",
    params(("response_id" = String, Path, description = "Response id (`resp_…`)")),
    responses(
        (status = 200, body = api::AskResponse),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`response_not_found`"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn get_pool_response(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(response): IdPath<ResponseId>,
) -> ApiResult<Json<api::AskResponse>> {
    let run_id = run_of(&response).ok_or_else(|| ApiError::not_found(Entity::Response))?;
    let view = state
        .store
        .response_view(&caller.scope, &run_id, false)
        .await?;
    let slug = answer_slug(&state, &caller.scope, &view).await;
    Ok(Json(ask_response(view, slug.as_deref())))
}

/// Closes a session: no more messages; its active run and open pending actions are cancelled.
/// A second close returns the same record.
#[utoipa::path(
    post, path = "/api/v1/sessions/{thread_id}/close", operation_id = "closeSession", tag = "sessions",
    params(("thread_id" = String, Path, description = "Session (thread) id (`thread_…`)")),
    responses(
        (status = 200, body = api::SessionClosed),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found`"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn close_session(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread_id): IdPath<ThreadId>,
) -> ApiResult<Json<api::SessionClosed>> {
    let (record, to_stop, events) = state
        .store
        .close_session(&caller.scope, &thread_id, Timestamp::now())
        .await?;
    let rt = &state.runtime;
    rt.publish(&events);
    for run in &to_stop {
        rt.hub.stop_run(run, Stop::Cancel);
    }
    rt.hub.wake_workers();
    Ok(Json(api::SessionClosed {
        thread_id: record.thread_id.to_string(),
        closed_at: record.closed_at.to_rfc3339(),
        duration_seconds: record.duration_seconds,
        billable: record.billable,
    }))
}

/// Merges context variables into a session (`null` deletes one); all or nothing.
#[utoipa::path(
    patch, path = "/api/v1/sessions/{thread_id}", operation_id = "updateSessionVariables", tag = "sessions",
    params(("thread_id" = String, Path, description = "Session (thread) id (`thread_…`)")),
    request_body = api::UpdateSessionVariablesRequest,
    responses(
        (status = 200, body = api::SessionVariablesUpdated),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found`"),
        (status = 409, body = ErrorBody, description = "`session_closed`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (a key, a value, or the limits after the merge)"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn update_session_variables(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread_id): IdPath<ThreadId>,
    ApiJson(req): ApiJson<api::UpdateSessionVariablesRequest>,
) -> ApiResult<Json<api::SessionVariablesUpdated>> {
    let patch = VariablePatch::parse("context_variables", &req.context_variables)?;
    let (updated, total) = state
        .store
        .update_variables(&caller.scope, &thread_id, &patch)
        .await?;
    Ok(Json(api::SessionVariablesUpdated {
        thread_id: thread_id.to_string(),
        variables_updated: updated,
        total_variables: total,
    }))
}

/// Confirms (202, executes once, asynchronously) or cancels (200) a pending action.
#[utoipa::path(
    post, path = "/api/v1/sessions/{thread_id}/actions/{action_id}", operation_id = "resolvePendingAction", tag = "sessions",
    params(
        ("thread_id" = String, Path, description = "Session (thread) id (`thread_…`)"),
        ("action_id" = String, Path, description = "Action id (`act_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key and body returns the first answer instead of 409."),
    ),
    request_body = api::ResolveActionRequest,
    responses(
        (status = 200, body = api::ActionResolved, description = "Cancelled."),
        (status = 202, body = api::ActionResolved, description = "Confirmed: the action executes."),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found` / `action_not_found`"),
        (status = 409, body = ErrorBody, description = "`action_already_decided`, `idempotency_key_reused`"),
        (status = 410, body = ErrorBody, description = "`action_expired`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn resolve_pending_action(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(thread_id, action_id): IdPath2<ThreadId, ActionId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::ResolveActionRequest>,
) -> ApiResult<(StatusCode, Json<api::ActionResolved>)> {
    let key = idempotency_key(&headers)?;
    let answer = match key {
        None => {
            let action =
                resolve_action(&state, &caller.scope, &thread_id, &action_id, req.confirmed)
                    .await?;
            action_resolved(&thread_id, action, req.confirmed)
        }
        Some(key) => {
            // The key is taken and the answer recorded in the decision's own transaction: a
            // retry after a lost answer replays it instead of `action_already_decided`.
            // Scoped to the path: the same key sent for another thread is another request.
            let operation = format!("resolvePendingAction:{thread_id}:{action_id}");
            let hash = request_hash(&req);
            let answer = |action: &PendingAction| {
                serde_json::to_value(action_resolved(&thread_id, action.clone(), req.confirmed))
                    .unwrap_or_default()
            };
            let key = IdempotentWrite {
                operation: &operation,
                key: &key,
                request_hash: &hash,
                answer: &answer,
            };
            let written = state
                .store
                .resolve_action_once(
                    &caller.scope,
                    &thread_id,
                    &action_id,
                    req.confirmed,
                    Timestamp::now(),
                    &key,
                )
                .await?;
            match written {
                Written::Done((action, events)) => {
                    announce_decision(&state, &events);
                    action_resolved(&thread_id, action, req.confirmed)
                }
                Written::Replayed(first) => serde_json::from_value(first).map_err(|e| {
                    ApiError::internal(anyhow::anyhow!("stored idempotent answer: {e}"))
                })?,
            }
        }
    };
    Ok((resolved_status(&answer), Json(answer)))
}

/// Decides on an action (shared by the backend API and the browser API), then publishes the
/// decision and wakes the workers to resume the run.
pub(crate) async fn resolve_action(
    state: &AppState,
    scope: &Scope,
    thread_id: &ThreadId,
    action_id: &ActionId,
    confirmed: bool,
) -> ApiResult<PendingAction> {
    let (action, events) = state
        .store
        .resolve_action(scope, thread_id, action_id, confirmed, Timestamp::now())
        .await?;
    announce_decision(state, &events);
    Ok(action)
}

/// Publishes a decision's events and wakes the workers to resume its run.
fn announce_decision(state: &AppState, events: &[ThreadEvent]) {
    state.runtime.publish(events);
    state.runtime.hub.wake_workers();
}

/// The answer to a decision: `processing` with its `callback_id` (confirmed) or `cancelled`.
pub(crate) fn action_resolved(
    thread_id: &ThreadId,
    action: PendingAction,
    confirmed: bool,
) -> api::ActionResolved {
    api::ActionResolved {
        thread_id: thread_id.to_string(),
        action_id: action.id.to_string(),
        status: if confirmed { "processing" } else { "cancelled" }.to_owned(),
        message: if confirmed {
            "Action confirmed, executing..."
        } else {
            "Action cancelled"
        }
        .to_owned(),
        callback_id: action.callback_id.map(|c| c.to_string()),
    }
}

/// 202 for a confirmation (the action executes asynchronously), 200 for a cancellation.
pub(crate) fn resolved_status(answer: &api::ActionResolved) -> StatusCode {
    if answer.status == "processing" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    }
}

/// Longest usage range.
const MAX_USAGE_DAYS: i64 = 366;

/// Sessions, billable sessions, session seconds, runs, tokens and tool calls, grouped.
#[utoipa::path(
    get, path = "/api/v1/usage", operation_id = "getUsage", tag = "sessions",
    params(api::UsageParams),
    responses(
        (status = 200, body = api::UsageReport),
        (status = 400, body = ErrorBody, description = "`invalid_parameter` (`from`, `to`, `group_by`)"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
    ),
    security(("secret_key" = []), ("api_key_header" = []))
)]
pub(crate) async fn get_usage(
    caller: Caller,
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<api::UsageParams>,
) -> ApiResult<Json<api::UsageReport>> {
    let now = Timestamp::now();
    let parse = |field: &str, raw: &Option<String>| -> ApiResult<Option<Timestamp>> {
        raw.as_deref()
            .map(|r| {
                Timestamp::parse_rfc3339_or_date(r).ok_or_else(|| {
                    ApiError::invalid_parameter(
                        field,
                        format!("{field} must be an RFC 3339 timestamp or a date (YYYY-MM-DD)"),
                    )
                })
            })
            .transpose()
    };
    let to = parse("to", &q.to)?.unwrap_or(now);
    let from = parse("from", &q.from)?.unwrap_or(to.plus_secs(-30 * 86_400));
    if from >= to {
        return Err(ApiError::invalid_parameter(
            "from",
            "from must be before to",
        ));
    }
    if to.as_millis() - from.as_millis() > MAX_USAGE_DAYS * 86_400_000 {
        return Err(ApiError::invalid_parameter(
            "from",
            format!("the range is at most {MAX_USAGE_DAYS} days"),
        ));
    }
    let group_by = q.group_by.unwrap_or_default();
    let group = match group_by {
        api::UsageGroupBy::Agent => UsageGroup::Agent,
        api::UsageGroupBy::Actor => UsageGroup::Actor,
        api::UsageGroupBy::Day => UsageGroup::Day,
    };
    let rows = state
        .store
        .usage(&caller.scope, from, to, group, now)
        .await?;
    let mut totals = api::UsageRow {
        key: "total".to_owned(),
        ..Default::default()
    };
    let data = rows
        .into_iter()
        .map(|r| {
            let row = api::UsageRow {
                key: r.key,
                sessions: r.sessions,
                billable_sessions: r.billable_sessions,
                session_seconds: r.session_seconds,
                runs: r.runs,
                prompt_tokens: r.prompt_tokens,
                completion_tokens: r.completion_tokens,
                total_tokens: r.prompt_tokens + r.completion_tokens,
                tool_calls: r.tool_calls,
            };
            totals.sessions += row.sessions;
            totals.billable_sessions += row.billable_sessions;
            totals.session_seconds += row.session_seconds;
            totals.runs += row.runs;
            totals.prompt_tokens += row.prompt_tokens;
            totals.completion_tokens += row.completion_tokens;
            totals.total_tokens += row.total_tokens;
            totals.tool_calls += row.tool_calls;
            row
        })
        .collect();
    Ok(Json(api::UsageReport {
        from: from.to_rfc3339(),
        to: to.to_rfc3339(),
        group_by,
        data,
        totals,
    }))
}
