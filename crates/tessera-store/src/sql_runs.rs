//! SQL for threads, messages, runs and thread events, shared by both backends like `sql.rs`.
//!
//! Worker writes are *fenced*: each transaction first touches the run row with the worker's
//! attempt number (`UPDATE runs … WHERE id = $1 AND attempt = $2 AND status = 'running'`). A
//! worker whose lease was taken over finds no row and gets `LeaseLost` before writing anything.
//! On PostgreSQL the same statement row-locks the run for the rest of the transaction.
//!
//! Backend hooks used here: `self.notify(&mut tx, &Notification)` (PostgreSQL `pg_notify`,
//! delivered on commit; nothing on SQLite) and `CLAIM_LOCK` (`FOR UPDATE SKIP LOCKED` on
//! PostgreSQL so concurrent workers never wait on, or take, the same run).

pub(crate) const THREAD_COLS: &str =
    "id, project_id, actor_id, agent_id, title, system_instructions, \
     purpose, capability_tags, context_group, status, created_at, updated_at";
pub(crate) const MESSAGE_COLS: &str =
    "id, thread_id, run_id, role, content, tool_calls, tool_call_id, \
     tool_name, is_error, attachments, usage, created_at";
/// A thread's whole history as one value (SQLite, `HISTORY_AS_JSON`): a JSON array with one
/// array per message, its elements in `MESSAGE_COLS` order and its JSON columns nested. sqlx
/// sends each row of a SQLite result from the connection's thread to the caller on its own,
/// copied into its own allocation, and the caller decodes it column by column; one value is
/// one send and one parse.
/// (`ORDER BY` inside the aggregate needs SQLite 3.44, older than the bundled one. A history
/// whose JSON outgrew SQLite's 1 GB string limit would fail to read; no model's context takes
/// one that large anyway.)
pub(crate) const HISTORY_JSON: &str =
    "SELECT json_group_array(json_array(id, thread_id, run_id, role, content, json(tool_calls), \
       tool_call_id, tool_name, is_error, json(attachments), json(usage), created_at) ORDER BY id) \
     FROM messages WHERE thread_id = $1 AND deployment_id = $2";
pub(crate) const RUN_COLS: &str =
    "id, thread_id, status, attempt, input_message_id, cancel_requested, \
     stop_reason, error, prompt_tokens, completion_tokens, iterations, tool_calls, wall_ms, \
     created_at, started_at, finished_at";
pub(crate) const EVENT_COLS: &str = "thread_id, seq, run_id, kind, data, created_at";

/// The workers' claim of queued runs (SQLite): the first queued run of each thread that has no
/// active run, in id order, at most `$1`. SQLite's planner walks `runs_status` in id order and
/// stops at the limit.
pub(crate) const CLAIM_QUEUED_SQLITE: &str = "SELECT r.id, r.thread_id FROM runs r
     WHERE r.status = 'queued'
       AND NOT EXISTS (SELECT 1 FROM threads t WHERE t.id = r.thread_id AND t.active_run_id IS NOT NULL)
       AND NOT EXISTS (SELECT 1 FROM runs q WHERE q.thread_id = r.thread_id AND q.status = 'queued' AND q.id < r.id)
     ORDER BY r.id LIMIT $1";

/// The condition, on a run `r`, of `CLAIM_QUEUED_POSTGRES`: queued, first in its thread's
/// queue, on a thread with no active run. A macro so that `concat!` can share it with
/// `WAITING_RUNS`, which must agree with the claim.
macro_rules! startable_queued_run {
    () => {
        "r.status = 'queued'
       AND (SELECT t.active_run_id FROM threads t WHERE t.id = r.thread_id) IS NULL
       AND r.id = (SELECT q.id FROM runs q WHERE q.thread_id = r.thread_id AND q.status = 'queued'
                   ORDER BY q.id LIMIT 1)"
    };
}

/// The same claim on PostgreSQL, locking what it returns and skipping runs another claim holds.
/// PostgreSQL turns `NOT EXISTS` into anti-joins, which without fresh statistics (a queue that
/// grew from empty to thousands of runs within seconds, before autovacuum analysed it) it
/// runs as hash joins over every queued run, and then sorts them all: tens of milliseconds per
/// claim on an idle server, a second under load. Meanwhile `FOR UPDATE` locks each run claimed
/// by others since the query began (re-checked and dropped, but still locked until this claim
/// commits), so those runs' workers could not end them. Here the checks are scalar subqueries
/// (never turned into joins) that read one index entry each (`runs_queued_thread`), and
/// `pin_claim_plan` rules out sorting, so the query walks `runs_status` in id order and stops
/// at the limit whatever the statistics say (under a millisecond with 10,000 queued).
pub(crate) const CLAIM_QUEUED_POSTGRES: &str = concat!(
    "SELECT r.id, r.thread_id FROM runs r WHERE ",
    startable_queued_run!(),
    " ORDER BY r.id LIMIT $1 FOR UPDATE OF r SKIP LOCKED"
);

/// `RunStore::waiting_runs`: 2 when `claim_runs` would find a run (a lease expired before `$1`,
/// or a queued run first in its thread's queue on a thread with no active run), 1 when runs are
/// queued but none of them can start yet, 0 when none is queued. The condition is
/// `CLAIM_QUEUED_POSTGRES`'s (scalar subqueries reading one index entry each) on both backends,
/// and each `EXISTS` stops at the first run found.
pub(crate) const WAITING_RUNS: &str = concat!(
    "SELECT CASE
     WHEN EXISTS (SELECT 1 FROM runs r WHERE r.status = 'running' AND r.lease_expires_at < $1)
       OR EXISTS (SELECT 1 FROM runs r WHERE ",
    startable_queued_run!(),
    ") THEN 2
     WHEN EXISTS (SELECT 1 FROM runs WHERE status = 'queued') THEN 1
     ELSE 0 END AS waiting"
);

/// Run statuses that hold (or wait for) the thread.
pub(crate) const OPEN_STATUSES: &str = "('queued', 'running', 'waiting_for_input')";

/// When `lock_open_runs` is called: before taking the thread's row, or after it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RunLock {
    First,
    Recheck,
}

/// One of the hot writes: a message submitted, a run's step, a run's end, a ticket minted or
/// exchanged. SQLite
/// writes concurrent ones in one transaction (group commit, see `group.rs` and
/// `SqliteStore::write_hot`); PostgreSQL gives each its own.
pub(crate) enum HotWrite {
    Submit {
        scope: tessera_domain::Scope,
        thread_id: tessera_domain::ThreadId,
        submit: crate::SubmitRun,
    },
    Step {
        lease: crate::Lease,
        step: Vec<crate::StepMessage>,
    },
    Finish {
        lease: crate::Lease,
        step: Vec<crate::StepMessage>,
        end: crate::RunEnd,
    },
    /// A minted session ticket.
    Ticket {
        scope: tessera_domain::Scope,
        new: crate::NewTicket,
    },
    /// A ticket exchange.
    Exchange {
        scope: tessera_domain::Scope,
        exchange: crate::ExchangeTicket,
    },
}

/// Most messages a run's last step may hold for its end to be written together with other run
/// ends (`finish_together`); an end with a longer step is written alone. A run's last step is
/// usually its one reply.
pub(crate) const FINISH_TOGETHER_MAX_STEP: usize = 4;

// A batch of run ends written together stays far below SQLite's 32,766 binds per statement:
// 14 per message row, 9 per run row, 7 per event row (a step's events and the status event);
// padding rows are `NULL` literals, no binds.
const _: () = assert!(crate::group::MAX_BATCH * FINISH_TOGETHER_MAX_STEP * 14 < 32_766);
const _: () = assert!(crate::group::MAX_BATCH * (FINISH_TOGETHER_MAX_STEP + 1) * 7 < 32_766);

/// What a [`HotWrite`] stored.
pub(crate) enum HotDone {
    Submitted(crate::SubmitOutcome),
    Stepped(Vec<crate::ThreadEvent>),
    Finished(tessera_domain::thread::Run, Vec<crate::ThreadEvent>),
    Ticket(tessera_domain::ticket::SessionTicket),
    Exchanged(Box<crate::ExchangeOutcome>),
}

/// The multitask policy named by an agent spec's `multitask` field, as the backends' SQL
/// extracts it (`SPEC_MULTITASK`); no agent or no field is the default.
pub(crate) fn policy_named(
    name: Option<String>,
) -> crate::StoreResult<tessera_domain::agent::MultitaskPolicy> {
    match name {
        None => Ok(Default::default()),
        Some(name) => serde_json::from_value(serde_json::Value::String(name))
            .map_err(|e| crate::sql::corrupt("agent spec multitask", e)),
    }
}

/// `value` with every string equal to `from` replaced by `to`.
pub(crate) fn replace_string(value: &serde_json::Value, from: &str, to: &str) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s == from => Value::String(to.to_owned()),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| replace_string(v, from, to)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), replace_string(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn mismatched() -> crate::StoreError {
    crate::StoreError::Corrupt("a hot write was answered with another kind's result".to_owned())
}

impl HotDone {
    /// Whether the write is kept: an exchange that needs a sign-in first writes nothing.
    pub(crate) fn keeps(&self) -> bool {
        !matches!(self, HotDone::Exchanged(outcome) if **outcome == crate::ExchangeOutcome::SigninRequired)
    }

    pub(crate) fn ticket(self) -> crate::StoreResult<tessera_domain::ticket::SessionTicket> {
        match self {
            HotDone::Ticket(ticket) => Ok(ticket),
            _ => Err(mismatched()),
        }
    }

    pub(crate) fn exchanged(self) -> crate::StoreResult<crate::ExchangeOutcome> {
        match self {
            HotDone::Exchanged(outcome) => Ok(*outcome),
            _ => Err(mismatched()),
        }
    }

    pub(crate) fn submitted(self) -> crate::StoreResult<crate::SubmitOutcome> {
        match self {
            HotDone::Submitted(outcome) => Ok(outcome),
            _ => Err(mismatched()),
        }
    }

    pub(crate) fn stepped(self) -> crate::StoreResult<Vec<crate::ThreadEvent>> {
        match self {
            HotDone::Stepped(events) => Ok(events),
            _ => Err(mismatched()),
        }
    }

    pub(crate) fn finished(
        self,
    ) -> crate::StoreResult<(tessera_domain::thread::Run, Vec<crate::ThreadEvent>)> {
        match self {
            HotDone::Finished(run, events) => Ok((run, events)),
            _ => Err(mismatched()),
        }
    }
}

macro_rules! impl_run_sql {
    ($store:ident, $db:ty) => {
    /// Thread and run SQL, instantiated for this backend.
    mod run_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::{QueryBuilder, Row as _};
        use tessera_domain::event::{self, NewEvent};
        use tessera_domain::thread::{
            Message, NewThread, Role, Run, RunStatus, RunUsage, StopReason, Thread, ThreadPurpose,
            ThreadStatus, TokenUsage, ToolCall,
        };
        use tessera_domain::{
            ActorId, AgentId, DeploymentId, MessageId, ProjectId, RunId, Scope, ThreadId, Timestamp,
        };
        use $crate::sql::corrupt;
        use $crate::sql_runs::{EVENT_COLS, WAITING_RUNS, MESSAGE_COLS, OPEN_STATUSES, RUN_COLS, THREAD_COLS};
        use $crate::{
            CancelRequest, Claimed, Conflict, Cursor, Entity, Idempotency, IdempotentWrite, Lease, Notification,
            Order, Page, PageRequest, RunEnd, StepMessage, StoreError, StoreResult, SubmitOutcome,
            SubmitRun, ThreadEvent, Written,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        pub(super) fn id<T>(raw: String, parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>) -> StoreResult<T> {
            parse(&raw).map_err(|e| corrupt("id", e))
        }

        pub(super) fn json<T: serde::de::DeserializeOwned>(what: &str, raw: &str) -> StoreResult<T> {
            serde_json::from_str(raw).map_err(|e| corrupt(what, e))
        }

        pub(super) fn to_json<T: serde::Serialize>(what: &str, value: &T) -> StoreResult<String> {
            serde_json::to_string(value).map_err(|e| corrupt(what, e))
        }

        pub(super) fn thread_from_row(row: &DbRow) -> StoreResult<Thread> {
            let purpose: String = row.try_get("purpose")?;
            let status: String = row.try_get("status")?;
            let tags: String = row.try_get("capability_tags")?;
            Ok(Thread {
                id: id(row.try_get("id")?, ThreadId::parse)?,
                project_id: id(row.try_get("project_id")?, ProjectId::parse)?,
                actor_id: id(row.try_get("actor_id")?, ActorId::parse)?,
                agent_id: id(row.try_get("agent_id")?, AgentId::parse)?,
                title: row.try_get("title")?,
                system_instructions: row.try_get("system_instructions")?,
                purpose: ThreadPurpose::parse(&purpose).ok_or_else(|| corrupt("thread purpose", &purpose))?,
                capability_tags: json("thread capability_tags", &tags)?,
                context_group: row.try_get("context_group")?,
                status: ThreadStatus::parse(&status).ok_or_else(|| corrupt("thread status", &status))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        /// A message's columns with its JSON columns parsed, in `MESSAGE_COLS` order: read
        /// from a row, or from one element of `HISTORY_JSON`'s array.
        #[derive(serde::Deserialize)]
        pub(super) struct MessageParts {
            id: String,
            thread_id: String,
            run_id: Option<String>,
            role: String,
            content: String,
            tool_calls: Vec<ToolCall>,
            tool_call_id: Option<String>,
            tool_name: Option<String>,
            is_error: i64,
            attachments: Vec<String>,
            usage: Option<TokenUsage>,
            created_at: i64,
        }

        impl MessageParts {
            fn into_message(self) -> StoreResult<Message> {
                Ok(Message {
                    id: id(self.id, MessageId::parse)?,
                    thread_id: id(self.thread_id, ThreadId::parse)?,
                    run_id: self.run_id.map(|r| id(r, RunId::parse)).transpose()?,
                    role: Role::parse(&self.role).ok_or_else(|| corrupt("message role", &self.role))?,
                    content: self.content,
                    tool_calls: self.tool_calls,
                    tool_call_id: self.tool_call_id,
                    tool_name: self.tool_name,
                    is_error: self.is_error != 0,
                    attachments: self.attachments,
                    usage: self.usage,
                    created_at: Timestamp::from_millis(self.created_at),
                })
            }
        }

        pub(super) fn message_from_row(row: &DbRow) -> StoreResult<Message> {
            let tool_calls: String = row.try_get("tool_calls")?;
            let attachments: String = row.try_get("attachments")?;
            let usage: Option<String> = row.try_get("usage")?;
            MessageParts {
                id: row.try_get("id")?,
                thread_id: row.try_get("thread_id")?,
                run_id: row.try_get("run_id")?,
                role: row.try_get("role")?,
                content: row.try_get("content")?,
                tool_calls: json("message tool_calls", &tool_calls)?,
                tool_call_id: row.try_get("tool_call_id")?,
                tool_name: row.try_get("tool_name")?,
                is_error: row.try_get("is_error")?,
                attachments: json("message attachments", &attachments)?,
                usage: usage.map(|u| json("message usage", &u)).transpose()?,
                created_at: row.try_get("created_at")?,
            }
            .into_message()
        }

        pub(super) fn run_from_row(row: &DbRow) -> StoreResult<Run> {
            let status: String = row.try_get("status")?;
            let stop: Option<String> = row.try_get("stop_reason")?;
            let cancel: i64 = row.try_get("cancel_requested")?;
            let started: Option<i64> = row.try_get("started_at")?;
            let finished: Option<i64> = row.try_get("finished_at")?;
            let count = |name: &str| -> StoreResult<i64> { Ok(row.try_get::<i64, _>(name)?) };
            Ok(Run {
                id: id(row.try_get("id")?, RunId::parse)?,
                thread_id: id(row.try_get("thread_id")?, ThreadId::parse)?,
                status: RunStatus::parse(&status).ok_or_else(|| corrupt("run status", &status))?,
                attempt: row.try_get("attempt")?,
                input_message_id: id(row.try_get("input_message_id")?, MessageId::parse)?,
                stop_reason: stop
                    .map(|s| StopReason::parse(&s).ok_or_else(|| corrupt("run stop_reason", &s)))
                    .transpose()?,
                error: row.try_get("error")?,
                usage: RunUsage {
                    prompt_tokens: count("prompt_tokens")? as u64,
                    completion_tokens: count("completion_tokens")? as u64,
                    iterations: count("iterations")? as u32,
                    tool_calls: count("tool_calls")? as u32,
                    // Clock skew between nodes could make it negative; a duration is never.
                    wall_ms: count("wall_ms")?.max(0) as u64,
                },
                cancel_requested: cancel != 0,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                started_at: started.map(Timestamp::from_millis),
                finished_at: finished.map(Timestamp::from_millis),
            })
        }

        pub(super) fn event_from_row(row: &DbRow) -> StoreResult<ThreadEvent> {
            let run_id: Option<String> = row.try_get("run_id")?;
            let data: String = row.try_get("data")?;
            Ok(ThreadEvent {
                thread_id: id(row.try_get("thread_id")?, ThreadId::parse)?,
                seq: row.try_get("seq")?,
                run_id: run_id.map(|r| id(r, RunId::parse)).transpose()?,
                kind: row.try_get("kind")?,
                data: json("event data", &data)?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        /// One event row to insert: its deployment, thread, number and run.
        struct EventRow<'a> {
            deployment_id: &'a str,
            thread_id: &'a str,
            seq: i64,
            run_id: Option<&'a str>,
            event: &'a NewEvent,
        }

        /// Inserts numbered events in one statement (the numbers were reserved on the threads
        /// by the caller, under the thread row's lock) and returns them as stored.
        async fn insert_events(
            conn: &mut Conn,
            rows: &[EventRow<'_>],
            now: Timestamp,
        ) -> StoreResult<Vec<ThreadEvent>> {
            insert_events_as(conn, rows, now, false).await
        }

        /// [`insert_events`] with `padded`: the rows padded to a few sizes (`bulk::padded`), for
        /// a group-commit batch's many events (SQLite).
        async fn insert_events_as(
            conn: &mut Conn,
            rows: &[EventRow<'_>],
            now: Timestamp,
            padded: bool,
        ) -> StoreResult<Vec<ThreadEvent>> {
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let mut stored = Vec::with_capacity(rows.len());
            let mut values = Vec::with_capacity(rows.len());
            for r in rows {
                values.push((r, to_json("event data", &r.event.data)?));
                stored.push(ThreadEvent {
                    thread_id: id(r.thread_id.to_owned(), ThreadId::parse)?,
                    seq: r.seq,
                    run_id: r.run_id.map(|x| id(x.to_owned(), RunId::parse)).transpose()?,
                    kind: r.event.kind.to_owned(),
                    data: r.event.data.clone(),
                    created_at: now,
                });
            }
            let mut qb = QueryBuilder::<$db>::new(
                "INSERT INTO thread_events (thread_id, seq, deployment_id, run_id, kind, data, created_at) ",
            );
            if padded {
                qb.push("SELECT * FROM (");
            }
            let list: Vec<Option<&(&EventRow<'_>, String)>> = if padded {
                $crate::bulk::padded(&values).collect()
            } else {
                values.iter().map(Some).collect()
            };
            qb.push_values(list, |mut b, row| {
                let Some((r, data)) = row else {
                    return $crate::bulk::push_null_row(&mut b, 7);
                };
                b.push_bind(r.thread_id)
                    .push_bind(r.seq)
                    .push_bind(r.deployment_id)
                    .push_bind(r.run_id)
                    .push_bind(r.event.kind)
                    .push_bind(data.as_str())
                    .push_bind(now.as_millis());
            });
            if padded {
                qb.push(") WHERE column1 IS NOT NULL");
            }
            qb.build().execute(&mut *conn).await?;
            Ok(stored)
        }

        /// Numbers events after the thread's last one (reserving the numbers on the thread row,
        /// which also locks it) and inserts them: two statements whatever their number.
        pub(super) async fn append(
            conn: &mut Conn,
            deployment_id: &str,
            thread_id: &str,
            run_id: Option<&str>,
            events: &[NewEvent],
        ) -> StoreResult<Vec<ThreadEvent>> {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let now = Timestamp::now();
            let last: i64 = sqlx::query(
                "UPDATE threads SET last_seq = last_seq + $1, updated_at = $2 WHERE id = $3 RETURNING last_seq",
            )
            .bind(events.len() as i64)
            .bind(now.as_millis())
            .bind(thread_id)
            .fetch_one(&mut *conn)
            .await?
            .try_get("last_seq")?;
            let rows = numbered(deployment_id, thread_id, last - events.len() as i64 + 1, events.iter().map(|e| (run_id, e)));
            insert_events(conn, &rows, now).await
        }

        /// A message's JSON columns as stored: `tool_calls`, `attachments`, `usage`.
        fn message_json_columns(m: &Message) -> StoreResult<(String, String, Option<String>)> {
            Ok((
                to_json("message tool_calls", &m.tool_calls)?,
                to_json("message attachments", &m.attachments)?,
                m.usage.map(|u| to_json("message usage", &u)).transpose()?,
            ))
        }

        /// Inserts a message; `false` when a message with the same step key already exists.
        async fn insert_message(
            conn: &mut Conn,
            deployment_id: &str,
            m: &Message,
            step_key: Option<&str>,
        ) -> StoreResult<bool> {
            let (tool_calls, attachments, usage) = message_json_columns(m)?;
            let done = sqlx::query(
                "INSERT INTO messages (id, deployment_id, thread_id, run_id, role, content, tool_calls,
                   tool_call_id, tool_name, is_error, attachments, usage, step_key, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT (run_id, step_key) DO NOTHING",
            )
            .bind(m.id.as_str())
            .bind(deployment_id)
            .bind(m.thread_id.as_str())
            .bind(m.run_id.as_ref().map(|r| r.as_str()))
            .bind(m.role.as_str())
            .bind(m.content.as_str())
            .bind(tool_calls)
            .bind(m.tool_call_id.as_deref())
            .bind(m.tool_name.as_deref())
            .bind(i64::from(m.is_error))
            .bind(attachments)
            .bind(usage)
            .bind(step_key)
            .bind(m.created_at.as_millis())
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// Checks the lease inside the transaction (and locks the run row on PostgreSQL).
        /// Returns the run's deployment and thread.
        pub(super) async fn fence(conn: &mut Conn, lease: &Lease) -> StoreResult<(String, String)> {
            let row = sqlx::query(
                "UPDATE runs SET attempt = attempt
                 WHERE id = $1 AND attempt = $2 AND status IN ('running', 'waiting_for_input')
                 RETURNING deployment_id, thread_id",
            )
            .bind(lease.run_id.as_str())
            .bind(lease.attempt)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::LeaseLost)?;
            Ok((row.try_get("deployment_id")?, row.try_get("thread_id")?))
        }

        pub(super) async fn find_idempotent(
            conn: &mut Conn,
            deployment_id: &str,
            operation: &str,
            key: &str,
            request_hash: &str,
        ) -> StoreResult<Option<serde_json::Value>> {
            let row = sqlx::query(
                "SELECT request_hash, result FROM idempotency_keys
                 WHERE deployment_id = $1 AND operation = $2 AND key = $3",
            )
            .bind(deployment_id)
            .bind(operation)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else { return Ok(None) };
            let stored: String = row.try_get("request_hash")?;
            if stored != request_hash {
                return Err(StoreError::Conflict(Conflict::IdempotencyKeyReused));
            }
            let result: String = row.try_get("result")?;
            Ok(Some(json("idempotency result", &result)?))
        }

        /// Records the key; `false` when it is already recorded. On PostgreSQL an insert racing
        /// an uncommitted one for the same key waits for it, then inserts nothing if it committed.
        pub(super) async fn save_idempotent(conn: &mut Conn, deployment_id: &str, idem: &Idempotency) -> StoreResult<bool> {
            let done = sqlx::query(
                "INSERT INTO idempotency_keys (deployment_id, operation, key, request_hash, result, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (deployment_id, operation, key) DO NOTHING",
            )
            .bind(deployment_id)
            .bind(idem.operation.as_str())
            .bind(idem.key.as_str())
            .bind(idem.request_hash.as_str())
            .bind(to_json("idempotency result", &idem.result)?)
            .bind(Timestamp::now().as_millis())
            .execute(&mut *conn)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        /// The actor and agent of project `id`, read with `lock` (a row lock clause, or none):
        /// `NotFound(Project)` outside the deployment, [`Conflict::ProjectArchived`] unless it
        /// is active.
        pub(super) async fn active_project(
            conn: &mut Conn,
            deployment_id: &str,
            id: &ProjectId,
            lock: &str,
        ) -> StoreResult<(String, String)> {
            let project = sqlx::query(&format!(
                "SELECT actor_id, agent_id, status FROM actor_projects WHERE id = $1 AND deployment_id = $2{lock}"
            ))
            .bind(id.as_str())
            .bind(deployment_id)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found(Entity::Project))?;
            let status: String = project.try_get("status")?;
            if status != "active" {
                return Err(StoreError::Conflict(Conflict::ProjectArchived));
            }
            Ok((project.try_get("actor_id")?, project.try_get("agent_id")?))
        }

        /// Inserts thread `id` of `new` (in the caller's transaction), holding its project with
        /// a shared lock so that a concurrent archive cannot slip in between (while new threads
        /// of the project, which an ask creates inside its whole submission, do not wait for
        /// each other).
        pub(super) async fn insert_thread(
            conn: &mut Conn,
            deployment_id: &str,
            id: &ThreadId,
            new: &NewThread,
            now: Timestamp,
        ) -> StoreResult<Thread> {
            let (actor_id, agent_id) = active_project(conn, deployment_id, &new.project_id, <$store>::SHARE_LOCK).await?;
            let tags: Vec<&str> = new.capability_tags.iter().map(|t| t.as_str()).collect();
            let row = sqlx::query(&format!(
                "INSERT INTO threads (id, deployment_id, project_id, actor_id, agent_id, title,
                   system_instructions, purpose, capability_tags, context_group, status,
                   created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'idle', $11, $11)
                 RETURNING {THREAD_COLS}"
            ))
            .bind(id.as_str())
            .bind(deployment_id)
            .bind(new.project_id.as_str())
            .bind(actor_id)
            .bind(agent_id)
            .bind(new.title.as_str())
            .bind(new.system_instructions.as_deref())
            .bind(new.purpose.as_str())
            .bind(to_json("thread capability_tags", &tags)?)
            .bind(new.context_group.as_ref().map(|c| c.as_str()))
            .bind(now.as_millis())
            .fetch_one(&mut *conn)
            .await?;
            thread_from_row(&row)
        }

        /// Takes `idem`'s key for the transaction's write, recording `idem.result` as its answer
        /// (which [`save_answer`] may replace before commit): `Some(first answer)` when the key
        /// was recorded before (then nothing is to be written). Call it before the write reads
        /// anything, so that a concurrent request with the same key waits here (PostgreSQL:
        /// on the uncommitted key) and then replays.
        pub(super) async fn claim_key(conn: &mut Conn, deployment_id: &str, idem: &Idempotency) -> StoreResult<Option<serde_json::Value>> {
            let (op, key, hash) = (idem.operation.as_str(), idem.key.as_str(), idem.request_hash.as_str());
            if let Some(first) = find_idempotent(conn, deployment_id, op, key, hash).await? {
                return Ok(Some(first));
            }
            if save_idempotent(conn, deployment_id, idem).await? {
                return Ok(None);
            }
            match find_idempotent(conn, deployment_id, op, key, hash).await? {
                Some(first) => Ok(Some(first)),
                None => Err(StoreError::Corrupt("idempotency key vanished".to_owned())),
            }
        }

        /// Replaces the answer recorded under a key this transaction claimed.
        pub(super) async fn save_answer(
            conn: &mut Conn,
            deployment_id: &str,
            operation: &str,
            key: &str,
            result: &serde_json::Value,
        ) -> StoreResult<()> {
            sqlx::query("UPDATE idempotency_keys SET result = $1 WHERE deployment_id = $2 AND operation = $3 AND key = $4")
                .bind(to_json("idempotency result", result)?)
                .bind(deployment_id)
                .bind(operation)
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// [`claim_key`] for an [`IdempotentWrite`], with a placeholder answer that
        /// [`record_answer`] replaces before commit.
        pub(super) async fn take_key<T: ?Sized>(
            conn: &mut Conn,
            deployment_id: &str,
            key: &IdempotentWrite<'_, T>,
        ) -> StoreResult<Option<serde_json::Value>> {
            let placeholder = Idempotency {
                operation: key.operation.to_owned(),
                key: key.key.to_owned(),
                request_hash: key.request_hash.to_owned(),
                result: serde_json::Value::Null,
            };
            claim_key(conn, deployment_id, &placeholder).await
        }

        /// Records the answer under a key this transaction took with [`take_key`].
        pub(super) async fn record_answer<T: ?Sized>(
            conn: &mut Conn,
            deployment_id: &str,
            key: &IdempotentWrite<'_, T>,
            done: &T,
        ) -> StoreResult<()> {
            save_answer(conn, deployment_id, key.operation, key.key, &(key.answer)(done)).await
        }

        /// The stored `cancel_requested` flag (0 none, 1 cancel, 2 interrupt).
        fn cancel_request(flag: i64) -> CancelRequest {
            match flag {
                0 => CancelRequest::None,
                2 => CancelRequest::Interrupt,
                _ => CancelRequest::Cancel,
            }
        }

        /// `NotFound(Thread)` unless the thread exists in the deployment.
        async fn ensure_thread(conn: &mut Conn, deployment_id: &str, thread_id: &ThreadId) -> StoreResult<()> {
            sqlx::query("SELECT 1 FROM threads WHERE id = $1 AND deployment_id = $2")
                .bind(thread_id.as_str())
                .bind(deployment_id)
                .fetch_optional(&mut *conn)
                .await?
                .map(|_| ())
                .ok_or(StoreError::not_found(Entity::Thread))
        }

        /// Locks a thread's open runs in id order (`lock` is the backend's `ROW_LOCK`; SQLite
        /// has one writer and needs none). Every writer locks runs before their thread: a
        /// worker's step fences its run and then numbers its events on the thread row, and a
        /// claim locks its run and then marks the thread, so a writer that held the thread and
        /// then waited for a run could deadlock with them. A writer that stops runs calls this
        /// before locking the thread and again (`Recheck`) once it holds it: a run queued in
        /// between may already be a claim's, and rather than wait for it while holding the
        /// thread, the recheck fails at once as transient ([`StoreError::is_transient`]) and
        /// the transaction runs again.
        pub(super) async fn lock_open_runs(conn: &mut Conn, dep: &str, thread_id: &str, lock: &str, when: $crate::sql_runs::RunLock) -> StoreResult<()> {
            if lock.is_empty() {
                return Ok(());
            }
            let nowait = match when {
                $crate::sql_runs::RunLock::First => "",
                $crate::sql_runs::RunLock::Recheck => " NOWAIT",
            };
            sqlx::query(&format!(
                "SELECT id FROM runs WHERE thread_id = $1 AND deployment_id = $2 AND status IN {OPEN_STATUSES} ORDER BY id{lock}{nowait}"
            ))
            .bind(thread_id)
            .bind(dep)
            .fetch_all(&mut *conn)
            .await?;
            Ok(())
        }

        /// The multitask policy of the thread's agent (the default when the agent was deleted).
        async fn agent_policy(conn: &mut Conn, dep: &str, thread_id: &str) -> StoreResult<tessera_domain::agent::MultitaskPolicy> {
            let row = sqlx::query(&format!(
                "SELECT {} AS multitask FROM threads t
                 LEFT JOIN agents a ON a.id = t.agent_id AND a.deployment_id = t.deployment_id
                   AND a.deleted_at IS NULL
                 WHERE t.id = $1 AND t.deployment_id = $2",
                $store::SPEC_MULTITASK
            ))
            .bind(thread_id)
            .bind(dep)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found(Entity::Thread))?;
            $crate::sql_runs::policy_named(row.try_get("multitask")?)
        }

        /// Whether the thread has an open run (one row read at most).
        async fn has_open_run(conn: &mut Conn, thread_id: &str) -> StoreResult<bool> {
            Ok(sqlx::query(&format!(
                "SELECT 1 FROM runs WHERE thread_id = $1 AND status IN {OPEN_STATUSES} LIMIT 1"
            ))
            .bind(thread_id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some())
        }

        /// [`has_open_run`], unless the caller already knows (`known`).
        async fn open_run(conn: &mut Conn, thread_id: &str, known: Option<bool>) -> StoreResult<bool> {
            match known {
                Some(open) => Ok(open),
                None => has_open_run(conn, thread_id).await,
            }
        }

        pub(super) async fn open_runs(conn: &mut Conn, thread_id: &str) -> StoreResult<Vec<Run>> {
            let rows = sqlx::query(&format!(
                "SELECT {RUN_COLS} FROM runs WHERE thread_id = $1 AND status IN {OPEN_STATUSES} ORDER BY id"
            ))
            .bind(thread_id)
            .fetch_all(&mut *conn)
            .await?;
            rows.iter().map(run_from_row).collect()
        }

        /// Cancels a queued run at once, or asks the worker of an active one to stop (`flag` 1 =
        /// cancel, 2 = interrupt). Returns the run as it is now and the events for the caller
        /// to append: a queued run's status, or the `pending_action.resolved` of each action a
        /// paused run had open. `stopped_here` tells whether the run ended here (queued).
        async fn stop_run(
            conn: &mut Conn,
            run: &Run,
            flag: i64,
        ) -> StoreResult<(Run, bool, Vec<NewEvent>)> {
            if run.status == RunStatus::Queued {
                let reason = if flag == 2 { StopReason::Interrupted } else { StopReason::Cancelled };
                let row = sqlx::query(&format!(
                    "UPDATE runs SET status = 'cancelled', stop_reason = $1, cancel_requested = $2,
                       finished_at = $3 WHERE id = $4 RETURNING {RUN_COLS}"
                ))
                .bind(reason.as_str())
                .bind(flag)
                .bind(Timestamp::now().as_millis())
                .bind(run.id.as_str())
                .fetch_one(&mut *conn)
                .await?;
                let run = run_from_row(&row)?;
                let event = event::run_status_event(&run);
                Ok((run, true, vec![event]))
            } else {
                let row = sqlx::query(&format!(
                    "UPDATE runs SET cancel_requested = $1 WHERE id = $2 RETURNING {RUN_COLS}"
                ))
                .bind(flag)
                .bind(run.id.as_str())
                .fetch_one(&mut *conn)
                .await?;
                // A run paused for a confirmation has no worker to see the flag: hand it to one.
                let (_, resolved) = super::session_sql::release_paused_run(conn, &run.id).await?;
                Ok((run_from_row(&row)?, false, resolved))
            }
        }

        /// Reserves `n` more event numbers on a thread; returns the last one.
        async fn reserve_seqs(conn: &mut Conn, thread_id: &str, n: usize) -> StoreResult<i64> {
            Ok(sqlx::query("UPDATE threads SET last_seq = last_seq + $1 WHERE id = $2 RETURNING last_seq")
                .bind(n as i64)
                .bind(thread_id)
                .fetch_one(&mut *conn)
                .await?
                .try_get("last_seq")?)
        }

        /// Rows for events numbered consecutively from `first`, each under its own run.
        fn numbered<'a>(
            deployment_id: &'a str,
            thread_id: &'a str,
            first: i64,
            events: impl IntoIterator<Item = (Option<&'a str>, &'a NewEvent)>,
        ) -> Vec<EventRow<'a>> {
            events
                .into_iter()
                .enumerate()
                .map(|(i, (run_id, event))| EventRow { deployment_id, thread_id, seq: first + i as i64, run_id, event })
                .collect()
        }

        /// Stores a step's messages; returns the events of those not stored before (a step
        /// retried after a lost commit acknowledgement stores nothing twice).
        async fn insert_step<'s>(
            conn: &mut Conn,
            deployment_id: &str,
            step: &'s [StepMessage],
        ) -> StoreResult<Vec<&'s NewEvent>> {
            let mut events = Vec::with_capacity(step.len());
            for s in step {
                if insert_message(conn, deployment_id, &s.message, Some(&s.step_key)).await? {
                    events.push(&s.event);
                }
            }
            Ok(events)
        }

        #[async_trait::async_trait]
        impl $crate::ThreadStore for $store {
            async fn create_thread(&self, scope: &Scope, new: &NewThread) -> StoreResult<Thread> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let thread = insert_thread(&mut tx, scope.deployment_id().as_str(), &ThreadId::generate_at(now), new, now).await?;
                tx.commit().await?;
                Ok(thread)
            }

            async fn get_thread(&self, scope: &Scope, thread_id: &ThreadId) -> StoreResult<Thread> {
                let row = sqlx::query(&format!(
                    "SELECT {THREAD_COLS} FROM threads WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(thread_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Thread))?;
                thread_from_row(&row)
            }

            async fn list_messages(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                page: &PageRequest,
                order: Order,
            ) -> StoreResult<Page<Message>> {
                $crate::ThreadStore::get_thread(self, scope, thread_id).await?;
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                qb.push(" AND thread_id = ").push_bind(thread_id.as_str());
                // "After" and "before" follow the requested order.
                let newest_first = order == Order::NewestFirst;
                let descending = match &page.cursor {
                    Cursor::First => newest_first,
                    Cursor::After(c) => {
                        qb.push(if newest_first { " AND id < " } else { " AND id > " }).push_bind(c.clone());
                        newest_first
                    }
                    Cursor::Before(c) => {
                        qb.push(if newest_first { " AND id > " } else { " AND id < " }).push_bind(c.clone());
                        !newest_first
                    }
                };
                qb.push(if descending { " ORDER BY id DESC" } else { " ORDER BY id ASC" });
                qb.push(" LIMIT ").push_bind(i64::from(page.limit) + 1);
                let rows = qb.build().fetch_all(self.reader()).await?;
                let limit = page.limit as usize;
                let has_more = rows.len() > limit;
                let mut items = rows.iter().take(limit).map(message_from_row).collect::<StoreResult<Vec<_>>>()?;
                if matches!(page.cursor, Cursor::Before(_)) {
                    items.reverse();
                }
                Ok(Page { items, has_more })
            }

            async fn thread_history(&self, scope: &Scope, thread_id: &ThreadId) -> StoreResult<Vec<Message>> {
                if $store::HISTORY_AS_JSON {
                    let (history,): (String,) = sqlx::query_as($crate::sql_runs::HISTORY_JSON)
                        .bind(thread_id.as_str())
                        .bind(scope.deployment_id().as_str())
                        .fetch_one(self.reader())
                        .await?;
                    // Nested two levels deeper than in its own column, a value at the edge of
                    // serde_json's depth limit (tool arguments) parses only from its row: the
                    // rows are read then, as they are when anything in the value is amiss (with
                    // the failing column named).
                    if let Ok(parts) = serde_json::from_str::<Vec<MessageParts>>(&history) {
                        return parts.into_iter().map(MessageParts::into_message).collect();
                    }
                }
                let rows = sqlx::query(&format!(
                    "SELECT {MESSAGE_COLS} FROM messages WHERE thread_id = $1 AND deployment_id = $2 ORDER BY id"
                ))
                .bind(thread_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(message_from_row).collect()
            }

            async fn events_after(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                after: i64,
                limit: u32,
            ) -> StoreResult<Vec<ThreadEvent>> {
                let rows = sqlx::query(&format!(
                    "SELECT {EVENT_COLS} FROM thread_events
                     WHERE thread_id = $1 AND deployment_id = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                ))
                .bind(thread_id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(event_from_row).collect()
            }
        }

        /// The hot write transactions, run on SQLite's writer thread by `write_hot`'s group-commit
        /// loop (see `group.rs`).
        impl $store {
            /// Writes `batch` in one transaction. A single write commits only if it succeeded;
            /// of several, those the backend writes together go first (`bulk_in`), and the
            /// others each run in a savepoint, so that one's failure (a conflict, a lost lease)
            /// leaves the others alone. `Err` means the transaction as a whole failed: nothing
            /// of the batch was written.
            pub(crate) async fn do_hot_writes(
                &self,
                batch: &[$crate::sql_runs::HotWrite],
            ) -> StoreResult<Vec<StoreResult<$crate::sql_runs::HotDone>>> {
                let mut tx = self.begin_write().await?;
                let mut results = Vec::with_capacity(batch.len());
                if let [job] = batch {
                    let result = match self.hot_in(&mut tx, job).await {
                        Ok(done) if done.keeps() => tx.commit().await.map(|()| done).map_err(StoreError::from),
                        other => other,
                    };
                    results.push(result);
                    return Ok(results);
                }
                let mut bulk = self.bulk_in(&mut tx, batch).await?.into_iter();
                // An earlier write's savepoint is still open: it is released together with the
                // next write's `SAVEPOINT` (one round trip for both), or by the commit.
                let mut open = false;
                for job in batch {
                    if let Some(result) = bulk.next().flatten() {
                        results.push(result);
                        continue;
                    }
                    let sql = if open {
                        "RELEASE SAVEPOINT tessera_hot; SAVEPOINT tessera_hot"
                    } else {
                        "SAVEPOINT tessera_hot"
                    };
                    // A plain string runs unprepared: several statements at once, on both
                    // engines.
                    sqlx::Executor::execute(&mut *tx, sql).await?;
                    open = true;
                    let result = match self.hot_in(&mut tx, job).await {
                        // A database error may have ended the whole transaction (SQLite rolls
                        // it back by itself on a full disk or an I/O error, and what followed
                        // would then commit statement by statement): the batch stops here,
                        // nothing of it commits, and the caller retries each write on its own.
                        Err(err) if matches!(err, StoreError::Database(_)) => return Err(err),
                        other => other,
                    };
                    // `ROLLBACK TO` leaves the (now empty) savepoint open.
                    if !result.as_ref().is_ok_and(|done| done.keeps()) {
                        sqlx::query("ROLLBACK TO SAVEPOINT tessera_hot").execute(&mut *tx).await?;
                    }
                    results.push(result);
                }
                tx.commit().await?;
                Ok(results)
            }

            /// The writes of `batch` that the backend writes together (`BULK_HOT_WRITES`), before
            /// the others: its mints in one statement, the exchanges that open a chat link from
            /// a fresh browser (`exchange_fresh`), and its runs' ends (`finish_together`). One
            /// entry per write, `Some` for one written here; the others are written one by one
            /// after. Nothing in a batch depends on its mints (a ticket can be exchanged only
            /// once its mint answered), and the exchanges and ends written here come first in an
            /// order the batch's concurrent requests could have had. `Err` when the transaction
            /// as a whole failed, as in [`Self::do_hot_writes`]; a mint naming a missing agent
            /// fails alone, and so does an end whose lease was taken over.
            pub(crate) async fn bulk_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                batch: &[$crate::sql_runs::HotWrite],
            ) -> StoreResult<Vec<Option<StoreResult<$crate::sql_runs::HotDone>>>> {
                use $crate::sql_runs::{HotDone, HotWrite};
                if !$store::BULK_HOT_WRITES {
                    return Ok(Vec::new());
                }
                let mut entries: Vec<Option<StoreResult<HotDone>>> = batch.iter().map(|_| None).collect();
                let (mut mints, mut mint_at) = (Vec::new(), Vec::new());
                let (mut exchanges, mut exchange_at) = (Vec::new(), Vec::new());
                let (mut ends, mut end_at) = (Vec::new(), Vec::new());
                for (i, job) in batch.iter().enumerate() {
                    match job {
                        HotWrite::Ticket { scope, new } => {
                            mints.push((scope, new));
                            mint_at.push(i);
                        }
                        HotWrite::Exchange { scope, exchange } => {
                            exchanges.push((scope, exchange));
                            exchange_at.push(i);
                        }
                        HotWrite::Finish { lease, step, end } => {
                            ends.push((lease, step.as_slice(), end));
                            end_at.push(i);
                        }
                        _ => {}
                    }
                }
                if !mints.is_empty() {
                    let written = super::ticket_sql::insert_tickets(tx, &mints).await?;
                    if written.len() != mints.len() {
                        return Err(StoreError::Corrupt("a mint without a result".to_owned()));
                    }
                    for (i, result) in mint_at.into_iter().zip(written) {
                        match result {
                            Err(err) if !matches!(err, StoreError::NotFound { .. }) => return Err(err),
                            result => entries[i] = Some(result.map(HotDone::Ticket)),
                        }
                    }
                }
                if !exchanges.is_empty() {
                    let written = super::ticket_sql::exchange_fresh(tx, &exchanges).await?;
                    if written.len() != exchanges.len() {
                        return Err(StoreError::Corrupt("an exchange without a result".to_owned()));
                    }
                    for (i, outcome) in exchange_at.into_iter().zip(written) {
                        if let Some(outcome) = outcome {
                            entries[i] = Some(Ok(HotDone::Exchanged(Box::new(outcome))));
                        }
                    }
                }
                if !ends.is_empty() {
                    let written = self.finish_together(tx, &ends).await?;
                    if written.len() != ends.len() {
                        return Err(StoreError::Corrupt("a run end without a result".to_owned()));
                    }
                    for (i, result) in end_at.into_iter().zip(written) {
                        if let Some(result) = result {
                            entries[i] = Some(result.map(|(run, events)| HotDone::Finished(run, events)));
                        }
                    }
                }
                Ok(entries)
            }

            /// Like [`Self::do_hot_writes`]; when the shared transaction fails as a whole, each
            /// write is retried in a transaction of its own, so one bad write cannot fail the
            /// others.
            #[allow(dead_code)] // SQLite's group commit; PostgreSQL writes one at a time.
            pub(crate) async fn do_hot_writes_isolated(
                &self,
                batch: &[$crate::sql_runs::HotWrite],
            ) -> Vec<StoreResult<$crate::sql_runs::HotDone>> {
                match self.do_hot_writes(batch).await {
                    Ok(results) => results,
                    Err(err) if batch.len() == 1 => vec![Err(err)],
                    Err(_) => {
                        let mut results = Vec::with_capacity(batch.len());
                        for job in batch {
                            let single = self.do_hot_writes(std::slice::from_ref(job)).await;
                            results.push(single.and_then(|mut r| r.pop().ok_or(StoreError::Corrupt(
                                "a write transaction ended without a result".to_owned(),
                            ))).and_then(|r| r));
                        }
                        results
                    }
                }
            }

            async fn hot_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                job: &$crate::sql_runs::HotWrite,
            ) -> StoreResult<$crate::sql_runs::HotDone> {
                use $crate::sql_runs::{HotDone, HotWrite};
                Ok(match job {
                    HotWrite::Submit { scope, thread_id, submit } => {
                        HotDone::Submitted(self.submit_in(tx, scope, thread_id, submit).await?)
                    }
                    HotWrite::Step { lease, step } => HotDone::Stepped(self.step_in(tx, lease, step).await?),
                    HotWrite::Finish { lease, step, end } => {
                        let (run, events) = self.finish_in(tx, lease, step, end).await?;
                        HotDone::Finished(run, events)
                    }
                    HotWrite::Ticket { scope, new } => HotDone::Ticket(self.ticket_in(tx, scope, new).await?),
                    HotWrite::Exchange { scope, exchange } => {
                        HotDone::Exchanged(Box::new(self.exchange_on(tx, scope, exchange).await?))
                    }
                })
            }

            /// Stores a submission on `tx` (committed by the caller; rolled back on an error).
            pub(crate) async fn submit_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                scope: &Scope,
                thread_id: &ThreadId,
                submit: &SubmitRun,
            ) -> StoreResult<SubmitOutcome> {
                let dep = scope.deployment_id().as_str();
                // The key before anything else, so that a concurrent retry waits for this
                // transaction and then replays its answer instead of failing.
                if let Some(idem) = &submit.idempotency {
                    if let Some(result) = claim_key(tx, dep, idem).await? {
                        return Ok(SubmitOutcome::Replayed { result });
                    }
                }
                if let Some(new) = &submit.new_thread {
                    insert_thread(tx, dep, thread_id, new, Timestamp::now()).await?;
                }
                // The caller's policy, else the agent's: read here, or, where the thread update
                // answers the checks, by that update (there, no row locks are taken before it:
                // see `CHECKS_IN_THREAD_UPDATE`).
                let mut policy = submit.policy;
                if policy.is_none() && !Self::CHECKS_IN_THREAD_UPDATE {
                    policy = Some(agent_policy(tx, dep, thread_id.as_str()).await?);
                }
                // An interruption stops the open runs: lock them before the thread.
                if policy == Some(tessera_domain::agent::MultitaskPolicy::Interrupt) {
                    lock_open_runs(tx, dep, thread_id.as_str(), Self::ROW_LOCK, $crate::sql_runs::RunLock::First).await?;
                }
                // Reserves the numbers of this submission's two events; the update also checks
                // that the thread is the caller's and locks it (PostgreSQL) against a concurrent
                // submission, so the multitask policy below sees every run queued before.
                let now = Timestamp::now();
                // Where the update can also answer the checks below (see
                // `CHECKS_IN_THREAD_UPDATE`), it does: two statements fewer.
                let checks = if Self::CHECKS_IN_THREAD_UPDATE {
                    format!(
                        ", EXISTS (SELECT 1 FROM runs WHERE runs.thread_id = threads.id
                                     AND runs.status IN {OPEN_STATUSES}) AS has_open_run,
                           EXISTS (SELECT 1 FROM pending_actions p
                                   WHERE p.thread_id = threads.id AND p.kind = 'question'
                                     AND p.status = 'pending' AND p.expires_at > $1
                                     AND p.run_id = threads.active_run_id) AS has_question{}",
                        if policy.is_none() {
                            format!(
                                ", (SELECT {} FROM agents a WHERE a.id = threads.agent_id
                                       AND a.deployment_id = threads.deployment_id
                                       AND a.deleted_at IS NULL) AS multitask",
                                Self::SPEC_MULTITASK
                            )
                        } else {
                            String::new()
                        }
                    )
                } else {
                    String::new()
                };
                let thread_row = sqlx::query(&format!(
                    "UPDATE threads SET last_seq = last_seq + 2, updated_at = $1
                     WHERE id = $2 AND deployment_id = $3 RETURNING last_seq, closed_at, hidden_at{checks}"
                ))
                .bind(now.as_millis())
                .bind(thread_id.as_str())
                .bind(dep)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(StoreError::not_found(Entity::Thread))?;
                // A conversation its session deleted takes no message from it, and a closed
                // session none at all (the update above is rolled back).
                if submit.refuse_hidden && thread_row.try_get::<Option<i64>, _>("hidden_at")?.is_some() {
                    return Err(StoreError::not_found(Entity::Context));
                }
                if thread_row.try_get::<Option<i64>, _>("closed_at")?.is_some() {
                    return Err(StoreError::Conflict(Conflict::SessionClosed));
                }
                let policy = match policy {
                    Some(policy) => policy,
                    None => $crate::sql_runs::policy_named(thread_row.try_get("multitask")?)?,
                };
                if policy == tessera_domain::agent::MultitaskPolicy::Interrupt {
                    lock_open_runs(tx, dep, thread_id.as_str(), Self::ROW_LOCK, $crate::sql_runs::RunLock::Recheck).await?;
                }
                // Variables sent with the message are merged by this transaction, so a refused
                // message (or a refused merge) changes neither.
                if !submit.variables.is_empty() {
                    super::session_sql::merge_variables(tx, dep, thread_id, &submit.variables, "").await?;
                }
                let mut last: i64 = thread_row.try_get("last_seq")?;
                // What the update already found out (`None`: ask).
                let (open_known, question_known) = if Self::CHECKS_IN_THREAD_UPDATE {
                    (
                        Some(thread_row.try_get::<bool, _>("has_open_run")?),
                        Some(thread_row.try_get::<bool, _>("has_question")?),
                    )
                } else {
                    (None, None)
                };
                // A message to a run waiting on an `ask_user` question is its answer: it joins
                // that run, which resumes; the multitask policy does not apply.
                let answered = match question_known {
                    Some(false) => None,
                    _ => super::session_sql::answer_question(tx, thread_id.as_str(), &submit.message.content, now).await?,
                };
                if let Some(run_id) = answered {
                    let message = Message { run_id: Some(run_id.clone()), ..submit.message.clone() };
                    insert_message(tx, dep, &message, None).await?;
                    let row = sqlx::query(&format!("SELECT {RUN_COLS} FROM runs WHERE id = $1"))
                        .bind(run_id.as_str())
                        .fetch_one(&mut **tx)
                        .await?;
                    let run = run_from_row(&row)?;
                    if let Some(idem) = &submit.idempotency {
                        let result = $crate::sql_runs::replace_string(&idem.result, submit.run_id.as_str(), run_id.as_str());
                        save_answer(tx, dep, &idem.operation, &idem.key, &result).await?;
                    }
                    let created = event::message_event(event::MESSAGE_CREATED, &message);
                    let resumed = event::run_status_event(&run);
                    let rows = numbered(
                        dep,
                        thread_id.as_str(),
                        last - 1,
                        [(Some(run.id.as_str()), &created), (Some(run.id.as_str()), &resumed)],
                    );
                    let events = insert_events(tx, &rows, now).await?;
                    drop(rows);
                    self.notify(tx, &Notification::Runs).await?;
                    self.notify(tx, &Notification::ThreadEvents(thread_id.clone())).await?;
                    return Ok(SubmitOutcome::Created { run, interrupted: Vec::new(), events, started: None });
                }
                let mut stops = Vec::new();
                let mut interrupted = Vec::new();
                // Whether a run of the thread is still open once the policy applied: the run
                // can be claimed here only when none is (see `StartHere`).
                let mut open = true;
                match policy {
                    // `enqueue` (the default) queues behind whatever is open: it needs to look
                    // only to start the run here.
                    tessera_domain::agent::MultitaskPolicy::Enqueue => {
                        if submit.start.is_some() {
                            open = open_run(tx, thread_id.as_str(), open_known).await?;
                        }
                    }
                    tessera_domain::agent::MultitaskPolicy::Reject => {
                        if open_run(tx, thread_id.as_str(), open_known).await? {
                            return Err(StoreError::Conflict(Conflict::RunActive));
                        }
                        open = false;
                    }
                    tessera_domain::agent::MultitaskPolicy::Interrupt => {
                        for run in &open_runs(tx, thread_id.as_str()).await? {
                            let (run, stopped_here, events) = stop_run(tx, run, 2).await?;
                            if !stopped_here {
                                interrupted.push(run.id.clone());
                                self.notify(tx, &Notification::CancelRun(run.id.clone())).await?;
                            }
                            stops.extend(events.into_iter().map(|e| (run.id.clone(), e)));
                        }
                        // Runs that ended here are closed; the interrupted ones end later.
                        open = !interrupted.is_empty();
                    }
                }
                if !stops.is_empty() {
                    last = reserve_seqs(tx, thread_id.as_str(), stops.len()).await?;
                }
                // Claimed for the caller's free worker: the thread's active slot and the number
                // of the `running` event in one update (the slot is free when nothing is open,
                // but the update checks it as a claim does).
                let start = match (&submit.start, open) {
                    (Some(start), false) => sqlx::query(&format!(
                        "UPDATE threads SET active_run_id = $1, status = 'running', last_seq = last_seq + 1
                         WHERE id = $2 AND active_run_id IS NULL RETURNING last_seq, {THREAD_COLS}"
                    ))
                    .bind(submit.run_id.as_str())
                    .bind(thread_id.as_str())
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|row| {
                        last = row.try_get("last_seq")?;
                        Ok::<_, StoreError>((start, thread_from_row(&row)?))
                    })
                    .transpose()?,
                    _ => None,
                };
                insert_message(tx, dep, &submit.message, None).await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO runs (id, deployment_id, thread_id, status, input_message_id, created_at,
                       attempt, lease_owner, lease_expires_at, started_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {RUN_COLS}"
                ))
                .bind(submit.run_id.as_str())
                .bind(dep)
                .bind(thread_id.as_str())
                .bind(if start.is_some() { "running" } else { "queued" })
                .bind(submit.message.id.as_str())
                .bind(now.as_millis())
                .bind(i64::from(start.is_some()))
                .bind(start.as_ref().map(|(s, _)| s.owner.as_str()))
                .bind(start.as_ref().map(|(s, _)| now.as_millis() + s.lease_ms))
                .bind(start.as_ref().map(|_| now.as_millis()))
                .fetch_one(&mut **tx)
                .await?;
                let run = run_from_row(&row)?;
                let created = event::message_event(event::MESSAGE_CREATED, &submit.message);
                let queued = event::run_status_event(&Run {
                    status: tessera_domain::thread::RunStatus::Queued,
                    ..run.clone()
                });
                let running = start.as_ref().map(|_| event::run_status_event(&run));
                // Runs the interruption cancelled while still queued come first.
                let ours: Vec<(Option<&str>, &NewEvent)> = [Some(&created), Some(&queued), running.as_ref()]
                    .into_iter()
                    .flatten()
                    .map(|e| (Some(run.id.as_str()), e))
                    .collect();
                let first = last + 1 - (stops.len() + ours.len()) as i64;
                let rows = numbered(
                    dep,
                    thread_id.as_str(),
                    first,
                    stops
                        .iter()
                        .map(|(r, e): &(RunId, NewEvent)| (Some(r.as_str()), e))
                        .chain(ours),
                );
                let events = insert_events(tx, &rows, now).await?;
                drop(rows);
                // A run started here needs no worker woken, here or on another node.
                if start.is_none() {
                    self.notify(tx, &Notification::Runs).await?;
                }
                self.notify(tx, &Notification::ThreadEvents(thread_id.clone())).await?;
                let started = start.map(|(_, thread)| {
                    Box::new(Claimed {
                        scope: scope.clone(),
                        lease: Lease { run_id: run.id.clone(), attempt: run.attempt },
                        stop: CancelRequest::None,
                        run: run.clone(),
                        thread,
                        events: Vec::new(),
                    })
                });
                Ok(SubmitOutcome::Created { run, interrupted, events, started })
            }

            pub(crate) async fn do_claim_runs(
                &self,
                owner: &str,
                now: Timestamp,
                lease_ms: i64,
                limit: usize,
            ) -> StoreResult<Vec<Claimed>> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let limit = limit as i64;
                let mut tx = self.begin_write().await?;
                self.pin_claim_plan(&mut tx).await?;
                // Runs whose worker died (their lease expired) first: they have waited longest.
                // Then the first queued run of each thread that has no active run: at most one
                // run per thread. Two queries, each walking `runs_status` in id order and
                // stopping at the limit: one query with both kinds (an OR sorted by kind) had to
                // evaluate every queued run before sorting, which with thousands queued (a burst
                // of scheduled items) made each claim scan the table while holding the writer.
                let expired = sqlx::query(&format!(
                    "SELECT r.id, r.thread_id FROM runs r
                     WHERE r.status = 'running' AND r.lease_expires_at < $1
                     ORDER BY r.id LIMIT $2{}",
                    Self::CLAIM_LOCK
                ))
                .bind(now.as_millis())
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let want = limit - expired.len() as i64;
                let queued = if want > 0 {
                    sqlx::query(Self::CLAIM_QUEUED)
                        .bind(want)
                    .fetch_all(&mut *tx)
                    .await?
                } else {
                    Vec::new()
                };
                let candidates = expired
                    .iter()
                    .chain(&queued)
                    .map(|r| Ok((r.try_get("id")?, r.try_get("thread_id")?)))
                    .collect::<StoreResult<Vec<(String, String)>>>()?;
                let mut claimed = Vec::with_capacity(candidates.len());
                let mut seqs = Vec::with_capacity(candidates.len());
                for (run_id, thread_id) in candidates {
                    // The thread's single active slot first: taken here, or already ours on
                    // recovery. Another run of the thread may have won it concurrently (it was
                    // read without a lock): then this run stays queued and nothing is written.
                    // The event number of the `running` event is reserved in the same update.
                    let Some(thread_row) = sqlx::query(&format!(
                        "UPDATE threads SET active_run_id = $1, status = 'running', updated_at = $2,
                           last_seq = last_seq + 1
                         WHERE id = $3 AND (active_run_id IS NULL OR active_run_id = $1)
                         RETURNING last_seq, {THREAD_COLS}"
                    ))
                    .bind(&run_id)
                    .bind(now.as_millis())
                    .bind(&thread_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    else {
                        continue;
                    };
                    // The run row is ours until commit (SQLite: the write lock; PostgreSQL: the
                    // row lock taken when it was selected), so its state is as selected.
                    let row = sqlx::query(&format!(
                        "UPDATE runs SET status = 'running', attempt = attempt + 1, lease_owner = $1,
                           lease_expires_at = $2,
                           started_at = COALESCE(started_at, CASE WHEN created_at > $3 THEN created_at ELSE $3 END)
                         WHERE id = $4 AND (status = 'queued' OR (status = 'running' AND lease_expires_at < $3))
                         RETURNING deployment_id, {RUN_COLS}"
                    ))
                    .bind(owner)
                    .bind(now.as_millis() + lease_ms)
                    .bind(now.as_millis())
                    .bind(&run_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("run {run_id} changed while locked for its claim")))?;
                    let run = run_from_row(&row)?;
                    let dep: String = row.try_get("deployment_id")?;
                    let stop = cancel_request(row.try_get("cancel_requested")?);
                    let thread = thread_from_row(&thread_row)?;
                    seqs.push((thread_row.try_get::<i64, _>("last_seq")?, event::run_status_event(&run)));
                    self.notify(&mut tx, &Notification::ThreadEvents(thread.id.clone())).await?;
                    claimed.push(Claimed {
                        scope: Scope::deployment(id(dep, DeploymentId::parse)?),
                        lease: Lease { run_id: run.id.clone(), attempt: run.attempt },
                        stop,
                        run,
                        thread,
                        events: Vec::new(),
                    });
                }
                // One insert for the `running` events of every run claimed.
                let rows: Vec<EventRow<'_>> = claimed
                    .iter()
                    .zip(&seqs)
                    .map(|(c, (seq, event))| EventRow {
                        deployment_id: c.scope.deployment_id().as_str(),
                        thread_id: c.thread.id.as_str(),
                        seq: *seq,
                        run_id: Some(c.run.id.as_str()),
                        event,
                    })
                    .collect();
                let stored = insert_events(&mut tx, &rows, now).await?;
                drop(rows);
                tx.commit().await?;
                for event in stored {
                    if let Some(c) = claimed.iter_mut().find(|c| c.thread.id == event.thread_id) {
                        c.events.push(event);
                    }
                }
                Ok(claimed)
            }

            /// Stores a step on `tx` (committed by the caller).
            pub(crate) async fn step_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                lease: &Lease,
                step: &[StepMessage],
            ) -> StoreResult<Vec<ThreadEvent>> {
                let (dep, thread_id) = fence(tx, lease).await?;
                let events: Vec<NewEvent> = insert_step(tx, &dep, step).await?.into_iter().cloned().collect();
                let stored = append(tx, &dep, &thread_id, Some(lease.run_id.as_str()), &events).await?;
                if !stored.is_empty() {
                    self.notify(tx, &Notification::ThreadEvents(id(thread_id, ThreadId::parse)?)).await?;
                }
                Ok(stored)
            }

            /// Stores a run's last step and its end on `tx` (committed by the caller).
            pub(crate) async fn finish_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                lease: &Lease,
                step: &[StepMessage],
                end: &RunEnd,
            ) -> StoreResult<(Run, Vec<ThreadEvent>)> {
                let now = Timestamp::now();
                // Fenced like every worker write: a worker that lost its lease ends nothing.
                let row = sqlx::query(&format!(
                    "UPDATE runs SET status = $1, stop_reason = $2, error = $3, prompt_tokens = $4,
                       completion_tokens = $5, iterations = $6, tool_calls = $7,
                       wall_ms = $8 - COALESCE(started_at, $8), finished_at = $8,
                       lease_owner = NULL, lease_expires_at = NULL
                     WHERE id = $9 AND attempt = $10 AND status IN ('running', 'waiting_for_input')
                     RETURNING deployment_id, {RUN_COLS}"
                ))
                .bind(end.status.as_str())
                .bind(end.stop_reason.as_str())
                .bind(end.error.as_deref())
                .bind(end.usage.prompt_tokens as i64)
                .bind(end.usage.completion_tokens as i64)
                .bind(i64::from(end.usage.iterations))
                .bind(i64::from(end.usage.tool_calls))
                .bind(now.as_millis())
                .bind(lease.run_id.as_str())
                .bind(lease.attempt)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(StoreError::LeaseLost)?;
                let run = run_from_row(&row)?;
                let dep: String = row.try_get("deployment_id")?;
                let thread_id = run.thread_id.as_str();
                let mut events = insert_step(tx, &dep, step).await?;
                let status = event::run_status_event(&run);
                events.push(&status);
                // Frees the thread's active slot (if this run still holds it) and reserves the
                // event numbers in one update.
                let last: i64 = sqlx::query(
                    "UPDATE threads SET
                       status = CASE WHEN active_run_id = $1 THEN 'idle' ELSE status END,
                       active_run_id = CASE WHEN active_run_id = $1 THEN NULL ELSE active_run_id END,
                       last_seq = last_seq + $2, updated_at = $3
                     WHERE id = $4 RETURNING last_seq",
                )
                .bind(lease.run_id.as_str())
                .bind(events.len() as i64)
                .bind(now.as_millis())
                .bind(thread_id)
                .fetch_one(&mut **tx)
                .await?
                .try_get("last_seq")?;
                let rows = numbered(
                    &dep,
                    thread_id,
                    last - events.len() as i64 + 1,
                    events.iter().map(|e| (Some(lease.run_id.as_str()), *e)),
                );
                let stored = insert_events(tx, &rows, now).await?;
                drop(rows);
                self.notify(tx, &Notification::Runs).await?;
                self.notify(tx, &Notification::ThreadEvents(run.thread_id.clone())).await?;
                Ok((run, stored))
            }

            /// Run ends written together (`bulk_in`): four statements for all of them, whatever
            /// their number. The runs end, fenced as in [`Self::finish_in`] (a run whose lease
            /// was taken over gets `LeaseLost` and writes nothing); their last steps' messages
            /// are stored (one whose step key is already stored is skipped with its event, as
            /// `insert_step` does); their threads' active slots are freed and event numbers
            /// reserved; and their events are inserted. The outcome is the one writing them
            /// alone, one after the other in batch order, gives. One entry per end, `None` for
            /// an end left to be written alone: a second end of the same run, or a step longer
            /// than [`FINISH_TOGETHER_MAX_STEP`]. The `VALUES` lists are padded
            /// (`bulk::padded`), so the statements stay prepared. `Err` when a statement failed:
            /// the transaction as a whole failed.
            ///
            /// [`FINISH_TOGETHER_MAX_STEP`]: $crate::sql_runs::FINISH_TOGETHER_MAX_STEP
            #[allow(dead_code)] // SQLite's group commit; PostgreSQL writes one at a time.
            pub(crate) async fn finish_together(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                ends: &[(&Lease, &[StepMessage], &RunEnd)],
            ) -> StoreResult<Vec<Option<StoreResult<(Run, Vec<ThreadEvent>)>>>> {
                use std::collections::{HashMap, HashSet};
                let mut out: Vec<Option<StoreResult<(Run, Vec<ThreadEvent>)>>> = ends.iter().map(|_| None).collect();
                let mut seen = HashSet::with_capacity(ends.len());
                let together: Vec<usize> = (0..ends.len())
                    .filter(|&i| {
                        let (lease, step, _) = ends[i];
                        // Every end registers its run first: any later end of the same run is
                        // written alone, after this one, as batch order has it.
                        seen.insert(lease.run_id.as_str()) && step.len() <= $crate::sql_runs::FINISH_TOGETHER_MAX_STEP
                    })
                    .collect();
                if together.is_empty() {
                    return Ok(out);
                }
                let now = Timestamp::now();

                // The runs end: only those still held by the lease's attempt.
                let mut qb = QueryBuilder::<$db>::new(
                    "WITH v (v_id, v_attempt, v_status, v_stop, v_error, v_prompt, v_completion,
                             v_iterations, v_tool_calls) AS (",
                );
                qb.push_values($crate::bulk::padded(&together), |mut b, i| {
                    let Some(&i) = i else {
                        return $crate::bulk::push_null_row(&mut b, 9);
                    };
                    let (lease, _, end) = ends[i];
                    b.push_bind(lease.run_id.as_str())
                        .push_bind(lease.attempt)
                        .push_bind(end.status.as_str())
                        .push_bind(end.stop_reason.as_str())
                        .push_bind(end.error.as_deref())
                        .push_bind(end.usage.prompt_tokens as i64)
                        .push_bind(end.usage.completion_tokens as i64)
                        .push_bind(i64::from(end.usage.iterations))
                        .push_bind(i64::from(end.usage.tool_calls));
                });
                qb.push(
                    ") UPDATE runs SET status = v.v_status, stop_reason = v.v_stop, error = v.v_error,
                       prompt_tokens = v.v_prompt, completion_tokens = v.v_completion,
                       iterations = v.v_iterations, tool_calls = v.v_tool_calls, wall_ms = ",
                );
                qb.push_bind(now.as_millis());
                qb.push(" - COALESCE(started_at, ");
                qb.push_bind(now.as_millis());
                qb.push("), finished_at = ");
                qb.push_bind(now.as_millis());
                qb.push(format!(
                    ", lease_owner = NULL, lease_expires_at = NULL
                     FROM v WHERE runs.id = v.v_id AND runs.attempt = v.v_attempt
                       AND runs.status IN ('running', 'waiting_for_input')
                     RETURNING deployment_id, {RUN_COLS}"
                ));
                let rows = qb.build().fetch_all(&mut **tx).await?;
                let mut ended: HashMap<String, (String, Run)> = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let run = run_from_row(row)?;
                    ended.insert(run.id.as_str().to_owned(), (row.try_get("deployment_id")?, run));
                }
                // (entry, deployment, run) of each end that ended, in batch order.
                let mut done: Vec<(usize, &str, &Run)> = Vec::with_capacity(ended.len());
                for &i in &together {
                    match ended.get(ends[i].0.run_id.as_str()) {
                        Some((dep, run)) => done.push((i, dep.as_str(), run)),
                        None => out[i] = Some(Err(StoreError::LeaseLost)),
                    }
                }

                // Their steps' messages, each unless its step key is stored already.
                let mut stored: HashSet<String> = HashSet::new();
                let messages: Vec<(&str, &StepMessage)> = done
                    .iter()
                    .flat_map(|&(i, dep, _)| ends[i].1.iter().map(move |s| (dep, s)))
                    .collect();
                if !messages.is_empty() {
                    let mut rows = Vec::with_capacity(messages.len());
                    for (dep, s) in &messages {
                        let (tool_calls, attachments, usage) = message_json_columns(&s.message)?;
                        rows.push((*dep, *s, tool_calls, attachments, usage));
                    }
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO messages (id, deployment_id, thread_id, run_id, role, content, tool_calls,
                           tool_call_id, tool_name, is_error, attachments, usage, step_key, created_at)
                         SELECT * FROM (",
                    );
                    qb.push_values($crate::bulk::padded(&rows), |mut b, row| {
                        let Some((dep, s, tool_calls, attachments, usage)) = row else {
                            return $crate::bulk::push_null_row(&mut b, 14);
                        };
                        let m = &s.message;
                        b.push_bind(m.id.as_str())
                            .push_bind(*dep)
                            .push_bind(m.thread_id.as_str())
                            .push_bind(m.run_id.as_ref().map(|r| r.as_str()))
                            .push_bind(m.role.as_str())
                            .push_bind(m.content.as_str())
                            .push_bind(tool_calls.as_str())
                            .push_bind(m.tool_call_id.as_deref())
                            .push_bind(m.tool_name.as_deref())
                            .push_bind(i64::from(m.is_error))
                            .push_bind(attachments.as_str())
                            .push_bind(usage.as_deref())
                            .push_bind(s.step_key.as_str())
                            .push_bind(m.created_at.as_millis());
                    });
                    // `WHERE` also tells SQLite's parser that `ON CONFLICT` is the upsert's.
                    qb.push(") WHERE column1 IS NOT NULL ON CONFLICT (run_id, step_key) DO NOTHING RETURNING id");
                    for row in qb.build().fetch_all(&mut **tx).await? {
                        stored.insert(row.try_get("id")?);
                    }
                }

                // Each end's events: its stored messages', then its run's status.
                let mut events: Vec<Vec<NewEvent>> = Vec::with_capacity(done.len());
                // (thread, its runs as a JSON array, its number of events), in order of first end.
                let mut threads: Vec<(&str, Vec<&str>, i64)> = Vec::new();
                let mut thread_at: HashMap<&str, usize> = HashMap::new();
                for &(i, _, run) in &done {
                    let mut mine: Vec<NewEvent> = ends[i]
                        .1
                        .iter()
                        .filter(|s| stored.contains(s.message.id.as_str()))
                        .map(|s| s.event.clone())
                        .collect();
                    mine.push(event::run_status_event(run));
                    let at = *thread_at.entry(run.thread_id.as_str()).or_insert_with(|| {
                        threads.push((run.thread_id.as_str(), Vec::new(), 0));
                        threads.len() - 1
                    });
                    threads[at].1.push(run.id.as_str());
                    threads[at].2 += mine.len() as i64;
                    events.push(mine);
                }
                if threads.is_empty() {
                    return Ok(out);
                }

                // The threads: each frees its active slot if one of these runs holds it, and
                // reserves its events' numbers.
                let mut qb = QueryBuilder::<$db>::new("WITH v (v_thread, v_runs, v_events) AS (");
                let mut rows = Vec::with_capacity(threads.len());
                for (thread, runs, n) in &threads {
                    rows.push((*thread, to_json("run ids", runs)?, *n));
                }
                qb.push_values($crate::bulk::padded(&rows), |mut b, row| {
                    let Some((thread, runs, n)) = row else {
                        return $crate::bulk::push_null_row(&mut b, 3);
                    };
                    b.push_bind(*thread).push_bind(runs.as_str()).push_bind(*n);
                });
                qb.push(
                    ") UPDATE threads SET
                       status = CASE WHEN active_run_id IN (SELECT value FROM json_each(v.v_runs))
                                THEN 'idle' ELSE status END,
                       active_run_id = CASE WHEN active_run_id IN (SELECT value FROM json_each(v.v_runs))
                                       THEN NULL ELSE active_run_id END,
                       last_seq = last_seq + v.v_events, updated_at = ",
                );
                qb.push_bind(now.as_millis());
                qb.push(" FROM v WHERE threads.id = v.v_thread RETURNING id, last_seq");
                let mut next_seq: HashMap<String, i64> = HashMap::with_capacity(threads.len());
                for row in qb.build().fetch_all(&mut **tx).await? {
                    next_seq.insert(row.try_get("id")?, row.try_get("last_seq")?);
                }
                for (thread, _, n) in &threads {
                    let last = next_seq.get_mut(*thread).ok_or_else(|| StoreError::Corrupt(format!("the thread of an ended run is gone: {thread}")))?;
                    // From here on, the thread's next number to hand out.
                    *last -= n - 1;
                }

                let mut rows = Vec::new();
                for (&(_, dep, run), mine) in done.iter().zip(&events) {
                    let first = next_seq.get_mut(run.thread_id.as_str()).ok_or_else(|| StoreError::Corrupt("an ended run without its thread".to_owned()))?;
                    rows.extend(numbered(dep, run.thread_id.as_str(), *first, mine.iter().map(|e| (Some(run.id.as_str()), e))));
                    *first += mine.len() as i64;
                }
                let mut inserted = insert_events_as(tx, &rows, now, true).await?.into_iter();
                drop(rows);
                let mut notifications = vec![Notification::Runs];
                for (thread, _, _) in &threads {
                    notifications.push(Notification::ThreadEvents(id((*thread).to_owned(), ThreadId::parse)?));
                }
                self.notify_many(tx, &notifications).await?;
                for (&(i, _, run), mine) in done.iter().zip(&events) {
                    let stored: Vec<ThreadEvent> = inserted.by_ref().take(mine.len()).collect();
                    out[i] = Some(Ok((run.clone(), stored)));
                }
                Ok(out)
            }
        }

        impl $store {
            /// Stops `open` (the thread's open runs, locked or read by the caller's
            /// transaction): queued ones end `cancelled` at once, others are flagged for their
            /// worker; with their events, and every node's workers woken. Returns them as stopped.
            pub(crate) async fn stop_runs(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                dep: &str,
                thread_id: &ThreadId,
                open: &[Run],
            ) -> StoreResult<Vec<Run>> {
                let mut affected = Vec::new();
                let mut stops = Vec::new();
                for run in open {
                    let (run, stopped_here, events) = stop_run(&mut **tx, run, 1).await?;
                    if !stopped_here {
                        self.notify(tx, &Notification::CancelRun(run.id.clone())).await?;
                    }
                    stops.extend(events.into_iter().map(|e| (run.id.clone(), e)));
                    affected.push(run);
                }
                if !stops.is_empty() {
                    let last = reserve_seqs(&mut **tx, thread_id.as_str(), stops.len()).await?;
                    let rows = numbered(
                        dep,
                        thread_id.as_str(),
                        last - stops.len() as i64 + 1,
                        stops.iter().map(|(r, e): &(RunId, NewEvent)| (Some(r.as_str()), e)),
                    );
                    insert_events(&mut **tx, &rows, Timestamp::now()).await?;
                }
                // A paused run it stopped is released for a worker to end it (settling its actions):
                // wake every node's workers. Cancels are rare; one wake-up too many costs a look.
                self.notify(tx, &Notification::Runs).await?;
                self.notify(tx, &Notification::ThreadEvents(thread_id.clone())).await?;
                Ok(affected)
            }

            /// `cancel_runs`, under `key` when one is given (taken before the thread is read).
            async fn do_cancel_runs(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                key: Option<&IdempotentWrite<'_, [Run]>>,
            ) -> StoreResult<Written<Vec<Run>>> {
                // Deadlocks with a decision on a paused run's actions are possible on PostgreSQL (see
                // `retry_transient`): the aborted transaction runs again.
                $crate::retry_transient(|| async move {
                    let dep = scope.deployment_id().as_str();
                    let mut tx = self.begin_write().await?;
                    if let Some(key) = key {
                        if let Some(first) = take_key(&mut tx, dep, key).await? {
                            return Ok(Written::Replayed(first));
                        }
                    }
                    ensure_thread(&mut tx, dep, thread_id).await?;
                    let open = open_runs(&mut tx, thread_id.as_str()).await?;
                    if open.is_empty() {
                        return Err(StoreError::Conflict(Conflict::RunNotActive));
                    }
                    let affected = self.stop_runs(&mut tx, dep, thread_id, &open).await?;
                    if let Some(key) = key {
                        record_answer(&mut tx, dep, key, &affected[..]).await?;
                    }
                    tx.commit().await?;
                    Ok(Written::Done(affected))
                })
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::RunStore for $store {
            async fn submit_run(&self, scope: &Scope, thread_id: &ThreadId, submit: &SubmitRun) -> StoreResult<SubmitOutcome> {
                // The hot writes: see `write_hot` (SQLite shares transactions between them).
                let job = $crate::sql_runs::HotWrite::Submit {
                    scope: scope.clone(),
                    thread_id: thread_id.clone(),
                    submit: submit.clone(),
                };
                self.write_hot(job).await?.submitted()
            }

            async fn idempotent_result(
                &self,
                scope: &Scope,
                operation: &str,
                key: &str,
                request_hash: &str,
            ) -> StoreResult<Option<serde_json::Value>> {
                let mut conn = self.reader().acquire().await?;
                find_idempotent(&mut conn, scope.deployment_id().as_str(), operation, key, request_hash).await
            }

            async fn cancel_runs(&self, scope: &Scope, thread_id: &ThreadId) -> StoreResult<Vec<Run>> {
                match self.do_cancel_runs(scope, thread_id, None).await? {
                    Written::Done(runs) => Ok(runs),
                    Written::Replayed(_) => Err(StoreError::Corrupt("a cancellation without a key replayed".to_owned())),
                }
            }

            async fn cancel_runs_once(
                &self,
                scope: &Scope,
                thread_id: &ThreadId,
                key: &IdempotentWrite<'_, [Run]>,
            ) -> StoreResult<Written<Vec<Run>>> {
                self.do_cancel_runs(scope, thread_id, Some(key)).await
            }

            async fn get_run(&self, scope: &Scope, thread_id: &ThreadId, run_id: &RunId) -> StoreResult<Run> {
                let row = sqlx::query(&format!(
                    "SELECT {RUN_COLS} FROM runs WHERE id = $1 AND thread_id = $2 AND deployment_id = $3"
                ))
                .bind(run_id.as_str())
                .bind(thread_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Run))?;
                run_from_row(&row)
            }

            async fn claim_runs(&self, owner: &str, now: Timestamp, lease_ms: i64, limit: usize) -> StoreResult<Vec<Claimed>> {
                // The hot writes: see `offload` (SQLite runs them on its writer thread).
                let this = self.clone();
                let owner = owner.to_owned();
                self.offload(async move { this.do_claim_runs(&owner, now, lease_ms, limit).await }).await
            }

            async fn waiting_runs(&self, now: Timestamp) -> StoreResult<$crate::WaitingRuns> {
                // On a reader: no transaction, and never SQLite's writer.
                let waiting: i32 = sqlx::query(WAITING_RUNS)
                    .bind(now.as_millis())
                    .fetch_one(self.reader())
                    .await?
                    .try_get("waiting")?;
                Ok(match waiting {
                    2 => $crate::WaitingRuns::Claimable,
                    1 => $crate::WaitingRuns::Blocked,
                    _ => $crate::WaitingRuns::None,
                })
            }

            async fn heartbeat(&self, lease: &Lease, until: Timestamp) -> StoreResult<CancelRequest> {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(
                    "UPDATE runs SET lease_expires_at = $1
                     WHERE id = $2 AND attempt = $3 AND status IN ('running', 'waiting_for_input')
                     RETURNING cancel_requested",
                )
                .bind(until.as_millis())
                .bind(lease.run_id.as_str())
                .bind(lease.attempt)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::LeaseLost)?;
                let flag: i64 = row.try_get("cancel_requested")?;
                tx.commit().await?;
                Ok(cancel_request(flag))
            }

            async fn record_step(&self, lease: &Lease, step: &[StepMessage]) -> StoreResult<Vec<ThreadEvent>> {
                // The hot writes: see `write_hot` (SQLite shares transactions between them).
                let job = $crate::sql_runs::HotWrite::Step { lease: lease.clone(), step: step.to_vec() };
                self.write_hot(job).await?.stepped()
            }

            async fn append_events(&self, lease: &Lease, events: &[NewEvent]) -> StoreResult<Vec<ThreadEvent>> {
                let mut tx = self.begin_write().await?;
                let (dep, thread_id) = fence(&mut tx, lease).await?;
                let stored = append(&mut tx, &dep, &thread_id, Some(lease.run_id.as_str()), events).await?;
                self.notify(&mut tx, &Notification::ThreadEvents(id(thread_id, ThreadId::parse)?)).await?;
                tx.commit().await?;
                Ok(stored)
            }

            async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query(
                    "UPDATE runs SET lease_expires_at = 0, lease_owner = NULL
                     WHERE id = $1 AND attempt = $2 AND status = 'running'",
                )
                .bind(lease.run_id.as_str())
                .bind(lease.attempt)
                .execute(&mut *tx)
                .await?;
                self.notify(&mut tx, &Notification::Runs).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn finish_run_after(&self, lease: &Lease, step: &[StepMessage], end: &RunEnd) -> StoreResult<(Run, Vec<ThreadEvent>)> {
                // The hot writes: see `write_hot` (SQLite shares transactions between them).
                let job = $crate::sql_runs::HotWrite::Finish {
                    lease: lease.clone(),
                    step: step.to_vec(),
                    end: end.clone(),
                };
                self.write_hot(job).await?.finished()
            }

            async fn prune_idempotency(&self, before: Timestamp) -> StoreResult<u64> {
                let mut tx = self.begin_write().await?;
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
                    .bind(before.as_millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }
        }
    }
    };
}

pub(crate) use impl_run_sql;
