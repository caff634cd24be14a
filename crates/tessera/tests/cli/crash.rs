//! Crash recovery: a `tessera serve` process SIGKILLed in the middle of a run; the restarted
//! server resumes the run from its last durable step, repeating no step and duplicating no
//! message. The model is a scripted OpenAI-compatible server inside the test process.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::models::{
    CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest, CreateThreadRequest,
    ListMessagesParams, Message, MessageRole, ModelConfig, Run, RunStatus,
};
use tessera_client::{Client, StreamEvent};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;
use tokio::time::Instant;

use crate::support::{bootstrap_key, Server};

backend_tests!(
    run_resumes_after_sigkill_without_duplicates,
    a_tool_call_cut_by_sigkill_runs_again_and_is_stored_once,
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

/// The run once the restarted `server` has completed it (within 20 s: the lease expires, a
/// worker claims it and finishes); panics with the server's log if it ends otherwise.
async fn completed_run(server: &Server, client: &Client, thread: &str, run_id: &str) -> Run {
    poll_until(
        "the run to complete",
        Duration::from_secs(20),
        || async move {
            let run = client
                .ai()
                .threads()
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
        },
    )
    .await
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
    let run = completed_run(&server, &client, &thread, &run_id).await;
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

/// An HTTP endpoint for an `Api` tool: the first request is read and never answered (the node
/// calling it is killed meanwhile), later ones get `{"order": "shipped"}`.
struct HangingOnce {
    port: u16,
    requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HangingOnce {
    async fn start() -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                        // Hold the connection until the caller goes away.
                        let _ = socket.read(&mut buf).await;
                        return;
                    }
                    let body = r#"{"order": "shipped"}"#;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(response.as_bytes()).await;
                });
            }
        });
        Self { port, requests }
    }

    fn count(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A node killed while a tool call is in flight: its result was never stored, so the node that
/// resumes the run makes the call again (README: calls without a stored result run again), and
/// the conversation still holds each step once; the model turn that asked for the call is not
/// asked again.
async fn a_tool_call_cut_by_sigkill_runs_again_and_is_stored_once(db: &TestDatabase) {
    let model = ScriptedModelServer::start().await;
    let target = HangingOnce::start().await;
    let env = [
        ("TESSERA_RUNTIME__LEASE_SECONDS", "3".to_owned()),
        ("TESSERA_RUNTIME__POLL_INTERVAL_MS", "200".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__KIND", "openai".to_owned()),
        ("TESSERA_PROVIDERS__SCRIPTED__BASE_URL", model.url()),
        ("TESSERA_TOOLS__ALLOW_HOSTS", r#"["127.0.0.1"]"#.to_owned()),
    ];
    let key = bootstrap_key();
    let mut server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);
    let tool = reqwest::Client::new()
        .post(format!("{}/ai/tools", server.url))
        .bearer_auth(&key)
        .json(&json!({
            "name": "get_order",
            "description": "Looks an order up.",
            "input_schema": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"]
            },
            "configuration": {
                "type": "Api",
                "url": format!("http://127.0.0.1:{}/orders/{{order_id}}", target.port),
                "method": "GET",
                "auth": {"type": "none"}
            }
        }))
        .send()
        .await
        .unwrap();
    let created = tool.status();
    let tool: Value = tool.json().await.unwrap();
    assert_eq!(created, 201, "{tool}");
    let thread = scripted_thread(&client, "crash-tool").await;
    let agent = client
        .ai()
        .threads()
        .get_thread(&thread)
        .send()
        .await
        .unwrap()
        .agent_id;
    let attached = reqwest::Client::new()
        .patch(format!("{}/ai/agents/{agent}", server.url))
        .bearer_auth(&key)
        .json(&json!({"tool_ids": [tool["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(attached.status(), 200);

    model.push(Script::tool_call("get_order", json!({"order_id": "7"})));
    let run_id = client
        .ai()
        .threads()
        .send_message(&thread, "where is order 7?")
        .send()
        .await
        .unwrap()
        .run_id
        .unwrap();
    let before = poll_until("the tool call in flight", Duration::from_secs(10), || {
        let (client, thread, target) = (&client, &thread, &target);
        async move {
            let stored = messages(client, thread).await;
            if stored.len() == 2 && target.count() == 1 {
                Ok(stored)
            } else {
                Err(format!(
                    "{} messages, {} calls",
                    stored.len(),
                    target.count()
                ))
            }
        }
    })
    .await;

    server.kill_hard();
    model.push(Script::text(["Order 7 has shipped."]));
    let server = Server::start_with_env(&db.url, &key, &env).await;
    let client = server.client(&key);
    let run = completed_run(&server, &client, &thread, &run_id).await;
    assert_eq!(run.attempt, 2, "{run:?}");
    assert_eq!(
        target.count(),
        2,
        "the call without a stored result was made again"
    );

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
        after[..2],
        before[..],
        "the steps before the crash are kept"
    );
    assert_eq!(
        after[2].tool_call_id.as_deref(),
        Some(after[1].tool_calls[0].id.as_str())
    );
    assert!(after[2].content.contains("shipped"), "{:?}", after[2]);
    assert_eq!(after[3].content, "Order 7 has shipped.");
    // The turn that asked for the call was not asked again.
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(request_roles(&requests[0].body), ["system", "user"]);
    assert_eq!(
        request_roles(&requests[1].body),
        ["system", "user", "assistant", "tool"]
    );
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
