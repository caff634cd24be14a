//! Set-up helpers shared by the store's conformance suites: a store, deployments, a
//! tenant with an actor, agent and project, threads, submissions, claims and the audit log.

#![allow(dead_code, unused_imports)] // Each suite uses its own subset (of the imports too).

pub use std::sync::Arc;

pub use serde_json::json;
pub use tessera_domain::agent::{AgentLimits, AgentSpec, MultitaskPolicy};
pub use tessera_domain::event::{self, NewEvent};
pub use tessera_domain::records::{NewActor, NewDeployment, NewProject, Project};
pub use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
pub use tessera_domain::thread::{
    ContextGroup, Message, NewThread, Role, Run, RunStatus, RunUsage, StopReason, Thread,
    ThreadPurpose, ThreadStatus, TokenUsage, ToolCall,
};
pub use tessera_domain::validate::{
    CapabilityTag, DeploymentName, Description, ExternalKey, Label, Metadata, SubjectType,
};
pub use tessera_domain::{MessageId, ProjectId, RunId, Scope, ThreadId, Timestamp};
pub use tessera_store::testing::TestDatabase;
pub use tessera_store::{
    backend_tests, CancelRequest, Claimed, Conflict, ConnectOptions, Cursor, Entity, Idempotency,
    IdempotentWrite, Lease, NewSecretKey, Order, PageRequest, RunEnd, StartHere, StepMessage,
    Store, StoreError, SubmitOutcome, SubmitRun, ThreadEvent, Written,
};

pub fn is_not_found(err: &StoreError, want: Entity) -> bool {
    matches!(err, StoreError::NotFound { entity, .. } if *entity == want)
}

pub fn is_conflict(err: &StoreError, want: Conflict) -> bool {
    matches!(err, StoreError::Conflict(c) if *c == want)
}

/// A lease long enough never to expire during a test unless `now` is moved past it.
pub const LEASE_MS: i64 = 60_000;

// ---------------------------------------------------------------------------------------------
// Set-up helpers
// ---------------------------------------------------------------------------------------------

pub async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .expect("open store")
}

pub async fn deployment(store: &Arc<dyn Store>, name: &str) -> Scope {
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let key = NewSecretKey {
        name: Label::parse("name", "first").unwrap(),
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    let new = NewDeployment {
        name: DeploymentName::parse("name", name).unwrap(),
        backend_host: "http://127.0.0.1:8080".into(),
        frontend_host: "http://127.0.0.1:8080".into(),
    };
    let (dep, _) = store.create_deployment(&new, &key).await.unwrap();
    Scope::deployment(dep.id)
}

pub fn spec(name: &str) -> AgentSpec {
    tessera_store::testing::agent_spec(name, "helps")
}

/// A deployment with an actor, an agent and an active project binding them.
pub struct Tenant {
    pub scope: Scope,
    pub project: Project,
}

pub async fn tenant(store: &Arc<dyn Store>, name: &str) -> Tenant {
    let scope = deployment(store, name).await;
    let actor = store
        .create_actor(
            &scope,
            &NewActor {
                subject_type: SubjectType::parse("subject_type", "user").unwrap(),
                external_key: ExternalKey::parse("external_key", "u1").unwrap(),
                display_name: None,
                metadata: Metadata::parse("metadata", json!({})).unwrap(),
            },
        )
        .await
        .unwrap();
    let agent = store.create_agent(&scope, &spec("helper")).await.unwrap();
    let project = store
        .create_project(
            &scope,
            &NewProject {
                actor_id: actor.id,
                agent_id: agent.id,
                name: Label::parse("name", "p").unwrap(),
            },
        )
        .await
        .unwrap();
    Tenant { scope, project }
}

pub fn new_thread(project_id: &ProjectId, title: &str) -> NewThread {
    NewThread {
        project_id: project_id.clone(),
        title: Label::parse("title", title).unwrap(),
        system_instructions: None,
        purpose: ThreadPurpose::Conversation,
        capability_tags: vec![],
        context_group: None,
    }
}

pub async fn thread(store: &Arc<dyn Store>, t: &Tenant, title: &str) -> Thread {
    store
        .create_thread(&t.scope, &new_thread(&t.project.id, title))
        .await
        .unwrap()
}

pub fn user_message(thread_id: &ThreadId, run_id: &RunId, text: &str) -> Message {
    tessera_store::testing::message(thread_id, run_id, Role::User, text)
}

pub fn submission(thread_id: &ThreadId, text: &str, policy: MultitaskPolicy) -> SubmitRun {
    let run_id = RunId::generate();
    SubmitRun {
        message: user_message(thread_id, &run_id, text),
        run_id,
        policy: Some(policy),
        idempotency: None,
        new_thread: None,
        refuse_hidden: false,
        variables: Default::default(),
        start: None,
    }
}

/// The parts of a `Created` outcome; panics on `Replayed`.
pub fn created(outcome: SubmitOutcome) -> (Run, Vec<RunId>, Vec<ThreadEvent>) {
    match outcome {
        SubmitOutcome::Created {
            run,
            interrupted,
            events,
            ..
        } => (run, interrupted, events),
        SubmitOutcome::Replayed { result } => {
            panic!("expected a new run, got a replay of {result}")
        }
    }
}

/// Submits a message with `policy`, expecting a new run.
pub async fn submit_with(
    store: &Arc<dyn Store>,
    scope: &Scope,
    thread_id: &ThreadId,
    text: &str,
    policy: MultitaskPolicy,
) -> (Run, Vec<RunId>, Vec<ThreadEvent>) {
    created(
        store
            .submit_run(scope, thread_id, &submission(thread_id, text, policy))
            .await
            .unwrap(),
    )
}

/// Submits a message with the `enqueue` policy and returns its run.
pub async fn queue(store: &Arc<dyn Store>, scope: &Scope, thread_id: &ThreadId, text: &str) -> Run {
    submit_with(store, scope, thread_id, text, MultitaskPolicy::Enqueue)
        .await
        .0
}

/// Claims a run now with a long lease, expecting one.
pub async fn claim(store: &Arc<dyn Store>, owner: &str) -> Claimed {
    store
        .claim_run(owner, Timestamp::now(), LEASE_MS)
        .await
        .unwrap()
        .expect("a claimable run")
}

// ---------------------------------------------------------------------------------------------
// Lock crossings (PostgreSQL)
// ---------------------------------------------------------------------------------------------

/// PostgreSQL: a connection of its own inside a transaction that has run `lock` (one bind,
/// `id`) and holds what it locked; with the connection's backend pid.
pub async fn hold(db: &TestDatabase, lock: &str, id: &str) -> (sqlx::PgConnection, i32) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(lock).bind(id).execute(&mut conn).await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, pid)
}

/// Waits (at most 20 s, else fails with `never`) until some session waits for a lock `pid`
/// holds.
pub async fn wait_until_blocked_by(conn: &mut sqlx::PgConnection, pid: i32, never: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (blocked,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        )
        .bind(pid)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if blocked > 0 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{never}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The audit events of `kind` (every kind for `None`) in `scope`, oldest first.
pub async fn audited(
    store: &Arc<dyn Store>,
    scope: &Scope,
    kind: Option<&str>,
) -> Vec<tessera_domain::identity::AuditEvent> {
    store
        .list_audit_events(
            scope,
            &tessera_store::AuditFilter {
                kind: kind.map(str::to_owned),
            },
            &PageRequest::default(),
        )
        .await
        .expect("audit log")
        .items
}

/// An operator's audited write (no client).
pub fn operator() -> tessera_domain::identity::AuditBy {
    tessera_domain::identity::AuditBy {
        actor: tessera_domain::identity::AuditActor::Operator,
        client: tessera_domain::identity::AuditClient::default(),
    }
}
