//! Task boards: board items of an actor project (create, read, list, update, archive, cancel,
//! delegate) and their workspace filesystems (list, metadata, download, upload).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt as _;
use tessera_api as api;
use tessera_api::{ErrorBody, ErrorCode};
use tessera_domain::board::{
    attachment_file_name, guess_mime, list_dir, parse_mime, WorkspaceId, WorkspacePath,
};
use tessera_domain::{BoardItemId, ProjectId, Scope, ValidationError};
use tessera_runtime::boards::{self, BoardError, FileWriter, WriteError};
use tessera_runtime::hub::{Live, Stop};
use tessera_store::{BoardItemFilter, Entity, Idempotency, StoreError};

use crate::auth::Caller;
use crate::convert_boards as convert;
use crate::error::{ApiError, ApiResult};
use crate::extract::{page_request, ApiJson, ApiQuery, IdPath, IdPath2};
use crate::routes::threads::{idempotency_key, request_hash};
use crate::AppState;

/// Most entries of a directory listing.
const LIST_LIMIT: u32 = 1000;

impl From<BoardError> for ApiError {
    fn from(err: BoardError) -> Self {
        match err {
            BoardError::Store(e) => e.into(),
            BoardError::Invalid(e) => e.into(),
        }
    }
}

/// Creates a board item. Without a schedule it executes at once; with one, at each slot. Its
/// description runs on `assigned_thread_id`, or on an execution thread made for the item.
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/board/items", operation_id = "createProjectTaskBoardItem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the item the first request created, and create nothing (kept 24 h)."),
    ),
    request_body = api::CreateBoardItemRequest,
    responses(
        (status = 201, body = api::BoardItem),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter` (`Idempotency-Key`)"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found` / `thread_not_found` (`field`: `assigned_thread_id`)"),
        (status = 409, body = ErrorBody, description = "`project_archived`, `session_closed` (the assigned thread's session is closed), `idempotency_key_reused`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`field` names it, e.g. `schedule.interval_seconds`)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn create_item(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(project_id): IdPath<ProjectId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::CreateBoardItemRequest>,
) -> ApiResult<(StatusCode, Json<api::BoardItem>)> {
    let idempotency = idempotency(
        &headers,
        format!("createProjectTaskBoardItem:{project_id}"),
        &req,
    )?;
    let new = match convert::new_item(project_id, req) {
        Ok(new) => new,
        // A malformed thread id cannot name a thread: same answer as an unknown one.
        Err(e) if e.field == "assigned_thread_id" => {
            return Err(StoreError::not_found_at(Entity::Thread, "assigned_thread_id").into())
        }
        Err(e) => return Err(e.into()),
    };
    let item = boards::create_item(
        state.store.as_ref(),
        &caller.scope,
        &new,
        idempotency.as_ref(),
    )
    .await?;
    state.board_scheduler.wake();
    Ok((StatusCode::CREATED, Json(convert::item(item))))
}

/// Lists a project's board items, oldest first (not archived ones unless `archived=true`).
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}/board/items", operation_id = "listProjectTaskBoardItems", tag = "board",
    params(("project_id" = String, Path, description = "Project id (`proj_…`)"), api::ListBoardItemsParams),
    responses(
        (status = 200, body = api::BoardItemList),
        (status = 400, body = ErrorBody, description = "`invalid_parameter`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_items(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(project_id): IdPath<ProjectId>,
    ApiQuery(q): ApiQuery<api::ListBoardItemsParams>,
) -> ApiResult<Json<api::BoardItemList>> {
    let page = page_request(q.limit, q.before, q.after, |c| {
        BoardItemId::parse(c).map(|_| ())
    })?;
    state.store.get_project(&caller.scope, &project_id).await?;
    let filter = BoardItemFilter {
        status: q.status.map(convert::item_status),
        archived: Some(q.archived.unwrap_or(false)),
    };
    let items = state
        .store
        .list_board_items(&caller.scope, &project_id, &filter, &page)
        .await?;
    let parts = crate::convert::list(items, convert::item, |i| &i.id);
    Ok(Json(api::BoardItemList {
        data: parts.data,
        has_more: parts.has_more,
        first_id: parts.first_id,
        last_id: parts.last_id,
    }))
}

/// Gets a board item, with its last run and that run's answer.
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}/board/items/{item_id}", operation_id = "getProjectTaskBoardItem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
    ),
    responses(
        (status = 200, body = api::BoardItem),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found` / `board_item_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_item(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
) -> ApiResult<Json<api::BoardItem>> {
    let item = state
        .store
        .get_board_item(&caller.scope, &project_id, &item_id)
        .await?;
    Ok(Json(convert::item(item)))
}

/// Updates a board item: title, description, capability tags, schedule (a new one replaces the
/// pending slot; `null` removes it), `paused`.
#[utoipa::path(
    patch, path = "/ai/actor-projects/{project_id}/board/items/{item_id}", operation_id = "updateProjectTaskBoardItem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
    ),
    request_body = api::UpdateBoardItemRequest,
    responses(
        (status = 200, body = api::BoardItem),
        (status = 400, body = ErrorBody, description = "`malformed_json`"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found`"),
        (status = 409, body = ErrorBody, description = "`board_item_closed` (archived or cancelled)"),
        (status = 422, body = ErrorBody, description = "`validation_failed`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn update_item(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
    ApiJson(req): ApiJson<api::UpdateBoardItemRequest>,
) -> ApiResult<Json<api::BoardItem>> {
    let patch = convert::item_patch(req)?;
    let item = state
        .store
        .update_board_item(&caller.scope, &project_id, &item_id, &patch)
        .await?;
    state.board_scheduler.wake();
    Ok(Json(convert::item(item)))
}

/// Archives a board item and stops its schedule (idempotent). A run already started finishes.
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/archive", operation_id = "archiveProjectTaskBoardItem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
    ),
    responses(
        (status = 200, body = api::BoardItem),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found`"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn archive_item(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
) -> ApiResult<Json<api::BoardItem>> {
    let item = state
        .store
        .archive_board_item(&caller.scope, &project_id, &item_id)
        .await?;
    Ok(Json(convert::item(item)))
}

/// Cancels a board item: stops its schedule for good and cancels its active run.
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/cancel", operation_id = "cancelProjectTaskBoardItem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
    ),
    responses(
        (status = 200, body = api::BoardItem),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found`"),
        (status = 409, body = ErrorBody, description = "`board_item_closed` (archived)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn cancel_item(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
) -> ApiResult<Json<api::BoardItem>> {
    let (item, stopping, events) = state
        .store
        .cancel_board_item(&caller.scope, &project_id, &item_id)
        .await?;
    let rt = &state.runtime;
    rt.publish(&events);
    if let Some(run) = &stopping {
        rt.hub.stop_run(run, Stop::Cancel);
        rt.hub.publish(&item.assigned_thread_id, Live::Look);
    }
    rt.hub.wake_workers();
    Ok(Json(convert::item(item)))
}

/// Delegates a task to an execution lane thread of the project; an agent of the lane with all
/// requested capability tags is assigned, and the new item executes at once.
#[utoipa::path(
    post, path = "/ai/actor-projects/{project_id}/board/items/delegate", operation_id = "delegateProjectTask", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: the same key and body return the first answer and delegate nothing new (kept 24 h)."),
    ),
    request_body = api::DelegateProjectTaskRequest,
    responses(
        (status = 201, body = api::DelegateProjectTaskResponse),
        (status = 400, body = ErrorBody, description = "`malformed_json` / `invalid_parameter` (`Idempotency-Key`)"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`project_not_found` / `thread_not_found` (`field`: `target_lane_thread_id`: absent, or of another project)"),
        (status = 409, body = ErrorBody, description = "`no_capable_agent` / `project_archived` / `session_closed` (the lane's session is closed) / `idempotency_key_reused`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (e.g. the target is not an execution thread)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn delegate(
    caller: Caller,
    State(state): State<AppState>,
    IdPath(project_id): IdPath<ProjectId>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<api::DelegateProjectTaskRequest>,
) -> ApiResult<(StatusCode, Json<api::DelegateProjectTaskResponse>)> {
    let idempotency = idempotency(&headers, format!("delegateProjectTask:{project_id}"), &req)?;
    // A retry answers from the first delegation's item, without choosing an agent again (the
    // lane's agents may have changed since).
    if let Some(idem) = &idempotency {
        if let Some(result) = state
            .store
            .idempotent_result(
                &caller.scope,
                &idem.operation,
                &idem.key,
                &idem.request_hash,
            )
            .await?
        {
            let id = result["board_item_id"]
                .as_str()
                .and_then(|id| BoardItemId::parse(id).ok())
                .ok_or_else(|| {
                    ApiError::internal(anyhow::anyhow!("stored idempotent answer: {result}"))
                })?;
            let item = state
                .store
                .get_board_item(&caller.scope, &project_id, &id)
                .await?;
            return Ok((StatusCode::CREATED, Json(delegated(item))));
        }
    }
    let delegation = match convert::delegation(req) {
        Ok(d) => d,
        Err(e) if e.field == "target_lane_thread_id" => {
            return Err(StoreError::not_found_at(Entity::Thread, "target_lane_thread_id").into())
        }
        Err(e) => return Err(e.into()),
    };
    state.store.get_project(&caller.scope, &project_id).await?;
    let item = boards::delegate(
        state.store.as_ref(),
        &caller.scope,
        &project_id,
        delegation,
        None,
        idempotency.as_ref(),
    )
    .await?;
    state.board_scheduler.wake();
    Ok((StatusCode::CREATED, Json(delegated(item))))
}

fn delegated(item: tessera_domain::board::BoardItem) -> api::DelegateProjectTaskResponse {
    api::DelegateProjectTaskResponse {
        task_key: item.task_key,
        board_item_id: item.id.into_string(),
        assigned_agent_id: item.assigned_agent_id.into_string(),
    }
}

/// The request's `Idempotency-Key`, as the record a creation takes (scoped to `operation`).
fn idempotency(
    headers: &HeaderMap,
    operation: String,
    req: &impl serde::Serialize,
) -> ApiResult<Option<Idempotency>> {
    Ok(idempotency_key(headers)?.map(|key| Idempotency {
        operation,
        key,
        request_hash: request_hash(req),
        result: serde_json::Value::Null,
    }))
}

// ---------------------------------------------------------------------------------------------
// Workspace filesystem

/// The item's workspace, once the item is known to be the caller's.
async fn workspace(
    state: &AppState,
    scope: &Scope,
    project_id: &ProjectId,
    item_id: &BoardItemId,
) -> ApiResult<WorkspaceId> {
    state
        .store
        .get_board_item(scope, project_id, item_id)
        .await?;
    Ok(WorkspaceId::Item(item_id.clone()))
}

fn file_path(raw: &str) -> ApiResult<WorkspacePath> {
    Ok(WorkspacePath::parse_file("path", raw)?)
}

/// Lists a directory of the item's workspace (the root by default).
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem", operation_id = "listProjectTaskBoardItemFilesystem", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
        api::FilesystemDirParams,
    ),
    responses(
        (status = 200, body = api::FilesystemListing),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`path`)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn list_filesystem(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
    ApiQuery(q): ApiQuery<api::FilesystemDirParams>,
) -> ApiResult<Json<api::FilesystemListing>> {
    let dir = WorkspacePath::parse_dir("path", q.path.as_deref().unwrap_or("/"))?;
    let ws = workspace(&state, &caller.scope, &project_id, &item_id).await?;
    let files = state
        .store
        .list_files(&caller.scope, &ws, &dir, LIST_LIMIT)
        .await?;
    Ok(Json(convert::listing(&dir, list_dir(&dir, files))))
}

/// A file's metadata: path, size, media type, SHA-256, times.
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/file", operation_id = "getProjectTaskBoardItemFilesystemFile", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
        api::FilesystemFileParams,
    ),
    responses(
        (status = 200, body = api::WorkspaceFile),
        (status = 400, body = ErrorBody, description = "`invalid_parameter` (`path` missing)"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found` / `file_not_found`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`path`: `..`, NUL, over-long, …)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn get_file(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
    ApiQuery(q): ApiQuery<api::FilesystemFileParams>,
) -> ApiResult<Json<api::WorkspaceFile>> {
    let path = file_path(&q.path)?;
    let ws = workspace(&state, &caller.scope, &project_id, &item_id).await?;
    let meta = state.store.get_file(&caller.scope, &ws, &path).await?;
    Ok(Json(convert::file(meta)))
}

/// Downloads a file: its bytes, streamed chunk by chunk, with the stored `Content-Type`,
/// `Content-Disposition: attachment` (sanitized name) and `Cache-Control: no-store`.
#[utoipa::path(
    get, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/download", operation_id = "downloadProjectTaskBoardItemFilesystemFile", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
        api::FilesystemFileParams,
    ),
    responses(
        (status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found` / `file_not_found`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`path`)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn download_file(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
    ApiQuery(q): ApiQuery<api::FilesystemFileParams>,
) -> ApiResult<Response> {
    let path = file_path(&q.path)?;
    let ws = workspace(&state, &caller.scope, &project_id, &item_id).await?;
    let meta = state.store.get_file(&caller.scope, &ws, &path).await?;
    let store = state.store.clone();
    let scope = caller.scope.clone();
    let blob = meta.blob_id.clone();
    // One chunk in memory at a time; a chunk that vanished (the file was replaced meanwhile)
    // ends the body with an error, so the client sees a truncated transfer, not wrong bytes.
    let body = futures_util::stream::iter(0..meta.chunks).then(move |i| {
        let store = store.clone();
        let scope = scope.clone();
        let blob = blob.clone();
        async move {
            store
                .read_blob_chunk(&scope, &blob, i)
                .await
                .map(bytes::Bytes::from)
                .map_err(std::io::Error::other)
        }
    });
    let mime = HeaderValue::from_str(&meta.mime_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        attachment_file_name(&meta.path)
    ))
    .unwrap_or(HeaderValue::from_static("attachment"));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, mime);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    headers.insert(header::CONTENT_DISPOSITION, disposition);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", meta.sha256)) {
        headers.insert(header::ETAG, etag);
    }
    Ok((headers, Body::from_stream(body)).into_response())
}

/// Most bytes of a refused upload read (and dropped) before answering.
const DRAIN_BYTES: usize = 1024 * 1024;
/// Longest time spent reading them.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads what the client is still sending of a refused upload, up to [`DRAIN_BYTES`] within
/// [`DRAIN_TIME`], before the 413 is sent. A connection closed with unread bytes in the
/// server's receive buffer is reset by the kernel, and the reset can destroy the answer before
/// the client reads it; a client that keeps sending past the budget may still see that.
async fn drain(stream: &mut axum::body::BodyDataStream) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(bytes)) = stream.next().await {
            seen += bytes.len();
            if seen >= DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Uploads (creates or replaces) a file. The body is the raw content; its `Content-Type` is
/// stored (guessed from the name when absent). The size limit (`max_upload_bytes`) is enforced
/// while streaming: the body is stored in chunks and never held whole.
#[utoipa::path(
    put, path = "/ai/actor-projects/{project_id}/board/items/{item_id}/filesystem/file", operation_id = "uploadProjectTaskBoardItemFilesystemFile", tag = "board",
    params(
        ("project_id" = String, Path, description = "Project id (`proj_…`)"),
        ("item_id" = String, Path, description = "Board item id (`item_…`)"),
        api::FilesystemFileParams,
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes"),
    responses(
        (status = 200, body = api::WorkspaceFile),
        (status = 401, body = ErrorBody, description = "`unauthorized`"),
        (status = 404, body = ErrorBody, description = "`board_item_not_found`"),
        (status = 409, body = ErrorBody, description = "`path_conflict` (files lie below the path, or one of its parents is a file)"),
        (status = 413, body = ErrorBody, description = "`payload_too_large`"),
        (status = 422, body = ErrorBody, description = "`validation_failed` (`path`, `Content-Type`)"),
    ),
    security(("secret_key" = []))
)]
pub(crate) async fn upload_file(
    caller: Caller,
    State(state): State<AppState>,
    IdPath2(project_id, item_id): IdPath2<ProjectId, BoardItemId>,
    ApiQuery(q): ApiQuery<api::FilesystemFileParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<api::WorkspaceFile>> {
    let path = file_path(&q.path)?;
    let mime = match headers.get(header::CONTENT_TYPE) {
        Some(v) => parse_mime(
            "Content-Type",
            v.to_str()
                .map_err(|_| ValidationError::new("Content-Type", "must be ASCII"))?,
        )?,
        None => guess_mime(&path).to_owned(),
    };
    let limit = state.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the file exceeds the upload limit of {limit} bytes"),
        )
    };
    // A declared length over the limit is refused before reading anything.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut stream = body.into_data_stream();
    if declared.is_some_and(|n| n > limit) {
        drain(&mut stream).await;
        return Err(too_large());
    }
    let ws = workspace(&state, &caller.scope, &project_id, &item_id).await?;
    let mut writer = FileWriter::new(state.store.as_ref(), &caller.scope, limit);
    while let Some(frame) = stream.next().await {
        let pushed = match frame {
            Ok(bytes) => writer.push(&bytes).await,
            Err(err) => {
                writer.abort().await;
                tracing::debug!(error = %err, "upload body failed");
                return Err(ApiError::invalid_parameter(
                    "body",
                    "the upload was interrupted",
                ));
            }
        };
        match pushed {
            Ok(()) => {}
            Err(WriteError::TooLarge(_)) => {
                writer.abort().await;
                drain(&mut stream).await;
                return Err(too_large());
            }
            Err(WriteError::Store(e)) => {
                writer.abort().await;
                return Err(e.into());
            }
        }
    }
    let meta = writer.finish(&ws, path, mime).await?;
    Ok(Json(convert::file(meta)))
}
