//! SQL for session management — closing sessions, context variables, pending actions, pool
//! routing and usage — shared by both backends like `sql_runs.rs`.
//!
//! Decisions on a pending action are single conditional updates (`… WHERE status = 'pending'`),
//! so of concurrent decisions (two requests, or a request and the expiry scheduler of any node)
//! exactly one takes effect. A paused run has no lease holder; when its last open action is
//! decided it becomes `running` with an expired lease, which any worker claims at once.

pub(crate) const ACTION_COLS: &str =
    "id, thread_id, run_id, call_id, tool, kind, preview, status, expires_at, callback_id, result, \
     created_at, decided_at";

macro_rules! impl_session_sql {
    ($store:ident, $db:ty) => {
    /// Session management SQL, instantiated for this backend.
    mod session_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::Row as _;
        use tessera_domain::event::{self, NewEvent};
        use tessera_domain::session::{
            self as session, ActionKind, ActionStatus, NewAction, PendingAction, SessionClose,
            SessionState, UsageGroup, UsageRow, VariablePatch, Variables,
        };
        use tessera_domain::thread::Run;
        use tessera_domain::{
            ActionId, AgentId, CallbackId, RunId, Scope, ThreadId, Timestamp,
        };
        use $crate::sql::corrupt;
        use $crate::sql_runs::{RunLock, MESSAGE_COLS, OPEN_STATUSES, RUN_COLS};
        use $crate::sql_sessions::ACTION_COLS;
        use $crate::{
            Conflict, Entity, IdempotentWrite, Lease, Notification, ResponseView, StoreError,
            StoreResult, ThreadEvent, Written,
        };
        use super::run_sql::{
            append, json, lock_open_runs, message_from_row, record_answer, run_from_row, take_key, to_json,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn parse_id<T>(raw: String, parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>) -> StoreResult<T> {
            parse(&raw).map_err(|e| corrupt("id", e))
        }

        fn action_from_row(row: &DbRow) -> StoreResult<PendingAction> {
            let status: String = row.try_get("status")?;
            let kind: String = row.try_get("kind")?;
            let preview: String = row.try_get("preview")?;
            let callback: Option<String> = row.try_get("callback_id")?;
            let decided: Option<i64> = row.try_get("decided_at")?;
            Ok(PendingAction {
                id: parse_id(row.try_get("id")?, ActionId::parse)?,
                thread_id: parse_id(row.try_get("thread_id")?, ThreadId::parse)?,
                run_id: parse_id(row.try_get("run_id")?, RunId::parse)?,
                call_id: row.try_get("call_id")?,
                tool: row.try_get("tool")?,
                kind: ActionKind::parse(&kind).ok_or_else(|| corrupt("action kind", &kind))?,
                preview: json("action preview", &preview)?,
                status: ActionStatus::parse(&status).ok_or_else(|| corrupt("action status", &status))?,
                expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
                callback_id: callback.map(|c| parse_id(c, CallbackId::parse)).transpose()?,
                result: row.try_get("result")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                decided_at: decided.map(Timestamp::from_millis),
            })
        }

        fn resolved_event(a: &PendingAction) -> NewEvent {
            NewEvent { kind: session::PENDING_ACTION_RESOLVED, data: serde_json::json!({ "action": session::action_json(a) }) }
        }

        /// `pending_action.resolved` events of those of `actions` that are pending actions:
        /// `ask_user` questions are not (their outcome reaches the stream as the call's
        /// `tool.completed`).
        fn resolved_events<'a>(actions: impl IntoIterator<Item = &'a PendingAction>) -> Vec<NewEvent> {
            actions.into_iter().filter(|a| a.kind == ActionKind::Confirmation).map(resolved_event).collect()
        }

        /// The `tool.started` event of an `ask_user` question: the call, with the question, the
        /// choices and until when it can be answered.
        fn question_event(a: &PendingAction) -> NewEvent {
            NewEvent {
                kind: event::TOOL_STARTED,
                data: serde_json::json!({
                    "run_id": a.run_id.as_str(),
                    "call_id": a.call_id,
                    "name": a.tool,
                    "arguments": a.preview,
                    "question": a.preview.get("question"),
                    "choices": a.preview.get("choices"),
                    "expires_at": a.expires_at.to_rfc3339(),
                }),
            }
        }

        /// Answers the oldest open `ask_user` question of the thread's paused run with a
        /// person's message (inside the caller's transaction, which holds the thread): the
        /// question is completed with the answer as its result (see
        /// [`session::question_answer`]) and, when nothing else of the run waits, the run
        /// resumes. Returns the run, or `None` when no question is open (or it expired).
        ///
        /// A question locked by another transaction is skipped (PostgreSQL): the expiry sweep
        /// and a cancellation take a question's row before its thread's, which this caller
        /// holds, so waiting for the question here would deadlock. The question is being
        /// expired or cancelled: the message is handled as one sent just after that.
        pub(super) async fn answer_question(conn: &mut Conn, thread_id: &str, answer: &str, now: Timestamp) -> StoreResult<Option<RunId>> {
            let row = sqlx::query(&format!(
                "SELECT {ACTION_COLS} FROM pending_actions
                 WHERE thread_id = $1 AND kind = 'question' AND status = 'pending' AND expires_at > $2
                   AND run_id = (SELECT active_run_id FROM threads WHERE id = $1)
                 ORDER BY id LIMIT 1{}",
                $store::CLAIM_LOCK
            ))
            .bind(thread_id)
            .bind(now.as_millis())
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let question = action_from_row(&row)?;
            let answered = sqlx::query(
                "UPDATE pending_actions SET status = 'completed', result = $1, decided_at = $2
                 WHERE id = $3 AND status = 'pending'",
            )
            .bind(session::question_answer(&question.preview, answer))
            .bind(now.as_millis())
            .bind(question.id.as_str())
            .execute(&mut *conn)
            .await?;
            if answered.rows_affected() == 0 {
                return Ok(None);
            }
            resume_if_decided(conn, question.run_id.as_str()).await?;
            Ok(Some(question.run_id))
        }

        /// Checks the lease inside the transaction; returns the run's deployment and thread.
        async fn fence(conn: &mut Conn, lease: &Lease) -> StoreResult<(String, String)> {
            let row = sqlx::query(
                "UPDATE runs SET attempt = attempt WHERE id = $1 AND attempt = $2 AND status = 'running'
                 RETURNING deployment_id, thread_id",
            )
            .bind(lease.run_id.as_str())
            .bind(lease.attempt)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::LeaseLost)?;
            Ok((row.try_get("deployment_id")?, row.try_get("thread_id")?))
        }

        /// Hands a paused run back to the workers: it becomes `running` with an expired lease.
        async fn wake_paused(conn: &mut Conn, run_id: &str) -> StoreResult<bool> {
            let done = sqlx::query(
                "UPDATE runs SET status = 'running', lease_owner = NULL, lease_expires_at = 0
                 WHERE id = $1 AND status = 'waiting_for_input'",
            )
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            sqlx::query("UPDATE threads SET status = 'running' WHERE active_run_id = $1")
                .bind(run_id)
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }

        /// A paused run asked to stop: its open actions are cancelled and a worker takes it to
        /// its end (which records its usage). Used by cancellation and interruption. Returns
        /// whether the run was paused, and a `pending_action.resolved` event for each action
        /// cancelled here, for the caller to append (it numbers the transaction's events).
        pub(super) async fn release_paused_run(conn: &mut Conn, run_id: &RunId) -> StoreResult<(bool, Vec<NewEvent>)> {
            let cancelled = sqlx::query(&format!(
                "UPDATE pending_actions SET status = 'cancelled', decided_at = $1
                 WHERE run_id = $2 AND status = 'pending' RETURNING {ACTION_COLS}"
            ))
            .bind(Timestamp::now().as_millis())
            .bind(run_id.as_str())
            .fetch_all(&mut *conn)
            .await?;
            let actions = cancelled.iter().map(action_from_row).collect::<StoreResult<Vec<_>>>()?;
            let mut events = resolved_events(&actions);
            // RETURNING order is unspecified: the events follow the actions' order.
            events.sort_by(|a, b| a.data["action"]["action_id"].as_str().cmp(&b.data["action"]["action_id"].as_str()));
            Ok((wake_paused(conn, run_id.as_str()).await?, events))
        }

        /// Resumes a paused run once none of its actions waits for a decision.
        ///
        /// Two decisions on one run (an `ask_user` answer and a confirmation, two confirmations,
        /// an expiry and either) may commit concurrently on PostgreSQL; each must see the other
        /// when it counts, or both see one still open and nobody resumes the run, which then
        /// waits forever. So the run's thread row is locked before counting: every decision
        /// takes it (an answer holds it from its first statement, the others took it after
        /// their action row already), and a count made after the lock wait sees the decision
        /// that held it.
        async fn resume_if_decided(conn: &mut Conn, run_id: &str) -> StoreResult<bool> {
            sqlx::query(
                "UPDATE threads SET last_seq = last_seq
                 WHERE id = (SELECT thread_id FROM runs WHERE id = $1)",
            )
            .bind(run_id)
            .execute(&mut *conn)
            .await?;
            let open: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM pending_actions WHERE run_id = $1 AND status = 'pending'",
            )
            .bind(run_id)
            .fetch_one(&mut *conn)
            .await?
            .try_get("n")?;
            if open > 0 {
                return Ok(false);
            }
            wake_paused(conn, run_id).await
        }

        async fn state_of(conn: &mut Conn, dep: &str, thread_id: &ThreadId, lock: &str) -> StoreResult<(SessionState, i64)> {
            let row = sqlx::query(&format!(
                "SELECT closed_at, close_duration_seconds, billable, context_variables, requested_variables, created_at
                 FROM threads WHERE id = $1 AND deployment_id = $2{lock}"
            ))
            .bind(thread_id.as_str())
            .bind(dep)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found(Entity::Thread))?;
            let closed_at: Option<i64> = row.try_get("closed_at")?;
            let vars: String = row.try_get("context_variables")?;
            let requested: String = row.try_get("requested_variables")?;
            let closed = match closed_at {
                Some(at) => Some(SessionClose {
                    thread_id: thread_id.clone(),
                    closed_at: Timestamp::from_millis(at),
                    duration_seconds: row.try_get::<Option<i64>, _>("close_duration_seconds")?.unwrap_or(0),
                    billable: row.try_get::<Option<i64>, _>("billable")?.unwrap_or(0) != 0,
                }),
                None => None,
            };
            Ok((
                SessionState {
                    closed,
                    variables: json::<Variables>("context_variables", &vars)?,
                    requested_variables: json("requested_variables", &requested)?,
                },
                row.try_get("created_at")?,
            ))
        }

        /// Merges `patch` into a session's variables inside the caller's transaction (`lock`:
        /// the row lock clause, empty when the caller holds the row already). A closed session
        /// is [`Conflict::SessionClosed`], a result over the limits [`StoreError::Invalid`]:
        /// the caller then rolls back, and nothing changes. Returns `(changed, total)`.
        pub(super) async fn merge_variables(conn: &mut Conn, dep: &str, thread_id: &ThreadId, patch: &VariablePatch, lock: &str) -> StoreResult<(usize, usize)> {
            let (state, _) = state_of(conn, dep, thread_id, lock).await?;
            if state.closed.is_some() {
                return Err(StoreError::Conflict(Conflict::SessionClosed));
            }
            let (merged, changed) = patch.apply("context_variables", &state.variables).map_err(StoreError::Invalid)?;
            let requested: Vec<&String> = state.requested_variables.iter().filter(|n| !merged.contains_key(n.as_str())).collect();
            sqlx::query("UPDATE threads SET context_variables = $1, requested_variables = $2, updated_at = $3 WHERE id = $4")
                .bind(to_json("context_variables", &merged)?)
                .bind(to_json("requested_variables", &requested)?)
                .bind(Timestamp::now().as_millis())
                .bind(thread_id.as_str())
                .execute(&mut *conn)
                .await?;
            Ok((changed, merged.len()))
        }

        /// Final outcomes of a thread's actions as a response shows them.
        async fn results_for(conn: &mut Conn, thread_id: &str, run_id: &str) -> StoreResult<Vec<PendingAction>> {
            let rows = sqlx::query(&format!(
                "SELECT {ACTION_COLS} FROM pending_actions
                 WHERE thread_id = $1 AND (reported_in = $2 OR run_id = $2) AND kind = 'confirmation'
                   AND status IN ('completed', 'failed', 'cancelled', 'expired')
                 ORDER BY id"
            ))
            .bind(thread_id)
            .bind(run_id)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(action_from_row).collect()
        }

        impl $store {
            /// `resolve_action`, under `key` when one is given (taken before the action is read).
            async fn do_resolve_action(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                action_id: &ActionId,
                confirmed: bool,
                now: Timestamp,
                key: Option<&IdempotentWrite<'_, PendingAction>>,
            ) -> StoreResult<Written<(PendingAction, Vec<ThreadEvent>)>> {
                // Deadlocks with a cancellation or a close on PostgreSQL are possible (see
                // `retry_transient`): the aborted transaction runs again.
                $crate::retry_transient(|| async move {
                    let dep = scope.deployment_id().as_str();
                    let mut tx = self.begin_write().await?;
                    if let Some(key) = key {
                        if let Some(first) = take_key(&mut tx, dep, key).await? {
                            return Ok(Written::Replayed(first));
                        }
                    }
                    let row = sqlx::query(&format!(
                        "SELECT {ACTION_COLS} FROM pending_actions
                         WHERE id = $1 AND thread_id = $2 AND deployment_id = $3 AND kind = 'confirmation'{}",
                        Self::ROW_LOCK
                    ))
                    .bind(action_id.as_str())
                    .bind(thread_id.as_str())
                    .bind(dep)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::not_found(Entity::Action))?;
                    let current = action_from_row(&row)?;
                    let refusal = |a: &PendingAction| match a.status {
                        ActionStatus::Expired => StoreError::Conflict(Conflict::ActionExpired),
                        ActionStatus::Pending if a.expires_at <= now => StoreError::Conflict(Conflict::ActionExpired),
                        _ => StoreError::Conflict(Conflict::ActionDecided),
                    };
                    if current.status != ActionStatus::Pending || current.expires_at <= now {
                        return Err(refusal(&current));
                    }
                    let (status, callback) = if confirmed {
                        ("confirmed", Some(CallbackId::generate_at(now).into_string()))
                    } else {
                        ("cancelled", None)
                    };
                    // The decision itself: only a still-pending, unexpired action changes.
                    let updated = sqlx::query(&format!(
                        "UPDATE pending_actions SET status = $1, callback_id = $2, decided_at = $3
                         WHERE id = $4 AND status = 'pending' AND expires_at > $3 RETURNING {ACTION_COLS}"
                    ))
                    .bind(status)
                    .bind(callback)
                    .bind(now.as_millis())
                    .bind(action_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(row) = updated else {
                        return Err(refusal(&current));
                    };
                    let action = action_from_row(&row)?;
                    resume_if_decided(&mut tx, action.run_id.as_str()).await?;
                    let stored = append(&mut tx, dep, thread_id.as_str(), Some(action.run_id.as_str()), &[resolved_event(&action)]).await?;
                    self.notify(&mut tx, &Notification::Runs).await?;
                    self.notify(&mut tx, &Notification::ThreadEvents(thread_id.clone())).await?;
                    if let Some(key) = key {
                        record_answer(&mut tx, dep, key, &action).await?;
                    }
                    tx.commit().await?;
                    Ok(Written::Done((action, stored)))
                })
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::SessionStore for $store {
            async fn session_state(&self, scope: &Scope, thread_id: &ThreadId) -> StoreResult<SessionState> {
                let mut conn = self.reader().acquire().await?;
                Ok(state_of(&mut conn, scope.deployment_id().as_str(), thread_id, "").await?.0)
            }

            async fn update_variables(&self, scope: &Scope, thread_id: &ThreadId, patch: &VariablePatch) -> StoreResult<(usize, usize)> {
                let mut tx = self.begin_write().await?;
                let done = merge_variables(&mut tx, scope.deployment_id().as_str(), thread_id, patch, Self::ROW_LOCK).await?;
                tx.commit().await?;
                Ok(done)
            }

            async fn close_session(&self, scope: &Scope, thread_id: &ThreadId, now: Timestamp) -> StoreResult<(SessionClose, Vec<RunId>, Vec<ThreadEvent>)> {
                // A close races the thread's worker: see `retry_transient`.
                $crate::retry_transient(|| async move {
                    let dep = scope.deployment_id().as_str();
                    let mut tx = self.begin_write().await?;
                    // The open runs are stopped below: lock them before the thread.
                    lock_open_runs(&mut tx, dep, thread_id.as_str(), Self::ROW_LOCK, RunLock::First).await?;
                    let (state, created_at) = state_of(&mut tx, dep, thread_id, Self::ROW_LOCK).await?;
                    if let Some(closed) = state.closed {
                        return Ok((closed, Vec::new(), Vec::new()));
                    }
                    lock_open_runs(&mut tx, dep, thread_id.as_str(), Self::ROW_LOCK, RunLock::Recheck).await?;
                    let answered: i64 = sqlx::query(
                        "SELECT COUNT(*) AS n FROM messages WHERE thread_id = $1 AND role = 'assistant' AND content <> ''",
                    )
                    .bind(thread_id.as_str())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                    let record = SessionClose {
                        thread_id: thread_id.clone(),
                        closed_at: now,
                        duration_seconds: ((now.as_millis() - created_at) / 1000).max(0),
                        billable: answered > 0,
                    };
                    sqlx::query(
                        "UPDATE threads SET closed_at = $1, close_duration_seconds = $2, billable = $3, updated_at = $1 WHERE id = $4",
                    )
                    .bind(now.as_millis())
                    .bind(record.duration_seconds)
                    .bind(i64::from(record.billable))
                    .bind(thread_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                    let mut events: Vec<(Option<String>, NewEvent)> = vec![(None, NewEvent {
                        kind: session::SESSION_CLOSED,
                        data: serde_json::json!({
                            "thread_id": thread_id.as_str(),
                            "closed_at": now.to_rfc3339(),
                            "duration_seconds": record.duration_seconds,
                            "billable": record.billable,
                        }),
                    })];
                    // Open actions are cancelled (each with its event) before their runs stop.
                    let cancelled = sqlx::query(&format!(
                        "UPDATE pending_actions SET status = 'cancelled', decided_at = $1
                         WHERE thread_id = $2 AND status = 'pending' RETURNING {ACTION_COLS}"
                    ))
                    .bind(now.as_millis())
                    .bind(thread_id.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
                    for row in &cancelled {
                        let a = action_from_row(row)?;
                        if a.kind == ActionKind::Confirmation {
                            events.push((Some(a.run_id.to_string()), resolved_event(&a)));
                        }
                    }
                    let open = sqlx::query(&format!(
                        "SELECT {RUN_COLS} FROM runs WHERE thread_id = $1 AND status IN {OPEN_STATUSES} ORDER BY id"
                    ))
                    .bind(thread_id.as_str())
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut to_stop = Vec::new();
                    for row in &open {
                        let run: Run = run_from_row(row)?;
                        if run.status == tessera_domain::thread::RunStatus::Queued {
                            let row = sqlx::query(&format!(
                                "UPDATE runs SET status = 'cancelled', stop_reason = 'cancelled', cancel_requested = 1,
                                   finished_at = $1 WHERE id = $2 RETURNING {RUN_COLS}"
                            ))
                            .bind(now.as_millis())
                            .bind(run.id.as_str())
                            .fetch_one(&mut *tx)
                            .await?;
                            let run = run_from_row(&row)?;
                            events.push((Some(run.id.to_string()), event::run_status_event(&run)));
                        } else {
                            sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1")
                                .bind(run.id.as_str())
                                .execute(&mut *tx)
                                .await?;
                            wake_paused(&mut tx, run.id.as_str()).await?;
                            self.notify(&mut tx, &Notification::CancelRun(run.id.clone())).await?;
                            to_stop.push(run.id);
                        }
                    }
                    let mut stored = Vec::new();
                    for (run_id, e) in &events {
                        stored.extend(append(&mut tx, dep, thread_id.as_str(), run_id.as_deref(), std::slice::from_ref(e)).await?);
                    }
                    self.notify(&mut tx, &Notification::Runs).await?;
                    self.notify(&mut tx, &Notification::ThreadEvents(thread_id.clone())).await?;
                    tx.commit().await?;
                    Ok((record, to_stop, stored))
                })
                .await
            }

            async fn pause_run(&self, lease: &Lease, actions: &[NewAction]) -> StoreResult<(Vec<PendingAction>, Vec<ThreadEvent>)> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE runs SET status = 'waiting_for_input', lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = $1 AND attempt = $2 AND status = 'running'
                     RETURNING deployment_id, {RUN_COLS}"
                ))
                .bind(lease.run_id.as_str())
                .bind(lease.attempt)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::LeaseLost)?;
                let run = run_from_row(&row)?;
                let dep: String = row.try_get("deployment_id")?;
                let mut events = Vec::new();
                for a in actions {
                    let warn_at = session::expiring_warning_at(now, a.expires_at).as_millis();
                    // A question gets no `pending_action.expiring` warning: marked sent.
                    let warned = i64::from(a.kind == ActionKind::Question);
                    let inserted = sqlx::query(&format!(
                        "INSERT INTO pending_actions (id, deployment_id, thread_id, run_id, call_id, tool, preview,
                           status, expires_at, warn_at, created_at, kind, warned)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $9, $10, $11, $12)
                         ON CONFLICT (run_id, call_id) DO NOTHING RETURNING {ACTION_COLS}"
                    ))
                    .bind(a.id.as_str())
                    .bind(&dep)
                    .bind(run.thread_id.as_str())
                    .bind(run.id.as_str())
                    .bind(&a.call_id)
                    .bind(&a.tool)
                    .bind(to_json("action preview", &a.preview)?)
                    .bind(a.expires_at.as_millis())
                    .bind(warn_at)
                    .bind(now.as_millis())
                    .bind(a.kind.as_str())
                    .bind(warned)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(row) = inserted {
                        let a = action_from_row(&row)?;
                        events.push(match a.kind {
                            ActionKind::Confirmation => NewEvent {
                                kind: session::PENDING_ACTION_CREATED,
                                data: serde_json::json!({ "action": session::action_json(&a) }),
                            },
                            ActionKind::Question => question_event(&a),
                        });
                    }
                }
                sqlx::query("UPDATE threads SET status = 'waiting_for_input' WHERE id = $1 AND active_run_id = $2")
                    .bind(run.thread_id.as_str())
                    .bind(run.id.as_str())
                    .execute(&mut *tx)
                    .await?;
                events.push(event::run_status_event(&run));
                // A cancellation that arrived while the run was pausing: a worker ends it.
                if run.cancel_requested {
                    events.extend(release_paused_run(&mut tx, &run.id).await?.1);
                }
                let stored = append(&mut tx, &dep, run.thread_id.as_str(), Some(run.id.as_str()), &events).await?;
                let rows = sqlx::query(&format!(
                    "SELECT {ACTION_COLS} FROM pending_actions WHERE run_id = $1 AND status = 'pending' ORDER BY id"
                ))
                .bind(run.id.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let pending = rows.iter().map(action_from_row).collect::<StoreResult<Vec<_>>>()?;
                self.notify(&mut tx, &Notification::Actions).await?;
                self.notify(&mut tx, &Notification::Runs).await?;
                self.notify(&mut tx, &Notification::ThreadEvents(run.thread_id.clone())).await?;
                tx.commit().await?;
                Ok((pending, stored))
            }

            async fn run_actions(&self, scope: &Scope, run_id: &RunId) -> StoreResult<Vec<PendingAction>> {
                let rows = sqlx::query(&format!(
                    "SELECT {ACTION_COLS} FROM pending_actions WHERE run_id = $1 AND deployment_id = $2 ORDER BY id"
                ))
                .bind(run_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(action_from_row).collect()
            }

            async fn start_action(&self, lease: &Lease, call_id: &str) -> StoreResult<PendingAction> {
                let mut tx = self.begin_write().await?;
                fence(&mut tx, lease).await?;
                let started = sqlx::query(&format!(
                    "UPDATE pending_actions SET status = 'executing'
                     WHERE run_id = $1 AND call_id = $2 AND status = 'confirmed' RETURNING {ACTION_COLS}"
                ))
                .bind(lease.run_id.as_str())
                .bind(call_id)
                .fetch_optional(&mut *tx)
                .await?;
                let action = match started {
                    Some(row) => PendingAction { status: ActionStatus::Confirmed, ..action_from_row(&row)? },
                    None => {
                        let row = sqlx::query(&format!(
                            "SELECT {ACTION_COLS} FROM pending_actions WHERE run_id = $1 AND call_id = $2"
                        ))
                        .bind(lease.run_id.as_str())
                        .bind(call_id)
                        .fetch_optional(&mut *tx)
                        .await?
                        .ok_or(StoreError::not_found(Entity::Action))?;
                        action_from_row(&row)?
                    }
                };
                tx.commit().await?;
                Ok(action)
            }

            async fn finish_action(&self, lease: &Lease, call_id: &str, result: &Result<String, String>) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                fence(&mut tx, lease).await?;
                let (status, text) = match result {
                    Ok(text) => ("completed", text),
                    Err(text) => ("failed", text),
                };
                sqlx::query(
                    "UPDATE pending_actions SET status = $1, result = $2
                     WHERE run_id = $3 AND call_id = $4 AND status = 'executing'",
                )
                .bind(status)
                .bind(text)
                .bind(lease.run_id.as_str())
                .bind(call_id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn settle_actions(&self, lease: &Lease, reason: &str) -> StoreResult<Vec<ThreadEvent>> {
                let mut tx = self.begin_write().await?;
                let (dep, thread_id) = fence(&mut tx, lease).await?;
                let now = Timestamp::now().as_millis();
                let rows = sqlx::query(&format!(
                    "UPDATE pending_actions SET
                       result = CASE WHEN status = 'executing'
                         THEN $1 || ': the tool was stopped midway and its outcome is unknown'
                         ELSE $1 || ': it was not executed' END,
                       status = CASE WHEN status = 'executing' THEN 'failed' ELSE 'cancelled' END,
                       decided_at = COALESCE(decided_at, $2)
                     WHERE run_id = $3 AND status IN ('pending', 'confirmed', 'executing')
                     RETURNING {ACTION_COLS}"
                ))
                .bind(reason)
                .bind(now)
                .bind(lease.run_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let mut actions = rows.iter().map(action_from_row).collect::<StoreResult<Vec<_>>>()?;
                actions.sort_by(|a, b| a.id.cmp(&b.id));
                let events = resolved_events(&actions);
                let stored = append(&mut tx, &dep, &thread_id, Some(lease.run_id.as_str()), &events).await?;
                if !stored.is_empty() {
                    self.notify(&mut tx, &Notification::ThreadEvents(parse_id(thread_id, ThreadId::parse)?)).await?;
                }
                tx.commit().await?;
                Ok(stored)
            }

            async fn resolve_action(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                action_id: &ActionId,
                confirmed: bool,
                now: Timestamp,
            ) -> StoreResult<(PendingAction, Vec<ThreadEvent>)> {
                match self.do_resolve_action(scope, thread_id, action_id, confirmed, now, None).await? {
                    Written::Done(done) => Ok(done),
                    Written::Replayed(_) => Err(StoreError::Corrupt("a decision without a key replayed".to_owned())),
                }
            }

            async fn resolve_action_once(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                action_id: &ActionId,
                confirmed: bool,
                now: Timestamp,
                key: &IdempotentWrite<'_, PendingAction>,
            ) -> StoreResult<Written<(PendingAction, Vec<ThreadEvent>)>> {
                self.do_resolve_action(scope, thread_id, action_id, confirmed, now, Some(key)).await
            }

            async fn expire_due_actions(&self, now: Timestamp) -> StoreResult<Vec<ThreadEvent>> {
                // Deadlocks with a cancellation or a close on PostgreSQL are possible (see
                // `retry_transient`): the aborted transaction runs again.
                $crate::retry_transient(|| async move {
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query(&format!(
                        "UPDATE pending_actions SET status = 'expired', decided_at = $1
                         WHERE status = 'pending' AND expires_at <= $1 RETURNING deployment_id, {ACTION_COLS}"
                    ))
                    .bind(now.as_millis())
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut stored = Vec::new();
                    for row in &rows {
                        let action = action_from_row(row)?;
                        let dep: String = row.try_get("deployment_id")?;
                        resume_if_decided(&mut tx, action.run_id.as_str()).await?;
                        stored.extend(append(&mut tx, &dep, action.thread_id.as_str(), Some(action.run_id.as_str()), &resolved_events([&action])).await?);
                        self.notify(&mut tx, &Notification::ThreadEvents(action.thread_id.clone())).await?;
                    }
                    if !rows.is_empty() {
                        self.notify(&mut tx, &Notification::Runs).await?;
                    }
                    tx.commit().await?;
                    Ok(stored)
                })
                .await
            }

            async fn warn_expiring_actions(&self, now: Timestamp) -> StoreResult<Vec<ThreadEvent>> {
                // Deadlocks with a cancellation or a close on PostgreSQL are possible (see
                // `retry_transient`): the aborted transaction runs again.
                $crate::retry_transient(|| async move {
                    let mut tx = self.begin_write().await?;
                    let rows = sqlx::query(&format!(
                        "UPDATE pending_actions SET warned = 1
                         WHERE status = 'pending' AND warned = 0 AND warn_at <= $1 AND kind = 'confirmation'
                         RETURNING deployment_id, {ACTION_COLS}"
                    ))
                    .bind(now.as_millis())
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut stored = Vec::new();
                    for row in &rows {
                        let action = action_from_row(row)?;
                        let dep: String = row.try_get("deployment_id")?;
                        let left = ((action.expires_at.as_millis() - now.as_millis()) / 1000).max(0);
                        let e = NewEvent {
                            kind: session::PENDING_ACTION_EXPIRING,
                            data: serde_json::json!({
                                "action_id": action.id.as_str(),
                                "expires_at": action.expires_at.to_rfc3339(),
                                "seconds_left": left,
                            }),
                        };
                        stored.extend(append(&mut tx, &dep, action.thread_id.as_str(), Some(action.run_id.as_str()), &[e]).await?);
                        self.notify(&mut tx, &Notification::ThreadEvents(action.thread_id.clone())).await?;
                    }
                    tx.commit().await?;
                    Ok(stored)
                })
                .await
            }

            async fn next_action_deadline(&self) -> StoreResult<Option<Timestamp>> {
                let next: Option<i64> = sqlx::query(
                    "SELECT MIN(CASE WHEN warned = 0 THEN warn_at ELSE expires_at END) AS next
                     FROM pending_actions WHERE status = 'pending'",
                )
                .fetch_one(self.reader())
                .await?
                .try_get("next")?;
                Ok(next.map(Timestamp::from_millis))
            }

            async fn request_variables(&self, lease: &Lease, names: &[String], reason: Option<&str>) -> StoreResult<Vec<ThreadEvent>> {
                let mut tx = self.begin_write().await?;
                let (dep, thread_id) = fence(&mut tx, lease).await?;
                let thread = parse_id(thread_id.clone(), ThreadId::parse)?;
                let (state, _) = state_of(&mut tx, &dep, &thread, "").await?;
                let mut requested = state.requested_variables;
                for n in names {
                    if !state.variables.contains_key(n) && !requested.contains(n) {
                        requested.push(n.clone());
                    }
                }
                sqlx::query("UPDATE threads SET requested_variables = $1 WHERE id = $2")
                    .bind(to_json("requested_variables", &requested)?)
                    .bind(&thread_id)
                    .execute(&mut *tx)
                    .await?;
                let e = NewEvent {
                    kind: session::VARIABLES_REQUESTED,
                    data: serde_json::json!({"run_id": lease.run_id.as_str(), "names": names, "reason": reason}),
                };
                let stored = append(&mut tx, &dep, &thread_id, Some(lease.run_id.as_str()), &[e]).await?;
                self.notify(&mut tx, &Notification::ThreadEvents(thread)).await?;
                tx.commit().await?;
                Ok(stored)
            }

            async fn pool_agents(&self, scope: &Scope, slug: &str) -> StoreResult<Vec<(AgentId, i64)>> {
                let rows = sqlx::query(&format!(
                    "SELECT a.id, (SELECT COUNT(*) FROM runs r JOIN threads t ON t.id = r.thread_id
                                   WHERE t.agent_id = a.id AND r.status IN {OPEN_STATUSES}) AS load
                     FROM agents a
                     WHERE a.deployment_id = $1 AND a.endpoint_slug = $2 AND a.deleted_at IS NULL ORDER BY a.id"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(slug)
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|r| Ok((parse_id(r.try_get("id")?, AgentId::parse)?, r.try_get::<i64, _>("load")?)))
                    .collect()
            }

            async fn response_view(&self, scope: &Scope, run_id: &RunId, claim_results: bool) -> StoreResult<ResponseView> {
                let dep = scope.deployment_id().as_str();
                let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1 AND deployment_id = $2"))
                    .bind(run_id.as_str())
                    .bind(dep)
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::not_found(Entity::Response))?;
                let run = run_from_row(&row)?;
                let thread = $crate::ThreadStore::get_thread(self, scope, &run.thread_id).await?;
                if claim_results {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "UPDATE pending_actions SET reported_in = $1
                         WHERE thread_id = $2 AND reported_in IS NULL AND kind = 'confirmation'
                           AND status IN ('completed', 'failed', 'cancelled', 'expired')",
                    )
                    .bind(run_id.as_str())
                    .bind(run.thread_id.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                }
                let mut conn = self.reader().acquire().await?;
                let answer = sqlx::query(&format!(
                    "SELECT {MESSAGE_COLS} FROM messages
                     WHERE run_id = $1 AND role = 'assistant' AND content <> '' ORDER BY id DESC LIMIT 1"
                ))
                .bind(run_id.as_str())
                .fetch_optional(&mut *conn)
                .await?
                .map(|r| message_from_row(&r))
                .transpose()?;
                let open = sqlx::query(&format!(
                    "SELECT {ACTION_COLS} FROM pending_actions WHERE run_id = $1 AND status = 'pending' ORDER BY id"
                ))
                .bind(run_id.as_str())
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(action_from_row)
                .collect::<StoreResult<Vec<_>>>()?;
                let (questions, pending) = open.into_iter().partition(|a| a.kind == ActionKind::Question);
                let action_results = results_for(&mut conn, run.thread_id.as_str(), run_id.as_str()).await?;
                let (session, _) = state_of(&mut conn, dep, &run.thread_id, "").await?;
                Ok(ResponseView { run, thread, answer, pending, questions, action_results, session })
            }

            async fn usage(&self, scope: &Scope, from: Timestamp, to: Timestamp, group: UsageGroup, now: Timestamp) -> StoreResult<Vec<UsageRow>> {
                let dep = scope.deployment_id().as_str();
                let key = |agent: String, actor: String, at: i64| match group {
                    UsageGroup::Agent => agent,
                    UsageGroup::Actor => actor,
                    UsageGroup::Day => Timestamp::from_millis(at - at.rem_euclid(86_400_000)).to_rfc3339()[..10].to_owned(),
                };
                let mut rows: std::collections::BTreeMap<String, UsageRow> = std::collections::BTreeMap::new();
                let sessions = sqlx::query(
                    "SELECT t.agent_id, t.actor_id, t.created_at, t.closed_at, t.close_duration_seconds, t.billable,
                       CAST(CASE WHEN EXISTS (SELECT 1 FROM messages m WHERE m.thread_id = t.id
                                              AND m.role = 'assistant' AND m.content <> '')
                            THEN 1 ELSE 0 END AS BIGINT) AS answered
                     FROM threads t WHERE t.deployment_id = $1 AND t.created_at >= $2 AND t.created_at < $3",
                )
                .bind(dep)
                .bind(from.as_millis())
                .bind(to.as_millis())
                .fetch_all(self.reader())
                .await?;
                for r in &sessions {
                    let created: i64 = r.try_get("created_at")?;
                    let closed: Option<i64> = r.try_get("closed_at")?;
                    let (billable, seconds) = match closed {
                        // A closed session counts as its close record says.
                        Some(_) => (
                            r.try_get::<Option<i64>, _>("billable")?.unwrap_or(0) != 0,
                            r.try_get::<Option<i64>, _>("close_duration_seconds")?.unwrap_or(0),
                        ),
                        None => (r.try_get::<i64, _>("answered")? != 0, (now.as_millis() - created) / 1000),
                    };
                    let k = key(r.try_get("agent_id")?, r.try_get("actor_id")?, created);
                    let row = rows.entry(k.clone()).or_insert_with(|| UsageRow { key: k, ..UsageRow::default() });
                    row.sessions += 1;
                    row.billable_sessions += u64::from(billable);
                    row.session_seconds += seconds.max(0) as u64;
                }
                let runs = sqlx::query(
                    "SELECT t.agent_id, t.actor_id, r.created_at, r.prompt_tokens, r.completion_tokens, r.tool_calls
                     FROM runs r JOIN threads t ON t.id = r.thread_id
                     WHERE r.deployment_id = $1 AND r.created_at >= $2 AND r.created_at < $3",
                )
                .bind(dep)
                .bind(from.as_millis())
                .bind(to.as_millis())
                .fetch_all(self.reader())
                .await?;
                for r in &runs {
                    let k = key(r.try_get("agent_id")?, r.try_get("actor_id")?, r.try_get("created_at")?);
                    let row = rows.entry(k.clone()).or_insert_with(|| UsageRow { key: k, ..UsageRow::default() });
                    row.runs += 1;
                    row.prompt_tokens += r.try_get::<i64, _>("prompt_tokens")?.max(0) as u64;
                    row.completion_tokens += r.try_get::<i64, _>("completion_tokens")?.max(0) as u64;
                    row.tool_calls += r.try_get::<i64, _>("tool_calls")?.max(0) as u64;
                }
                Ok(rows.into_values().collect())
            }
        }
    }
    };
}

pub(crate) use impl_session_sql;
