//! Crash recovery: a `tessera serve` process SIGKILLed in the middle of a run; the restarted
//! server resumes the run from its last durable step, repeating no step and duplicating no
//! message. The model is a scripted OpenAI-compatible server inside the test process.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::models::{
    CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest, CreateThreadRequest,
    ListMessagesParams, Message, MessageRole, ModelConfig, RunStatus,
};
use tessera_client::{Client, StreamEvent};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;
use tokio::time::Instant;

use crate::support::{bootstrap_key, Server};

backend_tests!(
    run_resumes_after_sigkill_without_duplicates,
    sigterm_releases_the_run_for_immediate_resumption
);

/// Polls `probe` every 25 ms until it returns `Ok`, for at most `within`.
async fn poll_until<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {within:?} waiting for {what}; last seen: {last}"
                );
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

async fn messages(client: &Client, thread: &str) -> Vec<Message> {
    client
        .ai()
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
        .expect("list messages")
        .data
}

fn request_roles(body: &Value) -> Vec<&str> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["role"].as_str().unwrap_or("?"))
        .collect()
}

/// A thread of an agent whose model is the scripted server (provider `scripted`).
async fn scripted_thread(client: &Client, external_key: &str) -> String {
    let ai = client.ai();
    let actor = ai
        .actors()
        .create_actor(CreateActorRequest {
            subject_type: "user".into(),
            external_key: external_key.into(),
            display_name: None,
            metadata: None,
        })
        .send()
        .await
        .unwrap();
    let agent = ai
        .agents()
        .create_agent(CreateAgentRequest {
            name: "survivor".into(),
            model: Some(ModelConfig {
                provider: "scripted".into(),
                model: "scripted-model".into(),
                temperature: None,
                max_output_tokens: None,
            }),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let project = ai
        .actor_projects()
        .create_actor_project(
            &actor.id,
            CreateActorProjectRequest {
                agent_id: agent.id.clone(),
                name: "p".into(),
            },
        )
        .send()
        .await
        .unwrap();
    ai.threads()
        .create_thread(
            &project.id,
            CreateThreadRequest {
                title: "t".into(),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap()
        .id
}

async fn run_resumes_after_sigkill_without_duplicates(db: &TestDatabase) {
    let model = ScriptedModelServer::start().await;
    let env = [
        ("TESSERA_RUNTIME__LEASE_SECONDS", "3".to_owned()),
        ("TESSERA_RUNTIME__POLL_INTERVAL_MS", "200".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__KIND", "openai".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__BASE_URL", model.url()),
    ];
    let key = bootstrap_key();
    let mut server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);
    let ai = client.ai();
    let thread = scripted_thread(&client, "crash-1").await;

    // Turn 1 calls a tool (answered at once); turn 2 hangs, so the run is mid-turn.
    model.push_all([
        Script::tool_call("notify_user", json!({"message": "halfway"})),
        Script::Hang,
    ]);
    let run_id = ai
        .threads()
        .send_message(&thread, "do the long thing")
        .send()
        .await
        .unwrap()
        .run_id
        .unwrap();
    let before = poll_until(
        "the tool result and the second model request",
        Duration::from_secs(10),
        || {
            let (client, thread, model) = (&client, &thread, &model);
            async move {
                let stored = messages(client, thread).await;
                if stored.len() == 3 && model.request_count() == 2 {
                    Ok(stored)
                } else {
                    Err(format!(
                        "{} messages, {} model requests",
                        stored.len(),
                        model.request_count()
                    ))
                }
            }
        },
    )
    .await;
    let running = ai.threads().get_run(&thread, &run_id).send().await.unwrap();
    assert_eq!(running.status, RunStatus::Running, "{running:?}");
    assert_eq!(running.attempt, 1);

    server.kill_hard();
    model.push(Script::text(["All ", "done."]));
    let server = Server::start_with_env(&db.url, &bootstrap_key(), &env).await;
    assert!(!server.bootstrapped(), "{:?}", server.banner);
    let client = server.client(&key);
    let threads = client.ai().threads();

    // The lease (3 s) expires, the new server claims the run and finishes it.
    let run = poll_until("the run to complete", Duration::from_secs(20), || {
        let (threads, thread, run_id, server) = (threads, &thread, &run_id, &server);
        async move {
            let run = threads
                .get_run(thread, run_id)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match run.status {
                RunStatus::Completed => Ok(run),
                RunStatus::Failed | RunStatus::Cancelled => panic!(
                    "the resumed run ended {:?}: {run:?}\nlog:\n{}",
                    run.status,
                    server.log()
                ),
                _ => Err(format!("{run:?}")),
            }
        }
    })
    .await;
    assert_eq!(run.attempt, 2, "{run:?}");
    assert_eq!(run.stop_reason.as_deref(), Some("completed"));
    assert_eq!((run.usage.iterations, run.usage.tool_calls), (2, 1));

    // Exactly user, assistant (tool call), tool, assistant (text): nothing stored twice.
    let after = messages(&client, &thread).await;
    let roles: Vec<MessageRole> = after.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            MessageRole::User,
            MessageRole::Assistant,
            MessageRole::Tool,
            MessageRole::Assistant
        ],
        "{after:#?}"
    );
    assert_eq!(
        after[..3],
        before[..],
        "the steps before the crash are kept"
    );
    assert_eq!(after[1].tool_calls.len(), 1);
    assert_eq!(
        after[2].tool_call_id.as_deref(),
        Some(after[1].tool_calls[0].id.as_str())
    );
    assert_eq!(after[3].content, "All done.");
    assert_eq!(after[3].run_id.as_deref(), Some(run_id.as_str()));

    // The model saw turn 1 once; the interrupted turn 2 was asked again with the same context.
    let requests = model.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    assert_eq!(request_roles(&requests[0].body), ["system", "user"]);
    assert_eq!(
        request_roles(&requests[1].body),
        ["system", "user", "assistant", "tool"]
    );
    assert_eq!(requests[2].body, requests[1].body);
    assert_eq!(model.remaining(), 0);

    // The stream tells the same story: the tool ran once, the run was claimed twice.
    let mut stream = threads.stream(&thread).connect().await.unwrap();
    let mut events: Vec<StreamEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !events
        .iter()
        .any(|e| e.event == "run.status" && e.data["status"] == "completed")
    {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the run's events within 10 s")
            .expect("the stream stays open")
            .expect("the stream reads");
        events.push(next);
    }
    drop(stream);
    let count = |kind: &str| events.iter().filter(|e| e.event == kind).count();
    assert_eq!(count("notification"), 1);
    assert_eq!(count("tool.started"), 1);
    assert_eq!(count("tool.completed"), 1);
    assert_eq!(count("message.completed"), 2);
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "run.status")
        .map(|e| e.data["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses, ["queued", "running", "running", "completed"]);
    let ids: Vec<i64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, (1..=ids.len() as i64).collect::<Vec<_>>());
}

/// A graceful stop (SIGTERM) mid-run releases the run's lease: the restarted server resumes it
/// at once, long before the lease (30 s here) would have expired.
async fn sigterm_releases_the_run_for_immediate_resumption(db: &TestDatabase) {
    let model = ScriptedModelServer::start().await;
    let env = [
        ("TESSERA_RUNTIME__LEASE_SECONDS", "30".to_owned()),
        ("TESSERA_RUNTIME__POLL_INTERVAL_MS", "200".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__KIND", "openai".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__BASE_URL", model.url()),
    ];
    let key = bootstrap_key();
    let mut server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);
    let thread = scripted_thread(&client, "graceful-1").await;
    model.push(Script::Hang);
    let run_id = client
        .ai()
        .threads()
        .send_message(&thread, "take your time")
        .send()
        .await
        .unwrap()
        .run_id
        .unwrap();
    poll_until("the model request", Duration::from_secs(10), || {
        let model = &model;
        async move {
            match model.request_count() {
                1 => Ok(()),
                n => Err(format!("{n} model requests")),
            }
        }
    })
    .await;

    let status = server.terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop: {status:?}\n{}",
        server.log()
    );
    model.push(Script::text(["resumed"]));
    let restarted_at = Instant::now();
    let server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);
    let threads = client.ai().threads();
    let run = poll_until("the run to complete", Duration::from_secs(10), || {
        let (threads, thread, run_id) = (threads, &thread, &run_id);
        async move {
            let run = threads
                .get_run(thread, run_id)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match run.status {
                RunStatus::Completed => Ok(run),
                _ => Err(format!("{run:?}")),
            }
        }
    })
    .await;
    assert!(
        restarted_at.elapsed() < Duration::from_secs(10),
        "resumed without waiting for the 30 s lease"
    );
    assert_eq!(run.attempt, 2, "{run:?}");
    let stored = messages(&client, &thread).await;
    let roles: Vec<MessageRole> = stored.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [MessageRole::User, MessageRole::Assistant],
        "{stored:#?}"
    );
    assert_eq!(stored[1].content, "resumed");
}
