//! Side-effecting tools called twice with the same (run, call id) — what a run resumed after
//! its node died does when the call's result was not stored — make one record: one board item
//! for `delegate_task` and `schedule_task`, one platform event for a `PlatformEvent` tool. The
//! executors are called as the driver calls them, on a claimed run; storage is SQLite, and
//! PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{json, Value};
use tessera_domain::agent::MultitaskPolicy;
use tessera_domain::records::{NewActor, NewDeployment, NewProject};
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::thread::{NewThread, Role, ThreadPurpose, ToolCall};
use tessera_domain::tool::{
    InputSchema, PlatformEventConfig, ToolConfig, ToolName, ToolSpec as RecordSpec,
};
use tessera_domain::validate::{DeploymentName, ExternalKey, Label, Metadata, SubjectType};
use tessera_domain::{ProjectId, RunId, Scope, ThreadId, Timestamp, ToolId};
use tessera_runtime::board_tools::BoardTools;
use tessera_runtime::tool_records::{
    ActorTokenRequest, McpClients, RecordTools, ToolCredentials, ToolRecordsConfig,
};
use tessera_runtime::tools::{ToolContext, ToolExecutor};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, BoardItemFilter, Claimed, ConnectOptions, NewSecretKey, PageRequest, Store,
    SubmitRun,
};

backend_tests!(
    a_repeated_board_tool_call_makes_one_item,
    a_repeated_platform_event_call_emits_one_event,
);

struct Setup {
    store: Arc<dyn Store>,
    scope: Scope,
    project: ProjectId,
    lane: ThreadId,
    claimed: Claimed,
}

async fn setup(db: &TestDatabase) -> Setup {
    let store = tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let (deployment, _) = store
        .create_deployment(
            &NewDeployment {
                name: DeploymentName::parse("name", "repeat").unwrap(),
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
    let agent = store
        .create_agent(
            &scope,
            &tessera_store::testing::agent_spec("planner", "plans"),
        )
        .await
        .unwrap();
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
    let thread = |title: &str, purpose| NewThread {
        project_id: project.id.clone(),
        title: Label::parse("title", title).unwrap(),
        system_instructions: None,
        purpose,
        capability_tags: vec![],
        context_group: None,
    };
    let chat = store
        .create_thread(&scope, &thread("chat", ThreadPurpose::Conversation))
        .await
        .unwrap();
    let lane = store
        .create_thread(&scope, &thread("lane", ThreadPurpose::Execution))
        .await
        .unwrap();
    let run_id = RunId::generate();
    store
        .submit_run(
            &scope,
            &chat.id,
            &SubmitRun {
                message: tessera_store::testing::message(&chat.id, &run_id, Role::User, "plan it"),
                run_id,
                policy: Some(MultitaskPolicy::Enqueue),
                idempotency: None,
                new_thread: None,
                refuse_hidden: false,
                variables: Default::default(),
                start: None,
            },
        )
        .await
        .unwrap();
    let claimed = store
        .claim_run("node", Timestamp::now(), 60_000)
        .await
        .unwrap()
        .expect("the run is claimable");
    Setup {
        store,
        scope,
        project: project.id,
        lane: lane.id,
        claimed,
    }
}

impl Setup {
    fn ctx(&self) -> ToolContext<'_> {
        ToolContext {
            store: self.store.as_ref(),
            scope: &self.scope,
            thread_id: &self.claimed.thread.id,
            run_id: &self.claimed.run.id,
            lease: &self.claimed.lease,
        }
    }

    async fn items(&self) -> usize {
        self.store
            .list_board_items(
                &self.scope,
                &self.project,
                &BoardItemFilter::default(),
                &PageRequest::first(100),
            )
            .await
            .unwrap()
            .items
            .len()
    }
}

fn call(id: &str, name: &str, arguments: Value) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments,
    }
}

/// The JSON result of a successful call.
async fn run(tools: &dyn ToolExecutor, ctx: &ToolContext<'_>, call: &ToolCall) -> Value {
    let out = tools.execute(ctx, call).await;
    serde_json::from_str(&out.result.unwrap_or_else(|e| panic!("{}: {e}", call.name))).unwrap()
}

async fn a_repeated_board_tool_call_makes_one_item(db: &TestDatabase) {
    let s = setup(db).await;
    let tools = BoardTools::new(Default::default());
    let ctx = s.ctx();
    let schedule = call(
        "call_1",
        "schedule_task",
        json!({"title": "Report", "description": "write the report",
               "schedule": {"schedule_kind": "INTERVAL", "interval_seconds": 3600}}),
    );
    let first = run(&tools, &ctx, &schedule).await;
    let again = run(&tools, &ctx, &schedule).await;
    assert_eq!(
        first["board_item_id"], again["board_item_id"],
        "{first} {again}"
    );
    assert_eq!(s.items().await, 1);

    let delegate = call(
        "call_2",
        "delegate_task",
        json!({"target_lane_thread_id": s.lane.as_str(), "title": "Research"}),
    );
    let first = run(&tools, &ctx, &delegate).await;
    let again = run(&tools, &ctx, &delegate).await;
    assert_eq!(first["board_item_id"], again["board_item_id"]);
    assert_eq!(first["task_key"], again["task_key"]);
    assert_eq!(s.items().await, 2);

    // Another call id is another item.
    let other = run(
        &tools,
        &ctx,
        &call("call_3", "delegate_task", delegate.arguments.clone()),
    )
    .await;
    assert_ne!(other["board_item_id"], first["board_item_id"]);
    assert_eq!(s.items().await, 3);
    s.store.close().await;
}

/// Credentials a `PlatformEvent` tool never needs.
struct NoCredentials;

#[async_trait]
impl ToolCredentials for NoCredentials {
    async fn secrets_key(&self) -> Result<tessera_domain::token::SecretsKey, String> {
        Err("not needed".into())
    }

    async fn actor_token(&self, _request: &ActorTokenRequest) -> Result<String, String> {
        Err("not needed".into())
    }
}

async fn a_repeated_platform_event_call_emits_one_event(db: &TestDatabase) {
    let s = setup(db).await;
    let id = ToolId::generate();
    let spec = RecordSpec {
        name: ToolName::parse("name", "refund").unwrap(),
        description: "asks for a refund".into(),
        input_schema: InputSchema::any_object(),
        requires_confirmation: false,
        confirmation_expires_in_seconds: None,
        timeout_seconds: None,
        configuration: ToolConfig::PlatformEvent(PlatformEventConfig {
            event_type: "order.refund".into(),
        }),
    };
    let tool = s
        .store
        .create_tool(&s.scope, &id, &spec, None)
        .await
        .unwrap();
    let tools = RecordTools::new(
        vec![tool],
        Arc::new(ToolRecordsConfig {
            net: Default::default(),
            max_response_bytes: 1024,
            max_redirects: 0,
            credentials: Arc::new(NoCredentials),
            code: None,
            mcp: Default::default(),
            mcp_clients: McpClients::default(),
            toolkits: None,
            tool_timeout: std::time::Duration::from_secs(60),
        }),
    );
    let ctx = s.ctx();
    let refund = call("call_1", "refund", json!({"order_id": "o-1"}));
    let first = tools.execute(&ctx, &refund).await;
    let again = tools.execute(&ctx, &refund).await;
    assert_eq!(first.result, again.result, "the same event");
    assert_eq!(first.events.len(), 1, "streamed once");
    assert!(again.events.is_empty(), "not streamed again");
    let other = tools
        .execute(&ctx, &call("call_2", "refund", json!({"order_id": "o-1"})))
        .await;
    assert_ne!(other.result, first.result);
    let outbox = s
        .store
        .list_webhook_outbox(&s.scope, &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(outbox.items.len(), 2, "one delivery per call: {outbox:?}");
    s.store.close().await;
}
