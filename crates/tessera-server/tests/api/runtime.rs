//! The agent runtime end to end: runs executed by the server's workers against a real local
//! HTTP server speaking the OpenAI-compatible protocol (`ScriptedModelServer`), observed through
//! the SDK (runs, messages, the SSE stream) and through what the model server received.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::models::{
    AgentLimits, CreateAgentRequest, CreateThreadRequest, ExecuteThreadRequest, ListMessagesParams,
    Message, MessageRole, ModelConfig, MultitaskPolicy, NewMessage, Run, RunStatus, RunUsage,
    Thread, ThreadStatus, TokenUsage, UpdateAgentRequest,
};
use tessera_client::{ErrorCode, StreamEvent, ThreadStream, Threads};
use tessera_domain::{RunId, ThreadId};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_runtime::provider::ProviderConfig;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;
use tokio::time::Instant;

use crate::helpers::{
    assert_api_error, assert_id, poll_until, raw_http, spawn_app_with, unknown_id, TestApp,
};

backend_tests!(
    full_turn_with_scripted_model,
    model_falls_back_to_the_deployment_default_then_the_servers,
    tool_round_trip,
    parallel_tool_calls_are_all_answered_before_the_next_turn,
    rate_limit_with_retry_after_then_success,
    server_error_then_success,
    server_errors_beyond_retries_fail_the_run,
    malformed_chunk_fails_the_run,
    slow_model_completes_under_its_timeout_and_fails_over_it,
    cancellation_mid_stream,
    interrupt_policy_cancels_the_running_run,
    an_interrupt_reaches_a_run_started_at_its_submission,
    reject_policy_refuses_a_second_message,
    enqueue_policy_runs_messages_in_order,
    a_run_waits_for_a_free_worker,
    message_queued_during_a_tool_call_keeps_the_exchange_whole,
    idempotent_retry,
    sse_order_and_resume_with_last_event_id,
    deltas_never_follow_their_completed_message,
    a_stalled_stream_reader_neither_stalls_the_run_nor_loses_events,
    max_iterations_limit,
    token_budget_limit,
    run_timeout_limit,
    bad_input_gets_documented_4xx,
    another_deployments_thread_is_404,
    stops_promptly_right_after_starting,
    threads_keep_their_fields_and_refuse_bad_input,
    messages_page_oldest_and_newest_first,
);

/// Longest wait for anything asynchronous (runs, stream events); polls are every 25 ms.
const WAIT: Duration = Duration::from_secs(10);
const MODEL: &str = "scripted-model";

/// A server whose providers point at one scripted model server.
struct Rig {
    app: TestApp,
    model: ScriptedModelServer,
    next: AtomicUsize,
}

impl Rig {
    /// Providers: `scripted` (defaults: 3 retries, 60 s timeouts), `scripted_one_retry` and
    /// `scripted_1s` (first-byte timeout 1 s), all on the same scripted server.
    async fn start(db: &TestDatabase) -> Rig {
        Self::start_with(db, |_| {}).await
    }

    /// [`Rig::start`] with more configuration.
    async fn start_with(
        db: &TestDatabase,
        customize: impl FnOnce(&mut tessera_server::Config),
    ) -> Rig {
        let model = ScriptedModelServer::start().await;
        let scripted = model.provider_config();
        let app = spawn_app_with(db, |config| {
            customize(config);
            config.providers.insert(
                "scripted_one_retry".into(),
                ProviderConfig {
                    max_retries: 1,
                    ..scripted.clone()
                },
            );
            config.providers.insert(
                "scripted_1s".into(),
                ProviderConfig {
                    first_byte_timeout_seconds: 1,
                    ..scripted.clone()
                },
            );
            config.providers.insert("scripted".into(), scripted);
        })
        .await;
        Rig {
            app,
            model,
            next: AtomicUsize::new(0),
        }
    }

    fn threads(&self) -> Threads<'_> {
        self.app.client.ai().threads()
    }

    /// A thread (titled "t") in a new project whose agent is `agent`.
    async fn thread(&self, agent: CreateAgentRequest) -> String {
        self.thread_with(
            agent,
            CreateThreadRequest {
                title: "t".into(),
                ..Default::default()
            },
        )
        .await
        .id
    }

    async fn thread_with(&self, agent: CreateAgentRequest, thread: CreateThreadRequest) -> Thread {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let actor = self.app.actor(&format!("runtime-{n}")).await;
        let agent = self
            .app
            .client
            .ai()
            .agents()
            .create_agent(agent)
            .send()
            .await
            .expect("create agent");
        let project = self
            .app
            .project(&actor.id, &agent.id, &format!("p{n}"))
            .await;
        self.threads()
            .create_thread(&project.id, thread)
            .send()
            .await
            .expect("create thread")
    }

    /// Scripts a first answer ("first") that begins after `first_byte_after`, then a quick one
    /// ("second").
    fn push_slow_then_quick(&self, first_byte_after: Duration) {
        self.model.push_all([
            Script::Slow {
                first_byte_after,
                chunks: vec!["first".into()],
                gap: Duration::ZERO,
            },
            Script::text(["second"]),
        ]);
    }

    /// Sends a message; returns the queued run's id.
    async fn send(&self, thread: &str, content: &str) -> String {
        let accepted = self
            .threads()
            .send_message(thread, content)
            .send()
            .await
            .expect("send message");
        assert_eq!(accepted.status, "queued", "{accepted:?}");
        let run_id = accepted.run_id.expect("a run id");
        assert_id(&run_id, "run");
        run_id
    }

    async fn run(&self, thread: &str, run: &str) -> Run {
        self.threads()
            .get_run(thread, run)
            .send()
            .await
            .expect("get run")
    }

    /// Waits until the run has `status`; panics at once if it ends in another state.
    async fn wait_run(&self, thread: &str, run: &str, status: RunStatus) -> Run {
        let (threads, model) = (self.threads(), &self.model);
        poll_until(
            &format!("run {run} to be {status:?}"),
            WAIT,
            || async move {
                let got = threads
                    .get_run(thread, run)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if got.status == status {
                    return Ok(got);
                }
                assert!(
                    !is_terminal(got.status),
                    "run {run} ended {:?} instead of {status:?}: {got:?}",
                    got.status
                );
                Err(format!(
                    "{got:?} ({} model requests, {} scripts left)",
                    model.request_count(),
                    model.remaining()
                ))
            },
        )
        .await
    }

    /// Waits until the model server has received `n` requests.
    async fn wait_requests(&self, n: usize) {
        let model = &self.model;
        poll_until(&format!("{n} model requests"), WAIT, || async move {
            match model.request_count() {
                got if got >= n => Ok(()),
                got => Err(format!("{got} requests")),
            }
        })
        .await;
    }

    /// All of a thread's messages, oldest first.
    async fn messages(&self, thread: &str) -> Vec<Message> {
        let page = self
            .threads()
            .list_messages(
                thread,
                ListMessagesParams {
                    limit: Some(100),
                    ..Default::default()
                },
            )
            .send()
            .await
            .expect("list messages");
        assert!(!page.has_more);
        page.data
    }

    async fn thread_status(&self, thread: &str) -> ThreadStatus {
        self.threads()
            .get_thread(thread)
            .send()
            .await
            .expect("get thread")
            .status
    }

    /// The thread's durable events from the start, up to the `run.status` `status` of `run`.
    async fn durable_events(&self, thread: &str, run: &str, status: &str) -> Vec<StreamEvent> {
        let mut stream = self.threads().stream(thread).connect().await.unwrap();
        let events = read_until(&mut stream, run_status_is(run, status)).await;
        assert!(
            events.iter().all(|e| e.id.is_some()),
            "a replay of a finished run carries only durable events: {}",
            kinds(&events)
        );
        events
    }

    /// The body of the `i`-th model request (0-based).
    fn request(&self, i: usize) -> Value {
        let requests = self.model.requests();
        requests
            .get(i)
            .unwrap_or_else(|| panic!("no model request #{i}; {} arrived", requests.len()))
            .body
            .clone()
    }

    /// Checks every conversation the model received, then stops the server.
    async fn finish(self) {
        for (i, request) in self.model.requests().iter().enumerate() {
            assert_valid_conversation(i, &request.body);
        }
        self.app.stop().await;
    }
}

/// `later` started no earlier than `earlier` finished.
fn assert_started_after_ended(later: &Run, earlier: &Run) {
    assert!(
        millis(earlier.finished_at.as_deref().unwrap())
            <= millis(later.started_at.as_deref().unwrap()),
        "{later:?} started before {earlier:?} ended"
    );
}

fn is_terminal(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
    )
}

fn model(provider: &str) -> ModelConfig {
    ModelConfig {
        provider: provider.into(),
        model: MODEL.into(),
        temperature: None,
        max_output_tokens: None,
    }
}

fn agent_on(provider: &str, name: &str) -> CreateAgentRequest {
    CreateAgentRequest {
        name: name.into(),
        model: Some(model(provider)),
        ..Default::default()
    }
}

fn scripted_agent(name: &str) -> CreateAgentRequest {
    agent_on("scripted", name)
}

fn with_policy(policy: MultitaskPolicy, agent: CreateAgentRequest) -> CreateAgentRequest {
    CreateAgentRequest {
        multitask: Some(policy),
        ..agent
    }
}

fn with_limits(limits: AgentLimits, agent: CreateAgentRequest) -> CreateAgentRequest {
    CreateAgentRequest {
        limits: Some(limits),
        ..agent
    }
}

fn roles(messages: &[Message]) -> Vec<MessageRole> {
    messages.iter().map(|m| m.role).collect()
}

/// The `role`s of a model request's messages.
fn request_roles(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// A token per four characters of the messages' contents, as the scripted server counts.
fn scripted_prompt_tokens(body: &Value) -> u64 {
    let chars: usize = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(|c| c.chars().count())
        .sum();
    chars.div_ceil(4) as u64
}

/// What a strict OpenAI-compatible server accepts: a system message first, a `tool` message
/// only right after the assistant message that made the call (or after other results of that
/// turn), each call answered exactly once before anything else is said.
fn assert_valid_conversation(i: usize, body: &Value) {
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(
        messages.first().map(|m| &m["role"]),
        Some(&json!("system")),
        "model request #{i}: {body}"
    );
    let mut open: Vec<String> = Vec::new();
    for m in messages {
        if m["role"] == "tool" {
            let id = m["tool_call_id"].as_str().unwrap_or_default().to_owned();
            assert!(
                open.contains(&id),
                "model request #{i}: tool result {id:?} does not follow its call: {body:#}"
            );
            open.retain(|o| *o != id);
            continue;
        }
        assert!(
            open.is_empty(),
            "model request #{i}: calls {open:?} are unanswered before the next message: {body:#}"
        );
        if let Some(calls) = m["tool_calls"].as_array() {
            open = calls
                .iter()
                .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
                .collect();
        }
    }
    assert!(
        open.is_empty(),
        "model request #{i}: calls {open:?} unanswered: {body:#}"
    );
}

fn kinds(events: &[StreamEvent]) -> String {
    events
        .iter()
        .map(|e| match e.id {
            Some(id) => format!("{id}:{}", e.event),
            None => e.event.clone(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn run_status_is<'a>(run: &'a str, status: &'a str) -> impl Fn(&StreamEvent) -> bool + 'a {
    move |e| e.event == "run.status" && e.data["run_id"] == run && e.data["status"] == status
}

/// Reads events until one matches `stop` (included); panics after [`WAIT`].
async fn read_until(
    stream: &mut ThreadStream,
    mut stop: impl FnMut(&StreamEvent) -> bool,
) -> Vec<StreamEvent> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no awaited event within {WAIT:?}; got {}", kinds(&seen)));
        let event = next
            .unwrap_or_else(|| panic!("the stream ended; got {}", kinds(&seen)))
            .expect("the stream reads");
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}

fn position(events: &[StreamEvent], what: &str, pred: impl Fn(&StreamEvent) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no {what} in {}", kinds(events)))
}

/// Milliseconds since the epoch of `2026-11-23T14:43:20.123Z`.
fn millis(rfc3339: &str) -> i64 {
    let n = |range: std::ops::Range<usize>| -> i64 {
        rfc3339
            .get(range)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an RFC 3339 timestamp: {rfc3339:?}"))
    };
    let (y, m, d) = (n(0..4), n(5..7), n(8..10));
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let ms = if rfc3339.as_bytes().get(19) == Some(&b'.') {
        n(20..23)
    } else {
        0
    };
    ((days * 24 + n(11..13)) * 60 + n(14..16)) * 60 * 1000 + n(17..19) * 1000 + ms
}

// ---------------------------------------------------------------------------------------------
// Turns

async fn full_turn_with_scripted_model(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    rig.model
        .push(Script::text(["Your balance ", "is 42 ", "euros."]));
    let thread = rig
        .thread_with(
            CreateAgentRequest {
                description: Some("Billing helper for ACME customers.".into()),
                ..scripted_agent("billing")
            },
            CreateThreadRequest {
                title: "Balance".into(),
                system_instructions: Some("Answer in one sentence.".into()),
                ..Default::default()
            },
        )
        .await;
    let run_id = rig.send(&thread.id, "What is my balance?").await;
    let run = rig
        .wait_run(&thread.id, &run_id, RunStatus::Completed)
        .await;
    assert_eq!(run.stop_reason.as_deref(), Some("completed"), "{run:?}");
    assert_eq!(run.error, None);
    assert_eq!(run.attempt, 1);
    assert!(!run.cancel_requested);
    assert_eq!(run.thread_id, thread.id);

    // What the model received: the system text, the user message and the tools.
    assert_eq!(rig.model.request_count(), 1);
    let request = &rig.model.requests()[0];
    assert_eq!(request.authorization, None, "no api_key_env, no key");
    let body = &request.body;
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{body:#}");
    assert_eq!(messages[0]["role"], "system");
    let system = messages[0]["content"].as_str().unwrap();
    for part in [
        "Tessera",
        "Billing helper for ACME customers.",
        "Answer in one sentence.",
    ] {
        assert!(system.contains(part), "{part:?} missing from {system:?}");
    }
    assert!(
        system.find("Billing helper").unwrap() < system.find("Answer in one").unwrap(),
        "agent description, then thread instructions: {system:?}"
    );
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "What is my balance?"})
    );
    let tools = body["tools"].as_array().expect("tools are offered");
    let notify = tools
        .iter()
        .find(|t| t["function"]["name"] == "notify_user")
        .unwrap_or_else(|| panic!("notify_user not offered: {tools:?}"));
    assert_eq!(notify["type"], "function");
    assert_eq!(
        notify["function"]["parameters"]["required"],
        json!(["message"])
    );

    // The stored conversation.
    let stored = rig.messages(&thread.id).await;
    assert_eq!(
        roles(&stored),
        [MessageRole::User, MessageRole::Assistant],
        "{stored:#?}"
    );
    let (user, answer) = (&stored[0], &stored[1]);
    assert_eq!(user.content, "What is my balance?");
    assert_eq!(user.id, run.input_message_id);
    assert_eq!(user.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(user.usage, None);
    assert_id(&answer.id, "msg");
    assert_eq!(answer.content, "Your balance is 42 euros.");
    assert_eq!(answer.run_id.as_deref(), Some(run_id.as_str()));
    assert!(answer.tool_calls.is_empty());
    let usage = TokenUsage {
        prompt_tokens: scripted_prompt_tokens(body),
        completion_tokens: "Your balance is 42 euros.".len().div_ceil(4) as u64,
    };
    assert_eq!(answer.usage, Some(usage));

    // The run's usage adds up the turn, and its wall time is its own start to end.
    let (started, finished) = (
        run.started_at.as_deref().expect("started_at"),
        run.finished_at.as_deref().expect("finished_at"),
    );
    assert_eq!(
        run.usage,
        RunUsage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            iterations: 1,
            tool_calls: 0,
            wall_ms: (millis(finished) - millis(started)) as u64,
        }
    );
    assert_eq!(rig.thread_status(&thread.id).await, ThreadStatus::Idle);
    rig.finish().await;
}

async fn model_falls_back_to_the_deployment_default_then_the_servers(db: &TestDatabase) {
    use tessera_client::models::{DeploymentSettings, UpdateDeploymentRequest};
    let rig = Rig::start(db).await;
    let deployments = rig.app.client.deployments();
    let initial = deployments.current().send().await.unwrap();
    assert_eq!(initial.settings, DeploymentSettings::default());
    let thread = rig
        .thread(CreateAgentRequest {
            name: "no-model".into(),
            ..Default::default()
        })
        .await;

    // No agent model, no deployment default: the server's (`echo`), no model request.
    let first = rig.send(&thread, "first").await;
    rig.wait_run(&thread, &first, RunStatus::Completed).await;
    assert_eq!(rig.model.request_count(), 0);
    assert_eq!(rig.messages(&thread).await[1].content, "first");

    // The deployment's default applies from the next run on.
    let settings = |default_model| UpdateDeploymentRequest {
        settings: Some(DeploymentSettings { default_model }),
    };
    let chosen = ModelConfig {
        model: "deployment-default".into(),
        temperature: Some(0.25),
        ..model("scripted")
    };
    let updated = deployments
        .update_current(&settings(Some(chosen.clone())))
        .send()
        .await
        .unwrap();
    assert_eq!(updated.settings.default_model, Some(chosen.clone()));
    assert_eq!(updated.id, initial.id);
    assert_eq!(
        deployments
            .current()
            .send()
            .await
            .unwrap()
            .settings
            .default_model,
        Some(chosen)
    );
    rig.model.push(Script::text(["from the default"]));
    let second = rig.send(&thread, "second").await;
    rig.wait_run(&thread, &second, RunStatus::Completed).await;
    assert_eq!(rig.model.request_count(), 1);
    assert_eq!(rig.request(0)["model"], "deployment-default");
    assert_eq!(rig.request(0)["temperature"], 0.25);
    assert_eq!(rig.messages(&thread).await[3].content, "from the default");

    // An agent's own model still wins.
    let own = rig.thread(scripted_agent("own-model")).await;
    rig.model.push(Script::text(["own"]));
    let third = rig.send(&own, "third").await;
    rig.wait_run(&own, &third, RunStatus::Completed).await;
    assert_eq!(rig.request(1)["model"], MODEL);

    // Bad settings are refused and change nothing.
    let refused = |r: Result<_, _>, field| {
        assert_api_error(r, 422, ErrorCode::ValidationFailed, Some(field));
    };
    refused(
        deployments
            .update_current(&settings(Some(model("nowhere"))))
            .send()
            .await,
        "settings.default_model.provider",
    );
    refused(
        deployments
            .update_current(&settings(Some(ModelConfig {
                temperature: Some(3.0),
                ..model("scripted")
            })))
            .send()
            .await,
        "settings.default_model.temperature",
    );
    refused(
        deployments
            .update_current(&settings(Some(ModelConfig {
                model: String::new(),
                ..model("scripted")
            })))
            .send()
            .await,
        "settings.default_model.model",
    );
    let unknown_field = rig
        .app
        .http
        .patch(format!("{}/deployments/current", rig.app.base_url))
        .bearer_auth(&rig.app.key)
        .json(&json!({"settings": {"default_modle": null}}))
        .send()
        .await
        .unwrap();
    assert!(
        [400, 422].contains(&unknown_field.status().as_u16()),
        "{unknown_field:?}"
    );
    assert_eq!(
        deployments
            .current()
            .send()
            .await
            .unwrap()
            .settings
            .default_model
            .unwrap()
            .model,
        "deployment-default"
    );

    // Cleared: back to the server's default.
    let cleared = deployments
        .update_current(&settings(None))
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.settings, DeploymentSettings::default());
    let fourth = rig.send(&thread, "fourth").await;
    rig.wait_run(&thread, &fourth, RunStatus::Completed).await;
    assert_eq!(
        rig.model.request_count(),
        2,
        "echo answered, not the model server"
    );
    rig.finish().await;
}

async fn tool_round_trip(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("notifier")).await;
    let mut stream = rig.threads().stream(&thread).connect().await.unwrap();
    rig.model.push_all([
        Script::tool_call("notify_user", json!({"message": "hi"})),
        Script::text(["Done", "."]),
    ]);
    let run_id = rig.send(&thread, "Say hi to me").await;
    let events = read_until(&mut stream, run_status_is(&run_id, "completed")).await;
    drop(stream);
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_eq!(run.usage.iterations, 2);
    assert_eq!(run.usage.tool_calls, 1);

    let stored = rig.messages(&thread).await;
    assert_eq!(
        roles(&stored),
        [
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::Tool,
            MessageRole::Assistant
        ],
        "{stored:#?}"
    );
    let call = &stored[1].tool_calls;
    assert_eq!(call.len(), 1, "{stored:#?}");
    let call = &call[0];
    assert_eq!(call.name, "notify_user");
    assert_eq!(call.arguments, json!({"message": "hi"}));
    assert!(!call.id.is_empty());
    assert_eq!(stored[1].content, "");
    let result = &stored[2];
    assert_eq!(result.tool_call_id.as_deref(), Some(call.id.as_str()));
    assert_eq!(result.tool_name.as_deref(), Some("notify_user"));
    assert_eq!(result.content, "the user was notified");
    assert!(!result.is_error);
    assert_eq!(result.run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(stored[3].content, "Done.");

    // The second model turn received the call and its result.
    assert_eq!(rig.model.request_count(), 2);
    let second = rig.request(1);
    let messages = second["messages"].as_array().unwrap();
    assert_eq!(
        request_roles(&second),
        ["system", "user", "assistant", "tool"]
    );
    assert_eq!(
        messages[2]["tool_calls"],
        json!([{"id": call.id, "type": "function",
                "function": {"name": "notify_user", "arguments": "{\"message\":\"hi\"}"}}])
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "content": "the user was notified", "tool_call_id": call.id})
    );

    // The stream showed the call, the notification and the result, in that order.
    let started = position(&events, "tool.started", |e| e.event == "tool.started");
    let notified = position(&events, "notification", |e| e.event == "notification");
    let completed = position(&events, "tool.completed", |e| e.event == "tool.completed");
    let call_turn = position(&events, "the tool-call turn", |e| {
        e.event == "message.completed" && e.data["message"]["id"] == stored[1].id
    });
    let answer = position(&events, "the final answer", |e| {
        e.event == "message.completed" && e.data["message"]["id"] == stored[3].id
    });
    assert!(
        call_turn < started && started < notified && notified < completed && completed < answer,
        "{}",
        kinds(&events)
    );
    assert_eq!(
        events[started].data,
        json!({"run_id": run_id, "call_id": call.id, "name": "notify_user", "arguments": {"message": "hi"}})
    );
    assert_eq!(
        events[notified].data,
        json!({"run_id": run_id, "message": "hi"})
    );
    let done = &events[completed].data;
    assert_eq!(done["call_id"], call.id.as_str());
    assert_eq!(done["is_error"], false);
    assert_eq!(done["message"]["id"], result.id.as_str());
    assert_eq!(done["message"]["content"], "the user was notified");
    rig.finish().await;
}

async fn parallel_tool_calls_are_all_answered_before_the_next_turn(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("parallel")).await;
    rig.model.push_all([
        Script::tool_calls([
            ("notify_user", json!({"message": "one"})),
            ("notify_user", json!({"message": "two"})),
        ]),
        Script::text(["Both sent."]),
    ]);
    let run_id = rig.send(&thread, "Notify me twice").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_eq!((run.usage.iterations, run.usage.tool_calls), (2, 2));

    let stored = rig.messages(&thread).await;
    assert_eq!(
        roles(&stored),
        [
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::Tool,
            MessageRole::Tool,
            MessageRole::Assistant
        ],
        "{stored:#?}"
    );
    let calls = &stored[1].tool_calls;
    assert_eq!(calls.len(), 2);
    assert_ne!(calls[0].id, calls[1].id);
    let mut call_ids: Vec<&str> = calls.iter().map(|c| c.id.as_str()).collect();
    let mut answered: Vec<&str> = stored[2..4]
        .iter()
        .map(|m| m.tool_call_id.as_deref().unwrap())
        .collect();
    call_ids.sort_unstable();
    answered.sort_unstable();
    assert_eq!(answered, call_ids, "each call has exactly one result");
    assert!(stored[2..4]
        .iter()
        .all(|m| m.content == "the user was notified" && !m.is_error));
    assert_eq!(stored[4].content, "Both sent.");

    // Both results were in the next model request.
    assert_eq!(rig.model.request_count(), 2);
    let second = rig.request(1);
    assert_eq!(
        request_roles(&second),
        ["system", "user", "assistant", "tool", "tool"]
    );
    let mut in_request: Vec<String> = second["messages"].as_array().unwrap()[3..]
        .iter()
        .map(|m| m["tool_call_id"].as_str().unwrap().to_owned())
        .collect();
    in_request.sort_unstable();
    assert_eq!(in_request, call_ids);

    let events = rig.durable_events(&thread, &run_id, "completed").await;
    let mut notes: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "notification")
        .map(|e| e.data["message"].as_str().unwrap())
        .collect();
    notes.sort_unstable();
    assert_eq!(notes, ["one", "two"]);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "tool.completed")
            .count(),
        2
    );
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Provider failures

async fn rate_limit_with_retry_after_then_success(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("patient")).await;
    rig.model.push_all([
        Script::Status(429, Some(1)),
        Script::text(["after the wait"]),
    ]);
    let run_id = rig.send(&thread, "hello").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_eq!(rig.model.request_count(), 2);
    assert_eq!(
        rig.request(0),
        rig.request(1),
        "the retry sends the same request"
    );
    assert!(
        run.usage.wall_ms >= 1000,
        "Retry-After: 1 was honoured: {run:?}"
    );
    let stored = rig.messages(&thread).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].content, "after the wait");
    rig.finish().await;
}

async fn server_error_then_success(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("resilient")).await;
    rig.model
        .push_all([Script::Status(500, None), Script::text(["recovered"])]);
    let run_id = rig.send(&thread, "hello").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_eq!(run.usage.iterations, 1);
    assert_eq!(rig.model.request_count(), 2);
    let stored = rig.messages(&thread).await;
    assert_eq!(roles(&stored), [MessageRole::User, MessageRole::Assistant]);
    assert_eq!(stored[1].content, "recovered");
    rig.finish().await;
}

async fn server_errors_beyond_retries_fail_the_run(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(agent_on("scripted_one_retry", "fragile")).await;
    rig.model.push_all([
        Script::Status(500, None),
        Script::Status(503, None),
        Script::text(["never asked for"]),
    ]);
    let run_id = rig.send(&thread, "hello").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    assert_eq!(run.stop_reason.as_deref(), Some("model_error"), "{run:?}");
    let error = run.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("503") && error.contains("scripted status 503"),
        "the last provider error is reported: {error:?}"
    );
    assert_eq!(rig.model.request_count(), 2, "one try and one retry");
    assert_eq!(rig.model.remaining(), 1);
    assert_eq!(run.usage.iterations, 0);
    assert_eq!(roles(&rig.messages(&thread).await), [MessageRole::User]);
    assert_eq!(rig.thread_status(&thread).await, ThreadStatus::Idle);
    let events = rig.durable_events(&thread, &run_id, "failed").await;
    let last = events.last().unwrap();
    assert_eq!(last.data["stop_reason"], "model_error");
    assert_eq!(last.data["error"], error);
    rig.finish().await;
}

async fn malformed_chunk_fails_the_run(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("confused")).await;
    rig.model
        .push_all([Script::Malformed, Script::text(["never asked for"])]);
    let run_id = rig.send(&thread, "hello").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    assert_eq!(run.stop_reason.as_deref(), Some("model_error"), "{run:?}");
    let error = run.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("invalid response") && error.contains("not JSON"),
        "{error:?}"
    );
    assert_eq!(
        rig.model.request_count(),
        1,
        "a protocol error is not retried"
    );
    assert_eq!(roles(&rig.messages(&thread).await), [MessageRole::User]);
    rig.finish().await;
}

async fn slow_model_completes_under_its_timeout_and_fails_over_it(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(agent_on("scripted_1s", "slow")).await;
    rig.model.push(Script::Slow {
        first_byte_after: Duration::from_millis(400),
        chunks: vec!["slow ".into(), "but ".into(), "sure".into()],
        gap: Duration::from_millis(50),
    });
    let run_id = rig.send(&thread, "take your time").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert!(run.usage.wall_ms >= 400, "{run:?}");
    assert_eq!(rig.messages(&thread).await[1].content, "slow but sure");

    // Over the first-byte timeout (1 s): a model error, not retried.
    rig.model.push(Script::Slow {
        first_byte_after: Duration::from_millis(2500),
        chunks: vec!["too late".into()],
        gap: Duration::ZERO,
    });
    let run_id = rig.send(&thread, "and again").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    assert_eq!(run.stop_reason.as_deref(), Some("model_error"), "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{run:?}"
    );
    assert!(
        (1000..2500).contains(&run.usage.wall_ms),
        "gave up after the 1 s first-byte timeout: {run:?}"
    );
    assert_eq!(rig.model.request_count(), 2);
    assert_eq!(rig.messages(&thread).await.len(), 3);
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Cancellation and multitask policies

async fn cancellation_mid_stream(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("talkative")).await;
    let mut stream = rig.threads().stream(&thread).connect().await.unwrap();
    rig.model.push(Script::Slow {
        first_byte_after: Duration::ZERO,
        chunks: vec!["Let me think".into(), " about it".into()],
        gap: Duration::from_secs(30),
    });
    let run_id = rig.send(&thread, "Tell me everything").await;
    // A second message waits behind it (multitask `enqueue`).
    let queued_id = rig.send(&thread, "And then?").await;

    // Mid-stream: the first delta arrived, the rest is 30 s away.
    let seen = read_until(&mut stream, |e| e.event == "message.delta").await;
    let delta = seen.last().unwrap();
    assert_eq!(delta.data["text"], "Let me think");
    assert_eq!(delta.data["run_id"], run_id.as_str());
    assert_eq!(rig.run(&thread, &queued_id).await.status, RunStatus::Queued);

    let asked = Instant::now();
    let cancelled = rig.threads().cancel(&thread).send().await.unwrap();
    assert_eq!(cancelled.status, "cancelling");
    assert_eq!(cancelled.run_id.as_deref(), Some(run_id.as_str()));
    let mut affected = cancelled.run_ids.clone().unwrap_or_default();
    affected.sort_unstable();
    let mut expected = vec![run_id.clone(), queued_id.clone()];
    expected.sort_unstable();
    assert_eq!(affected, expected, "the active and the queued run");

    let run = rig.wait_run(&thread, &run_id, RunStatus::Cancelled).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancelled promptly, not after the model's 30 s: {:?}",
        asked.elapsed()
    );
    assert_eq!(run.stop_reason.as_deref(), Some("cancelled"), "{run:?}");
    assert!(run.cancel_requested);
    assert_eq!(run.error, None);
    let queued = rig.run(&thread, &queued_id).await;
    assert_eq!(queued.status, RunStatus::Cancelled, "{queued:?}");
    assert_eq!(queued.stop_reason.as_deref(), Some("cancelled"));
    assert_eq!(queued.started_at, None, "the queued run never started");

    let rest = read_until(&mut stream, run_status_is(&run_id, "cancelled")).await;
    assert!(
        !rest.iter().any(|e| e.event == "message.completed"),
        "the interrupted draft is not stored: {}",
        kinds(&rest)
    );
    drop(stream);
    assert_eq!(rig.thread_status(&thread).await, ThreadStatus::Idle);
    assert_eq!(
        roles(&rig.messages(&thread).await),
        [MessageRole::User, MessageRole::User]
    );
    assert_api_error(
        rig.threads().cancel(&thread).send().await,
        409,
        ErrorCode::RunNotActive,
        None,
    );

    // The thread works again.
    rig.model.push(Script::text(["Back again."]));
    let next = rig.send(&thread, "Short version?").await;
    rig.wait_run(&thread, &next, RunStatus::Completed).await;
    let stored = rig.messages(&thread).await;
    assert_eq!(stored.last().unwrap().content, "Back again.");
    assert_eq!(rig.model.request_count(), 2);
    rig.finish().await;
}

async fn interrupt_policy_cancels_the_running_run(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig
        .thread(with_policy(
            MultitaskPolicy::Interrupt,
            scripted_agent("interruptible"),
        ))
        .await;
    rig.model.push(Script::Hang);
    let first = rig.send(&thread, "first question").await;
    rig.wait_run(&thread, &first, RunStatus::Running).await;
    rig.wait_requests(1).await;

    rig.model.push(Script::text(["answer to the second"]));
    let asked = Instant::now();
    let second = rig.send(&thread, "never mind, second question").await;
    let run = rig.wait_run(&thread, &first, RunStatus::Cancelled).await;
    assert!(asked.elapsed() < Duration::from_secs(3));
    assert_eq!(run.stop_reason.as_deref(), Some("interrupted"), "{run:?}");
    assert!(run.cancel_requested);
    let done = rig.wait_run(&thread, &second, RunStatus::Completed).await;
    assert_eq!(done.stop_reason.as_deref(), Some("completed"));

    let stored = rig.messages(&thread).await;
    assert_eq!(
        roles(&stored),
        [MessageRole::User, MessageRole::User, MessageRole::Assistant]
    );
    assert_eq!(stored[2].content, "answer to the second");
    assert_eq!(stored[2].run_id.as_deref(), Some(second.as_str()));
    assert_eq!(rig.model.request_count(), 2);
    let body = rig.request(1);
    assert_eq!(request_roles(&body), ["system", "user", "user"]);
    assert_eq!(
        body["messages"][2]["content"],
        "never mind, second question"
    );
    rig.finish().await;
}

/// Two messages at once on an `interrupt` thread: the first to commit starts at its submission,
/// and the second's interruption reaches it however early it comes. With a lease of ten minutes
/// the next heartbeat (which would also relay it) is minutes away, so only the stop request
/// registered with the submission can end that run in time.
async fn an_interrupt_reaches_a_run_started_at_its_submission(db: &TestDatabase) {
    let rig = Rig::start_with(db, |config| config.runtime.lease_seconds = 600).await;
    let thread = rig
        .thread(with_policy(
            MultitaskPolicy::Interrupt,
            scripted_agent("interruptible"),
        ))
        .await;
    // Whichever run calls the model first gets the slow answer.
    rig.push_slow_then_quick(Duration::from_secs(3));
    let (a, b) = tokio::join!(rig.send(&thread, "one"), rig.send(&thread, "two"));
    let mut ends = Vec::new();
    for run in [&a, &b] {
        let run = poll_until("the run to end", WAIT, || async {
            let got = rig.run(&thread, run).await;
            if is_terminal(got.status) {
                Ok(got)
            } else {
                Err(format!("{got:?}"))
            }
        })
        .await;
        ends.push((run.stop_reason.unwrap_or_default(), run.status));
    }
    ends.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        ends,
        [
            ("completed".to_owned(), RunStatus::Completed),
            ("interrupted".to_owned(), RunStatus::Cancelled)
        ]
    );
    rig.finish().await;
}

async fn reject_policy_refuses_a_second_message(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig
        .thread(with_policy(
            MultitaskPolicy::Reject,
            scripted_agent("strict"),
        ))
        .await;
    rig.model.push(Script::Hang);
    let first = rig.send(&thread, "first").await;
    rig.wait_run(&thread, &first, RunStatus::Running).await;
    rig.wait_requests(1).await;

    let refused = || {
        rig.threads()
            .send_message(&thread, "second")
            .idempotency_key("reject-1")
            .send()
    };
    assert_api_error(refused().await, 409, ErrorCode::RunActive, None);
    assert_eq!(roles(&rig.messages(&thread).await), [MessageRole::User]);
    assert_eq!(
        rig.run(&thread, &first).await.status,
        RunStatus::Running,
        "the running run is untouched"
    );

    rig.threads().cancel(&thread).send().await.unwrap();
    rig.wait_run(&thread, &first, RunStatus::Cancelled).await;

    // The refusal was not remembered as the key's answer: the retry now runs.
    rig.model.push(Script::text(["second answer"]));
    let accepted = refused().await.unwrap();
    let second = accepted.run_id.unwrap();
    assert_ne!(second, first);
    rig.wait_run(&thread, &second, RunStatus::Completed).await;
    let stored = rig.messages(&thread).await;
    assert_eq!(
        roles(&stored),
        [MessageRole::User, MessageRole::User, MessageRole::Assistant]
    );
    assert_eq!(stored[2].content, "second answer");
    rig.finish().await;
}

async fn enqueue_policy_runs_messages_in_order(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("patient")).await;
    rig.push_slow_then_quick(Duration::from_millis(500));
    let first = rig.send(&thread, "one").await;
    rig.wait_requests(1).await;
    let second = rig.send(&thread, "two").await;
    let waiting = rig.run(&thread, &second).await;
    assert_eq!(waiting.status, RunStatus::Queued, "{waiting:?}");
    assert_eq!(rig.run(&thread, &first).await.status, RunStatus::Running);

    let a = rig.wait_run(&thread, &first, RunStatus::Completed).await;
    let b = rig.wait_run(&thread, &second, RunStatus::Completed).await;
    assert_started_after_ended(&b, &a);
    let stored = rig.messages(&thread).await;
    let shown: Vec<(MessageRole, &str, Option<&str>)> = stored
        .iter()
        .map(|m| (m.role, m.content.as_str(), m.run_id.as_deref()))
        .collect();
    assert_eq!(
        shown,
        [
            (MessageRole::User, "one", Some(first.as_str())),
            (MessageRole::Assistant, "first", Some(first.as_str())),
            (MessageRole::User, "two", Some(second.as_str())),
            (MessageRole::Assistant, "second", Some(second.as_str())),
        ]
    );
    assert_eq!(request_roles(&rig.request(0)), ["system", "user"]);
    let body = rig.request(1);
    assert_eq!(
        request_roles(&body),
        ["system", "user", "assistant", "user"]
    );
    assert_eq!(body["messages"][2]["content"], "first");
    assert_eq!(body["messages"][3]["content"], "two");
    rig.finish().await;
}

/// A submission starts its run on a free worker at once (no claim of its own); with every worker
/// busy, the run waits queued and the workers claim it once one is free.
async fn a_run_waits_for_a_free_worker(db: &TestDatabase) {
    let rig = Rig::start_with(db, |config| config.runtime.workers = 1).await;
    let busy = rig.thread(scripted_agent("busy")).await;
    let waiting = rig.thread(scripted_agent("waiting")).await;
    rig.push_slow_then_quick(Duration::from_millis(500));
    let first = rig.send(&busy, "one").await;
    rig.wait_requests(1).await;
    let second = rig.send(&waiting, "two").await;
    let queued = rig.run(&waiting, &second).await;
    assert_eq!(queued.status, RunStatus::Queued, "{queued:?}");
    assert_eq!(queued.attempt, 0, "nobody claimed it: {queued:?}");

    let a = rig.wait_run(&busy, &first, RunStatus::Completed).await;
    let b = rig.wait_run(&waiting, &second, RunStatus::Completed).await;
    assert_eq!((a.attempt, b.attempt), (1, 1));
    assert_started_after_ended(&b, &a);
    rig.finish().await;
}

/// A message queued while the previous run is between a tool call and its result must not split
/// that exchange in the next run's conversation (strict OpenAI-compatible servers refuse a tool
/// result that does not follow its call).
async fn message_queued_during_a_tool_call_keeps_the_exchange_whole(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("busy")).await;
    rig.model.push_all([
        // The first turn is delayed a second by a 429, while the second message arrives.
        Script::Status(429, Some(1)),
        Script::tool_call("notify_user", json!({"message": "working on it"})),
        Script::text(["first done"]),
        Script::text(["second done"]),
    ]);
    let first = rig.send(&thread, "one").await;
    rig.wait_requests(1).await;
    let second = rig.send(&thread, "two").await;
    rig.wait_run(&thread, &first, RunStatus::Completed).await;
    rig.wait_run(&thread, &second, RunStatus::Completed).await;
    assert_eq!(rig.model.request_count(), 4);
    let body = rig.request(3);
    assert_valid_conversation(3, &body);
    assert_eq!(
        request_roles(&body),
        ["system", "user", "assistant", "tool", "assistant", "user"],
        "{body:#}"
    );
    assert_eq!(body["messages"][4]["content"], "first done");
    assert_eq!(body["messages"][5]["content"], "two");
    rig.finish().await;
}

async fn idempotent_retry(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("careful")).await;
    rig.model.push(Script::text(["only once"]));
    let send = |content: &'static str| {
        rig.threads()
            .send_message(&thread, content)
            .idempotency_key("order-123")
            .send()
    };
    let first = send("hello").await.unwrap();
    let again = send("hello").await.unwrap();
    assert_eq!(again, first);
    // Concurrent retries get the same answer too.
    let (a, b, c) = tokio::join!(send("hello"), send("hello"), send("hello"));
    for retry in [a, b, c] {
        assert_eq!(retry.unwrap(), first);
    }
    let run_id = first.run_id.clone().unwrap();
    rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    // Once finished, the retry still answers the first answer and starts nothing.
    assert_eq!(send("hello").await.unwrap(), first);

    // The same key with another body is a mistake.
    assert_api_error(
        send("hello!").await,
        409,
        ErrorCode::IdempotencyKeyReused,
        None,
    );
    assert_api_error(
        rig.threads()
            .cancel(&thread)
            .idempotency_key("order-123")
            .send()
            .await,
        409,
        ErrorCode::IdempotencyKeyReused,
        None,
    );

    let stored = rig.messages(&thread).await;
    assert_eq!(
        roles(&stored),
        [MessageRole::User, MessageRole::Assistant],
        "one message, one run: {stored:#?}"
    );
    assert_eq!(stored[0].run_id.as_deref(), Some(run_id.as_str()));
    assert_eq!(rig.model.request_count(), 1);
    let events = rig.durable_events(&thread, &run_id, "completed").await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.event == "run.status" && e.data["status"] == "queued")
            .count(),
        1
    );

    // A retried cancel answers what the first one did (not `run_not_active`).
    rig.model.push(Script::Hang);
    let hanging = rig.send(&thread, "wait for it").await;
    rig.wait_run(&thread, &hanging, RunStatus::Running).await;
    // The hanging answer is taken before the cancel (else the next run would get it).
    rig.wait_requests(2).await;
    let cancel = || {
        rig.threads()
            .cancel(&thread)
            .idempotency_key("cancel-1")
            .send()
    };
    // A run queued behind it: the first cancellation ends it at once, so a racing retry that
    // cancelled again would answer differently.
    let queued = rig.send(&thread, "queued behind").await;
    let (a, b, c) = tokio::join!(cancel(), cancel(), cancel());
    let cancelled = a.unwrap();
    assert_eq!(cancelled.run_id.as_deref(), Some(hanging.as_str()));
    assert_eq!(
        cancelled.run_ids,
        Some(vec![hanging.clone(), queued.clone()])
    );
    for retry in [b, c] {
        assert_eq!(retry.unwrap(), cancelled);
    }
    rig.wait_run(&thread, &hanging, RunStatus::Cancelled).await;
    rig.wait_run(&thread, &queued, RunStatus::Cancelled).await;
    assert_eq!(cancel().await.unwrap(), cancelled);

    // Keys are per thread: the same key on another thread is a new request.
    let other = rig.thread(scripted_agent("other")).await;
    rig.model.push(Script::text(["elsewhere"]));
    let elsewhere = rig
        .threads()
        .send_message(&other, "hello")
        .idempotency_key("order-123")
        .send()
        .await
        .unwrap();
    assert_ne!(elsewhere.run_id, first.run_id);
    rig.wait_run(
        &other,
        elsewhere.run_id.as_deref().unwrap(),
        RunStatus::Completed,
    )
    .await;
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// The stream

async fn sse_order_and_resume_with_last_event_id(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("streamer")).await;
    let mut stream = rig.threads().stream(&thread).connect().await.unwrap();
    rig.model
        .push(Script::text(["The ", "quick ", "brown ", "fox"]));
    let run_id = rig.send(&thread, "Tell me about the fox").await;
    let events = read_until(&mut stream, run_status_is(&run_id, "completed")).await;

    let durable: Vec<StreamEvent> = events.iter().filter(|e| e.id.is_some()).cloned().collect();
    let ids: Vec<i64> = durable.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=durable.len() as i64).collect::<Vec<_>>(),
        "{}",
        kinds(&events)
    );
    let described: Vec<(String, Value)> = durable
        .iter()
        .map(|e| {
            let detail = match e.event.as_str() {
                "run.status" => e.data["status"].clone(),
                _ => e.data["message"]["role"].clone(),
            };
            (e.event.clone(), detail)
        })
        .collect();
    assert_eq!(
        described,
        [
            ("message.created".to_owned(), json!("user")),
            ("run.status".to_owned(), json!("queued")),
            ("run.status".to_owned(), json!("running")),
            ("message.completed".to_owned(), json!("assistant")),
            ("run.status".to_owned(), json!("completed")),
        ],
        "{}",
        kinds(&events)
    );
    assert_eq!(
        durable[0].data["message"]["content"],
        "Tell me about the fox"
    );
    assert!(durable
        .iter()
        .all(|e| e.data["run_id"] == run_id.as_str()
            || e.data["message"]["run_id"] == run_id.as_str()));
    let answer = &durable[3].data["message"];
    assert_eq!(answer["content"], "The quick brown fox");

    // Deltas: after the run started, before their message was completed, and adding up to it.
    let running = position(
        &events,
        "run.status running",
        run_status_is(&run_id, "running"),
    );
    let completed = position(&events, "message.completed", |e| {
        e.event == "message.completed"
    });
    let deltas: Vec<(usize, &StreamEvent)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e.event == "message.delta")
        .collect();
    assert!(!deltas.is_empty(), "{}", kinds(&events));
    let mut text = String::new();
    for (i, delta) in &deltas {
        assert!(
            running < *i && *i < completed,
            "delta at {i} outside ({running}, {completed}): {}",
            kinds(&events)
        );
        assert_eq!(delta.id, None, "deltas carry no id");
        assert_eq!(delta.data["run_id"], run_id.as_str());
        assert_eq!(delta.data["message_id"], answer["id"]);
        text.push_str(delta.data["text"].as_str().unwrap());
    }
    assert_eq!(text, "The quick brown fox");
    let last = *ids.last().unwrap();
    assert_eq!(stream.last_event_id(), Some(last));
    drop(stream);

    // Reconnecting after event n replays exactly the events after n.
    for n in 1..last {
        let mut resumed = rig
            .threads()
            .stream(&thread)
            .last_event_id(n)
            .connect()
            .await
            .unwrap();
        let replay = read_until(&mut resumed, |e| e.id == Some(last)).await;
        assert_eq!(
            replay,
            durable[n as usize..],
            "resuming after {n}: {}",
            kinds(&replay)
        );
    }

    // Resuming after the last event: the next thing received is the next run's first event.
    let mut resumed = rig
        .threads()
        .stream(&thread)
        .last_event_id(last)
        .connect()
        .await
        .unwrap();
    rig.model.push(Script::text(["again"]));
    let next_run = rig.send(&thread, "once more").await;
    let next = read_until(&mut resumed, run_status_is(&next_run, "completed")).await;
    assert_eq!(next[0].id, Some(last + 1), "{}", kinds(&next));
    assert_eq!(next[0].event, "message.created");
    assert_eq!(next[0].data["message"]["content"], "once more");
    let before_live = resumed.last_event_id().unwrap();
    drop(resumed);

    // Disconnecting in the middle of a live run and resuming misses nothing and repeats nothing.
    rig.model.push(Script::Slow {
        first_byte_after: Duration::ZERO,
        chunks: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        gap: Duration::from_millis(100),
    });
    let mut first_half = rig
        .threads()
        .stream(&thread)
        .last_event_id(before_live)
        .connect()
        .await
        .unwrap();
    let live_run = rig.send(&thread, "slowly").await;
    let head = read_until(&mut first_half, |e| e.event == "message.delta").await;
    let cut = first_half.last_event_id().unwrap();
    drop(first_half);
    let mut second_half = rig
        .threads()
        .stream(&thread)
        .last_event_id(cut)
        .connect()
        .await
        .unwrap();
    let tail = read_until(&mut second_half, run_status_is(&live_run, "completed")).await;
    drop(second_half);
    let ids: Vec<i64> = head.iter().chain(&tail).filter_map(|e| e.id).collect();
    assert_eq!(
        ids,
        (before_live + 1..=before_live + ids.len() as i64).collect::<Vec<_>>(),
        "{} | {}",
        kinds(&head),
        kinds(&tail)
    );
    let answer = tail
        .iter()
        .find(|e| e.event == "message.completed")
        .unwrap_or_else(|| panic!("{}", kinds(&tail)));
    assert_eq!(answer.data["message"]["content"], "abcd");

    // `Last-Event-ID` must be an event id.
    let bad = crate::helpers::send(
        rig.app
            .request(
                reqwest::Method::GET,
                &format!("/ai/threads/{thread}/stream"),
            )
            .header("last-event-id", "abc"),
    )
    .await;
    bad.assert_error(400, "invalid_parameter", Some("Last-Event-ID"));
    rig.finish().await;
}

/// Deltas are published before their message is stored; a stream reading storage in between
/// must still send every delta before its message's `message.completed`. A race, so many turns.
async fn deltas_never_follow_their_completed_message(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("chatty")).await;
    let mut stream = rig.threads().stream(&thread).connect().await.unwrap();
    let mut completed = std::collections::HashSet::new();
    for round in 0..30 {
        let chunks: Vec<String> = (0..8).map(|i| format!("r{round}w{i} ")).collect();
        let text = chunks.concat();
        rig.model.push(Script::Text(chunks));
        let run_id = rig.send(&thread, &format!("round {round}")).await;
        let events = read_until(&mut stream, run_status_is(&run_id, "completed")).await;
        let mut streamed = String::new();
        for e in &events {
            match e.event.as_str() {
                "message.completed" => {
                    completed.insert(e.data["message"]["id"].as_str().unwrap().to_owned());
                }
                "message.delta" => {
                    let id = e.data["message_id"].as_str().unwrap();
                    assert!(
                        !completed.contains(id),
                        "round {round}: a delta after its message.completed: {}",
                        kinds(&events)
                    );
                    streamed.push_str(e.data["text"].as_str().unwrap());
                }
                _ => {}
            }
        }
        assert_eq!(streamed, text, "round {round}: {}", kinds(&events));
    }
    drop(stream);
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Limits

async fn a_stalled_stream_reader_neither_stalls_the_run_nor_loses_events(db: &TestDatabase) {
    // A reply of 10 MB in 2,500 deltas: far more than the hub's per-thread channel (256 items)
    // and the socket buffers (~5 MB here) between the server and a client that stops reading.
    const CHUNKS: usize = 2_500;
    const CHUNK: usize = 4_000;
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("firehose")).await;
    let chunks: Vec<String> = (0..CHUNKS)
        .map(|i| {
            let c = char::from(b'a' + (i % 26) as u8);
            c.to_string().repeat(CHUNK)
        })
        .collect();
    let full: String = chunks.concat();
    rig.model.push(Script::text(chunks));

    // Connected, then not read at all while the run streams its reply.
    let mut stalled = rig.threads().stream(&thread).connect().await.unwrap();
    let run_id = rig.send(&thread, "Say a lot").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_eq!(run.stop_reason.as_deref(), Some("completed"));

    // The reader wakes up: every durable event arrives, in order and without a gap, and the
    // stored reply is whole even where live deltas were dropped for it.
    let events = read_until(&mut stalled, run_status_is(&run_id, "completed")).await;
    let durable: Vec<&StreamEvent> = events.iter().filter(|e| e.id.is_some()).collect();
    let ids: Vec<i64> = durable.iter().map(|e| e.id.unwrap()).collect();
    assert_eq!(
        ids,
        (1..=ids.len() as i64).collect::<Vec<_>>(),
        "{}",
        kinds(&events)
    );
    assert_eq!(
        durable.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
        [
            "message.created",
            "run.status",
            "run.status",
            "message.completed",
            "run.status"
        ]
    );
    let completed = durable[3];
    assert_eq!(
        completed.data["message"]["content"].as_str().map(str::len),
        Some(full.len())
    );
    assert!(completed.data["message"]["content"] == full.as_str());
    // Deltas that did arrive belong to the reply and come before it completes.
    let deltas: Vec<&StreamEvent> = events.iter().filter(|e| e.id.is_none()).collect();
    let completed_at = events
        .iter()
        .position(|e| e.event == "message.completed")
        .unwrap();
    assert!(
        deltas.len() < CHUNKS,
        "the reader fell behind by more than the buffers hold, so some deltas were dropped \
         instead of queued without bound"
    );
    for (i, e) in events.iter().enumerate().filter(|(_, e)| e.id.is_none()) {
        assert_eq!(e.event, "message.delta");
        assert_eq!(e.data["message_id"], completed.data["message"]["id"]);
        assert!(i < completed_at, "a delta after its message completed");
    }
    println!(
        "stalled reader: {} of {CHUNKS} deltas delivered, {} durable events",
        deltas.len(),
        durable.len()
    );
    rig.finish().await;
}

async fn max_iterations_limit(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig
        .thread(with_limits(
            AgentLimits {
                max_iterations: Some(2),
                ..Default::default()
            },
            scripted_agent("loopy"),
        ))
        .await;
    for i in 0..3 {
        rig.model.push(Script::tool_call(
            "notify_user",
            json!({"message": format!("step {i}")}),
        ));
    }
    let run_id = rig.send(&thread, "keep going").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    assert_eq!(
        run.stop_reason.as_deref(),
        Some("max_iterations"),
        "{run:?}"
    );
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("2 model turns"),
        "{run:?}"
    );
    assert_eq!((run.usage.iterations, run.usage.tool_calls), (2, 2));
    assert_eq!(rig.model.request_count(), 2, "exactly two model turns");
    assert_eq!(rig.model.remaining(), 1);
    assert_eq!(
        roles(&rig.messages(&thread).await),
        [
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::Tool,
            MessageRole::Assistant,
            MessageRole::Tool
        ]
    );
    assert_eq!(rig.thread_status(&thread).await, ThreadStatus::Idle);
    rig.finish().await;
}

async fn token_budget_limit(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig
        .thread(with_limits(
            AgentLimits {
                token_budget: Some(10),
                ..Default::default()
            },
            scripted_agent("frugal"),
        ))
        .await;
    rig.model.push_all([
        Script::tool_call("notify_user", json!({"message": "expensive"})),
        Script::text(["never asked for"]),
    ]);
    let run_id = rig.send(&thread, "spend").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    assert_eq!(run.stop_reason.as_deref(), Some("token_budget"), "{run:?}");
    let total = run.usage.prompt_tokens + run.usage.completion_tokens;
    assert!(total > 10, "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains(&format!("used {total} tokens, over its budget of 10")),
        "{run:?}"
    );
    // The turn that went over is kept, but its tool call is not executed.
    assert_eq!(rig.model.request_count(), 1);
    assert_eq!(
        roles(&rig.messages(&thread).await),
        [MessageRole::User, MessageRole::Assistant]
    );
    let events = rig.durable_events(&thread, &run_id, "failed").await;
    assert!(
        !events
            .iter()
            .any(|e| e.event == "notification" || e.event == "tool.started"),
        "{}",
        kinds(&events)
    );
    rig.finish().await;
}

async fn run_timeout_limit(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig
        .thread(with_limits(
            AgentLimits {
                run_timeout_seconds: Some(1),
                ..Default::default()
            },
            scripted_agent("hasty"),
        ))
        .await;
    rig.model.push(Script::Hang);
    let asked = Instant::now();
    let run_id = rig.send(&thread, "think hard").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Failed).await;
    let took = asked.elapsed();
    assert_eq!(run.stop_reason.as_deref(), Some("timeout"), "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("wall-clock"),
        "{run:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "stopped at the 1 s limit: {took:?}"
    );
    assert!(run.usage.wall_ms >= 1000, "{run:?}");
    assert_eq!(roles(&rig.messages(&thread).await), [MessageRole::User]);
    assert_eq!(rig.thread_status(&thread).await, ThreadStatus::Idle);
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Bad input

async fn bad_input_gets_documented_4xx(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let threads = rig.threads();
    let thread = rig.thread(scripted_agent("target")).await;
    let unknown_thread = ThreadId::generate().into_string();
    let unknown_run = RunId::generate().into_string();

    // An unknown (or malformed) thread, through every operation.
    for id in [unknown_thread.as_str(), "thread_nope", "nope"] {
        let not_found = |r| assert_api_error(r, 404, ErrorCode::ThreadNotFound, None);
        not_found(threads.send_message(id, "hi").send().await.map(|_| ()));
        not_found(threads.cancel(id).send().await.map(|_| ()));
        not_found(threads.get_thread(id).send().await.map(|_| ()));
        not_found(
            threads
                .list_messages(id, ListMessagesParams::default())
                .send()
                .await
                .map(|_| ()),
        );
        not_found(threads.get_run(id, &unknown_run).send().await.map(|_| ()));
        not_found(threads.stream(id).connect().await.map(|_| ()));
    }
    // An unknown run of a real thread.
    for id in [unknown_run.as_str(), "run_nope"] {
        assert_api_error(
            threads.get_run(&thread, id).send().await,
            404,
            ErrorCode::RunNotFound,
            None,
        );
    }

    // Message content: 1-100 000 characters (not bytes).
    assert_api_error(
        threads
            .send_message(&thread, "é".repeat(100_001))
            .send()
            .await,
        422,
        ErrorCode::ValidationFailed,
        Some("message.content"),
    );
    assert_api_error(
        threads.send_message(&thread, "").send().await,
        422,
        ErrorCode::ValidationFailed,
        Some("message.content"),
    );

    // A body over 1 MiB is refused before it is read.
    let size = 1024 * 1024 + 1;
    let head = r#"{"message":{"content":""#;
    let tail = r#""}}"#;
    let body = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
    let request = format!(
        "POST /ai/threads/{thread}/run HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        rig.app.address, rig.app.key
    );
    raw_http(rig.app.address, &request, body.as_bytes())
        .await
        .assert_error(413, "payload_too_large", None);

    // Exactly one of `message` and `cancel: true`.
    for body in [
        ExecuteThreadRequest {
            message: Some(NewMessage {
                content: "hi".into(),
                files: None,
            }),
            cancel: Some(true),
        },
        ExecuteThreadRequest::default(),
        ExecuteThreadRequest {
            message: None,
            cancel: Some(false),
        },
    ] {
        assert_api_error(
            threads.execute(&thread, body.clone()).send().await,
            422,
            ErrorCode::ValidationFailed,
            None,
        );
    }
    rig.app
        .post(
            &format!("/ai/threads/{thread}/run"),
            json!({"message": {"content": "hi"}, "priority": 1}),
        )
        .await
        .assert_error(422, "validation_failed", Some("priority"));

    // Idempotency-Key: 1-255 visible ASCII characters.
    for key in ["k".repeat(300), String::new(), "two words".into()] {
        assert_api_error(
            threads
                .send_message(&thread, "hi")
                .idempotency_key(&key)
                .send()
                .await,
            400,
            ErrorCode::InvalidParameter,
            Some("Idempotency-Key"),
        );
    }

    // Cancel with nothing open, and after the run finished.
    assert_api_error(
        threads.cancel(&thread).send().await,
        409,
        ErrorCode::RunNotActive,
        None,
    );
    assert!(rig.messages(&thread).await.is_empty(), "nothing was stored");
    rig.model.push(Script::text(["ok"]));
    let longest = "é".repeat(100_000);
    let run_id = rig.send(&thread, &longest).await;
    let finished = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;
    assert_api_error(
        threads.cancel(&thread).send().await,
        409,
        ErrorCode::RunNotActive,
        None,
    );
    assert_eq!(rig.run(&thread, &run_id).await, finished, "unchanged");
    assert_eq!(rig.messages(&thread).await[0].content, longest);

    // An agent naming a provider the server does not have.
    let agents = rig.app.client.ai().agents();
    assert_api_error(
        agents.create_agent(agent_on("nope", "lost")).send().await,
        422,
        ErrorCode::ValidationFailed,
        Some("model.provider"),
    );
    let agent = agents
        .create_agent(scripted_agent("fine"))
        .send()
        .await
        .unwrap();
    assert_api_error(
        agents
            .update_agent(
                &agent.id,
                UpdateAgentRequest {
                    model: Some(Some(model("nope"))),
                    ..Default::default()
                },
            )
            .send()
            .await,
        422,
        ErrorCode::ValidationFailed,
        Some("model.provider"),
    );
    assert_eq!(rig.model.request_count(), 1);
    rig.finish().await;
}

async fn another_deployments_thread_is_404(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(scripted_agent("private")).await;
    rig.model.push(Script::text(["mine"]));
    let run_id = rig.send(&thread, "secret").await;
    let run = rig.wait_run(&thread, &run_id, RunStatus::Completed).await;

    let other = rig.app.create_deployment("other").await;
    let threads = other.client.ai().threads();
    let not_found = |r| assert_api_error(r, 404, ErrorCode::ThreadNotFound, None);
    not_found(threads.send_message(&thread, "hi").send().await.map(|_| ()));
    not_found(
        threads
            .send_message(&thread, "hi")
            .idempotency_key("k1")
            .send()
            .await
            .map(|_| ()),
    );
    not_found(threads.cancel(&thread).send().await.map(|_| ()));
    not_found(threads.get_thread(&thread).send().await.map(|_| ()));
    not_found(
        threads
            .list_messages(&thread, ListMessagesParams::default())
            .send()
            .await
            .map(|_| ()),
    );
    not_found(threads.get_run(&thread, &run_id).send().await.map(|_| ()));
    not_found(threads.stream(&thread).connect().await.map(|_| ()));
    not_found(
        threads
            .stream(&thread)
            .last_event_id(1)
            .connect()
            .await
            .map(|_| ()),
    );

    // The owner sees nothing changed.
    assert_eq!(rig.run(&thread, &run_id).await, run);
    assert_eq!(rig.messages(&thread).await.len(), 2);
    assert_eq!(rig.model.request_count(), 1);
    rig.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// Stopping the server right after it started (its workers still setting up their PostgreSQL
/// `LISTEN`) must not wait forever for the listening connection. A race, so several times.
async fn stops_promptly_right_after_starting(db: &TestDatabase) {
    for i in 0..20u64 {
        let app = spawn_app_with(db, |_| {}).await;
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(i)).await;
        }
        let asked = Instant::now();
        app.stop().await;
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "stop #{i} took {:?}",
            asked.elapsed()
        );
    }
}

/// PostgreSQL: two nodes on one database whose safety-net polls and heartbeats are minutes
/// away, so only `NOTIFY` can tell one node in time what the other did. A message sent through
/// a node whose workers are all busy starts on the other node, and a cancel asked of one node
/// stops the run the other executes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_wake_each_other_through_notify() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let quiet = |config: &mut tessera_server::Config, workers: usize| {
        config.runtime.workers = workers;
        config.runtime.poll_interval_ms = 300_000;
        // Heartbeats (which also relay cancel requests) come every third of the lease.
        config.runtime.lease_seconds = 900;
    };
    let a = Rig::start_with(&db, |config| quiet(config, 1)).await;
    // Node A's only worker is busy: its run's model answers slowly.
    let busy = a.thread(scripted_agent("busy")).await;
    a.model.push(Script::Slow {
        first_byte_after: Duration::ZERO,
        chunks: vec!["Let me think".into(), " about it".into()],
        gap: Duration::from_secs(120),
    });
    let slow_run = a.send(&busy, "Tell me everything").await;
    a.wait_requests(1).await;

    // Node B joins on the same database, with the same model server, after its start-up
    // claim found nothing to do.
    let scripted = a.model.provider_config();
    let b = spawn_app_with(&db, |config| {
        quiet(config, 2);
        config.providers.insert("scripted".into(), scripted);
    })
    .await;
    let on_b = tessera_client::Client::new(b.base_url.clone(), a.app.key.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A message sent through node A, which cannot run it now: node B hears of it and runs it.
    let other = a.thread(scripted_agent("other")).await;
    a.model.push(Script::text(["Hello from the other node."]));
    let quick = a.send(&other, "hi").await;
    let done = a.wait_run(&other, &quick, RunStatus::Completed).await;
    assert_eq!(done.attempt, 1, "{done:?}");
    assert_eq!(
        a.run(&busy, &slow_run).await.status,
        RunStatus::Running,
        "node A's worker was still busy"
    );
    assert_eq!(
        a.messages(&other).await.last().unwrap().content,
        "Hello from the other node."
    );

    // A cancel asked of node B reaches the run on node A at once.
    let cancelled = on_b.ai().threads().cancel(&busy).send().await.unwrap();
    assert_eq!(cancelled.run_id.as_deref(), Some(slow_run.as_str()));
    let run = a.wait_run(&busy, &slow_run, RunStatus::Cancelled).await;
    assert_eq!(run.stop_reason.as_deref(), Some("cancelled"), "{run:?}");

    b.stop().await;
    a.finish().await;
    db.cleanup().await;
}

async fn threads_keep_their_fields_and_refuse_bad_input(db: &TestDatabase) {
    let app = spawn_app_with(db, |_| {}).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("Helper").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    let path = format!("/ai/actor-projects/{}/threads", project.id);

    let full = json!({
        "title": "Billing question",
        "system_instructions": "Answer in French.",
        "purpose": "execution",
        "capability_tags": ["billing", "eu"],
        "context_group": "tenant:acme",
    });
    let created = app.post(&path, full.clone()).await;
    let thread = created.ok(201).clone();
    assert_id(thread["id"].as_str().unwrap(), "thread");
    for field in [
        "title",
        "system_instructions",
        "purpose",
        "capability_tags",
        "context_group",
    ] {
        assert_eq!(thread[field], full[field], "{field}: {thread}");
    }
    assert_eq!(thread["status"], "idle");
    assert_eq!(thread["agent_id"], agent.id.as_str());
    let read = app
        .get(&format!("/ai/threads/{}", thread["id"].as_str().unwrap()))
        .await;
    assert_eq!(read.ok(200), &thread);
    // Only a title is needed: a conversation without a context group.
    let plain = app.post(&path, json!({"title": "t"})).await;
    let plain = plain.ok(201);
    assert_eq!(plain["purpose"], "conversation");
    assert_eq!(plain["context_group"], Value::Null);

    for (body, field) in [
        (json!({"title": ""}), "title"),
        (json!({"title": "x".repeat(201)}), "title"),
        (json!({}), "title"),
        (json!({"title": "t", "purpose": "chat"}), "purpose"),
        (
            json!({"title": "t", "system_instructions": "x".repeat(20_001)}),
            "system_instructions",
        ),
        (
            json!({"title": "t", "context_group": "has spaces"}),
            "context_group",
        ),
        (json!({"title": "t", "context_group": ""}), "context_group"),
    ] {
        app.post(&path, body.clone())
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    app.post_text(&path, "{not json")
        .await
        .assert_error(400, "malformed_json", None);
    for missing in [unknown_id("proj"), "proj_nope".to_owned()] {
        app.post(
            &format!("/ai/actor-projects/{missing}/threads"),
            json!({"title": "t"}),
        )
        .await
        .assert_error(404, "project_not_found", None);
    }
    // Another deployment's key does not reach this deployment's project.
    let other = app.create_deployment("other").await;
    assert_api_error(
        other
            .client
            .ai()
            .threads()
            .create_thread(
                &project.id,
                CreateThreadRequest {
                    title: "t".into(),
                    ..Default::default()
                },
            )
            .send()
            .await,
        404,
        ErrorCode::ProjectNotFound,
        None,
    );

    app.post(
        &format!("/ai/actor-projects/{}/archive", project.id),
        json!({}),
    )
    .await
    .ok(200);
    app.post(&path, json!({"title": "t"}))
        .await
        .assert_error(409, "project_archived", None);
    app.stop().await;
}

async fn messages_page_oldest_and_newest_first(db: &TestDatabase) {
    let rig = Rig::start(db).await;
    let thread = rig.thread(agent_on("echo", "echo")).await;
    for text in ["one", "two", "three"] {
        let run = rig.send(&thread, text).await;
        rig.wait_run(&thread, &run, RunStatus::Completed).await;
    }
    let app = &rig.app;
    let page = |query: String| {
        let thread = thread.clone();
        async move {
            let resp = app
                .get(&format!("/ai/threads/{thread}/messages?{query}"))
                .await;
            let page = resp.ok(200).clone();
            let contents: Vec<String> = page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    format!(
                        "{}:{}",
                        m["role"].as_str().unwrap(),
                        m["content"].as_str().unwrap()
                    )
                })
                .collect();
            (contents, page)
        }
    };
    let all = page("limit=100".into()).await;
    assert_eq!(
        all.0,
        [
            "user:one",
            "assistant:one",
            "user:two",
            "assistant:two",
            "user:three",
            "assistant:three"
        ]
    );
    let ids: Vec<String> = all.1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let contents = |idx: &[usize]| idx.iter().map(|&i| all.0[i].clone()).collect::<Vec<_>>();

    // Oldest first (the default, or `order=asc`): `after` goes on to newer messages.
    let (got, first) = page("limit=4".into()).await;
    assert_eq!(got, contents(&[0, 1, 2, 3]));
    assert_eq!(first["has_more"], true);
    assert_eq!(first["last_id"], ids[3].as_str());
    let (got, rest) = page(format!("order=asc&limit=4&after={}", ids[3])).await;
    assert_eq!(got, contents(&[4, 5]));
    assert_eq!(rest["has_more"], false);
    let (got, _) = page(format!("limit=2&before={}", ids[3])).await;
    assert_eq!(got, contents(&[1, 2]));

    // Newest first: the latest messages, and `after` goes on to older ones.
    let (got, first) = page("order=desc&limit=4".into()).await;
    assert_eq!(got, contents(&[5, 4, 3, 2]));
    assert_eq!(first["has_more"], true);
    assert_eq!(first["last_id"], ids[2].as_str());
    let (got, rest) = page(format!("order=desc&limit=4&after={}", ids[2])).await;
    assert_eq!(got, contents(&[1, 0]));
    assert_eq!(rest["has_more"], false);
    let (got, _) = page(format!("order=desc&limit=2&before={}", ids[1])).await;
    assert_eq!(got, contents(&[3, 2]));

    for (query, name) in [
        ("order=sideways", "order"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("after=msg_nope", "after"),
    ] {
        app.get(&format!("/ai/threads/{thread}/messages?{query}"))
            .await
            .assert_error(400, "invalid_parameter", Some(name));
    }
    rig.finish().await;
}

/// An idle thread's stream gets a comment line every 15 s (SPEC §5), so proxies and browsers
/// keep it open; nothing else arrives meanwhile. (SQLite only: the keep-alive is the HTTP
/// layer's, the same on both backends; the test waits one interval.)
#[tokio::test]
async fn an_idle_stream_gets_a_keep_alive_every_15_seconds() {
    let db = TestDatabase::sqlite();
    let rig = Rig::start(&db).await;
    let thread = rig.thread(agent_on("echo", "quiet")).await;
    let mut response = rig
        .app
        .request(
            reqwest::Method::GET,
            &format!("/ai/threads/{thread}/stream"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let opened = Instant::now();
    let mut received = String::new();
    while !received.contains(":\n\n") && !received.contains(":\r\n\r\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(25), response.chunk())
            .await
            .expect("a keep-alive within 25 s")
            .unwrap()
            .expect("the stream stays open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let waited = opened.elapsed();
    assert!(
        waited >= Duration::from_secs(14) && waited <= Duration::from_secs(20),
        "the keep-alive came after {waited:?}"
    );
    assert!(
        received
            .split('\n')
            .all(|line| line.is_empty() || line.starts_with(':')),
        "an idle stream sends only comments: {received:?}"
    );
    drop(response);
    rig.finish().await;
}
