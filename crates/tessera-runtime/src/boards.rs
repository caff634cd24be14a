//! Task-board use cases shared by the HTTP API and the internal tools: delegation routing,
//! and writing workspace files in chunks.

use sha2::{Digest, Sha256};
use tessera_domain::board::{
    Assignment, BoardItem, FileMeta, NewBoardItem, Schedule, WorkspaceId, WorkspacePath,
};
use tessera_domain::thread::ThreadPurpose;
use tessera_domain::validate::{CapabilityTag, Label};
use tessera_domain::{AgentId, BlobId, BoardItemId, ProjectId, Scope, ThreadId, ValidationError};
use tessera_store::{Conflict, Entity, Idempotency, NewFile, Store, StoreError, CHUNK_BYTES};

/// Why a board use case failed: a storage answer (not found, conflict) or bad input.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// A delegation request, validated.
#[derive(Debug, Clone)]
pub struct Delegation {
    pub target_lane_thread_id: ThreadId,
    pub title: Label,
    pub description: String,
    pub capability_tags: Vec<CapabilityTag>,
}

/// Delegates work to a lane of the project: the target must be an execution thread of the same
/// project (another project's or deployment's thread is not found; a conversation thread is
/// refused). The lane's agents are its own agent, then that agent's sub-agents, in order; the
/// first whose capability tags include every requested tag is assigned
/// ([`Conflict::NoCapableAgent`] when none). The lane's own agent executes on the lane thread;
/// a sub-agent gets an execution thread of its own that inherits the lane's context group and
/// instructions. The new item executes at once.
pub async fn delegate(
    store: &dyn Store,
    scope: &Scope,
    project_id: &ProjectId,
    delegation: Delegation,
    parent_item_id: Option<BoardItemId>,
    idempotency: Option<&Idempotency>,
) -> Result<BoardItem, BoardError> {
    let field = "target_lane_thread_id";
    let lane = match store
        .get_thread(scope, &delegation.target_lane_thread_id)
        .await
    {
        Ok(lane) if &lane.project_id == project_id => lane,
        Ok(_) | Err(StoreError::NotFound { .. }) => {
            return Err(StoreError::not_found_at(Entity::Thread, field).into())
        }
        Err(e) => return Err(e.into()),
    };
    if lane.purpose != ThreadPurpose::Execution {
        return Err(ValidationError::new(field, "must be an execution thread").into());
    }
    let agent = choose_agent(store, scope, &lane.agent_id, &delegation.capability_tags).await?;
    let assignment = if agent == lane.agent_id {
        Assignment::Thread(lane.id.clone())
    } else {
        Assignment::NewThread {
            agent: Some(agent),
            context_of: Some(lane.id.clone()),
        }
    };
    let new = NewBoardItem {
        project_id: project_id.clone(),
        title: delegation.title,
        description: delegation.description,
        assignment,
        capability_tags: delegation.capability_tags,
        schedule: None,
        parent_item_id,
    };
    create_item(store, scope, &new, idempotency).await
}

/// The lane agent or the first of its sub-agents whose tags include all of `wanted`.
async fn choose_agent(
    store: &dyn Store,
    scope: &Scope,
    lane_agent: &AgentId,
    wanted: &[CapabilityTag],
) -> Result<AgentId, BoardError> {
    let lead = match store.get_agent(scope, lane_agent).await {
        Ok(agent) => agent,
        Err(StoreError::NotFound { .. }) => {
            return Err(StoreError::Conflict(Conflict::NoCapableAgent).into())
        }
        Err(e) => return Err(e.into()),
    };
    let mut candidates = vec![lead.clone()];
    for sub in &lead.spec.sub_agent_ids {
        match store.get_agent(scope, sub).await {
            Ok(agent) => candidates.push(agent),
            // A deleted sub-agent is simply not a candidate.
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    candidates
        .into_iter()
        .find(|a| wanted.iter().all(|t| a.spec.capability_tags.contains(t)))
        .map(|a| a.id)
        .ok_or(StoreError::Conflict(Conflict::NoCapableAgent).into())
}

/// Creates a board item for an agent's `schedule_task` call or an API request; under an
/// `Idempotency-Key`, a retry returns the item the first request created.
pub async fn create_item(
    store: &dyn Store,
    scope: &Scope,
    new: &NewBoardItem,
    idempotency: Option<&Idempotency>,
) -> Result<BoardItem, BoardError> {
    Ok(match idempotency {
        Some(idem) => store.create_board_item_once(scope, new, idem).await?,
        None => store.create_board_item(scope, new).await?,
    })
}

/// Writes a file of a workspace chunk by chunk: memory stays at one chunk whatever the size.
/// Nothing is visible until [`FileWriter::finish`]; [`FileWriter::abort`] (or a failed
/// finish) deletes the chunks written so far.
pub struct FileWriter<'a> {
    store: &'a dyn Store,
    scope: &'a Scope,
    blob_id: BlobId,
    buffer: Vec<u8>,
    chunks: u32,
    size: u64,
    limit: u64,
    hasher: Sha256,
}

/// Why a write stopped.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("the file exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<'a> FileWriter<'a> {
    pub fn new(store: &'a dyn Store, scope: &'a Scope, limit: u64) -> Self {
        Self {
            store,
            scope,
            blob_id: BlobId::generate(),
            buffer: Vec::with_capacity(CHUNK_BYTES),
            chunks: 0,
            size: 0,
            limit,
            hasher: Sha256::new(),
        }
    }

    /// Appends bytes; refuses them (before storing anything more) once the total would exceed
    /// the limit.
    pub async fn push(&mut self, mut bytes: &[u8]) -> Result<(), WriteError> {
        self.size += bytes.len() as u64;
        if self.size > self.limit {
            return Err(WriteError::TooLarge(self.limit));
        }
        self.hasher.update(bytes);
        while !bytes.is_empty() {
            let room = CHUNK_BYTES - self.buffer.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buffer.extend_from_slice(now);
            bytes = rest;
            if self.buffer.len() == CHUNK_BYTES {
                self.flush().await?;
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StoreError> {
        self.store
            .put_blob_chunk(self.scope, &self.blob_id, self.chunks, &self.buffer)
            .await?;
        self.chunks += 1;
        self.buffer.clear();
        Ok(())
    }

    /// Chunks stored so far.
    pub fn chunks_written(&self) -> u32 {
        self.chunks
    }

    /// Stores the last chunk and makes the file visible at `path`, replacing any previous one.
    pub async fn finish(
        mut self,
        workspace: &WorkspaceId,
        path: WorkspacePath,
        mime_type: String,
    ) -> Result<FileMeta, StoreError> {
        let result = self.finish_inner(workspace, path, mime_type).await;
        // A refusal committed nothing: its chunks go now. A database error may hide a commit
        // that went through (its answer lost, or still being written when a discard would
        // run): those chunks are left to the orphan sweep, which keeps a committed file's.
        if matches!(&result, Err(err) if !matches!(err, StoreError::Database(_))) {
            let _ = self.store.discard_blob(self.scope, &self.blob_id).await;
        }
        result
    }

    async fn finish_inner(
        &mut self,
        workspace: &WorkspaceId,
        path: WorkspacePath,
        mime_type: String,
    ) -> Result<FileMeta, StoreError> {
        if !self.buffer.is_empty() || self.chunks == 0 {
            self.flush().await?;
        }
        let sha256 = std::mem::take(&mut self.hasher)
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let file = NewFile {
            path,
            blob_id: self.blob_id.clone(),
            size: self.size,
            chunks: self.chunks,
            mime_type,
            sha256,
        };
        self.store.commit_file(self.scope, workspace, &file).await
    }

    /// Deletes what was written.
    pub async fn abort(self) {
        if let Err(err) = self.store.discard_blob(self.scope, &self.blob_id).await {
            tracing::warn!(error = %err, "could not delete the chunks of an aborted upload");
        }
    }
}

/// A schedule given to `schedule_task` or the API, as parsed JSON parts.
pub fn schedule_from_json(
    field: &str,
    value: &serde_json::Value,
    now: tessera_domain::Timestamp,
) -> Result<Schedule, ValidationError> {
    let obj = value
        .as_object()
        .ok_or_else(|| ValidationError::new(field, "must be an object"))?;
    for key in obj.keys() {
        if !matches!(
            key.as_str(),
            "schedule_kind" | "next_run_at" | "interval_seconds" | "overlap"
        ) {
            return Err(ValidationError::new(
                format!("{field}.{key}"),
                "is not a known field",
            ));
        }
    }
    let text = |k: &str| -> Result<Option<&str>, ValidationError> {
        match obj.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| ValidationError::new(format!("{field}.{k}"), "must be a string")),
        }
    };
    let kind = text("schedule_kind")?
        .ok_or_else(|| ValidationError::new(format!("{field}.schedule_kind"), "is required"))?;
    let interval = match obj.get("interval_seconds") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    ValidationError::new(
                        format!("{field}.interval_seconds"),
                        "must be a positive integer",
                    )
                })?,
        ),
    };
    tessera_domain::board::parse_schedule(
        field,
        kind,
        text("next_run_at")?,
        interval,
        text("overlap")?,
        now,
    )
}
