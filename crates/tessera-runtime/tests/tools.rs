//! Tool dispatch through the real driver and workers: the per-tool timeout and concurrent
//! execution of one turn's independent calls. The model is a real local HTTP server speaking
//! the OpenAI-compatible protocol (`ScriptedModelServer`); storage is SQLite, and PostgreSQL when
//! `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tessera_domain::agent::{AgentLimits, AgentSpec, ApprovalRule, ModelRef, MultitaskPolicy};
use tessera_domain::board::{Assignment, NewBoardItem, Overlap, Schedule, ScheduleKind};
use tessera_domain::records::{NewActor, NewDeployment, NewProject};
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::session::{ActionStatus, PendingAction};
use tessera_domain::thread::{
    Message, NewThread, Role, Run, RunStatus, StopReason, ThreadPurpose, ToolCall,
};
use tessera_domain::validate::{
    DeploymentName, Description, ExternalKey, Label, Metadata, ModelName, ProviderName,
    SubjectType, ToolPattern,
};
use tessera_domain::{ProjectId, RunId, Scope, ThreadId, Timestamp};
use tessera_runtime::driver::{ModelChoice, Runtime, RuntimeConfig};
use tessera_runtime::hub::{Hub, Stop};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_runtime::provider::{ProviderRegistry, ToolSpec};
use tessera_runtime::tools::{ToolContext, ToolExecutor, ToolOutput};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, ConnectOptions, NewSecretKey, PageRequest, Store, SubmitOutcome, SubmitRun,
};
use tokio::sync::{watch, Barrier};

backend_tests!(
    a_tool_over_its_timeout_ends_the_run,
    independent_tool_calls_of_a_turn_run_concurrently,
    a_confirmed_tool_that_times_out_or_fails_ends_its_action_failed,
    a_run_cancelled_while_a_confirmed_tool_runs_settles_its_action,
    workers_start_no_run_while_claims_are_deferred,
);

/// Longest wait for a run to end.
const WAIT: Duration = Duration::from_secs(20);

/// Test tools: `slow` sleeps far beyond any timeout (and notes whether it ever finished),
/// `fast` answers at once, `meet` waits until two calls of it are running at the same time,
/// `broken` fails. (A held call of a tool that is not offered is refused before anyone is
/// asked, like one with invalid arguments.)
struct TestTools {
    slow_finished: AtomicBool,
    meeting: Barrier,
}

impl TestTools {
    fn new() -> Self {
        Self {
            slow_finished: AtomicBool::new(false),
            meeting: Barrier::new(2),
        }
    }
}

#[async_trait]
impl ToolExecutor for TestTools {
    fn specs(&self) -> Vec<ToolSpec> {
        // `broken` is offered but fails when it runs.
        ["slow", "fast", "meet", "broken"]
            .into_iter()
            .map(|name| ToolSpec {
                name: name.to_owned(),
                description: format!("test tool {name}"),
                parameters: json!({"type": "object", "properties": {}}),
            })
            .collect()
    }

    async fn execute(&self, _ctx: &ToolContext<'_>, call: &ToolCall) -> ToolOutput {
        let result = match call.name.as_str() {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                self.slow_finished.store(true, Ordering::SeqCst);
                Ok("slow done".to_owned())
            }
            "fast" => Ok("fast done".to_owned()),
            "meet" => {
                self.meeting.wait().await;
                Ok("met".to_owned())
            }
            other => Err(format!("no tool {other}")),
        };
        ToolOutput {
            result,
            events: Vec::new(),
        }
    }
}

struct Rig {
    store: Arc<dyn Store>,
    scope: Scope,
    project: ProjectId,
    thread: ThreadId,
    runtime: Arc<Runtime>,
    model: ScriptedModelServer,
    tools: Arc<TestTools>,
    hub: Arc<Hub>,
    shutdown: watch::Sender<bool>,
    workers: tokio::task::JoinHandle<()>,
}

impl Rig {
    /// A thread whose agent uses the scripted model, and this node's workers running with
    /// `tool_timeout`.
    async fn start(db: &TestDatabase, tool_timeout: Duration) -> Rig {
        Self::start_gating(db, tool_timeout, &[]).await
    }

    /// Like [`Rig::start`], with the agent's approval rules gating the tools `gated`.
    async fn start_gating(db: &TestDatabase, tool_timeout: Duration, gated: &[&str]) -> Rig {
        let store = tessera_store::open(&db.url, &ConnectOptions::default())
            .await
            .expect("open store");
        let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
        let (deployment, _) = store
            .create_deployment(
                &NewDeployment {
                    name: DeploymentName::parse("name", "tools").unwrap(),
                    backend_host: "http://127.0.0.1:8080".into(),
                    frontend_host: "http://127.0.0.1:8080".into(),
                },
                &NewSecretKey {
                    name: Label::parse("name", "k").unwrap(),
                    hash: secret.hash(),
                    prefix: secret.display_prefix(),
                },
            )
            .await
            .unwrap();
        let scope = Scope::deployment(deployment.id);
        let actor = store
            .create_actor(
                &scope,
                &NewActor {
                    subject_type: SubjectType::parse("subject_type", "user").unwrap(),
                    external_key: ExternalKey::parse("external_key", "u").unwrap(),
                    display_name: None,
                    metadata: Metadata::parse("metadata", json!({})).unwrap(),
                },
            )
            .await
            .unwrap();
        let spec = AgentSpec {
            name: Label::parse("name", "tooling").unwrap(),
            description: Description::parse("description", "uses tools").unwrap(),
            model: Some(
                ModelRef::new(
                    ProviderName::parse("provider", "scripted").unwrap(),
                    ModelName::parse("model", "m").unwrap(),
                    None,
                    None,
                )
                .unwrap(),
            ),
            tool_ids: vec![],
            sub_agent_ids: vec![],
            capability_tags: vec![],
            endpoint_slug: None,
            approval_rules: gated
                .iter()
                .map(|tool| ApprovalRule {
                    tool: ToolPattern::parse("tool", *tool).unwrap(),
                    expires_in_seconds: None,
                })
                .collect(),
            limits: AgentLimits::default(),
            multitask: MultitaskPolicy::Enqueue,
        };
        let agent = store.create_agent(&scope, &spec).await.unwrap();
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
        let thread = store
            .create_thread(
                &scope,
                &NewThread {
                    project_id: project.id.clone(),
                    title: Label::parse("title", "t").unwrap(),
                    system_instructions: None,
                    purpose: ThreadPurpose::Conversation,
                    capability_tags: vec![],
                    context_group: None,
                },
            )
            .await
            .unwrap();

        let model = ScriptedModelServer::start().await;
        let mut providers = BTreeMap::new();
        providers.insert("scripted".to_owned(), model.provider_config());
        let tools = Arc::new(TestTools::new());
        let hub = Arc::new(Hub::new());
        let runtime = Arc::new(Runtime {
            store: store.clone(),
            providers: ProviderRegistry::from_config(&providers).unwrap(),
            tools: tools.clone(),
            hub: hub.clone(),
            config: RuntimeConfig {
                workers: 4,
                lease: Duration::from_secs(30),
                poll_interval: Duration::from_millis(200),
                default_model: ModelChoice {
                    provider: "echo".into(),
                    model: "echo".into(),
                },
                tool_timeout,
                node_id: "test-node".into(),
                action_expiry_seconds: 600,
                slot_retention: Duration::from_secs(7 * 86_400),
                upload_grace: Duration::from_secs(3600),
                // Long enough that no step of a test outlasts it on a slow machine.
                burst_hold: Duration::from_secs(60),
            },
            tool_records: None,
        });
        let (shutdown, rx) = watch::channel(false);
        let workers = tokio::spawn(tessera_runtime::worker::run_workers(runtime.clone(), rx));
        Rig {
            store,
            scope,
            project: project.id,
            thread: thread.id,
            runtime,
            model,
            tools,
            hub,
            shutdown,
            workers,
        }
    }

    async fn send(&self, text: &str) -> RunId {
        let run_id = RunId::generate();
        let submit = SubmitRun {
            message: tessera_store::testing::message(&self.thread, &run_id, Role::User, text),
            run_id: run_id.clone(),
            policy: Some(MultitaskPolicy::Enqueue),
            idempotency: None,
            new_thread: None,
            refuse_hidden: false,
            variables: Default::default(),
            start: None,
        };
        match self
            .store
            .submit_run(&self.scope, &self.thread, &submit)
            .await
            .unwrap()
        {
            SubmitOutcome::Created { .. } => run_id,
            SubmitOutcome::Replayed { .. } => panic!("no idempotency key was sent"),
        }
    }

    /// Waits for the run to end (the workers poll every 200 ms, no wake-up is sent).
    async fn ended(&self, run: &RunId) -> Run {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let got = self
                .store
                .get_run(&self.scope, &self.thread, run)
                .await
                .unwrap();
            if got.status.is_terminal() {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run did not end within {WAIT:?}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn messages(&self) -> Vec<Message> {
        self.store
            .list_messages(
                &self.scope,
                &self.thread,
                &PageRequest::first(100),
                tessera_store::Order::OldestFirst,
            )
            .await
            .unwrap()
            .items
    }

    /// The tool results the model received in its `i`-th request, by tool call id.
    fn tool_results(&self, i: usize) -> Vec<(String, String)> {
        let body: Value = self.model.requests()[i].body.clone();
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "tool")
            .map(|m| {
                (
                    m["tool_call_id"].as_str().unwrap().to_owned(),
                    m["content"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits until the run is paused with one pending action, and returns it.
    async fn paused_action(&self, run: &RunId) -> PendingAction {
        self.action_in(run, ActionStatus::Pending).await
    }

    /// Waits until the run's (single) action has `status`.
    async fn action_in(&self, run: &RunId, status: ActionStatus) -> PendingAction {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let actions = self.store.run_actions(&self.scope, run).await.unwrap();
            if let [action] = actions.as_slice() {
                if action.status == status {
                    return action.clone();
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no action {status:?} within {WAIT:?}: {actions:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn confirm(&self, action: &PendingAction) {
        self.store
            .resolve_action(
                &self.scope,
                &self.thread,
                &action.id,
                true,
                Timestamp::now(),
            )
            .await
            .unwrap();
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.workers.await.unwrap();
        self.store.close().await;
    }
}

fn tool_messages(messages: &[Message]) -> Vec<&Message> {
    messages.iter().filter(|m| m.role == Role::Tool).collect()
}

/// While the board scheduler fires a burst it defers the workers' claims: a queued run waits
/// (the workers poll every 200 ms, so a second is five chances to take it), and starts as
/// soon as the deferral ends.
async fn workers_start_no_run_while_claims_are_deferred(db: &TestDatabase) {
    let rig = Rig::start(db, Duration::from_secs(5)).await;
    rig.model.push(Script::text(["Later."]));
    rig.hub.defer_claims(Duration::from_secs(60));
    let run = rig.send("wait your turn").await;
    rig.hub.wake_workers();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waiting = rig
        .store
        .get_run(&rig.scope, &rig.thread, &run)
        .await
        .unwrap();
    assert_eq!(waiting.status, RunStatus::Queued, "{waiting:?}");
    assert_eq!(rig.model.request_count(), 0);

    rig.hub.resume_claims();
    let ended = rig.ended(&run).await;
    assert_eq!(ended.status, RunStatus::Completed, "{ended:?}");
    assert_eq!(rig.messages().await.last().unwrap().content, "Later.");
    rig.stop().await;
}

/// PostgreSQL, where nodes claim due slots side by side (`SKIP LOCKED`): a node that has
/// claimed its share of a burst keeps its workers off new runs while another node's claim still
/// holds due slots, and lets them in once that claim has ended. (SQLite has one claimer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_workers_wait_while_another_node_still_claims_a_burst() {
    let Some(db) = TestDatabase::postgres().await else {
        eprintln!(
            "skipped: {} is not set, PostgreSQL test not run",
            tessera_store::testing::POSTGRES_ENV
        );
        return;
    };
    let rig = Rig::start(&db, Duration::from_secs(5)).await;
    let batch = rig.store.slot_claim_batch();
    // A full claim for this node, and a few items "another node" is claiming.
    let others = 8;
    let parked = Timestamp::now().plus_millis(3_600_000);
    let items: Vec<String> = futures_util::stream::iter(0..batch + others)
        .map(|i| {
            let store = rig.store.clone();
            let scope = rig.scope.clone();
            let project_id = rig.project.clone();
            async move {
                let new = NewBoardItem {
                    project_id,
                    title: Label::parse("title", format!("item {i}")).unwrap(),
                    description: format!("task {i}"),
                    assignment: Assignment::NewThread {
                        agent: None,
                        context_of: None,
                    },
                    capability_tags: vec![],
                    schedule: Some(
                        Schedule::new("schedule", ScheduleKind::Once, parked, None, Overlap::Skip)
                            .unwrap(),
                    ),
                    parent_item_id: None,
                };
                store
                    .create_board_item(&scope, &new)
                    .await
                    .unwrap()
                    .id
                    .as_str()
                    .to_owned()
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let now = Timestamp::now().as_millis();
    sqlx::query("UPDATE board_items SET next_run_at = $1")
        .bind(now - 1_000)
        .execute(&pool)
        .await
        .unwrap();
    let mut other_node = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM board_items WHERE id = ANY($1) FOR UPDATE")
        .bind(&items[..others])
        .fetch_all(&mut *other_node)
        .await
        .unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    let runtime = rig.runtime.clone();
    let firing =
        tokio::spawn(
            async move { tessera_runtime::board_scheduler::fire_due(&runtime, true).await },
        );
    let deadline = tokio::time::Instant::now() + WAIT;
    while count("SELECT COUNT(*) FROM board_slots").await < batch as i64 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the claim did not commit"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // This node has claimed all it could; the other node's slots are still due.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!firing.is_finished(), "the node waits for the other claim");
    assert!(rig.hub.claims_deferred_until().is_some());
    assert_eq!(
        count("SELECT COUNT(*) FROM runs WHERE status <> 'queued'").await,
        0,
        "no run starts while the burst is being claimed"
    );

    // The other node's claim ends (here: it rolls back, as when that node dies): this node
    // claims what is left, and its workers start the burst's runs.
    other_node.rollback().await.unwrap();
    let fired = tokio::time::timeout(Duration::from_secs(5), firing)
        .await
        .expect("the node stops waiting once the other claim has ended")
        .unwrap();
    assert!(fired);
    assert_eq!(
        count("SELECT COUNT(*) FROM board_slots").await,
        (batch + others) as i64
    );
    assert!(rig.hub.claims_deferred_until().is_none());
    let deadline = tokio::time::Instant::now() + WAIT;
    while count("SELECT COUNT(*) FROM runs WHERE status <> 'queued'").await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no run started after the burst"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    pool.close().await;
    rig.stop().await;
    db.cleanup().await;
}

async fn a_tool_over_its_timeout_ends_the_run(db: &TestDatabase) {
    let rig = Rig::start(db, Duration::from_millis(300)).await;
    rig.model.push(Script::tool_calls([
        ("slow", json!({})),
        ("fast", json!({})),
    ]));
    let run = rig.send("use both tools").await;
    let ended = rig.ended(&run).await;
    assert_eq!(ended.status, RunStatus::Failed, "{ended:?}");
    assert_eq!(
        ended.stop_reason,
        Some(StopReason::ToolTimeout),
        "{ended:?}"
    );
    let reason = ended.error.clone().unwrap_or_default();
    assert!(
        reason.starts_with("the tool `slow` did not finish within"),
        "the reason names the tool and its limit: {reason:?}"
    );
    assert_eq!(ended.usage.tool_calls, 2);
    assert!(
        !rig.tools.slow_finished.load(Ordering::SeqCst),
        "the timed-out call was abandoned, not awaited"
    );
    // The turn's results are both stored, the timeout's as an error; the model is not asked
    // again by this run.
    assert_eq!(rig.model.request_count(), 1);
    let messages = rig.messages().await;
    let tools = tool_messages(&messages);
    assert_eq!(tools.len(), 2, "{messages:#?}");
    let slow = tools
        .iter()
        .find(|m| m.tool_name.as_deref() == Some("slow"))
        .unwrap();
    assert!(slow.is_error, "{slow:?}");
    assert_eq!(slow.content, reason);
    let fast = tools
        .iter()
        .find(|m| m.tool_name.as_deref() == Some("fast"))
        .unwrap();
    assert!(!fast.is_error);
    assert_eq!(fast.content, "fast done");

    // The conversation goes on: the next run's model sees both results.
    rig.model
        .push(Script::text(["Sorry, the lookup was slow."]));
    let next = rig.send("and now?").await;
    let ended = rig.ended(&next).await;
    assert_eq!(ended.status, RunStatus::Completed, "{ended:?}");
    let results = rig.tool_results(1);
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results
        .iter()
        .any(|(_, content)| content.contains("did not finish within")));
    assert!(results.iter().any(|(_, content)| content == "fast done"));
    rig.stop().await;
}

async fn independent_tool_calls_of_a_turn_run_concurrently(db: &TestDatabase) {
    // Each `meet` call waits until the other one runs: executed one after the other, the
    // first would wait for the whole timeout and fail.
    let rig = Rig::start(db, Duration::from_secs(5)).await;
    rig.model.push_all([
        Script::tool_calls([("meet", json!({"who": "a"})), ("meet", json!({"who": "b"}))]),
        Script::text(["Both met."]),
    ]);
    let run = rig.send("meet twice").await;
    let ended = rig.ended(&run).await;
    assert_eq!(ended.status, RunStatus::Completed, "{ended:?}");
    let messages = rig.messages().await;
    let tools = tool_messages(&messages);
    assert_eq!(tools.len(), 2, "{messages:#?}");
    for m in &tools {
        assert!(!m.is_error, "{m:?}");
        assert_eq!(m.content, "met");
    }
    let results = rig.tool_results(1);
    assert_eq!(
        results.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>(),
        vec!["met", "met"]
    );
    rig.stop().await;
}

async fn a_confirmed_tool_that_times_out_or_fails_ends_its_action_failed(db: &TestDatabase) {
    let rig = Rig::start_gating(db, Duration::from_millis(300), &["slow", "broken"]).await;
    // A failure goes back to the model, which answers; a timeout ends the run.
    for (tool, error, stop) in [
        ("slow", "did not finish within", StopReason::ToolTimeout),
        ("broken", "no tool broken", StopReason::Completed),
    ] {
        rig.model.push(Script::tool_call(tool, json!({})));
        if stop == StopReason::Completed {
            rig.model.push(Script::text(["Noted."]));
        }
        let run = rig.send(&format!("use {tool}")).await;
        let action = rig.paused_action(&run).await;
        assert_eq!(action.tool, tool);
        rig.confirm(&action).await;
        let ended = rig.ended(&run).await;
        assert_eq!(ended.stop_reason, Some(stop), "{ended:?}");
        // The action is final, not left `executing`, and keeps the error.
        let actions = rig.store.run_actions(&rig.scope, &run).await.unwrap();
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].status, ActionStatus::Failed, "{actions:?}");
        let result = actions[0].result.clone().unwrap_or_default();
        assert!(result.contains(error), "{tool}: {result:?}");
        let messages = rig.messages().await;
        let results: Vec<&Message> = tool_messages(&messages)
            .into_iter()
            .filter(|m| m.run_id.as_ref() == Some(&run))
            .collect();
        assert_eq!(results.len(), 1, "{messages:#?}");
        assert!(results[0].is_error);
        assert_eq!(results[0].content, result);
    }
    assert!(!rig.tools.slow_finished.load(Ordering::SeqCst));
    rig.stop().await;
}

async fn a_run_cancelled_while_a_confirmed_tool_runs_settles_its_action(db: &TestDatabase) {
    let rig = Rig::start_gating(db, Duration::from_secs(60), &["slow"]).await;
    rig.model.push(Script::tool_call("slow", json!({})));
    let run = rig.send("use slow").await;
    let action = rig.paused_action(&run).await;
    rig.confirm(&action).await;
    // The tool is running (durably marked so); the run is cancelled meanwhile.
    rig.action_in(&run, ActionStatus::Executing).await;
    // As the cancel route does: the stored request, then this node's worker told at once.
    rig.store
        .cancel_runs(&rig.scope, &rig.thread)
        .await
        .unwrap();
    rig.hub.stop_run(&run, Stop::Cancel);
    let ended = rig.ended(&run).await;
    assert_eq!(ended.status, RunStatus::Cancelled, "{ended:?}");
    let settled = rig.action_in(&run, ActionStatus::Failed).await;
    assert!(
        settled
            .result
            .as_deref()
            .is_some_and(|r| r.contains("outcome is unknown")),
        "{settled:?}"
    );
    // The stream tells it too: the action's final status in `pending_action.resolved`.
    let events = rig
        .store
        .events_after(&rig.scope, &rig.thread, 0, 1000)
        .await
        .unwrap();
    let resolved: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "pending_action.resolved")
        .map(|e| e.data["action"]["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(resolved, ["confirmed", "failed"]);
    assert!(!rig.tools.slow_finished.load(Ordering::SeqCst));
    rig.stop().await;
}
