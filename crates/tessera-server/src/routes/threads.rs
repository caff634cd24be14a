//! Threads: create, read, message history, runs (start, cancel, read) and the event stream.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use sha2::{Digest, Sha256};
use tessera_api as api;
use tessera_api::ErrorBody;
use tessera_domain::thread::{Message, Role, Run};
use tessera_domain::{MessageId, ProjectId, RunId, Scope, ThreadId, Timestamp};
use tessera_runtime::hub::{Live, Stop};
use tessera_store::{Idempotency, IdempotentWrite, Order, SubmitOutcome, SubmitRun, Written};

use crate::auth::Caller;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath, IdPath2};
use crate::AppState;

/// Creates a thread in an active project.
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/threads", operation_id = "createAgentThread", tag = "threads",
    params(("project_id" = String, Path, description = "Project id (`proj_…`)")),
    request_body = api::CreateThreadRequest,
    responses(
        (status = 201, body = api::Thread),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found`"),
        (status = 409, body = ErrorBody, description = "`project_archived`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_thread(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(project_id): IdPath<ProjectId>,
    ApiJson(req): ApiJson<api::CreateThreadRequest>,
) -> ApiResult<(StatusCode, Json<api::Thread>)> {
    let new = convert::new_thread(project_id, req)?;
    let thread = state.store.create_thread(&caller.scope, &new).await?;
    Ok((StatusCode::CREATED, Json(convert::thread(thread))))
}

/// Gets a thread.
#[utoipa::path(
    get, path = "/ai/threads/{thread_id}", operation_id = "getAgentThreadById", tag = "threads",
    params(("thread_id" = String, Path, description = "Thread id (`thread_…`)")),
    responses(
        (status = 200, body = api::Thread),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_thread(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread_id): IdPath<ThreadId>,
) -> ApiResult<Json<api::Thread>> {
    let thread = state.store.get_thread(&caller.scope, &thread_id).await?;
    Ok(Json(convert::thread(thread)))
}

/// Lists a thread's messages (user, assistant and tool), oldest or newest first.
#[utoipa::path(
    get, path = "/ai/threads/{thread_id}/messages", operation_id = "getAgentThreadMessages", tag = "threads",
    params(("thread_id" = String, Path, description = "Thread id (`thread_…`)"), api::ListMessagesParams),
    responses(
        (status = 200, body = api::MessageList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_messages(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread_id): IdPath<ThreadId>,
    ApiQuery(q): ApiQuery<api::ListMessagesParams>,
) -> ApiResult<Json<api::MessageList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        MessageId::parse(c).map(|_| ())
    })?;
    let order = match q.order.unwrap_or_default() {
        api::MessageOrder::Asc => Order::OldestFirst,
        api::MessageOrder::Desc => Order::NewestFirst,
    };
    let messages = state
        .store
        .list_messages(&caller.scope, &thread_id, &page, order)
        .await?;
    Ok(Json(
        convert::list(messages, convert::message, |m| &m.id).into(),
    ))
}

/// The `Idempotency-Key` header, if sent: 1-255 visible ASCII characters.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .ok()
        .filter(|v| !v.is_empty() && v.len() <= 255 && v.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::invalid_parameter(
                "Idempotency-Key",
                "Idempotency-Key must be 1-255 visible ASCII characters",
            )
        })?;
    Ok(Some(value.to_owned()))
}

pub(crate) fn request_hash(req: &impl serde::Serialize) -> String {
    let canonical = serde_json::to_vec(req).unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts a run answering a new message (202 `{status: "queued", run_id}`), or cancels the
/// thread's queued and active runs with `{"cancel": true}`. With an `Idempotency-Key`, a retry
/// returns the first answer and starts nothing.
#[utoipa::path(
    post, path = "/ai/threads/{thread_id}/run", operation_id = "executeAgentThreadAsync", tag = "threads",
    params(
        ("thread_id" = String, Path, description = "Thread id (`thread_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the first answer (kept 24 h)."),
    ),
    request_body = api::ExecuteThreadRequest,
    responses(
        (status = 202, body = api::RunAccepted),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found`"),
        (status = 409, body = ErrorBody, description = "`run_active` (multitask `reject`), `run_not_active` (nothing to cancel), `session_closed`, `idempotency_key_reused`"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn execute(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(thread_id): IdPath<ThreadId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::ExecuteThreadRequest>,
) -> ApiResult<(StatusCode, Json<api::RunAccepted>)> {
    let key = idempotency_key(&headers)?;
    let operation = format!("executeAgentThreadAsync:{thread_id}");
    let hash = request_hash(&req);
    let idempotency = key.map(|key| (operation, key, hash));
    let accepted = match (req.message, req.cancel) {
        (Some(message), None | Some(false)) => {
            send_message(
                &state,
                &caller.scope,
                &thread_id,
                message,
                idempotency,
                Sender::Backend,
            )
            .await?
        }
        (None, Some(true)) => cancel_runs(&state, &caller.scope, &thread_id, idempotency).await?,
        _ => {
            return Err(ApiError::from(tessera_domain::ValidationError::new(
                "message",
                "send either `message` or `cancel: true`",
            )))
        }
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// `(operation, Idempotency-Key, request hash)` of an idempotent request.
pub(crate) type IdempotencyParts = (String, String, String);

/// Who sends a message: the backend, or a browser's agent session (which cannot send to a
/// conversation it deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    Backend,
    AgentSession,
}

/// Stores a user message and queues its run, applying the agent's multitask policy and the
/// idempotency key; wakes the workers. Shared by the backend API and the browser API.
pub(crate) async fn send_message(
    state: &AppState,
    scope: &Scope,
    thread_id: &ThreadId,
    message: api::NewMessage,
    idempotency: Option<IdempotencyParts>,
    from: Sender,
) -> ApiResult<api::RunAccepted> {
    let (content, files) = convert::new_message(message)?;
    let run_id = RunId::generate();
    let accepted = api::RunAccepted {
        status: "queued".to_owned(),
        run_id: Some(run_id.to_string()),
        run_ids: None,
    };
    let submit = SubmitRun {
        message: Message {
            id: MessageId::generate(),
            thread_id: thread_id.clone(),
            run_id: Some(run_id.clone()),
            role: Role::User,
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
            tool_name: None,
            is_error: false,
            attachments: files,
            usage: None,
            created_at: Timestamp::now(),
        },
        run_id,
        // The agent's, read by the submission's transaction.
        policy: None,
        idempotency: idempotency.map(|(operation, key, request_hash)| Idempotency {
            operation,
            key,
            request_hash,
            result: serde_json::to_value(&accepted).unwrap_or_default(),
        }),
        new_thread: None,
        refuse_hidden: from == Sender::AgentSession,
        variables: Default::default(),
        start: None,
    };
    match submit_and_start(state, scope, thread_id, submit).await? {
        SubmitOutcome::Created { run, .. } => {
            // An answer to `ask_user` resumes the waiting run instead of starting a new one.
            Ok(api::RunAccepted {
                run_id: Some(run.id.to_string()),
                ..accepted
            })
        }
        SubmitOutcome::Replayed { result } => replay(result),
    }
}

/// Stores a submission and publishes its events; its run starts at once on a free worker of
/// this node when one was reserved and nothing else is open on the thread
/// (`tessera_store::StartHere`), else the workers are woken to claim it. On a task of its own: a
/// client that goes away mid-request cannot leave a run claimed for a worker that never
/// starts it. Shared by the backend API and the browser API.
pub(crate) async fn submit_and_start(
    state: &AppState,
    scope: &Scope,
    thread_id: &ThreadId,
    submit: SubmitRun,
) -> ApiResult<SubmitOutcome> {
    let (rt, store) = (state.runtime.clone(), state.store.clone());
    let (scope, thread_id) = (scope.clone(), thread_id.clone());
    let task = tokio::spawn(async move {
        let reserved = rt.reserve_worker(&submit.run_id);
        let submit = SubmitRun {
            start: reserved.as_ref().map(|r| r.start_here()),
            ..submit
        };
        let mut outcome = store.submit_run(&scope, &thread_id, &submit).await?;
        if let SubmitOutcome::Created {
            interrupted,
            events,
            started,
            ..
        } = &mut outcome
        {
            rt.publish(events);
            for run in interrupted.iter() {
                rt.hub.stop_run(run, Stop::Interrupt);
            }
            rt.submitted(started.take(), reserved).await;
        }
        Ok::<_, tessera_store::StoreError>(outcome)
    });
    Ok(task.await.map_err(ApiError::internal)??)
}

/// Cancels the thread's queued and active runs (`run_not_active` when there are none).
/// Shared by the backend API and the browser API.
pub(crate) async fn cancel_runs(
    state: &AppState,
    scope: &Scope,
    thread_id: &ThreadId,
    idempotency: Option<IdempotencyParts>,
) -> ApiResult<api::RunAccepted> {
    // The key is taken and the answer recorded in the cancellation's own transaction: a retry
    // after a lost answer replays it, even though nothing is left to cancel by then.
    let runs = match &idempotency {
        None => state.store.cancel_runs(scope, thread_id).await?,
        Some((operation, key, request_hash)) => {
            let answer =
                |runs: &[Run]| serde_json::to_value(cancel_answer(runs)).unwrap_or_default();
            let key = IdempotentWrite {
                operation,
                key,
                request_hash,
                answer: &answer,
            };
            match state.store.cancel_runs_once(scope, thread_id, &key).await? {
                Written::Done(runs) => runs,
                Written::Replayed(first) => return replay(first),
            }
        }
    };
    announce_stops(state, thread_id, &runs);
    Ok(cancel_answer(&runs))
}

/// After runs were stopped (`cancel_runs`, `hide_context`): stops their workers on this node,
/// wakes the workers (a paused run is released for one to end it, settling its pending
/// actions) and tells the thread's streams to look.
pub(crate) fn announce_stops(state: &AppState, thread_id: &ThreadId, runs: &[Run]) {
    let rt = &state.runtime;
    rt.hub.wake_workers();
    for run in runs.iter().filter(|r| !r.status.is_terminal()) {
        rt.hub.stop_run(&run.id, Stop::Cancel);
    }
    rt.hub.publish(thread_id, Live::Look);
}

/// The answer to a cancellation of `runs`: `cancelling` (naming the first run still to stop)
/// while any is still to stop, else `cancelled`.
fn cancel_answer(runs: &[Run]) -> api::RunAccepted {
    let active = runs.iter().find(|r| !r.status.is_terminal());
    api::RunAccepted {
        status: if active.is_some() {
            "cancelling"
        } else {
            "cancelled"
        }
        .to_owned(),
        run_id: active.or(runs.first()).map(|r| r.id.to_string()),
        run_ids: Some(runs.iter().map(|r| r.id.to_string()).collect()),
    }
}

fn replay(result: serde_json::Value) -> ApiResult<api::RunAccepted> {
    serde_json::from_value(result)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("stored idempotent answer: {e}")))
}

/// Gets a run: status, stop reason and usage.
#[utoipa::path(
    get, path = "/ai/threads/{thread_id}/runs/{run_id}", operation_id = "getAgentThreadRun", tag = "threads",
    params(
        ("thread_id" = String, Path, description = "Thread id (`thread_…`)"),
        ("run_id" = String, Path, description = "Run id (`run_…`)"),
    ),
    responses(
        (status = 200, body = api::Run),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`thread_not_found` / `run_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_run(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(thread_id, run_id): IdPath2<ThreadId, RunId>,
) -> ApiResult<Json<api::Run>> {
    state.store.get_thread(&caller.scope, &thread_id).await?;
    let run = state
        .store
        .get_run(&caller.scope, &thread_id, &run_id)
        .await?;
    Ok(Json(convert::run(run)))
}
