//! Tessera's storage: use-case traits, with SQLite and PostgreSQL implementations.
//!
//! Architecture invariant: every method that touches tenant data takes the caller's [`Scope`]
//! and filters on it in SQL, so an object of another deployment is indistinguishable from a
//! missing one ([`StoreError::NotFound`]). Only the few operator methods documented as such
//! (creating deployments, authenticating a key) work across deployments.
//!
//! Both backends share one SQL implementation (`sql.rs`, written once for both dialects) and
//! differ only in connection set-up, transaction start and migrations. Timestamps are stored as
//! integer milliseconds and JSON as text, so the schemas stay alike.

use std::sync::Arc;

use async_trait::async_trait;
use tessera_domain::agent::MultitaskPolicy;
use tessera_domain::agent::{Agent, AgentSpec};
use tessera_domain::board::{
    BoardItem, BoardItemPatch, FileMeta, ItemStatus, NewBoardItem, WorkspaceId, WorkspacePath,
};
use tessera_domain::event::NewEvent;
use tessera_domain::identity::{
    AuditEvent, BrowserSession, Email, Membership, NewAuditEvent, NewOrganization, NewSession,
    NewUser, Organization, Role, SigningKeyRecord, User, UserCredentials, UserPatch,
};
use tessera_domain::records::{
    Actor, Deployment, DeploymentSettings, NewActor, NewDeployment, NewProject, Project,
    ProjectStatus, SecretKeyRecord,
};
use tessera_domain::secret::SecretHash;
use tessera_domain::session::{
    NewAction, PendingAction, SessionClose, SessionState, UsageGroup, UsageRow, VariablePatch,
};
use tessera_domain::thread::{Message, NewThread, Run, RunStatus, RunUsage, StopReason, Thread};
use tessera_domain::validate::Label;
use tessera_domain::{ActionId, OrganizationId, UserId};
use tessera_domain::{ActorId, AgentId, ProjectId, RunId, Scope, SecretKeyId, ThreadId, Timestamp};
use tessera_domain::{BlobId, BoardItemId, MessageId};

mod bulk;
mod group;
mod migrate;
pub mod postgres;
mod sql;
mod sql_boards;
mod sql_identity;
mod sql_runs;
mod sql_sessions;
mod sql_tickets;
mod sql_toolkits;
mod sql_tools;
pub mod sqlite;
mod sqlite_affinity;
#[cfg(test)]
mod sqlite_batch_tests;
mod sqlite_readers;
#[cfg(feature = "testing")]
pub mod testing;

pub use migrate::MigrationReport;

pub type StoreResult<T> = Result<T, StoreError>;

/// The kinds of object a lookup can fail to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Deployment,
    SecretKey,
    Actor,
    Agent,
    Project,
    Tool,
    Thread,
    Run,
    User,
    Organization,
    Membership,
    BoardItem,
    File,
    /// An API-auth or webhook app named by a ticket's slug.
    App,
    /// A conversation of an agent session (a thread inside the session's partition).
    Context,
    /// A pending action of a session.
    Action,
    /// A pool endpoint response.
    Response,
    /// No agent serves this pool endpoint slug.
    Endpoint,
    /// No toolkit with this slug is enabled in the deployment.
    Toolkit,
}

/// State conflicts the caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conflict {
    ActorExists,
    AgentInUse,
    LastActiveKey,
    DeploymentNameTaken,
    /// An optimistic-concurrency check failed: the row changed since it was read.
    StaleVersion,
    /// The project is archived: nothing new may be created in it.
    ProjectArchived,
    /// The thread already has a run and the agent's multitask policy is `reject`.
    RunActive,
    /// There is no queued or active run to act on (e.g. cancelling a finished run).
    RunNotActive,
    /// An `Idempotency-Key` was reused with a different request.
    IdempotencyKeyReused,
    /// Another user of the deployment has this email.
    EmailTaken,
    /// Another organization of the deployment has this slug.
    OrganizationSlugTaken,
    /// The user is already a member of the organization.
    AlreadyMember,
    /// No agent of the delegation's target lane has every requested capability tag.
    NoCapableAgent,
    /// The board item is archived or cancelled: it cannot be changed any more.
    BoardItemClosed,
    /// A workspace file cannot be written at this path: files lie below it (it is a
    /// directory).
    PathIsDirectory,
    /// A workspace file cannot be written at this path: one of its parent directories is a
    /// file.
    PathUnderFile,
    /// A ticket names an existing named session with another context group.
    NamedSessionGroupMismatch,
    /// A ticket names a named session that does not exist yet, without a context group.
    NamedSessionNeedsGroup,
    /// The user of an impersonation (or user-bound) ticket is disabled.
    UserDisabled,
    /// The session (thread) was closed: it takes no message or change.
    SessionClosed,
    /// The pending action was already confirmed or cancelled.
    ActionDecided,
    /// The pending action expired before this decision.
    ActionExpired,
    /// The tool is attached to an agent: detach it (`tool_ids`) first.
    ToolInUse,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Absent, or belonging to another deployment. `field` names the request field that held
    /// the reference, when the id came from a request body or query.
    #[error("{entity:?} not found")]
    NotFound {
        entity: Entity,
        field: Option<&'static str>,
        index: Option<usize>,
    },
    #[error("conflict: {0:?}")]
    Conflict(Conflict),
    /// The driver's error is part of the message (logs name the failure, e.g. a pool timeout
    /// or a deadlock) rather than a `source`, so that it is not printed twice in cause chains.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// The worker's lease on the run was taken over (its attempt is stale) or the run ended:
    /// the worker must stop without writing.
    #[error("the lease on the run was lost")]
    LeaseLost,
    /// A change that breaks a rule only visible with the stored state (e.g. too many context
    /// variables after a merge). Nothing was changed.
    #[error("invalid: {0}")]
    Invalid(tessera_domain::ValidationError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        Self::Database(err)
    }
}

impl StoreError {
    /// A PostgreSQL deadlock, serialization failure or `NOWAIT` lock refusal: the transaction
    /// failed as a whole and wrote nothing, so running it again is safe (see
    /// [`retry_transient`]).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40P01" | "40001" | "55P03"))
            }
            _ => false,
        }
    }

    pub fn not_found(entity: Entity) -> Self {
        Self::NotFound {
            entity,
            field: None,
            index: None,
        }
    }

    pub fn not_found_at(entity: Entity, field: &'static str) -> Self {
        Self::NotFound {
            entity,
            field: Some(field),
            index: None,
        }
    }

    pub fn not_found_in_list(entity: Entity, field: &'static str, index: usize) -> Self {
        Self::NotFound {
            entity,
            field: Some(field),
            index: Some(index),
        }
    }
}

/// How many times [`retry_transient`] runs a transaction in all.
const TRANSIENT_ATTEMPTS: u32 = 3;

/// Runs a write transaction again when it failed as transient ([`StoreError::is_transient`]).
/// Writers take their locks in one order (runs before threads, see `lock_open_runs`), with
/// known exceptions on PostgreSQL: a decision on a paused run's pending action (a person's
/// confirmation, the expiry and warning sweeps) locks the action first and then its thread and
/// run, while a cancellation, a close or a deleted conversation (`hide_context`) locks the run
/// (and thread) first and then its actions;
/// and the board scheduler's slot claim holds its due items while it locks their threads, which
/// a sweep locking several threads in another order can cross. Each of them can deadlock and
/// runs here, so the one PostgreSQL aborts runs again once the other committed (the sessions
/// conformance tests cause such deadlocks on purpose). A failed attempt has rolled back (its
/// transaction was dropped) before the next one starts.
pub(crate) async fn retry_transient<T, F>(mut transaction: impl FnMut() -> F) -> StoreResult<T>
where
    F: std::future::Future<Output = StoreResult<T>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(e) if e.is_transient() && attempt < TRANSIENT_ATTEMPTS => {
                tracing::info!(attempt, error = %e, "transaction aborted by the database; running it again");
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cursor {
    #[default]
    First,
    /// Items strictly after this id.
    After(String),
    /// Items strictly before this id.
    Before(String),
}

/// A page request. Lists are ordered by id, which orders them by creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Cursor,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 100;

    pub fn first(limit: u32) -> Self {
        Self {
            limit,
            cursor: Cursor::First,
        }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self::first(Self::DEFAULT_LIMIT)
    }
}

/// One page of a list, in ascending id order.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// More items exist beyond this page in the direction of travel.
    pub has_more: bool,
}

/// The storage form of a new secret key: only its hash and display prefix.
#[derive(Debug, Clone)]
pub struct NewSecretKey {
    pub name: Label,
    pub hash: SecretHash,
    pub prefix: String,
}

/// A key that matched: the caller's scope and which key it was.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthenticatedKey {
    pub scope: Scope,
    pub key_id: SecretKeyId,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActorFilter {
    pub subject_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentFilter {
    pub endpoint_slug: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProjectFilter {
    pub actor_id: Option<ActorId>,
    pub agent_id: Option<AgentId>,
    pub status: Option<ProjectStatus>,
}

#[async_trait]
pub trait DeploymentStore {
    /// Operator: creates a deployment and its first secret key in one transaction.
    async fn create_deployment(
        &self,
        new: &NewDeployment,
        first_key: &NewSecretKey,
    ) -> StoreResult<(Deployment, SecretKeyRecord)>;

    /// Operator: creates deployment `default` with `first_key` only if no deployment exists yet.
    /// Returns `None` when the database already had deployments (nothing is changed).
    async fn bootstrap_deployment(
        &self,
        new: &NewDeployment,
        first_key: &NewSecretKey,
    ) -> StoreResult<Option<(Deployment, SecretKeyRecord)>>;

    async fn get_deployment(&self, scope: &Scope) -> StoreResult<Deployment>;

    /// Replaces the deployment's settings.
    async fn update_deployment_settings(
        &self,
        scope: &Scope,
        settings: &DeploymentSettings,
    ) -> StoreResult<Deployment>;

    /// Operator: finds a deployment by its id or name, across all deployments.
    async fn find_deployment(&self, id_or_name: &str) -> StoreResult<Option<Deployment>>;
}

#[async_trait]
pub trait KeyStore {
    /// Resolves a presented key's hash to its deployment. Revoked keys do not match. This is
    /// the one lookup that is not scoped: it is what establishes the scope.
    async fn authenticate_key(
        &self,
        hash: &SecretHash,
        now: Timestamp,
    ) -> StoreResult<Option<AuthenticatedKey>>;

    /// Stores a new key and records `secret_key.created` by `by` in the same transaction.
    async fn create_key(
        &self,
        scope: &Scope,
        new: &NewSecretKey,
        by: &tessera_domain::identity::AuditBy,
    ) -> StoreResult<SecretKeyRecord>;

    async fn list_keys(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Page<SecretKeyRecord>>;

    /// Revokes a key and records `secret_key.revoked` by `by` in the same transaction;
    /// revoking an already revoked key returns it unchanged and records nothing. Refuses to
    /// revoke the deployment's last active key ([`Conflict::LastActiveKey`]).
    async fn revoke_key(
        &self,
        scope: &Scope,
        id: &SecretKeyId,
        by: &tessera_domain::identity::AuditBy,
    ) -> StoreResult<SecretKeyRecord>;
}

#[async_trait]
pub trait ActorStore {
    /// Fails with [`Conflict::ActorExists`] when `(subject_type, external_key)` is taken.
    async fn create_actor(&self, scope: &Scope, new: &NewActor) -> StoreResult<Actor>;

    async fn get_actor(&self, scope: &Scope, id: &ActorId) -> StoreResult<Actor>;

    async fn lookup_actor(
        &self,
        scope: &Scope,
        subject_type: &str,
        external_key: &str,
    ) -> StoreResult<Option<Actor>>;

    async fn list_actors(
        &self,
        scope: &Scope,
        filter: &ActorFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Actor>>;
}

#[async_trait]
pub trait AgentStore {
    /// Checks that every referenced sub-agent and tool exists in the scope.
    async fn create_agent(&self, scope: &Scope, spec: &AgentSpec) -> StoreResult<Agent>;

    async fn get_agent(&self, scope: &Scope, id: &AgentId) -> StoreResult<Agent>;

    async fn list_agents(
        &self,
        scope: &Scope,
        filter: &AgentFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Agent>>;

    /// Replaces the spec if the stored version is still `expected_version`
    /// ([`Conflict::StaleVersion`] otherwise).
    async fn update_agent(
        &self,
        scope: &Scope,
        id: &AgentId,
        expected_version: i64,
        spec: &AgentSpec,
    ) -> StoreResult<Agent>;

    /// Deletes an agent no active project uses ([`Conflict::AgentInUse`] otherwise).
    async fn delete_agent(&self, scope: &Scope, id: &AgentId) -> StoreResult<()>;
}

#[async_trait]
pub trait ProjectStore {
    /// The actor and agent must exist in the scope.
    async fn create_project(&self, scope: &Scope, new: &NewProject) -> StoreResult<Project>;

    async fn get_project(&self, scope: &Scope, id: &ProjectId) -> StoreResult<Project>;

    async fn list_projects(
        &self,
        scope: &Scope,
        filter: &ProjectFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Project>>;

    /// Archives a project; archiving an archived project returns it unchanged.
    async fn archive_project(&self, scope: &Scope, id: &ProjectId) -> StoreResult<Project>;
}

/// Order of a message list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    #[default]
    OldestFirst,
    NewestFirst,
}

/// A stored thread event.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadEvent {
    pub thread_id: ThreadId,
    /// Position in the thread's log, from 1.
    pub seq: i64,
    pub run_id: Option<RunId>,
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: Timestamp,
}

/// An idempotency record: the first answer to a request, kept to answer its retries.
#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    /// The operation the key is scoped to (`executeAgentThreadAsync:<thread id>`).
    pub operation: String,
    pub key: String,
    /// Digest of the request, to refuse the same key with a different request.
    pub request_hash: String,
    /// The answer to replay.
    pub result: serde_json::Value,
}

/// An idempotency key taken and recorded by the transaction of the write it guards, so that a
/// retry after a lost answer or a crash replays the first answer instead of repeating the
/// write or being refused by its outcome. A concurrent request with the same key waits for the
/// first one's transaction, then replays its answer.
pub struct IdempotentWrite<'a, T: ?Sized> {
    /// The operation the key is scoped to (`executeAgentThreadAsync:<thread id>`).
    pub operation: &'a str,
    pub key: &'a str,
    /// Digest of the request, to refuse the same key with a different request.
    pub request_hash: &'a str,
    /// Makes the answer to record from what the write did.
    pub answer: &'a (dyn Fn(&T) -> serde_json::Value + Send + Sync),
}

/// What an idempotent write did.
#[derive(Debug, Clone, PartialEq)]
pub enum Written<T> {
    /// The write happened; its answer is recorded under the key.
    Done(T),
    /// The key was recorded before, for the same request: its first answer (nothing written).
    Replayed(serde_json::Value),
}

/// A user message that starts a run — or, when the thread's run waits on an `ask_user`
/// question, answers it: then the message joins that run (which resumes) instead of starting
/// `run_id`, bypassing the multitask policy; the outcome's `run` is the resumed run, and every
/// string equal to `run_id` in the idempotency `result` is replaced by that run's id. Ids and
/// timestamps are made by the caller so that the events stored with the rows can carry them.
#[derive(Debug, Clone)]
pub struct SubmitRun {
    pub message: Message,
    pub run_id: RunId,
    /// What to do while the thread has an open run; `None`: the thread's agent's policy
    /// ([`tessera_domain::agent::AgentSpec::multitask`], the default when the agent was
    /// deleted), read by the submission's own transaction.
    pub policy: Option<MultitaskPolicy>,
    pub idempotency: Option<Idempotency>,
    /// The thread does not exist yet (`askAgentPool`'s new session): it is created as
    /// `thread_id` from this in the submission's transaction, after the idempotency key is
    /// taken, so a refused submission leaves no thread behind and a retry with the same key
    /// creates none.
    pub new_thread: Option<Box<NewThread>>,
    /// A browser session's message: a conversation the session deleted (hidden, see
    /// [`TicketStore::hide_context`]) takes none (`NotFound(Context)`).
    pub refuse_hidden: bool,
    /// Context variables to merge into the session with the message (`askAgentPool`), in the
    /// same transaction: a refused message merges nothing, a refused merge sends nothing.
    pub variables: tessera_domain::session::VariablePatch,
    /// The caller has a free worker: when nothing else is open on the thread, the run is
    /// claimed for it in the same transaction (see [`StartHere`]).
    pub start: Option<StartHere>,
}

/// A submission's run claimed at once by the submitting node, which has a free worker waiting:
/// the claim a worker would otherwise make in a transaction of its own right after. The run is
/// stored `running` with attempt 1 and a lease held by `owner` until `now + lease_ms`, the
/// thread's active slot is taken, and its `run.status` events are `queued` then `running`. A
/// node that dies before executing it loses nothing: the lease expires and any node resumes the
/// run, as with any claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartHere {
    pub owner: String,
    pub lease_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SubmitOutcome {
    /// The message was stored and the run queued. `interrupted` lists runs the `interrupt`
    /// policy asked to stop. `started`: the run was claimed for the caller ([`StartHere`]);
    /// its events are in `events` (the claim's own `events` are empty).
    Created {
        run: Run,
        interrupted: Vec<RunId>,
        events: Vec<ThreadEvent>,
        started: Option<Box<Claimed>>,
    },
    /// The idempotency key was seen before with the same request: its first answer.
    Replayed { result: serde_json::Value },
}

/// A worker's claim on a run: the attempt number is its fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: RunId,
    pub attempt: i64,
}

/// A run claimed by a worker, with what it needs to execute it.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub scope: Scope,
    pub run: Run,
    pub thread: Thread,
    pub lease: Lease,
    /// A stop requested before this claim (e.g. a cancel while the previous node was dying).
    pub stop: CancelRequest,
    /// Events the claim appended (`run.status` running).
    pub events: Vec<ThreadEvent>,
}

/// What waits for the workers ([`RunStore::waiting_runs`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitingRuns {
    /// No run is queued, and no lease has expired.
    None,
    /// Runs are queued, but each waits for its thread's open run to end.
    Blocked,
    /// A claim would find a run.
    Claimable,
}

/// Whether someone asked the run to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelRequest {
    #[default]
    None,
    Cancel,
    /// A newer message interrupted the run (`multitask: interrupt`).
    Interrupt,
}

/// A message a worker stores as one durable step. `step_key` is unique within the run, so
/// storing the same step twice keeps the first.
#[derive(Debug, Clone)]
pub struct StepMessage {
    pub message: Message,
    pub step_key: String,
    pub event: NewEvent,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    pub status: RunStatus,
    pub stop_reason: StopReason,
    pub error: Option<String>,
    pub usage: RunUsage,
}

/// A wake-up from another node (PostgreSQL `NOTIFY`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Runs were queued or cancelled: workers should look.
    Runs,
    /// A thread has new events.
    ThreadEvents(ThreadId),
    /// A run was asked to stop.
    CancelRun(RunId),
    /// Pending actions were created: schedulers should recompute their next deadline.
    Actions,
}

#[async_trait]
pub trait ThreadStore {
    /// The project must exist in the scope ([`Entity::Project`]) and be active
    /// ([`Conflict::ProjectArchived`]).
    async fn create_thread(&self, scope: &Scope, new: &NewThread) -> StoreResult<Thread>;

    async fn get_thread(&self, scope: &Scope, id: &ThreadId) -> StoreResult<Thread>;

    async fn list_messages(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        page: &PageRequest,
        order: Order,
    ) -> StoreResult<Page<Message>>;

    /// Every message of the thread, oldest first (the model's context).
    async fn thread_history(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
    ) -> StoreResult<Vec<Message>>;

    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events_after(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<ThreadEvent>>;
}

#[async_trait]
pub trait RunStore {
    /// Stores a user message and queues its run in one transaction, applying the multitask
    /// policy ([`Conflict::RunActive`] for `reject`) and the idempotency key; a message that
    /// answers an open `ask_user` question resumes the waiting run instead (see [`SubmitRun`]).
    async fn submit_run(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        submit: &SubmitRun,
    ) -> StoreResult<SubmitOutcome>;

    /// A recorded answer for this idempotency key, if any ([`Conflict::IdempotencyKeyReused`]
    /// when the key was used for a different request).
    async fn idempotent_result(
        &self,
        scope: &Scope,
        operation: &str,
        key: &str,
        request_hash: &str,
    ) -> StoreResult<Option<serde_json::Value>>;

    /// Cancels the thread's queued runs and flags its active run for its worker. Returns the
    /// runs affected; [`Conflict::RunNotActive`] when there are none.
    async fn cancel_runs(&self, scope: &Scope, thread_id: &ThreadId) -> StoreResult<Vec<Run>>;

    /// [`RunStore::cancel_runs`] under an idempotency key (see [`IdempotentWrite`]): the key is
    /// taken before anything is read, so a replay answers even once no run is left to cancel
    /// (or the thread is gone); a refusal records nothing.
    async fn cancel_runs_once(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        key: &IdempotentWrite<'_, [Run]>,
    ) -> StoreResult<Written<Vec<Run>>>;

    async fn get_run(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        run_id: &RunId,
    ) -> StoreResult<Run>;

    /// Worker: claims up to `limit` of the oldest claimable runs in one transaction — a queued
    /// run first in its thread's queue whose thread has no active run, or a running run whose
    /// lease expired (these first) — taking a lease until `now + lease_ms` and incrementing
    /// each one's attempt. At most one run per thread.
    async fn claim_runs(
        &self,
        owner: &str,
        now: Timestamp,
        lease_ms: i64,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>>;

    /// Worker: whether [`RunStore::claim_runs`] would find a run now, read without a
    /// transaction (most wake-ups find none: looking costs a read, claiming a write).
    async fn waiting_runs(&self, now: Timestamp) -> StoreResult<WaitingRuns>;

    /// Worker: [`RunStore::claim_runs`] for a single run.
    async fn claim_run(
        &self,
        owner: &str,
        now: Timestamp,
        lease_ms: i64,
    ) -> StoreResult<Option<Claimed>> {
        Ok(self.claim_runs(owner, now, lease_ms, 1).await?.pop())
    }

    /// Worker: extends the lease; [`StoreError::LeaseLost`] when it was taken over.
    async fn heartbeat(&self, lease: &Lease, until: Timestamp) -> StoreResult<CancelRequest>;

    /// Worker: stores messages (one durable step) with their events, fenced by the lease.
    async fn record_step(
        &self,
        lease: &Lease,
        step: &[StepMessage],
    ) -> StoreResult<Vec<ThreadEvent>>;

    /// Worker: appends events, fenced by the lease.
    async fn append_events(
        &self,
        lease: &Lease,
        events: &[NewEvent],
    ) -> StoreResult<Vec<ThreadEvent>>;

    /// Worker: gives the run up without ending it (the node is stopping): its lease expires now,
    /// so any node resumes it at once from its stored steps.
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// Worker: ends the run, frees the thread for its next run, fenced by the lease.
    async fn finish_run(
        &self,
        lease: &Lease,
        end: &RunEnd,
    ) -> StoreResult<(Run, Vec<ThreadEvent>)> {
        self.finish_run_after(lease, &[], end).await
    }

    /// Worker: stores a last step (as [`RunStore::record_step`]) and ends the run in the same
    /// transaction, so that a run's final answer costs one commit, not two.
    async fn finish_run_after(
        &self,
        lease: &Lease,
        step: &[StepMessage],
        end: &RunEnd,
    ) -> StoreResult<(Run, Vec<ThreadEvent>)>;

    /// Deletes idempotency records older than `before`.
    async fn prune_idempotency(&self, before: Timestamp) -> StoreResult<u64>;
}

// ---------------------------------------------------------------------------------------------
// Identity: users, organizations, browser sessions, sign-in throttling, the audit log and
// token signing keys (`sql_identity.rs`).

#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserFilter {
    /// Only the user with this (normalized) email.
    pub email: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only events of this kind (`user.signed_in`, …).
    pub kind: Option<String>,
}

/// Whose sign-in failures a throttle counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle<'a> {
    /// A deployment's users (`signIn`): each deployment counts its own.
    Deployment(&'a Scope),
    /// The installation's console admins (`consoleSignIn`): one count, whichever deployment's
    /// host the request came through.
    Console,
}

/// A sign-in throttling bucket (`account:<email>`, `ip:<address>`) and its failure limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleBucket {
    pub key: String,
    pub max_failures: u32,
}

/// What [`IdentityStore::count_sign_in_attempt`] counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInCount {
    /// How long to wait (ms) when a bucket is now over its limit: the attempt must then be
    /// refused.
    pub wait_ms: Option<i64>,
    /// The start (ms) of the window each bucket counted the attempt in, in the buckets'
    /// order: a take-back names it.
    pub windows: Vec<i64>,
}

#[async_trait]
pub trait IdentityStore {
    /// Fails with [`Conflict::EmailTaken`] when another user of the deployment has the email.
    /// Records `user.created` by `by` in the same transaction.
    async fn create_user(
        &self,
        scope: &Scope,
        new: &NewUser,
        by: &tessera_domain::identity::AuditBy,
    ) -> StoreResult<User>;

    async fn get_user(&self, scope: &Scope, id: &UserId) -> StoreResult<User>;

    /// The user with this email and their password hash, for sign-in.
    async fn user_credentials(
        &self,
        scope: &Scope,
        email: &Email,
    ) -> StoreResult<Option<UserCredentials>>;

    async fn list_users(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<User>>;

    /// Applies the fields of `patch` that are set ([`Conflict::EmailTaken`] on a taken email).
    async fn update_user(&self, scope: &Scope, id: &UserId, patch: &UserPatch)
        -> StoreResult<User>;

    /// Deletes the user, their memberships and their browser sessions, and records
    /// `user.deleted` by `by`, in one transaction. Audit events keep the user's id.
    async fn delete_user(
        &self,
        scope: &Scope,
        id: &UserId,
        by: &tessera_domain::identity::AuditBy,
    ) -> StoreResult<()>;

    /// Disables or enables a user. Disabling ends every browser session of the user in the
    /// same transaction; returns the user and how many sessions ended. Records
    /// `user.disabled` (with `sessions_ended`) or `user.enabled` by `by` in that transaction too.
    async fn set_user_disabled(
        &self,
        scope: &Scope,
        id: &UserId,
        disabled: bool,
        by: &tessera_domain::identity::AuditBy,
    ) -> StoreResult<(User, u64)>;

    /// Fails with [`Conflict::OrganizationSlugTaken`] when the slug is taken.
    async fn create_organization(
        &self,
        scope: &Scope,
        new: &NewOrganization,
    ) -> StoreResult<Organization>;

    async fn get_organization(
        &self,
        scope: &Scope,
        id: &OrganizationId,
    ) -> StoreResult<Organization>;

    async fn list_organizations(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Page<Organization>>;

    /// The organization ([`Entity::Organization`]) and the user ([`Entity::User`], field
    /// `user_id`) must exist in the scope; [`Conflict::AlreadyMember`] when already a member.
    async fn add_member(
        &self,
        scope: &Scope,
        organization_id: &OrganizationId,
        user_id: &UserId,
        role: Role,
    ) -> StoreResult<Membership>;

    /// Removes a membership ([`Entity::Membership`] when there is none). Browser sessions of
    /// the user that had this organization active lose it.
    async fn remove_member(
        &self,
        scope: &Scope,
        organization_id: &OrganizationId,
        user_id: &UserId,
    ) -> StoreResult<()>;

    async fn list_members(
        &self,
        scope: &Scope,
        organization_id: &OrganizationId,
        page: &PageRequest,
    ) -> StoreResult<Page<Membership>>;

    /// Every membership of a user with its organization, oldest first.
    async fn user_memberships(
        &self,
        scope: &Scope,
        user_id: &UserId,
    ) -> StoreResult<Vec<(Membership, Organization)>>;

    async fn create_session(&self, scope: &Scope, new: &NewSession) -> StoreResult<BrowserSession>;

    /// The live session with this cookie hash: not past its absolute or idle expiry. A use at
    /// least a minute after the last recorded one moves the idle expiry to `now + idle_ms`
    /// (never past the absolute expiry).
    async fn find_session(
        &self,
        scope: &Scope,
        hash: &SecretHash,
        now: Timestamp,
        idle_ms: i64,
    ) -> StoreResult<Option<BrowserSession>>;

    /// Rotation: deletes the session with hash `old` (if any) and creates `new`, in one
    /// transaction, so the old cookie value stops working at the moment the new one exists.
    /// `audit` (a sign-in's `user.signed_in`) is recorded in that transaction.
    async fn replace_session(
        &self,
        scope: &Scope,
        old: Option<&SecretHash>,
        new: &NewSession,
        audit: Option<&tessera_domain::identity::NewAuditEvent>,
    ) -> StoreResult<BrowserSession>;

    /// Rotation of a live session (a signed-in browser switching its active organization):
    /// deletes the session with hash `old` and creates `new` in its place, in one
    /// transaction. The old session must still be live at `new.now`, else
    /// `NotFound(User)` (as for a user gone or disabled) and nothing is created: a session
    /// ended meanwhile (signed out, or revoked by a replay of the ticket it came from) stays
    /// ended. What made the old session carries over: its impersonator and the ticket it came
    /// from (so that a replay of that ticket still revokes the new session), and its absolute
    /// limit when earlier than `new.expires_at`; `new.impersonation` is not used. A
    /// `new.active_organization_id` the user is not a member of (or no longer, when a removal
    /// commits first) is `NotFound(Organization)` and nothing changes. `audit` (the switch's
    /// `user.active_organization_changed`) is recorded in the same transaction.
    async fn rotate_session(
        &self,
        scope: &Scope,
        old: &SecretHash,
        new: &NewSession,
        audit: Option<&tessera_domain::identity::NewAuditEvent>,
    ) -> StoreResult<BrowserSession>;

    /// Ends the session with this hash. `audit` (a sign-out's `user.signed_out`) is recorded
    /// in the same transaction, only when a session ended.
    async fn delete_session(
        &self,
        scope: &Scope,
        hash: &SecretHash,
        audit: Option<&tessera_domain::identity::NewAuditEvent>,
    ) -> StoreResult<()>;

    /// Milliseconds until sign-in is allowed again when one of `buckets` has reached its limit
    /// within the current window; `None` when sign-in may be attempted.
    async fn sign_in_blocked(
        &self,
        throttle: Throttle<'_>,
        buckets: &[ThrottleBucket],
        now: Timestamp,
        window_ms: i64,
    ) -> StoreResult<Option<i64>>;

    /// Counts a sign-in attempt in each bucket (a bucket whose window has passed starts again),
    /// before the password is checked, so that attempts made at the same time cannot all pass
    /// a check made before any of them was counted.
    async fn count_sign_in_attempt(
        &self,
        throttle: Throttle<'_>,
        buckets: &[ThrottleBucket],
        now: Timestamp,
        window_ms: i64,
    ) -> StoreResult<SignInCount>;

    /// Takes back one attempt of a bucket counted in the window that started at `window` (ms,
    /// as [`SignInCount::windows`] gave it): a sign-in that succeeded, was refused by the
    /// limit, or whose password was never checked. Once the bucket's window started again (or
    /// its failures were cleared) the attempt is gone already, and a failure counted since
    /// stays.
    async fn uncount_sign_in_attempt(
        &self,
        throttle: Throttle<'_>,
        bucket: &str,
        window: i64,
    ) -> StoreResult<()>;

    /// Forgets the failures of a bucket (after a successful sign-in to that account).
    async fn clear_sign_in_failures(&self, throttle: Throttle<'_>, bucket: &str)
        -> StoreResult<()>;

    async fn record_audit(&self, scope: &Scope, event: &NewAuditEvent) -> StoreResult<AuditEvent>;

    async fn list_audit_events(
        &self,
        scope: &Scope,
        filter: &AuditFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<AuditEvent>>;

    /// Operator: the oldest deployment whose backend or frontend host is one of `origins`
    /// (`scheme://host[:port]`). This is what maps a browser request to its deployment.
    async fn deployment_for_origin(&self, origins: &[String]) -> StoreResult<Option<Deployment>>;
}

/// The installation's token signing keys. Not tenant data: one set signs the tokens of every
/// deployment (each token names its deployment).
#[async_trait]
pub trait SigningKeyStore {
    /// Every key, newest first.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>>;

    /// Stores `new` unless a current (not retired) key exists; returns the current key. Safe
    /// when several nodes start at once: exactly one key results.
    async fn ensure_signing_key(&self, new: &SigningKeyRecord) -> StoreResult<SigningKeyRecord>;

    /// Retires the current keys and stores `new` as the current one.
    async fn rotate_signing_key(&self, new: &SigningKeyRecord) -> StoreResult<SigningKeyRecord>;
}

// ---------------------------------------------------------------------------------------------
// Session tickets, agent sessions and their conversations, and console administrators
// (`sql_tickets.rs`).

/// A ticket to store: its hash only, what it grants and who minted it.
#[derive(Debug, Clone)]
pub struct NewTicket {
    pub hash: SecretHash,
    pub grant: tessera_domain::ticket::TicketGrant,
    pub issuer: tessera_domain::ticket::Issuer,
    pub now: Timestamp,
    pub expires_at: Timestamp,
    /// Who asked, for the audit event an impersonation ticket's mint records in its own
    /// transaction (`session_ticket.created`).
    pub client: tessera_domain::identity::AuditClient,
}

/// What an exchange needs besides the ticket: the browser's current session (if its cookie is
/// live), and the secrets prepared for what the exchange may create.
#[derive(Debug, Clone)]
pub struct ExchangeTicket {
    /// SHA-256 of the presented ticket.
    pub hash: SecretHash,
    pub now: Timestamp,
    /// The hash of the browser's session cookie, when it sent one.
    pub browser_session: Option<SecretHash>,
    /// The browser session to create: for an agent_access ticket when the browser has no live
    /// session; for an impersonation ticket always (it replaces the current one, with the
    /// user, the impersonator and a lifetime capped at `impersonation_ms`).
    pub new_browser_session: NewSession,
    /// SHA-256 of the agent session's bearer token (`session_token`).
    pub session_token: SecretHash,
    /// Lifetime of the agent session.
    pub session_lifetime_ms: i64,
    /// Longest an impersonation browser session lives.
    pub impersonation_ms: i64,
    /// External key of the actor an anonymous ticket creates (`anonymous`/<key>).
    pub anonymous_key: String,
    /// Who presented the ticket, for the audit events the exchange records in its own
    /// transaction: `user.impersonation_started` when an impersonation ticket signs the browser
    /// in, `session_ticket.replayed` when a used ticket comes back.
    pub client: tessera_domain::identity::AuditClient,
}

/// How an exchange ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeOutcome {
    /// An agent_access ticket opened `session`, now the browser session's active one (any older
    /// one was ended in the same transaction). `browser_created` when `browser` is the new
    /// session of [`ExchangeTicket::new_browser_session`]. `actor` is the session's actor and
    /// `agents` its agents that exist (in the session's order), as of the same transaction: what
    /// the exchange's answer shows, without reading them again.
    Agent {
        ticket: tessera_domain::ticket::SessionTicket,
        session: tessera_domain::ticket::AgentSession,
        browser: BrowserSession,
        browser_created: bool,
        actor: Actor,
        agents: Vec<Agent>,
    },
    /// An impersonation ticket signed the browser in as `user` (the old browser session, if
    /// any, was deleted).
    Impersonation {
        ticket: tessera_domain::ticket::SessionTicket,
        user: User,
        browser: BrowserSession,
    },
    /// Unknown, expired or already used: all answered alike. `replayed` is the used ticket
    /// presented again (its sessions were revoked and the replay recorded in the audit log, in
    /// the same transaction).
    Invalid {
        replayed: Option<tessera_domain::ticket::SessionTicket>,
    },
    /// A signin ticket, and the browser has no signed-in user. The ticket was not consumed.
    SigninRequired,
}

#[async_trait]
pub trait TicketStore {
    /// Stores a ticket after checking its references in the scope: every agent
    /// ([`Entity::Agent`], field `agent_ids[i]`), the actor (`actor_id`), the user (`user_id`),
    /// the app ([`Entity::App`]), and the named session's context group
    /// ([`Conflict::NamedSessionGroupMismatch`], [`Conflict::NamedSessionNeedsGroup`]).
    async fn create_ticket(
        &self,
        scope: &Scope,
        new: &NewTicket,
    ) -> StoreResult<tessera_domain::ticket::SessionTicket>;

    /// Redeems a ticket of the scope: one conditional UPDATE (`… WHERE hash = ? AND
    /// redeemed_at IS NULL AND expires_at > now`) decides the single winner; in the same
    /// transaction the actor and context group are resolved and the agent (or browser) session
    /// is created. A used ticket presented again revokes what it opened. An app ticket is
    /// refused with [`Entity::App`] and left unredeemed (the API-auth and webhook pages do not
    /// exist yet).
    async fn exchange_ticket(
        &self,
        scope: &Scope,
        exchange: &ExchangeTicket,
    ) -> StoreResult<ExchangeOutcome>;

    /// The live agent session of a browser session (not ended, not expired), if any.
    async fn active_agent_session(
        &self,
        scope: &Scope,
        browser_session: &tessera_domain::SessionId,
        now: Timestamp,
    ) -> StoreResult<Option<tessera_domain::ticket::AgentSession>>;

    /// The live agent session whose bearer token has this hash.
    async fn agent_session_by_token(
        &self,
        scope: &Scope,
        token: &SecretHash,
        now: Timestamp,
    ) -> StoreResult<Option<tessera_domain::ticket::AgentSession>>;

    /// The conversations of the session's partition (its actor, agents and context group),
    /// in id order.
    async fn list_contexts(
        &self,
        scope: &Scope,
        session: &tessera_domain::ticket::AgentSession,
        page: &PageRequest,
    ) -> StoreResult<Page<Thread>>;

    /// A conversation inside the session's partition ([`Entity::Context`] otherwise).
    async fn get_context(
        &self,
        scope: &Scope,
        session: &tessera_domain::ticket::AgentSession,
        id: &ThreadId,
    ) -> StoreResult<Thread>;

    /// Creates a conversation with one of the session's agents, in the actor project of the
    /// session's actor and that agent (found, or created in the same transaction).
    async fn create_context(
        &self,
        scope: &Scope,
        session: &tessera_domain::ticket::AgentSession,
        agent_id: &AgentId,
        title: &Label,
    ) -> StoreResult<Thread>;

    async fn rename_context(
        &self,
        scope: &Scope,
        session: &tessera_domain::ticket::AgentSession,
        id: &ThreadId,
        title: &Label,
    ) -> StoreResult<Thread>;

    /// Hides a conversation from the session's partition (the backend keeps the thread) and
    /// stops its open runs, in one transaction: a message the session sends meanwhile either
    /// starts a run this stops, or is refused once the conversation is hidden (see
    /// [`SubmitRun::refuse_hidden`]). Returns the runs stopped (as [`RunStore::cancel_runs`]).
    async fn hide_context(
        &self,
        scope: &Scope,
        session: &tessera_domain::ticket::AgentSession,
        id: &ThreadId,
    ) -> StoreResult<Vec<Run>>;
}

/// Console administrators: installation-wide, not tenant data.
#[async_trait]
pub trait ConsoleStore {
    /// Operator: creates the first admin unless one exists; `Some` when this call created it.
    async fn bootstrap_console_admin(
        &self,
        username: &str,
        password_hash: &tessera_domain::password::PasswordHash,
    ) -> StoreResult<Option<tessera_domain::ticket::ConsoleAdmin>>;

    /// The admin with this username and their password hash, for sign-in.
    async fn console_admin_credentials(
        &self,
        username: &str,
    ) -> StoreResult<
        Option<(
            tessera_domain::ticket::ConsoleAdmin,
            tessera_domain::password::PasswordHash,
        )>,
    >;

    async fn create_console_session(
        &self,
        admin: &tessera_domain::AdminId,
        hash: &SecretHash,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> StoreResult<()>;

    /// The admin of a live console session.
    async fn find_console_session(
        &self,
        hash: &SecretHash,
        now: Timestamp,
    ) -> StoreResult<Option<(tessera_domain::ticket::ConsoleAdmin, Timestamp)>>;

    async fn delete_console_session(&self, hash: &SecretHash) -> StoreResult<()>;
}

// ---------------------------------------------------------------------------------------------
// Session management: closing sessions, context variables, pending actions, pool routing and
// usage (`sql_sessions.rs`).

/// What a pool response shows about its run.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseView {
    pub run: Run,
    pub thread: Thread,
    /// The run's last assistant message with text, if any.
    pub answer: Option<Message>,
    /// The run's actions still waiting for a decision (confirmations only).
    pub pending: Vec<PendingAction>,
    /// The run's `ask_user` questions still waiting for an answer (the person's next message).
    pub questions: Vec<PendingAction>,
    /// Final outcomes of the thread's actions reported by this response (claimed for it the
    /// first time it is shown complete, so each outcome is reported by one response).
    pub action_results: Vec<PendingAction>,
    pub session: SessionState,
}

#[async_trait]
pub trait SessionStore {
    /// The session state of a thread ([`Entity::Thread`] when absent).
    async fn session_state(&self, scope: &Scope, thread_id: &ThreadId)
        -> StoreResult<SessionState>;

    /// Merges `patch` into the thread's variables in one transaction: a result over the limits
    /// is [`StoreError::Invalid`] and changes nothing; a closed session is
    /// [`Conflict::SessionClosed`]. Returns `(entries that changed, variables after)`.
    async fn update_variables(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        patch: &VariablePatch,
    ) -> StoreResult<(usize, usize)>;

    /// Closes a session (a second close returns the first record): cancels its queued runs,
    /// asks its active run to stop and cancels its open pending actions. Returns the record,
    /// the active runs to stop, and the events stored.
    async fn close_session(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        now: Timestamp,
    ) -> StoreResult<(SessionClose, Vec<RunId>, Vec<ThreadEvent>)>;

    /// Worker: pauses the run in `waiting_for_input` with these actions (a call that already
    /// has one keeps it), releasing the lease. Fenced by the lease.
    async fn pause_run(
        &self,
        lease: &Lease,
        actions: &[NewAction],
    ) -> StoreResult<(Vec<PendingAction>, Vec<ThreadEvent>)>;

    /// Every action of a run, oldest first.
    async fn run_actions(&self, scope: &Scope, run_id: &RunId) -> StoreResult<Vec<PendingAction>>;

    /// Worker: marks a confirmed action as executing, durably, before its tool starts. Returns
    /// the action's status before: `Confirmed` means the caller may execute it now; anything
    /// else means it must not (it started before, or has a result already).
    async fn start_action(&self, lease: &Lease, call_id: &str) -> StoreResult<PendingAction>;

    /// Worker: records what an executing action's tool returned.
    async fn finish_action(
        &self,
        lease: &Lease,
        call_id: &str,
        result: &Result<String, String>,
    ) -> StoreResult<()>;

    /// Worker, when a run that had actions ends: gives each of its actions left unfinished a
    /// final status — `pending` and `confirmed` (never started) become `cancelled`, `executing`
    /// (the tool was stopped midway, its outcome unknown) becomes `failed` — with `reason` as
    /// the result. Fenced; idempotent. Returns the `pending_action.resolved` events stored.
    async fn settle_actions(&self, lease: &Lease, reason: &str) -> StoreResult<Vec<ThreadEvent>>;

    /// Confirms or cancels a pending action with one conditional update, so of concurrent
    /// decisions exactly one wins ([`Conflict::ActionDecided`] for the others,
    /// [`Conflict::ActionExpired`] past `expires_at`). When it was the run's last open action
    /// the run resumes. Returns the action and the events stored.
    async fn resolve_action(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        action_id: &ActionId,
        confirmed: bool,
        now: Timestamp,
    ) -> StoreResult<(PendingAction, Vec<ThreadEvent>)>;

    /// [`SessionStore::resolve_action`] under an idempotency key (see [`IdempotentWrite`]): a replay
    /// answers even once the action is decided or expired; a refusal records nothing.
    async fn resolve_action_once(
        &self,
        scope: &Scope,
        thread_id: &ThreadId,
        action_id: &ActionId,
        confirmed: bool,
        now: Timestamp,
        key: &IdempotentWrite<'_, PendingAction>,
    ) -> StoreResult<Written<(PendingAction, Vec<ThreadEvent>)>>;

    /// Scheduler: expires every pending action due at `now` (each by a conditional update, so
    /// across nodes exactly one expires it) and resumes their runs; returns the events stored.
    async fn expire_due_actions(&self, now: Timestamp) -> StoreResult<Vec<ThreadEvent>>;

    /// Scheduler: stores a `pending_action.expiring` event for each pending action whose
    /// warning is due (once per action, across nodes).
    async fn warn_expiring_actions(&self, now: Timestamp) -> StoreResult<Vec<ThreadEvent>>;

    /// Scheduler: the earliest warning or expiry still due, across deployments.
    async fn next_action_deadline(&self) -> StoreResult<Option<Timestamp>>;

    /// Worker (`request_variables`): records variable names the agent asks for. Fenced.
    async fn request_variables(
        &self,
        lease: &Lease,
        names: &[String],
        reason: Option<&str>,
    ) -> StoreResult<Vec<ThreadEvent>>;

    /// The agents serving pool `slug` (deleted agents serve none) and how many open runs each
    /// has, oldest agent first.
    async fn pool_agents(&self, scope: &Scope, slug: &str) -> StoreResult<Vec<(AgentId, i64)>>;

    /// What a pool response shows: its run ([`Entity::Response`] when absent) and around it.
    /// `claim_results`: a finished response claims the thread's unreported action outcomes.
    async fn response_view(
        &self,
        scope: &Scope,
        run_id: &RunId,
        claim_results: bool,
    ) -> StoreResult<ResponseView>;

    /// Usage of the sessions and runs created in `[from, to)`, grouped.
    async fn usage(
        &self,
        scope: &Scope,
        from: Timestamp,
        to: Timestamp,
        group: UsageGroup,
        now: Timestamp,
    ) -> StoreResult<Vec<UsageRow>>;
}

// ---------------------------------------------------------------------------------------------
// Task boards: board items, schedule slots and task workspaces (`sql_boards.rs`).

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BoardItemFilter {
    pub status: Option<ItemStatus>,
    /// `Some(true)`: only archived items; `Some(false)`: only items not archived; `None`: all.
    pub archived: Option<bool>,
}

/// What a claimed slot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOutcome {
    /// A run executes the item's description (`run_id`).
    Fired,
    /// The previous run was still open and the overlap policy is `skip`.
    Skipped,
    /// The run could not be queued (the item's thread is gone).
    Failed,
}

impl SlotOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fired => "fired",
            Self::Skipped => "skipped",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "fired" => Some(Self::Fired),
            "skipped" => Some(Self::Skipped),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// A slot recorded by [`BoardStore::claim_due_slots`]: exactly one such record exists per
/// `(item, slot)`, whichever node claimed it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRecord {
    pub scope: Scope,
    pub item_id: BoardItemId,
    pub slot_at: Timestamp,
    pub outcome: SlotOutcome,
    pub thread_id: ThreadId,
    /// The run the slot queued (`None` when skipped).
    pub run_id: Option<RunId>,
    pub message_id: Option<MessageId>,
    /// The item's description: the run's input.
    pub description: String,
    /// The node that claimed it.
    pub node: String,
    pub fired_at: Timestamp,
    /// Events stored with the run (`message.created`, `run.status`), to publish; empty when
    /// read back with [`BoardStore::list_slots`].
    pub events: Vec<ThreadEvent>,
}

#[async_trait]
pub trait BoardStore {
    /// Creates an item with the next `TASK-n` key of the project (which must exist in the scope
    /// and be active), assigning it as [`Assignment`] says. Without a schedule, its one slot is
    /// due now.
    async fn create_board_item(&self, scope: &Scope, new: &NewBoardItem) -> StoreResult<BoardItem>;

    /// [`BoardStore::create_board_item`] under an `Idempotency-Key`: the key is taken in the
    /// creation's transaction (its `result` is replaced by `{"board_item_id"}`), so of any
    /// number of retries, concurrent or not, one creates the item and every other returns that
    /// item (as it is now). The same key with another request is
    /// [`Conflict::IdempotencyKeyReused`]; a failed creation keeps no key.
    async fn create_board_item_once(
        &self,
        scope: &Scope,
        new: &NewBoardItem,
        idempotency: &Idempotency,
    ) -> StoreResult<BoardItem>;

    async fn get_board_item(
        &self,
        scope: &Scope,
        project_id: &ProjectId,
        id: &BoardItemId,
    ) -> StoreResult<BoardItem>;

    async fn list_board_items(
        &self,
        scope: &Scope,
        project_id: &ProjectId,
        filter: &BoardItemFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<BoardItem>>;

    /// Applies a patch ([`Conflict::BoardItemClosed`] for an archived or cancelled item). A new
    /// schedule replaces the pending slot; resuming keeps it (a slot missed while paused fires
    /// once).
    async fn update_board_item(
        &self,
        scope: &Scope,
        project_id: &ProjectId,
        id: &BoardItemId,
        patch: &BoardItemPatch,
    ) -> StoreResult<BoardItem>;

    /// Archives the item and drops its pending slot (idempotent).
    async fn archive_board_item(
        &self,
        scope: &Scope,
        project_id: &ProjectId,
        id: &BoardItemId,
    ) -> StoreResult<BoardItem>;

    /// Cancels the item: stops its schedule for good and cancels its open run (a queued run at
    /// once; an executing one is flagged for its worker and returned, to stop it locally).
    async fn cancel_board_item(
        &self,
        scope: &Scope,
        project_id: &ProjectId,
        id: &BoardItemId,
    ) -> StoreResult<(BoardItem, Option<RunId>, Vec<ThreadEvent>)>;

    /// The board item a run was started for, if any.
    async fn board_item_of_run(
        &self,
        scope: &Scope,
        run_id: &RunId,
    ) -> StoreResult<Option<(ProjectId, BoardItemId)>>;

    /// Every recorded slot of an item, oldest first.
    async fn list_slots(
        &self,
        scope: &Scope,
        item_id: &BoardItemId,
    ) -> StoreResult<Vec<SlotRecord>>;

    /// Scheduler: the earliest pending slot of any deployment.
    async fn next_due_slot(&self) -> StoreResult<Option<Timestamp>>;

    /// Scheduler: how many slots one [`BoardStore::claim_due_slots`] should take. SQLite: many,
    /// because every claim waits for the single writer; PostgreSQL: fewer, so that the nodes
    /// share a burst of due slots evenly and its first runs commit sooner.
    fn slot_claim_batch(&self) -> usize;

    /// Maintenance (all deployments): deletes slot records that fired before `before`, except
    /// each item's latest one and those whose run is still open. Each item keeps the latest
    /// slot pruned (`slots_pruned_through`); a slot at or before it counts as fired, so a
    /// pruned slot never fires again. Returns the number of records deleted.
    async fn prune_slots(&self, before: Timestamp) -> StoreResult<u64>;

    /// Scheduler: in one transaction, records up to `limit` due slots (pending slot at or
    /// before `now`), moves each item to its next slot and queues each fired slot's run (the
    /// description as a user message, exactly as `submit_run` with `enqueue` does). The
    /// conditional move and the slot's primary key make each slot fire once across all nodes;
    /// PostgreSQL skips items another node is claiming (`SKIP LOCKED`). A slot and its run are
    /// committed together or not at all.
    async fn claim_due_slots(
        &self,
        node: &str,
        now: Timestamp,
        limit: usize,
    ) -> StoreResult<Vec<SlotRecord>>;
}

/// A file's content is stored in chunks of this many bytes (the last one may be shorter).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// A file about to replace (or create) `path` in a workspace; its chunks are already stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFile {
    pub path: WorkspacePath,
    pub blob_id: BlobId,
    pub size: u64,
    pub chunks: u32,
    pub mime_type: String,
    pub sha256: String,
}

/// Task workspaces in the database: every node sees the same files.
#[async_trait]
pub trait WorkspaceStore {
    /// Stores one chunk of a blob being written (its own short transaction, so a slow upload
    /// never holds a write lock).
    async fn put_blob_chunk(
        &self,
        scope: &Scope,
        blob_id: &BlobId,
        index: u32,
        data: &[u8],
    ) -> StoreResult<()>;

    /// Points `path` at a fully written blob, replacing (and deleting) the previous version.
    /// A path is a file or a directory, never both: [`Conflict::PathIsDirectory`] when files
    /// lie below `path`, [`Conflict::PathUnderFile`] when a parent of it is a file (nothing is
    /// written; the caller discards the blob).
    async fn commit_file(
        &self,
        scope: &Scope,
        workspace: &WorkspaceId,
        file: &NewFile,
    ) -> StoreResult<FileMeta>;

    /// Deletes the chunks of a blob that will not be committed; the chunks of a blob a file
    /// was committed with are kept.
    async fn discard_blob(&self, scope: &Scope, blob_id: &BlobId) -> StoreResult<()>;

    /// Maintenance (all deployments): deletes the chunks of every blob no file points at whose
    /// latest chunk was written before `before` — an upload whose node died, or whose client
    /// went away, before it committed. An upload in progress writes a chunk at least every
    /// few seconds and commits right after its last one, so a cutoff well in the past never
    /// touches it. Returns the number of chunks deleted.
    async fn prune_orphan_chunks(&self, before: Timestamp) -> StoreResult<u64>;

    /// [`Entity::File`] when absent.
    async fn get_file(
        &self,
        scope: &Scope,
        workspace: &WorkspaceId,
        path: &WorkspacePath,
    ) -> StoreResult<FileMeta>;

    /// One chunk of a blob ([`Entity::File`] when it is gone, e.g. replaced meanwhile).
    async fn read_blob_chunk(
        &self,
        scope: &Scope,
        blob_id: &BlobId,
        index: u32,
    ) -> StoreResult<Vec<u8>>;

    /// The files at or below `dir`, at most `limit`, by path.
    async fn list_files(
        &self,
        scope: &Scope,
        workspace: &WorkspaceId,
        dir: &WorkspacePath,
        limit: u32,
    ) -> StoreResult<Vec<FileMeta>>;
}

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// Connection pool occupancy, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

impl PoolStats {
    /// The occupancy of one sqlx pool. sqlx keeps its idle count in an atomic that is briefly
    /// decremented before it is incremented while connections change hands, so a read can see it
    /// wrapped to nearly `usize::MAX`: the idle count is clamped to the pool's size.
    pub(crate) fn of<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Self {
        let size = pool.size();
        Self {
            size,
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX).min(size),
        }
    }

    /// Two pools' occupancy together.
    pub(crate) fn plus(self, other: Self) -> Self {
        Self {
            size: self.size.saturating_add(other.size),
            idle: self.idle.saturating_add(other.idle),
        }
    }
}

/// Everything the server needs from storage.
#[async_trait]
pub trait Store:
    DeploymentStore
    + KeyStore
    + ActorStore
    + AgentStore
    + ProjectStore
    + ThreadStore
    + RunStore
    + IdentityStore
    + SigningKeyStore
    + TicketStore
    + ConsoleStore
    + SessionStore
    + BoardStore
    + WorkspaceStore
    + ToolStore
    + ToolkitStore
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;

    /// Round-trips a trivial query (readiness).
    async fn ping(&self) -> StoreResult<()>;

    fn pool_stats(&self) -> PoolStats;

    /// Closes the pools, waiting for connections in use to be returned.
    async fn close(&self);

    /// Notifications from other nodes (PostgreSQL `LISTEN`); `None` on SQLite, where every
    /// writer is in this process.
    async fn listen(&self) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Notification>>>;
}

// ---------------------------------------------------------------------------------------------
// Tools: tool records, their attachment to agents, platform events (`sql_tools.rs`).

/// A platform event queued for the deployment's webhook app.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub event_id: tessera_domain::PlatformEventId,
    pub event_type: String,
    /// The event as it will be delivered.
    pub payload: serde_json::Value,
    /// `pending` until delivered (delivery is a later issue).
    pub status: String,
    pub attempts: i64,
    pub created_at: Timestamp,
}

#[async_trait]
pub trait ToolStore {
    /// Stores a tool. The id is the caller's: the secret was sealed bound to it.
    async fn create_tool(
        &self,
        scope: &Scope,
        id: &tessera_domain::ToolId,
        spec: &tessera_domain::tool::ToolSpec,
        sealed_secret: Option<&[u8]>,
    ) -> StoreResult<tessera_domain::tool::Tool>;

    async fn get_tool(
        &self,
        scope: &Scope,
        id: &tessera_domain::ToolId,
    ) -> StoreResult<tessera_domain::tool::Tool>;

    async fn list_tools(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Page<tessera_domain::tool::Tool>>;

    /// Replaces the spec if the stored version is still `expected_version`
    /// ([`Conflict::StaleVersion`] otherwise). A new name that another tool of an agent using
    /// this one already has is refused ([`StoreError::Invalid`] on `name`).
    async fn update_tool(
        &self,
        scope: &Scope,
        id: &tessera_domain::ToolId,
        expected_version: i64,
        spec: &tessera_domain::tool::ToolSpec,
        secret: &tessera_domain::tool::SecretChange,
    ) -> StoreResult<tessera_domain::tool::Tool>;

    /// Deletes a tool no agent attaches ([`Conflict::ToolInUse`] otherwise).
    async fn delete_tool(&self, scope: &Scope, id: &tessera_domain::ToolId) -> StoreResult<()>;

    /// The tools with these ids, in this order; ids that do not resolve are left out.
    async fn tools_by_ids(
        &self,
        scope: &Scope,
        ids: &[tessera_domain::ToolId],
    ) -> StoreResult<Vec<tessera_domain::tool::Tool>>;

    /// Operator: one stored sealed secret of any deployment, to check at start-up that this
    /// node's secrets key opens them.
    async fn any_sealed_tool_secret(
        &self,
    ) -> StoreResult<Option<(tessera_domain::ToolId, Vec<u8>)>>;

    /// Worker (fenced by the lease): stores a platform event of the run's thread, appends its
    /// `platform.event` thread event and queues it for webhook delivery, in one transaction.
    async fn emit_platform_event(
        &self,
        lease: &Lease,
        new: &tessera_domain::tool::NewPlatformEvent,
    ) -> StoreResult<(tessera_domain::tool::PlatformEvent, Vec<ThreadEvent>)>;

    /// The deployment's webhook outbox, oldest first.
    async fn list_webhook_outbox(
        &self,
        scope: &Scope,
        page: &PageRequest,
    ) -> StoreResult<Page<OutboxEntry>>;
}

// ---------------------------------------------------------------------------------------------
// Toolkits: third-party toolkits enabled per deployment and actors' connections to them
// (`sql_toolkits.rs`).

#[async_trait]
pub trait ToolkitStore {
    /// Enables a toolkit for the deployment, or replaces the name and settings of an enabled
    /// one (idempotent). Returns it and whether this call enabled it.
    async fn enable_toolkit(
        &self,
        scope: &Scope,
        slug: &tessera_domain::toolkit::ToolkitSlug,
        name: &str,
        settings: &tessera_domain::toolkit::ToolkitSettings,
    ) -> StoreResult<(tessera_domain::toolkit::Toolkit, bool)>;

    /// An enabled toolkit ([`Entity::Toolkit`] otherwise).
    async fn get_toolkit(
        &self,
        scope: &Scope,
        slug: &tessera_domain::toolkit::ToolkitSlug,
    ) -> StoreResult<tessera_domain::toolkit::Toolkit>;

    /// The deployment's enabled toolkits, by slug.
    async fn list_toolkits(
        &self,
        scope: &Scope,
    ) -> StoreResult<Vec<tessera_domain::toolkit::Toolkit>>;

    /// Disables a toolkit and deletes every actor's connection to it, in one transaction;
    /// returns the deleted connections (their accounts may be revoked at the provider).
    async fn disable_toolkit(
        &self,
        scope: &Scope,
        slug: &tessera_domain::toolkit::ToolkitSlug,
    ) -> StoreResult<Vec<tessera_domain::toolkit::ToolkitConnection>>;

    /// Every enabled toolkit with the actor's connection to it, by slug ([`Entity::Actor`]
    /// when the actor is not in the scope).
    async fn actor_toolkits(
        &self,
        scope: &Scope,
        actor: &ActorId,
    ) -> StoreResult<
        Vec<(
            tessera_domain::toolkit::Toolkit,
            Option<tessera_domain::toolkit::ToolkitConnection>,
        )>,
    >;

    /// Stores an actor's new connection to an enabled toolkit ([`Entity::Actor`],
    /// [`Entity::Toolkit`]), replacing the previous one, which is returned.
    async fn put_toolkit_connection(
        &self,
        scope: &Scope,
        connection: &tessera_domain::toolkit::ToolkitConnection,
    ) -> StoreResult<Option<tessera_domain::toolkit::ToolkitConnection>>;

    /// Records a connection's status as the provider reported it; the redirect URL is kept
    /// only while it is pending. [`Entity::Toolkit`] when the connection is gone (replaced,
    /// disconnected or its toolkit disabled).
    async fn set_toolkit_connection_status(
        &self,
        scope: &Scope,
        id: &tessera_domain::ConnectionId,
        status: tessera_domain::toolkit::ConnectionStatus,
    ) -> StoreResult<tessera_domain::toolkit::ToolkitConnection>;

    /// Deletes the actor's connection to the toolkit and returns it (`None` when it had none).
    /// [`Entity::Actor`] / [`Entity::Toolkit`] when either is not in the scope.
    async fn delete_toolkit_connection(
        &self,
        scope: &Scope,
        actor: &ActorId,
        slug: &tessera_domain::toolkit::ToolkitSlug,
    ) -> StoreResult<Option<tessera_domain::toolkit::ToolkitConnection>>;
}

/// Connection settings beyond the URL.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub max_connections: u32,
    /// SQLite `synchronous`: `full` makes every commit durable against power loss, `normal`
    /// only against a process crash (faster).
    pub sqlite_synchronous_full: bool,
    pub busy_timeout: std::time::Duration,
    /// SQLite: keep the writer thread and the writer connection's thread on one CPU (see
    /// `sqlite_affinity.rs`).
    pub sqlite_pin_writer: bool,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            sqlite_synchronous_full: true,
            busy_timeout: std::time::Duration::from_secs(5),
            sqlite_pin_writer: true,
        }
    }
}

/// Opens the database named by `url` (`sqlite://…` or `postgres://…`) and applies pending
/// migrations.
pub async fn open(url: &str, options: &ConnectOptions) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url, options).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PgStore::connect(url, options).await?;
        store.migrate().await?;
        Ok(Arc::new(store))
    } else {
        Err(StoreError::InvalidUrl(
            "expected a sqlite:// or postgres:// url".to_owned(),
        ))
    }
}

/// Applies pending migrations without keeping the store open; returns what was applied.
pub async fn migrate(url: &str, options: &ConnectOptions) -> StoreResult<MigrationReport> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::connect(url, options).await?;
        let report = store.migrate().await;
        store.close_pools().await;
        report
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = postgres::PgStore::connect(url, options).await?;
        let report = store.migrate().await;
        store.close_pools().await;
        report
    } else {
        Err(StoreError::InvalidUrl(
            "expected a sqlite:// or postgres:// url".to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests fail loudly by design.

    use super::*;
    use crate::testing::database_error;

    /// Runs `retry_transient` over `answers` in turn; returns its result and the attempts made.
    async fn run(answers: Vec<StoreResult<u32>>) -> (StoreResult<u32>, usize) {
        let answers = std::sync::Mutex::new(answers.into_iter());
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let result = retry_transient(|| async {
            attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            answers.lock().unwrap().next().unwrap()
        })
        .await;
        (result, attempts.into_inner())
    }

    #[tokio::test]
    async fn transient_failures_run_the_transaction_again() {
        for code in ["40P01", "40001", "55P03"] {
            assert!(database_error(code).is_transient(), "{code}");
            let (result, attempts) = run(vec![Err(database_error(code)), Ok(7)]).await;
            assert_eq!(result.unwrap(), 7);
            assert_eq!(attempts, 2);
        }
    }

    #[tokio::test]
    async fn retries_stop_after_three_attempts_and_other_errors_are_not_retried() {
        let (result, attempts) = run(vec![
            Err(database_error("40P01")),
            Err(database_error("40P01")),
            Err(database_error("40P01")),
            Ok(1),
        ])
        .await;
        assert!(result.unwrap_err().is_transient());
        assert_eq!(attempts, 3);
        for err in [
            database_error("23505"),
            StoreError::LeaseLost,
            StoreError::not_found(Entity::Thread),
        ] {
            assert!(!err.is_transient());
            let (result, attempts) = run(vec![Err(err), Ok(1)]).await;
            assert!(result.is_err());
            assert_eq!(attempts, 1);
        }
    }
}
