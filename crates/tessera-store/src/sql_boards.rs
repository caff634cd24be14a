//! SQL for task boards (board items, schedule slots) and task workspaces (files in chunks),
//! shared by both backends like `sql.rs`.
//!
//! Exactly once per slot: `claim_due_slots` moves each due item to its next slot with an update
//! conditional on the pending slot, records the slot as a `board_slots` row (primary key
//! `(item_id, slot_at)`) and queues the slot's run — all in one transaction. Two nodes claiming
//! together either skip each other's rows (PostgreSQL `SKIP LOCKED`) or serialise (SQLite's
//! single writer); a slot's row can only be inserted once, and a slot and its run commit
//! together, so no crash can leave one without the other.

/// The derived status of an item (`b` = board_items, `r` = its last run), kept in SQL so that
/// list filters and reads agree.
pub(crate) const STATUS_CASE: &str = "CASE
      WHEN b.archived_at IS NOT NULL THEN 'archived'
      WHEN b.schedule_state = 'cancelled' THEN 'cancelled'
      WHEN b.last_run_id IS NOT NULL AND (r.status IS NULL OR r.status IN ('queued', 'running', 'waiting_for_input')) THEN 'running'
      WHEN b.schedule_state = 'paused' THEN 'paused'
      WHEN b.schedule_state = 'active' THEN 'scheduled'
      WHEN r.status = 'failed' THEN 'failed'
      WHEN r.status = 'cancelled' THEN 'cancelled'
      ELSE 'completed' END";

pub(crate) const ITEM_SELECT: &str = "SELECT b.id, b.project_id, b.seq, b.title, b.description,
      b.assigned_thread_id, b.assigned_agent_id, b.capability_tags, b.schedule_kind,
      b.schedule_first_at, b.interval_seconds, b.overlap, b.schedule_state, b.next_run_at,
      b.parent_item_id, b.last_run_id, b.last_slot_at, b.created_at, b.updated_at, b.archived_at,
      r.status AS run_status,
      (SELECT m.content FROM messages m
        WHERE m.run_id = b.last_run_id AND m.role = 'assistant' AND m.content <> ''
        ORDER BY m.id DESC LIMIT 1) AS run_result";

pub(crate) const SLOT_COLS: &str =
    "s.item_id, s.slot_at, s.deployment_id, s.outcome, s.run_id, s.message_id, s.thread_id, \
     s.node, s.fired_at, b.description";

pub(crate) const FILE_COLS: &str =
    "path, blob_id, size, chunks, mime_type, sha256, created_at, updated_at";

macro_rules! impl_board_sql {
    ($store:ident, $db:ty) => {
    /// Board and workspace SQL, instantiated for this backend.
    mod board_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::{QueryBuilder, Row as _};
        use tessera_domain::board::{
            fire, Assignment, BoardItem, BoardItemPatch, FileMeta, ItemRun, ItemStatus,
            NewBoardItem, Overlap, Schedule, ScheduleKind, ScheduleState, WorkspaceId,
            WorkspacePath,
        };
        use tessera_domain::event;
        use tessera_domain::thread::{Message, Role, Run, RunStatus};
        use std::collections::HashMap;
        use tessera_domain::{
            AgentId, BlobId, BoardItemId, DeploymentId, MessageId, ProjectId, RunId, Scope,
            ThreadId, Timestamp,
        };
        use $crate::bulk::Rows;
        use $crate::sql::corrupt;
        use $crate::sql_boards::{FILE_COLS, ITEM_SELECT, SLOT_COLS, STATUS_CASE};
        use $crate::{
            BoardItemFilter, Conflict, Cursor, Entity, Idempotency, NewFile, Notification, Page,
            PageRequest, SlotOutcome, SlotRecord, StoreError, StoreResult, ThreadEvent,
        };
        use super::run_sql::{active_project, claim_key};

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn parse_id<T>(raw: String, parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>) -> StoreResult<T> {
            parse(&raw).map_err(|e| corrupt("id", e))
        }

        fn item_from_row(row: &DbRow) -> StoreResult<BoardItem> {
            let kind: Option<String> = row.try_get("schedule_kind")?;
            let overlap: String = row.try_get("overlap")?;
            let overlap = Overlap::parse(&overlap).ok_or_else(|| corrupt("item overlap", &overlap))?;
            let schedule = match kind {
                None => None,
                Some(kind) => {
                    let kind = ScheduleKind::parse(&kind).ok_or_else(|| corrupt("schedule kind", &kind))?;
                    let first: Option<i64> = row.try_get("schedule_first_at")?;
                    let interval: Option<i64> = row.try_get("interval_seconds")?;
                    Some(
                        Schedule::new(
                            "schedule",
                            kind,
                            Timestamp::from_millis(first.unwrap_or_default()),
                            interval.map(|i| i as u32),
                            overlap,
                        )
                        .map_err(|e| corrupt("schedule", e))?,
                    )
                }
            };
            let state: String = row.try_get("schedule_state")?;
            let status: String = row.try_get("item_status")?;
            let tags: String = row.try_get("capability_tags")?;
            let thread_id = parse_id(row.try_get("assigned_thread_id")?, ThreadId::parse)?;
            let last_run_id: Option<String> = row.try_get("last_run_id")?;
            let last_run = match last_run_id {
                None => None,
                Some(run) => {
                    let run_status: Option<String> = row.try_get("run_status")?;
                    Some(ItemRun {
                        run_id: parse_id(run, RunId::parse)?,
                        thread_id: thread_id.clone(),
                        status: run_status
                            .map(|s| RunStatus::parse(&s).ok_or_else(|| corrupt("run status", &s)))
                            .transpose()?,
                        slot_at: Timestamp::from_millis(row.try_get::<Option<i64>, _>("last_slot_at")?.unwrap_or_default()),
                        result: row.try_get("run_result")?,
                    })
                }
            };
            let seq: i64 = row.try_get("seq")?;
            let parent: Option<String> = row.try_get("parent_item_id")?;
            Ok(BoardItem {
                id: parse_id(row.try_get("id")?, BoardItemId::parse)?,
                project_id: parse_id(row.try_get("project_id")?, ProjectId::parse)?,
                task_key: format!("TASK-{seq}"),
                title: row.try_get("title")?,
                description: row.try_get("description")?,
                status: ItemStatus::parse(&status).ok_or_else(|| corrupt("item status", &status))?,
                assigned_thread_id: thread_id,
                assigned_agent_id: parse_id(row.try_get("assigned_agent_id")?, AgentId::parse)?,
                capability_tags: serde_json::from_str(&tags).map_err(|e| corrupt("item capability_tags", e))?,
                schedule,
                schedule_state: ScheduleState::parse(&state).ok_or_else(|| corrupt("schedule state", &state))?,
                next_run_at: row.try_get::<Option<i64>, _>("next_run_at")?.map(Timestamp::from_millis),
                parent_item_id: parent.map(|p| parse_id(p, BoardItemId::parse)).transpose()?,
                last_run,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
                archived_at: row.try_get::<Option<i64>, _>("archived_at")?.map(Timestamp::from_millis),
            })
        }

        fn slot_from_row(row: &DbRow) -> StoreResult<SlotRecord> {
            let outcome: String = row.try_get("outcome")?;
            let run_id: Option<String> = row.try_get("run_id")?;
            let message_id: Option<String> = row.try_get("message_id")?;
            Ok(SlotRecord {
                scope: Scope::deployment(parse_id(row.try_get("deployment_id")?, DeploymentId::parse)?),
                item_id: parse_id(row.try_get("item_id")?, BoardItemId::parse)?,
                slot_at: Timestamp::from_millis(row.try_get("slot_at")?),
                outcome: SlotOutcome::parse(&outcome).ok_or_else(|| corrupt("slot outcome", &outcome))?,
                thread_id: parse_id(row.try_get("thread_id")?, ThreadId::parse)?,
                run_id: run_id.map(|r| parse_id(r, RunId::parse)).transpose()?,
                message_id: message_id.map(|m| parse_id(m, MessageId::parse)).transpose()?,
                description: row.try_get("description")?,
                node: row.try_get("node")?,
                fired_at: Timestamp::from_millis(row.try_get("fired_at")?),
                events: Vec::new(),
            })
        }

        fn file_from_row(row: &DbRow) -> StoreResult<FileMeta> {
            let path: String = row.try_get("path")?;
            Ok(FileMeta {
                path: WorkspacePath::from_stored(&path).map_err(|e| corrupt("file path", e))?,
                size: row.try_get::<i64, _>("size")?.max(0) as u64,
                mime_type: row.try_get("mime_type")?,
                sha256: row.try_get("sha256")?,
                blob_id: parse_id(row.try_get("blob_id")?, BlobId::parse)?,
                chunks: row.try_get::<i64, _>("chunks")?.max(0) as u32,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        async fn load_item(conn: &mut Conn, dep: &str, project_id: &ProjectId, item_id: &BoardItemId) -> StoreResult<BoardItem> {
            let row = sqlx::query(&format!(
                "{ITEM_SELECT}, {STATUS_CASE} AS item_status
                 FROM board_items b LEFT JOIN runs r ON r.id = b.last_run_id
                 WHERE b.id = $1 AND b.project_id = $2 AND b.deployment_id = $3"
            ))
            .bind(item_id.as_str())
            .bind(project_id.as_str())
            .bind(dep)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found(Entity::BoardItem))?;
            item_from_row(&row)
        }

        /// Locks the item row (PostgreSQL) and returns its state and archive time.
        async fn lock_item(conn: &mut Conn, dep: &str, project_id: &ProjectId, item_id: &BoardItemId, lock: &str) -> StoreResult<(ScheduleState, Option<i64>, Option<String>, String)> {
            let row = sqlx::query(&format!(
                "SELECT schedule_state, archived_at, last_run_id, assigned_thread_id FROM board_items
                 WHERE id = $1 AND project_id = $2 AND deployment_id = $3{lock}"
            ))
            .bind(item_id.as_str())
            .bind(project_id.as_str())
            .bind(dep)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found(Entity::BoardItem))?;
            let state: String = row.try_get("schedule_state")?;
            Ok((
                ScheduleState::parse(&state).ok_or_else(|| corrupt("schedule state", &state))?,
                row.try_get("archived_at")?,
                row.try_get("last_run_id")?,
                row.try_get("assigned_thread_id")?,
            ))
        }

        fn is_open(status: Option<&str>) -> bool {
            matches!(status, None | Some("queued" | "running" | "waiting_for_input"))
        }

        impl $store {
            /// Creates a board item, under an idempotency key when one is given.
            async fn insert_item(&self, scope: &Scope, new: &NewBoardItem, idem: Option<&Idempotency>) -> StoreResult<BoardItem> {
                let dep = scope.deployment_id().as_str();
                let now = Timestamp::now();
                let item_id = BoardItemId::generate_at(now);
                let mut tx = self.begin_write().await?;
                if let Some(idem) = idem {
                    // Taken first, so that a concurrent retry waits for this transaction and
                    // then returns its item.
                    let mut record = idem.clone();
                    record.result = serde_json::json!({"board_item_id": item_id.as_str()});
                    if let Some(result) = claim_key(&mut tx, dep, &record).await? {
                        let id = result["board_item_id"].as_str().unwrap_or_default().to_owned();
                        let id = parse_id(id, BoardItemId::parse)?;
                        let item = load_item(&mut tx, dep, &new.project_id, &id).await?;
                        tx.commit().await?;
                        return Ok(item);
                    }
                }
                // Locks the project: a concurrent archive waits, and so does a concurrent
                // creation, which then takes the next key.
                let (actor_id, project_agent) = active_project(&mut tx, dep, &new.project_id, Self::ROW_LOCK).await?;
                let tags: Vec<&str> = new.capability_tags.iter().map(|t| t.as_str()).collect();
                let tags = serde_json::to_string(&tags).map_err(|e| corrupt("capability_tags", e))?;
                let (thread_id, agent_id) = match &new.assignment {
                    Assignment::Thread(thread_id) => {
                        let row = sqlx::query(
                            "SELECT agent_id, closed_at FROM threads WHERE id = $1 AND project_id = $2 AND deployment_id = $3",
                        )
                        .bind(thread_id.as_str())
                        .bind(new.project_id.as_str())
                        .bind(dep)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or(StoreError::not_found_at(Entity::Thread, "assigned_thread_id"))?;
                        // A closed session takes no message, so no item executes there.
                        if row.try_get::<Option<i64>, _>("closed_at")?.is_some() {
                            return Err(StoreError::Conflict(Conflict::SessionClosed));
                        }
                        (thread_id.as_str().to_owned(), row.try_get::<String, _>("agent_id")?)
                    }
                    Assignment::NewThread { agent, context_of } => {
                        let (instructions, group): (Option<String>, Option<String>) = match context_of {
                            None => (None, None),
                            Some(lane) => {
                                let row = sqlx::query(
                                    "SELECT system_instructions, context_group, closed_at FROM threads
                                     WHERE id = $1 AND project_id = $2 AND deployment_id = $3",
                                )
                                .bind(lane.as_str())
                                .bind(new.project_id.as_str())
                                .bind(dep)
                                .fetch_optional(&mut *tx)
                                .await?
                                .ok_or(StoreError::not_found_at(Entity::Thread, "target_lane_thread_id"))?;
                                // A closed lane takes no more work, not even on a new thread.
                                if row.try_get::<Option<i64>, _>("closed_at")?.is_some() {
                                    return Err(StoreError::Conflict(Conflict::SessionClosed));
                                }
                                (row.try_get("system_instructions")?, row.try_get("context_group")?)
                            }
                        };
                        let agent_id = agent.as_ref().map(|a| a.as_str().to_owned()).unwrap_or(project_agent);
                        let thread_id = ThreadId::generate_at(now).into_string();
                        sqlx::query(
                            "INSERT INTO threads (id, deployment_id, project_id, actor_id, agent_id, title,
                               system_instructions, purpose, capability_tags, context_group, status,
                               created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, 'execution', $8, $9, 'idle', $10, $10)",
                        )
                        .bind(&thread_id)
                        .bind(dep)
                        .bind(new.project_id.as_str())
                        .bind(&actor_id)
                        .bind(&agent_id)
                        .bind(new.title.as_str())
                        .bind(instructions)
                        .bind(&tags)
                        .bind(group)
                        .bind(now.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        (thread_id, agent_id)
                    }
                };
                let seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 AS n FROM board_items WHERE project_id = $1")
                    .bind(new.project_id.as_str())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                let s = new.schedule.as_ref();
                sqlx::query(
                    "INSERT INTO board_items (id, deployment_id, project_id, seq, title, description,
                       assigned_thread_id, assigned_agent_id, capability_tags, schedule_kind,
                       schedule_first_at, interval_seconds, overlap, schedule_state, next_run_at,
                       parent_item_id, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'active', $14, $15, $16, $16)",
                )
                .bind(item_id.as_str())
                .bind(dep)
                .bind(new.project_id.as_str())
                .bind(seq)
                .bind(new.title.as_str())
                .bind(new.description.as_str())
                .bind(&thread_id)
                .bind(&agent_id)
                .bind(&tags)
                .bind(s.map(|s| s.kind().as_str()))
                .bind(s.map(|s| s.next_run_at().as_millis()))
                .bind(s.and_then(|s| s.interval_seconds()).map(i64::from))
                .bind(s.map(|s| s.overlap()).unwrap_or_default().as_str())
                .bind(s.map(|s| s.next_run_at()).unwrap_or(now).as_millis())
                .bind(new.parent_item_id.as_ref().map(|p| p.as_str()))
                .bind(now.as_millis())
                .execute(&mut *tx)
                .await?;
                let item = load_item(&mut tx, dep, &new.project_id, &item_id).await?;
                tx.commit().await?;
                Ok(item)
            }
        }

        #[async_trait::async_trait]
        impl $crate::BoardStore for $store {
            async fn create_board_item(&self, scope: &Scope, new: &NewBoardItem) -> StoreResult<BoardItem> {
                self.insert_item(scope, new, None).await
            }

            async fn create_board_item_once(
                &self,
                scope: &Scope,
                new: &NewBoardItem,
                idempotency: &Idempotency,
            ) -> StoreResult<BoardItem> {
                self.insert_item(scope, new, Some(idempotency)).await
            }

            async fn get_board_item(&self, scope: &Scope, project_id: &ProjectId, id: &BoardItemId) -> StoreResult<BoardItem> {
                let mut conn = self.reader().acquire().await?;
                load_item(&mut conn, scope.deployment_id().as_str(), project_id, id).await
            }

            async fn list_board_items(
                &self,
                scope: &Scope,
                project_id: &ProjectId,
                filter: &BoardItemFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<BoardItem>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "{ITEM_SELECT}, {STATUS_CASE} AS item_status
                     FROM board_items b LEFT JOIN runs r ON r.id = b.last_run_id
                     WHERE b.deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                qb.push(" AND b.project_id = ").push_bind(project_id.as_str());
                if let Some(status) = filter.status {
                    qb.push(format!(" AND ({STATUS_CASE}) = ")).push_bind(status.as_str());
                }
                match filter.archived {
                    Some(true) => { qb.push(" AND b.archived_at IS NOT NULL"); }
                    Some(false) => { qb.push(" AND b.archived_at IS NULL"); }
                    None => {}
                }
                match &page.cursor {
                    Cursor::First => { qb.push(" ORDER BY b.id ASC"); }
                    Cursor::After(c) => { qb.push(" AND b.id > ").push_bind(c.clone()).push(" ORDER BY b.id ASC"); }
                    Cursor::Before(c) => { qb.push(" AND b.id < ").push_bind(c.clone()).push(" ORDER BY b.id DESC"); }
                }
                qb.push(" LIMIT ").push_bind(i64::from(page.limit) + 1);
                let rows = qb.build().fetch_all(self.reader()).await?;
                let limit = page.limit as usize;
                let has_more = rows.len() > limit;
                let mut items = rows.iter().take(limit).map(item_from_row).collect::<StoreResult<Vec<_>>>()?;
                if matches!(page.cursor, Cursor::Before(_)) {
                    items.reverse();
                }
                Ok(Page { items, has_more })
            }

            async fn update_board_item(
                &self,
                scope: &Scope,
                project_id: &ProjectId,
                id: &BoardItemId,
                patch: &BoardItemPatch,
            ) -> StoreResult<BoardItem> {
                let dep = scope.deployment_id().as_str();
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let (state, archived, _, _) = lock_item(&mut tx, dep, project_id, id, Self::ROW_LOCK).await?;
                if archived.is_some() || state == ScheduleState::Cancelled {
                    return Err(StoreError::Conflict(Conflict::BoardItemClosed));
                }
                let mut qb = QueryBuilder::<$db>::new("UPDATE board_items SET updated_at = ");
                qb.push_bind(now.as_millis());
                if let Some(title) = &patch.title {
                    qb.push(", title = ").push_bind(title.as_str().to_owned());
                }
                if let Some(description) = &patch.description {
                    qb.push(", description = ").push_bind(description.clone());
                }
                if let Some(tags) = &patch.capability_tags {
                    let tags: Vec<&str> = tags.iter().map(|t| t.as_str()).collect();
                    qb.push(", capability_tags = ").push_bind(serde_json::to_string(&tags).map_err(|e| corrupt("capability_tags", e))?);
                }
                // The state after the patch: a new schedule starts active (unless the same
                // patch pauses it); removing the schedule leaves no slot.
                let mut new_state = state;
                match &patch.schedule {
                    Some(Some(s)) => {
                        qb.push(", schedule_kind = ").push_bind(s.kind().as_str());
                        qb.push(", schedule_first_at = ").push_bind(s.next_run_at().as_millis());
                        qb.push(", interval_seconds = ").push_bind(s.interval_seconds().map(i64::from));
                        qb.push(", overlap = ").push_bind(s.overlap().as_str());
                        qb.push(", next_run_at = ").push_bind(s.next_run_at().as_millis());
                        if new_state == ScheduleState::Done {
                            new_state = ScheduleState::Active;
                        }
                    }
                    Some(None) => {
                        qb.push(", schedule_kind = NULL, schedule_first_at = NULL, interval_seconds = NULL, next_run_at = NULL");
                        new_state = ScheduleState::Done;
                    }
                    None => {}
                }
                match patch.paused {
                    Some(true) if new_state == ScheduleState::Active => new_state = ScheduleState::Paused,
                    Some(false) if new_state == ScheduleState::Paused => new_state = ScheduleState::Active,
                    _ => {}
                }
                qb.push(", schedule_state = ").push_bind(new_state.as_str());
                qb.push(" WHERE id = ").push_bind(id.as_str());
                qb.push(" AND deployment_id = ").push_bind(dep);
                qb.build().execute(&mut *tx).await?;
                let item = load_item(&mut tx, dep, project_id, id).await?;
                tx.commit().await?;
                Ok(item)
            }

            async fn archive_board_item(&self, scope: &Scope, project_id: &ProjectId, id: &BoardItemId) -> StoreResult<BoardItem> {
                let dep = scope.deployment_id().as_str();
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let (_, archived, _, _) = lock_item(&mut tx, dep, project_id, id, Self::ROW_LOCK).await?;
                if archived.is_none() {
                    sqlx::query(
                        "UPDATE board_items SET archived_at = $1, updated_at = $1, next_run_at = NULL,
                           schedule_state = CASE WHEN schedule_state = 'cancelled' THEN 'cancelled' ELSE 'done' END
                         WHERE id = $2 AND deployment_id = $3",
                    )
                    .bind(now.as_millis())
                    .bind(id.as_str())
                    .bind(dep)
                    .execute(&mut *tx)
                    .await?;
                }
                let item = load_item(&mut tx, dep, project_id, id).await?;
                tx.commit().await?;
                Ok(item)
            }

            async fn cancel_board_item(
                &self,
                scope: &Scope,
                project_id: &ProjectId,
                id: &BoardItemId,
            ) -> StoreResult<(BoardItem, Option<RunId>, Vec<ThreadEvent>)> {
                // Deadlocks with a decision on a paused run's actions are possible on PostgreSQL (see
                // `retry_transient`): the aborted transaction runs again.
                $crate::retry_transient(|| async move {
                    let dep = scope.deployment_id().as_str();
                    let now = Timestamp::now();
                    let mut tx = self.begin_write().await?;
                    let (_, archived, last_run, thread_id) = lock_item(&mut tx, dep, project_id, id, Self::ROW_LOCK).await?;
                    if archived.is_some() {
                        return Err(StoreError::Conflict(Conflict::BoardItemClosed));
                    }
                    sqlx::query(
                        "UPDATE board_items SET schedule_state = 'cancelled', next_run_at = NULL, updated_at = $1
                         WHERE id = $2 AND deployment_id = $3",
                    )
                    .bind(now.as_millis())
                    .bind(id.as_str())
                    .bind(dep)
                    .execute(&mut *tx)
                    .await?;
                    let mut events = Vec::new();
                    let mut stopping = None;
                    if let Some(run_id) = last_run {
                        // The same transitions as cancelling a thread's runs, for this one run: a
                        // queued run ends here with its status event; an executing one is flagged
                        // for its worker (heartbeats relay it) and woken across nodes.
                        let row = sqlx::query(&format!(
                            "SELECT status FROM runs WHERE id = $1 AND deployment_id = $2{}",
                            Self::ROW_LOCK
                        ))
                        .bind(&run_id)
                        .bind(dep)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let status: Option<String> = row.map(|r| r.try_get("status")).transpose()?;
                        match status.as_deref() {
                            Some("queued") => {
                                let row = sqlx::query(&format!(
                                    "UPDATE runs SET status = 'cancelled', stop_reason = 'cancelled', cancel_requested = 1,
                                       finished_at = $1 WHERE id = $2 RETURNING {}",
                                    $crate::sql_runs::RUN_COLS
                                ))
                                .bind(now.as_millis())
                                .bind(&run_id)
                                .fetch_one(&mut *tx)
                                .await?;
                                let run = run_from_row_min(&row)?;
                                let ev = event::run_status_event(&run);
                                let seq: i64 = sqlx::query(
                                    "UPDATE threads SET last_seq = last_seq + 1, updated_at = $1 WHERE id = $2 RETURNING last_seq",
                                )
                                .bind(now.as_millis())
                                .bind(&thread_id)
                                .fetch_one(&mut *tx)
                                .await?
                                .try_get("last_seq")?;
                                let data = serde_json::to_string(&ev.data).map_err(|e| corrupt("event data", e))?;
                                sqlx::query(
                                    "INSERT INTO thread_events (thread_id, seq, deployment_id, run_id, kind, data, created_at)
                                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                                )
                                .bind(&thread_id)
                                .bind(seq)
                                .bind(dep)
                                .bind(&run_id)
                                .bind(ev.kind)
                                .bind(data)
                                .bind(now.as_millis())
                                .execute(&mut *tx)
                                .await?;
                                let thread = parse_id(thread_id.clone(), ThreadId::parse)?;
                                events.push(ThreadEvent {
                                    thread_id: thread.clone(),
                                    seq,
                                    run_id: Some(run.id.clone()),
                                    kind: ev.kind.to_owned(),
                                    data: ev.data,
                                    created_at: now,
                                });
                                self.notify(&mut tx, &Notification::ThreadEvents(thread)).await?;
                            }
                            Some("running" | "waiting_for_input") => {
                                sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1")
                                    .bind(&run_id)
                                    .execute(&mut *tx)
                                    .await?;
                                let run = parse_id(run_id, RunId::parse)?;
                                // A run paused for a confirmation has no worker to see the flag: its
                                // open actions are cancelled and a worker takes it to its end.
                                let (was_paused, resolved) = super::session_sql::release_paused_run(&mut tx, &run).await?;
                                if was_paused {
                                    self.notify(&mut tx, &Notification::Runs).await?;
                                }
                                // The cancelled actions' `pending_action.resolved`, as a thread's
                                // cancellation stores them.
                                let stored = super::run_sql::append(&mut tx, dep, &thread_id, Some(run.as_str()), &resolved).await?;
                                if !stored.is_empty() {
                                    self.notify(&mut tx, &Notification::ThreadEvents(parse_id(thread_id.clone(), ThreadId::parse)?)).await?;
                                }
                                events.extend(stored);
                                self.notify(&mut tx, &Notification::CancelRun(run.clone())).await?;
                                stopping = Some(run);
                            }
                            _ => {}
                        }
                    }
                    let item = load_item(&mut tx, dep, project_id, id).await?;
                    tx.commit().await?;
                    Ok((item, stopping, events))
                })
                .await
            }

            async fn board_item_of_run(&self, scope: &Scope, run_id: &RunId) -> StoreResult<Option<(ProjectId, BoardItemId)>> {
                let row = sqlx::query(
                    "SELECT b.project_id, b.id FROM board_slots s JOIN board_items b ON b.id = s.item_id
                     WHERE s.run_id = $1 AND s.deployment_id = $2",
                )
                .bind(run_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?;
                row.map(|r| Ok((parse_id(r.try_get("project_id")?, ProjectId::parse)?, parse_id(r.try_get("id")?, BoardItemId::parse)?)))
                    .transpose()
            }

            async fn prune_slots(&self, before: Timestamp) -> StoreResult<u64> {
                // The records to delete: old, not the item's latest, and not of an open run.
                let prunable = format!(
                    "s.fired_at < $1
                     AND s.slot_at < (SELECT MAX(l.slot_at) FROM board_slots l WHERE l.item_id = s.item_id)
                     AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status IN {})",
                    $crate::sql_runs::OPEN_STATUSES
                );
                let mut tx = self.begin_write().await?;
                // First the items remember the latest slot whose record goes, then it goes.
                sqlx::query(&format!(
                    "UPDATE board_items SET slots_pruned_through = (
                       SELECT MAX(s.slot_at) FROM board_slots s WHERE s.item_id = board_items.id AND {prunable})
                     WHERE EXISTS (SELECT 1 FROM board_slots s WHERE s.item_id = board_items.id AND {prunable})"
                ))
                .bind(before.as_millis())
                .execute(&mut *tx)
                .await?;
                let done = sqlx::query(&format!(
                    "DELETE FROM board_slots WHERE (item_id, slot_at) IN (
                       SELECT s.item_id, s.slot_at FROM board_slots s WHERE {prunable})"
                ))
                .bind(before.as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn list_slots(&self, scope: &Scope, item_id: &BoardItemId) -> StoreResult<Vec<SlotRecord>> {
                let rows = sqlx::query(&format!(
                    "SELECT {SLOT_COLS} FROM board_slots s JOIN board_items b ON b.id = s.item_id
                     WHERE s.item_id = $1 AND s.deployment_id = $2 ORDER BY s.slot_at"
                ))
                .bind(item_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(slot_from_row).collect()
            }

            async fn next_due_slot(&self) -> StoreResult<Option<Timestamp>> {
                let row = sqlx::query(
                    "SELECT MIN(next_run_at) AS due FROM board_items
                     WHERE schedule_state = 'active' AND archived_at IS NULL",
                )
                .fetch_one(self.reader())
                .await?;
                Ok(row.try_get::<Option<i64>, _>("due")?.map(Timestamp::from_millis))
            }

            fn slot_claim_batch(&self) -> usize {
                $store::SLOT_CLAIM_BATCH
            }

            async fn claim_due_slots(&self, node: &str, now: Timestamp, limit: usize) -> StoreResult<Vec<SlotRecord>> {
                // The claim holds the items it took while it locks their threads; a transaction
                // that holds one of those threads and then wants one of the items or another of
                // the threads (the expiry and warning sweeps lock several threads, in their
                // actions' order) deadlocks with it on PostgreSQL (see `retry_transient`): the
                // aborted claim runs again instead of failing the scheduler's pass. (An attempt
                // is aborted before its last statement queues the wake-ups; one sent anyway
                // would only make the workers look for runs.)
                $crate::retry_transient(|| {
                    let this = self.clone();
                    let node = node.to_owned();
                    self.offload(async move { this.do_claim_due_slots(&node, now, limit).await })
                })
                .await
            }

        }

        /// A run read back after the update (only what its status event needs).
        fn run_from_row_min(row: &DbRow) -> StoreResult<tessera_domain::thread::Run> {
            let status: String = row.try_get("status")?;
            let stop: Option<String> = row.try_get("stop_reason")?;
            Ok(tessera_domain::thread::Run {
                id: parse_id(row.try_get("id")?, RunId::parse)?,
                thread_id: parse_id(row.try_get("thread_id")?, ThreadId::parse)?,
                status: RunStatus::parse(&status).ok_or_else(|| corrupt("run status", &status))?,
                attempt: row.try_get("attempt")?,
                input_message_id: parse_id(row.try_get("input_message_id")?, MessageId::parse)?,
                stop_reason: stop
                    .map(|s| tessera_domain::thread::StopReason::parse(&s).ok_or_else(|| corrupt("run stop_reason", &s)))
                    .transpose()?,
                error: row.try_get("error")?,
                usage: Default::default(),
                cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                started_at: row.try_get::<Option<i64>, _>("started_at")?.map(Timestamp::from_millis),
                finished_at: row.try_get::<Option<i64>, _>("finished_at")?.map(Timestamp::from_millis),
            })
        }

        /// One due item read by the claim.
        struct Due {
            item_id: String,
            dep: String,
            thread_id: String,
            description: String,
            kind: ScheduleKind,
            interval: Option<i64>,
            skip_if_open: bool,
            pending: i64,
            last_run_open: bool,
        }

        /// What the claim decided for one due item.
        struct Plan {
            due: Due,
            slot: Timestamp,
            next: Option<Timestamp>,
            /// Run and input message ids when the slot fires (not when it is skipped).
            run: Option<(RunId, MessageId)>,
            /// The slot is at or before the item's pruned records: it fired already.
            fired_before: bool,
        }

        impl $store {
            /// The claim, in a constant number of statements per batch: read the due items,
            /// move them on, record their slots, reserve event numbers on their threads, then
            /// insert the messages, runs and events of the fired ones.
            async fn do_claim_due_slots(&self, node: &str, now: Timestamp, limit: usize) -> StoreResult<Vec<SlotRecord>> {
                let mut tx = self.begin_write().await?;
                let rows = sqlx::query(&format!(
                    "SELECT b.id, b.deployment_id, b.assigned_thread_id, b.description, b.schedule_kind,
                       b.interval_seconds, b.overlap, b.next_run_at, b.last_run_id, r.status AS run_status,
                       b.slots_pruned_through
                     FROM board_items b LEFT JOIN runs r ON r.id = b.last_run_id
                     WHERE b.schedule_state = 'active' AND b.archived_at IS NULL AND b.next_run_at <= $1
                     ORDER BY b.next_run_at LIMIT $2{}",
                    if Self::CLAIM_LOCK.is_empty() { "" } else { " FOR UPDATE OF b SKIP LOCKED" }
                ))
                .bind(now.as_millis())
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?;
                let mut plans = Vec::with_capacity(rows.len());
                for row in &rows {
                    let kind: Option<String> = row.try_get("schedule_kind")?;
                    let overlap: String = row.try_get("overlap")?;
                    let last_run: Option<String> = row.try_get("last_run_id")?;
                    let run_status: Option<String> = row.try_get("run_status")?;
                    let due = Due {
                        item_id: row.try_get("id")?,
                        dep: row.try_get("deployment_id")?,
                        thread_id: row.try_get("assigned_thread_id")?,
                        description: row.try_get("description")?,
                        kind: match kind.as_deref() {
                            Some(k) => ScheduleKind::parse(k).ok_or_else(|| corrupt("schedule kind", k))?,
                            None => ScheduleKind::Once,
                        },
                        interval: row.try_get("interval_seconds")?,
                        skip_if_open: overlap == Overlap::Skip.as_str(),
                        pending: row.try_get("next_run_at")?,
                        last_run_open: last_run.is_some() && is_open(run_status.as_deref()),
                    };
                    let Some(firing) = fire(due.kind, due.interval.map(|s| s * 1000), Timestamp::from_millis(due.pending), now) else {
                        continue;
                    };
                    let skip = due.skip_if_open && due.last_run_open;
                    // A slot whose record was pruned fired long ago: the item moves on, and
                    // the slot is neither recorded nor fired again.
                    let pruned: Option<i64> = row.try_get("slots_pruned_through")?;
                    let fired_before = pruned.is_some_and(|p| firing.slot.as_millis() <= p);
                    plans.push(Plan {
                        slot: firing.slot,
                        next: firing.next.filter(|n| *n > firing.slot),
                        run: (!skip && !fired_before).then(|| (RunId::generate_at(now), MessageId::generate_at(now))),
                        fired_before,
                        due,
                    });
                }
                if plans.is_empty() {
                    tx.commit().await?;
                    return Ok(Vec::new());
                }
                // Threads are locked in one order by every claimer, so two nodes claiming items
                // that share threads cannot deadlock.
                plans.sort_by(|a, b| a.due.thread_id.cmp(&b.due.thread_id));

                // 1. Move each item on, conditional on the pending slot read above: this decides
                //    the claim. (`VALUES` columns are `column1…` on both engines.)
                let mut qb = QueryBuilder::<$db>::new(
                    "UPDATE board_items SET next_run_at = v.column2,
                       schedule_state = CASE WHEN v.column2 IS NULL THEN 'done' ELSE board_items.schedule_state END,
                       last_run_id = COALESCE(v.column4, board_items.last_run_id),
                       last_slot_at = CASE WHEN v.column4 IS NULL THEN board_items.last_slot_at ELSE v.column5 END,
                       updated_at = ",
                );
                qb.push_bind(now.as_millis());
                qb.push(" FROM (");
                let mut rows = Rows::new(5);
                for p in &plans {
                    rows.push([
                        p.due.item_id.as_str().into(),
                        p.next.map(Timestamp::as_millis).into(),
                        p.due.pending.into(),
                        p.run.as_ref().map(|(r, _)| r.as_str()).into(),
                        p.slot.as_millis().into(),
                    ]);
                }
                $store::push_rows(&mut qb, rows);
                qb.push(") AS v WHERE board_items.id = v.column1 AND board_items.next_run_at = v.column3
                          AND board_items.schedule_state = 'active' RETURNING board_items.id");
                let moved: std::collections::HashSet<String> = qb
                    .build()
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>("id"))
                    .collect::<Result<_, _>>()?;
                plans.retain(|p| moved.contains(&p.due.item_id) && !p.fired_before);
                if plans.is_empty() {
                    tx.commit().await?;
                    return Ok(Vec::new());
                }

                // 2. Record the slots. A slot recorded before (a schedule set back onto a slot
                //    that already fired) is not fired again.
                let mut qb = QueryBuilder::<$db>::new(
                    "INSERT INTO board_slots (item_id, slot_at, deployment_id, outcome, run_id, message_id,
                       thread_id, node, fired_at) ",
                );
                let mut rows = Rows::new(9);
                for p in &plans {
                    rows.push([
                        p.due.item_id.as_str().into(),
                        p.slot.as_millis().into(),
                        p.due.dep.as_str().into(),
                        if p.run.is_some() { SlotOutcome::Fired.as_str() } else { SlotOutcome::Skipped.as_str() }.into(),
                        p.run.as_ref().map(|(r, _)| r.as_str()).into(),
                        p.run.as_ref().map(|(_, m)| m.as_str()).into(),
                        p.due.thread_id.as_str().into(),
                        node.into(),
                        now.as_millis().into(),
                    ]);
                }
                $store::push_rows(&mut qb, rows);
                qb.push(" ON CONFLICT (item_id, slot_at) DO NOTHING RETURNING item_id");
                let recorded: std::collections::HashSet<String> = qb
                    .build()
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>("item_id"))
                    .collect::<Result<_, _>>()?;
                let mut stale = Vec::new();
                plans.retain(|p| {
                    let keep = recorded.contains(&p.due.item_id);
                    if !keep {
                        if let Some((run, _)) = &p.run {
                            stale.push((p.due.item_id.clone(), run.as_str().to_owned()));
                        }
                    }
                    keep
                });
                // The move named a run that will not exist: the item keeps its previous run.
                for (item, run) in &stale {
                    sqlx::query("UPDATE board_items SET last_run_id = NULL WHERE id = $1 AND last_run_id = $2")
                        .bind(item)
                        .bind(run)
                        .execute(&mut *tx)
                        .await?;
                }

                // 3. Two event numbers per fired slot on its thread (message.created, run.status).
                let mut per_thread: std::collections::BTreeMap<&str, i64> = std::collections::BTreeMap::new();
                for p in plans.iter().filter(|p| p.run.is_some()) {
                    *per_thread.entry(p.due.thread_id.as_str()).or_default() += 2;
                }
                let mut next_seq: HashMap<String, i64> = HashMap::new();
                if !per_thread.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new(
                        "UPDATE threads SET last_seq = threads.last_seq + v.column2, updated_at = ",
                    );
                    qb.push_bind(now.as_millis());
                    qb.push(" FROM (");
                    let mut rows = Rows::new(2);
                    for (thread, n) in &per_thread {
                        rows.push([(*thread).into(), (*n).into()]);
                    }
                    $store::push_rows(&mut qb, rows);
                    // A closed session (thread) takes no message, as in `submit_run`: its slots
                    // fail like those of a thread that is gone.
                    qb.push(
                        ") AS v WHERE threads.id = v.column1 AND threads.closed_at IS NULL
                         RETURNING threads.id, threads.last_seq",
                    );
                    for row in qb.build().fetch_all(&mut *tx).await? {
                        let thread: String = row.try_get("id")?;
                        let last: i64 = row.try_get("last_seq")?;
                        let n = per_thread.get(thread.as_str()).copied().unwrap_or_default();
                        next_seq.insert(thread, last - n + 1);
                    }
                }

                // 4. The fired slots' messages, runs and events (what `submit_run` stores with
                //    the `enqueue` policy); a slot whose thread is gone or closed is marked failed.
                let mut claimed = Vec::with_capacity(plans.len());
                let mut messages = Vec::new();
                let mut events: Vec<(String, ThreadEvent)> = Vec::new();
                for p in plans {
                    let thread = parse_id(p.due.thread_id.clone(), ThreadId::parse)?;
                    let mut outcome = if p.run.is_some() { SlotOutcome::Fired } else { SlotOutcome::Skipped };
                    let mut slot_events = Vec::new();
                    if let Some((run_id, message_id)) = &p.run {
                        match next_seq.get_mut(&p.due.thread_id) {
                            Some(seq) => {
                                let message = Message {
                                    id: message_id.clone(),
                                    thread_id: thread.clone(),
                                    run_id: Some(run_id.clone()),
                                    role: Role::User,
                                    content: p.due.description.clone(),
                                    tool_calls: Vec::new(),
                                    tool_call_id: None,
                                    tool_name: None,
                                    is_error: false,
                                    attachments: Vec::new(),
                                    usage: None,
                                    created_at: now,
                                };
                                let run = Run {
                                    id: run_id.clone(),
                                    thread_id: thread.clone(),
                                    status: RunStatus::Queued,
                                    attempt: 0,
                                    input_message_id: message_id.clone(),
                                    stop_reason: None,
                                    error: None,
                                    usage: Default::default(),
                                    cancel_requested: false,
                                    created_at: now,
                                    started_at: None,
                                    finished_at: None,
                                };
                                for ev in [event::message_event(event::MESSAGE_CREATED, &message), event::run_status_event(&run)] {
                                    let stored = ThreadEvent {
                                        thread_id: thread.clone(),
                                        seq: *seq,
                                        run_id: Some(run_id.clone()),
                                        kind: ev.kind.to_owned(),
                                        data: ev.data,
                                        created_at: now,
                                    };
                                    *seq += 1;
                                    events.push((p.due.dep.clone(), stored.clone()));
                                    slot_events.push(stored);
                                }
                                messages.push((p.due.dep.clone(), message));
                            }
                            None => {
                                outcome = SlotOutcome::Failed;
                                sqlx::query(
                                    "UPDATE board_slots SET outcome = 'failed', error = 'the item''s thread no longer exists or its session was closed'
                                     WHERE item_id = $1 AND slot_at = $2",
                                )
                                .bind(&p.due.item_id)
                                .bind(p.slot.as_millis())
                                .execute(&mut *tx)
                                .await?;
                                sqlx::query("UPDATE board_items SET last_run_id = NULL WHERE id = $1 AND last_run_id = $2")
                                    .bind(&p.due.item_id)
                                    .bind(run_id.as_str())
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                    }
                    claimed.push(SlotRecord {
                        scope: Scope::deployment(parse_id(p.due.dep, DeploymentId::parse)?),
                        item_id: parse_id(p.due.item_id, BoardItemId::parse)?,
                        slot_at: p.slot,
                        outcome,
                        thread_id: thread,
                        run_id: p.run.as_ref().map(|(r, _)| r.clone()),
                        message_id: p.run.as_ref().map(|(_, m)| m.clone()),
                        description: p.due.description,
                        node: node.to_owned(),
                        fired_at: now,
                        events: slot_events,
                    });
                }
                if !messages.is_empty() {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO messages (id, deployment_id, thread_id, run_id, role, content, tool_calls,
                           tool_call_id, tool_name, is_error, attachments, usage, step_key, created_at) ",
                    );
                    let mut rows = Rows::new(14);
                    for (dep, m) in &messages {
                        rows.push([
                            m.id.as_str().into(),
                            dep.as_str().into(),
                            m.thread_id.as_str().into(),
                            m.run_id.as_ref().map(|r| r.as_str()).into(),
                            "user".into(),
                            m.content.as_str().into(),
                            "[]".into(),
                            None::<&str>.into(),
                            None::<&str>.into(),
                            0i64.into(),
                            "[]".into(),
                            None::<&str>.into(),
                            None::<&str>.into(),
                            now.as_millis().into(),
                        ]);
                    }
                    $store::push_rows(&mut qb, rows);
                    qb.build().execute(&mut *tx).await?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO runs (id, deployment_id, thread_id, status, input_message_id, created_at) ",
                    );
                    let mut rows = Rows::new(6);
                    for (dep, m) in &messages {
                        rows.push([
                            m.run_id.as_ref().map(|r| r.as_str()).into(),
                            dep.as_str().into(),
                            m.thread_id.as_str().into(),
                            "queued".into(),
                            m.id.as_str().into(),
                            now.as_millis().into(),
                        ]);
                    }
                    $store::push_rows(&mut qb, rows);
                    qb.build().execute(&mut *tx).await?;
                    let data = events
                        .iter()
                        .map(|(_, e)| serde_json::to_string(&e.data).map_err(|err| corrupt("event data", err)))
                        .collect::<StoreResult<Vec<_>>>()?;
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO thread_events (thread_id, seq, deployment_id, run_id, kind, data, created_at) ",
                    );
                    let mut rows = Rows::new(7);
                    for ((dep, e), data) in events.iter().zip(data) {
                        rows.push([
                            e.thread_id.as_str().into(),
                            e.seq.into(),
                            dep.as_str().into(),
                            e.run_id.as_ref().map(|r| r.as_str()).into(),
                            e.kind.as_str().into(),
                            data.into(),
                            now.as_millis().into(),
                        ]);
                    }
                    $store::push_rows(&mut qb, rows);
                    qb.build().execute(&mut *tx).await?;
                    let threads: std::collections::BTreeSet<&ThreadId> = messages.iter().map(|(_, m)| &m.thread_id).collect();
                    let mut wake = vec![Notification::Runs];
                    wake.extend(threads.into_iter().map(|t| Notification::ThreadEvents(t.clone())));
                    self.notify_many(&mut tx, &wake).await?;
                }
                tx.commit().await?;
                Ok(claimed)
            }
        }

        #[async_trait::async_trait]
        impl $crate::WorkspaceStore for $store {
            async fn prune_orphan_chunks(&self, before: Timestamp) -> StoreResult<u64> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query(
                    "DELETE FROM blob_chunks WHERE blob_id IN (
                       SELECT c.blob_id FROM blob_chunks c
                       WHERE NOT EXISTS (SELECT 1 FROM workspace_files f WHERE f.blob_id = c.blob_id)
                       GROUP BY c.blob_id HAVING MAX(c.created_at) < $1)",
                )
                .bind(before.as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            async fn put_blob_chunk(&self, scope: &Scope, blob_id: &BlobId, index: u32, data: &[u8]) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "INSERT INTO blob_chunks (blob_id, idx, deployment_id, data, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(blob_id.as_str())
                .bind(i64::from(index))
                .bind(scope.deployment_id().as_str())
                .bind(data)
                .bind(Timestamp::now().as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn commit_file(&self, scope: &Scope, workspace: &WorkspaceId, file: &NewFile) -> StoreResult<FileMeta> {
                let dep = scope.deployment_id().as_str();
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                // A path is a file or a directory, never both. The checks and the write are one
                // step for the workspace: concurrent commits to it take their turns.
                self.lock_workspace(&mut tx, workspace.as_str()).await?;
                let path = file.path.as_str();
                let below = sqlx::query(
                    "SELECT 1 FROM workspace_files
                     WHERE deployment_id = $1 AND workspace_id = $2 AND substr(path, 1, $3) = $4 LIMIT 1",
                )
                .bind(dep)
                .bind(workspace.as_str())
                .bind(file.path.dir_prefix().chars().count() as i32)
                .bind(file.path.dir_prefix())
                .fetch_optional(&mut *tx)
                .await?;
                if below.is_some() {
                    return Err(StoreError::Conflict(Conflict::PathIsDirectory));
                }
                let parents: Vec<&str> = path.match_indices('/').filter(|&(i, _)| i > 0).map(|(i, _)| &path[..i]).collect();
                if !parents.is_empty() {
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT 1 FROM workspace_files WHERE deployment_id = ");
                    qb.push_bind(dep).push(" AND workspace_id = ").push_bind(workspace.as_str()).push(" AND path IN (");
                    let mut list = qb.separated(", ");
                    for parent in &parents {
                        list.push_bind(*parent);
                    }
                    qb.push(") LIMIT 1");
                    if qb.build().fetch_optional(&mut *tx).await?.is_some() {
                        return Err(StoreError::Conflict(Conflict::PathUnderFile));
                    }
                }
                let old = sqlx::query(&format!(
                    "SELECT blob_id FROM workspace_files WHERE deployment_id = $1 AND workspace_id = $2 AND path = $3{}",
                    Self::ROW_LOCK
                ))
                .bind(dep)
                .bind(workspace.as_str())
                .bind(file.path.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO workspace_files (deployment_id, workspace_id, path, blob_id, size, chunks,
                       mime_type, sha256, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                     ON CONFLICT (deployment_id, workspace_id, path) DO UPDATE SET
                       blob_id = EXCLUDED.blob_id, size = EXCLUDED.size, chunks = EXCLUDED.chunks,
                       mime_type = EXCLUDED.mime_type, sha256 = EXCLUDED.sha256, updated_at = EXCLUDED.updated_at
                     RETURNING {FILE_COLS}"
                ))
                .bind(dep)
                .bind(workspace.as_str())
                .bind(file.path.as_str())
                .bind(file.blob_id.as_str())
                .bind(file.size as i64)
                .bind(i64::from(file.chunks))
                .bind(file.mime_type.as_str())
                .bind(file.sha256.as_str())
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                if let Some(old) = old {
                    let old: String = old.try_get("blob_id")?;
                    if old != file.blob_id.as_str() {
                        sqlx::query("DELETE FROM blob_chunks WHERE blob_id = $1 AND deployment_id = $2")
                            .bind(old)
                            .bind(dep)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                let meta = file_from_row(&row)?;
                tx.commit().await?;
                Ok(meta)
            }

            async fn discard_blob(&self, scope: &Scope, blob_id: &BlobId) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                // Never the chunks of a committed file: a commit whose answer was lost (the
                // connection dropped after COMMIT) looks failed to the uploader, which discards.
                sqlx::query(
                    "DELETE FROM blob_chunks WHERE blob_id = $1 AND deployment_id = $2
                       AND NOT EXISTS (SELECT 1 FROM workspace_files f WHERE f.blob_id = $1 AND f.deployment_id = $2)",
                )
                .bind(blob_id.as_str())
                .bind(scope.deployment_id().as_str())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn get_file(&self, scope: &Scope, workspace: &WorkspaceId, path: &WorkspacePath) -> StoreResult<FileMeta> {
                let row = sqlx::query(&format!(
                    "SELECT {FILE_COLS} FROM workspace_files WHERE deployment_id = $1 AND workspace_id = $2 AND path = $3"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(workspace.as_str())
                .bind(path.as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found_at(Entity::File, "path"))?;
                file_from_row(&row)
            }

            async fn read_blob_chunk(&self, scope: &Scope, blob_id: &BlobId, index: u32) -> StoreResult<Vec<u8>> {
                let row = sqlx::query("SELECT data FROM blob_chunks WHERE blob_id = $1 AND idx = $2 AND deployment_id = $3")
                    .bind(blob_id.as_str())
                    .bind(i64::from(index))
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::not_found_at(Entity::File, "path"))?;
                Ok(row.try_get("data")?)
            }

            async fn list_files(&self, scope: &Scope, workspace: &WorkspaceId, dir: &WorkspacePath, limit: u32) -> StoreResult<Vec<FileMeta>> {
                // Paths below `dir` start with its prefix; compared as a substring rather than
                // with LIKE (whose wildcards a path may contain) or a range (collation-dependent).
                let prefix = dir.dir_prefix();
                let rows = sqlx::query(&format!(
                    "SELECT {FILE_COLS} FROM workspace_files
                     WHERE deployment_id = $1 AND workspace_id = $2 AND substr(path, 1, $3) = $4
                     ORDER BY path LIMIT $5"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(workspace.as_str())
                .bind(prefix.chars().count() as i32)
                .bind(&prefix)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(file_from_row).collect()
            }
        }
    }
    };
}

pub(crate) use impl_board_sql;
