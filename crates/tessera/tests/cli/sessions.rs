//! Pending actions across crashes of a real `tessera serve`: a confirmed action executes
//! exactly once when the node is SIGKILLed after the confirmation (at every point of its
//! execution, reached deterministically with `TESSERA_TEST_FAULT`), and an action whose
//! `expires_at` passes while no node runs expires when one starts again.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::models::AskRequest;
use tessera_client::Client;
use tessera_domain::{ActionId, Scope, ThreadId, Timestamp};
use tessera_store::testing::TestDatabase;
use tessera_store::{backend_tests, ConnectOptions};
use tokio::time::Instant;

use crate::support::{bootstrap_key, Server};

backend_tests!(
    a_confirmed_action_runs_once_across_sigkill,
    an_action_expires_after_a_restart
);

const ENV_LEASE: (&str, &str) = ("TESSERA_RUNTIME__LEASE_SECONDS", "3");

fn env() -> Vec<(&'static str, String)> {
    vec![
        (ENV_LEASE.0, ENV_LEASE.1.to_owned()),
        ("TESSERA_RUNTIME__POLL_INTERVAL_MS", "200".to_owned()),
    ]
}

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
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An echo agent serving pool `slug` whose `notify_user` calls need confirmation.
async fn gated_pool(client: &Client, slug: &str, rule: Value) {
    let body = json!({
        "name": "gated", "model": {"provider": "echo", "model": "echo"},
        "endpoint_slug": slug, "approval_rules": [rule],
    });
    let agent: tessera_client::models::CreateAgentRequest = serde_json::from_value(body).unwrap();
    client
        .ai()
        .agents()
        .create_agent(agent)
        .send()
        .await
        .unwrap();
}

async fn ask_paused(
    client: &Client,
    slug: &str,
    message: &str,
    thread: Option<String>,
) -> (String, String, String) {
    let answer = client
        .sessions()
        .ask(
            slug,
            AskRequest {
                content: format!("/tool notify_user {{\"message\": \"{message}\"}}"),
                thread_id: thread,
                context_variables: None,
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status, "waiting_for_input", "{answer:?}");
    let action = answer.pending_action.expect("a pending action");
    (answer.thread_id, action.action_id, answer.response_id)
}

async fn wait_settled(
    client: &Client,
    response: &str,
    server: &Server,
) -> tessera_client::models::AskResponse {
    poll_until(
        "the resumed run to end",
        Duration::from_secs(30),
        || async move {
            let got = client
                .sessions()
                .get_response(response)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match got.status.as_str() {
                "completed" => Ok(got),
                "failed" | "cancelled" => panic!(
                    "the run ended {}: {got:?}\nlog:\n{}",
                    got.status,
                    server.log()
                ),
                _ => Err(format!("{got:?}")),
            }
        },
    )
    .await
}

/// The thread's stored events (kind, data), replayed from the start.
async fn events(client: &Client, thread: &str) -> Vec<(String, Value)> {
    let mut stream = client
        .ai()
        .threads()
        .stream(thread)
        .connect()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(e))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        if e.id.is_some() {
            out.push((e.event, e.data));
        }
    }
    out
}

fn notifications(events: &[(String, Value)], message: &str) -> usize {
    events
        .iter()
        .filter(|(k, d)| k == "notification" && d["message"] == message)
        .count()
}

async fn a_confirmed_action_runs_once_across_sigkill(db: &TestDatabase) {
    let key = bootstrap_key();
    let mut server = Server::start_with_env(&db.url, &key, &env()).await;
    let client = server.client(&key);
    gated_pool(&client, "crash", json!({"tool": "notify_user"})).await;

    // 1. The node dies between the confirmation and the execution. To stop exactly there, the
    //    node is killed while the action is pending and the confirmation is then written with
    //    the store call `resolvePendingAction` makes: the state a node leaves when it dies right
    //    after answering 202.
    let (thread, action, response) = ask_paused(&client, "crash", "first", None).await;
    server.kill_hard();
    let store = tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    let deployment = store.find_deployment("default").await.unwrap().unwrap();
    let scope = Scope::deployment(deployment.id);
    store
        .resolve_action(
            &scope,
            &ThreadId::parse(&thread).unwrap(),
            &ActionId::parse(&action).unwrap(),
            true,
            Timestamp::now(),
        )
        .await
        .unwrap();
    store.close().await;
    let server = Server::start_with_env(&db.url, &key, &env()).await;
    let client = server.client(&key);
    let done = wait_settled(&client, &response, &server).await;
    assert_eq!(
        done.content.as_deref(),
        Some("tool notify_user returned: the user was notified")
    );
    assert_eq!(notifications(&events(&client, &thread).await, "first"), 1);

    drop(server);

    // 2. A real confirmation over HTTP, then SIGKILL at each point of the execution, made
    //    deterministic by the test-only `TESSERA_TEST_FAULT` (the node stops there until killed).
    for (point, outcome) in [
        // Confirmed, not started: the restarted node executes it, once.
        ("action_before_start", "completed"),
        // The tool ran (its notification is stored), its result was not: the restarted node
        // does not run it again and reports the outcome as unknown.
        ("action_after_tool", "failed"),
        // The result is on the action, the tool message was not stored: it is reused.
        ("action_after_result", "completed"),
    ] {
        crash_at_point(db, &key, point, outcome).await;
    }
}

/// Confirms an action on a node that stops at `point`, SIGKILLs it there, and checks that the
/// restarted node completes the run with one tool result, the tool having run exactly once,
/// and the action ending `outcome`.
async fn crash_at_point(db: &TestDatabase, key: &str, point: &str, outcome: &str) {
    let mut faulty = env();
    faulty.push((tessera_runtime::fault::ENV, point.to_owned()));
    let mut server = Server::start_with_env(&db.url, key, &faulty).await;
    let client = server.client(key);
    let (thread, action, response) = ask_paused(&client, "crash", point, None).await;
    let confirmed = client
        .sessions()
        .resolve_action(&thread, &action, true)
        .send()
        .await
        .unwrap();
    assert_eq!(confirmed.status, "processing");
    poll_until(
        &format!("the node to stop at {point}"),
        Duration::from_secs(20),
        || {
            let log = server.log();
            async move {
                if log.contains("test fault point reached") && log.contains(point) {
                    Ok(())
                } else {
                    Err(log)
                }
            }
        },
    )
    .await;
    server.kill_hard();

    let server = Server::start_with_env(&db.url, key, &env()).await;
    let client = server.client(key);
    wait_settled(&client, &response, &server).await;
    let all = events(&client, &thread).await;
    assert_eq!(
        notifications(&all, point),
        1,
        "{point}: the tool ran exactly once\n{all:?}"
    );
    let tool_results: Vec<_> = client
        .ai()
        .threads()
        .list_messages(&thread, Default::default())
        .send()
        .await
        .unwrap()
        .data
        .into_iter()
        .filter(|m| m.role == tessera_client::models::MessageRole::Tool)
        .collect();
    assert_eq!(tool_results.len(), 1, "{point}: {tool_results:?}");
    let next = client
        .sessions()
        .ask(
            "crash",
            AskRequest {
                content: "status?".into(),
                thread_id: Some(thread.clone()),
                context_variables: None,
            },
        )
        .send()
        .await
        .unwrap();
    let result = next
        .action_results
        .iter()
        .find(|r| r.action_id == action)
        .unwrap_or_else(|| panic!("the next answer reports the action: {next:?}"));
    assert_eq!(result.status, outcome, "{point}: {result:?}");
    let text = result.result.clone().unwrap_or_default();
    if outcome == "completed" {
        assert_eq!(text, "the user was notified");
        assert_eq!(tool_results[0].content, text);
    } else {
        assert!(text.contains("outcome is unknown"), "{point}: {text}");
    }
    assert!(
        !server.log().contains("test fault point reached"),
        "the restarted node runs without the fault"
    );
}

async fn an_action_expires_after_a_restart(db: &TestDatabase) {
    let key = bootstrap_key();
    let mut server = Server::start_with_env(&db.url, &key, &env()).await;
    let client = server.client(&key);
    gated_pool(
        &client,
        "timer",
        json!({"tool": "notify_user", "expires_in_seconds": 2}),
    )
    .await;
    let (thread, action, response) = ask_paused(&client, "timer", "never", None).await;
    server.kill_hard();
    // expires_at passes while no node runs.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = Server::start_with_env(&db.url, &key, &env()).await;
    let client = server.client(&key);
    let done = wait_settled(&client, &response, &server).await;
    assert!(
        done.content
            .as_deref()
            .unwrap_or_default()
            .contains("expired"),
        "{done:?}"
    );
    let all = events(&client, &thread).await;
    assert!(
        all.iter().any(|(k, d)| k == "pending_action.resolved"
            && d["action"]["action_id"] == action.as_str()
            && d["action"]["status"] == "expired"),
        "{all:?}"
    );
    assert_eq!(notifications(&all, "never"), 0);
    let late = client
        .sessions()
        .resolve_action(&thread, &action, true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(late.code(), Some(tessera_client::ErrorCode::ActionExpired));
}
