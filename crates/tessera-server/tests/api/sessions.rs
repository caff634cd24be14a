//! Session management end to end: the pool endpoint, pending actions (confirm, cancel, double
//! decisions, races, expiry), context variables reaching the model, closing sessions, usage and
//! tenancy, on both backends.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::models::{AskRequest, UsageGroupBy, UsageParams};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{assert_id, echo_model, poll_until, send, spawn_app_with, TestApp};

backend_tests!(
    ask_pending_action_confirm_result,
    cancel_is_answered_to_the_model,
    concurrent_confirm_and_cancel_have_one_winner,
    an_idempotent_decision_replays_its_answer,
    an_unanswered_action_expires_and_the_run_resumes,
    variables_follow_the_rules_and_reach_the_model,
    request_variables_tool_fills_requested_variables,
    ask_validation_rules,
    idempotent_ask_starts_nothing_new,
    close_during_a_run_cancels_it_and_is_idempotent,
    usage_is_consistent_with_close,
    another_deployments_sessions_are_404,
    a_slow_turn_answers_202_and_is_polled,
    cancel_interrupt_and_close_resolve_open_actions,
    a_refused_ask_changes_nothing,
    suggested_actions_offer_the_next_steps,
    a_deleted_agent_leaves_its_pool,
);

const WAIT: Duration = Duration::from_secs(15);

/// A server with a scripted model provider (`scripted`) and a short ask wait.
async fn start(db: &TestDatabase, ask_wait_seconds: u64) -> (TestApp, ScriptedModelServer) {
    let model = ScriptedModelServer::start().await;
    let scripted = model.provider_config();
    let app = spawn_app_with(db, |config| {
        config.providers.insert("scripted".into(), scripted);
        config.sessions.ask_wait_seconds = ask_wait_seconds;
    })
    .await;
    (app, model)
}

/// Creates a pool agent (`endpoint_slug`) on `model`, gating `notify_user` when `gated`.
async fn pool_agent(app: &TestApp, slug: &str, model: Value, gate: Option<Value>) -> String {
    let mut body = json!({"name": format!("{slug} agent"), "model": model, "endpoint_slug": slug});
    if let Some(rule) = gate {
        body["approval_rules"] = json!([rule]);
    }
    app.post("/ai/agents", body).await.ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn echo() -> Value {
    serde_json::to_value(echo_model()).unwrap()
}

fn scripted() -> Value {
    json!({"provider": "scripted", "model": "scripted-model"})
}

async fn ask(app: &TestApp, slug: &str, body: Value) -> crate::helpers::Resp {
    app.post(&format!("/api/v1/ask/{slug}"), body).await
}

async fn resolve(
    app: &TestApp,
    thread: &str,
    action: &str,
    confirmed: bool,
) -> crate::helpers::Resp {
    app.post(
        &format!("/api/v1/sessions/{thread}/actions/{action}"),
        json!({"confirmed": confirmed}),
    )
    .await
}

/// Polls a response until its status is `status`.
pub(crate) async fn wait_response(app: &TestApp, response_id: &str, status: &str) -> Value {
    poll_until(
        &format!("response {response_id} {status}"),
        WAIT,
        || async move {
            let got = app.get(&format!("/api/v1/responses/{response_id}")).await;
            let body = got.ok(200).clone();
            if body["status"] == status {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await
}

async fn messages(app: &TestApp, thread: &str) -> Vec<Value> {
    app.get(&format!("/ai/threads/{thread}/messages?limit=100"))
        .await
        .ok(200)["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// The kinds of the thread's stored events (replayed from the start, read for `seconds`).
async fn event_kinds(app: &TestApp, thread: &str) -> Vec<(String, Value)> {
    let mut stream = app
        .client
        .ai()
        .threads()
        .stream(thread)
        .connect()
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        if event.id.is_some() {
            out.push((event.event.clone(), event.data.clone()));
        }
    }
    out
}

async fn ask_pending_action_confirm_result(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(
        &app,
        "support",
        echo(),
        Some(json!({"tool": "notify_user"})),
    )
    .await;
    let first = ask(
        &app,
        "support",
        json!({"content": "/tool notify_user {\"message\": \"order shipped\"}"}),
    )
    .await;
    let first = first.ok(200).clone();
    assert_eq!(first["status"], "waiting_for_input", "{first}");
    let thread = first["thread_id"].as_str().unwrap().to_owned();
    assert_id(first["response_id"].as_str().unwrap(), "resp");
    let pending = &first["pending_action"];
    assert_eq!(pending["tool"], "notify_user");
    assert_eq!(pending["preview"], json!({"message": "order shipped"}));
    let action = pending["action_id"].as_str().unwrap().to_owned();
    assert_id(&action, "act");
    assert!(pending["expires_at"].as_str().unwrap().ends_with('Z'));
    // Nothing ran yet: no tool result, and the thread waits.
    let thread_body = app
        .get(&format!("/ai/threads/{thread}"))
        .await
        .ok(200)
        .clone();
    assert_eq!(thread_body["status"], "waiting_for_input");
    assert!(messages(&app, &thread)
        .await
        .iter()
        .all(|m| m["role"] != "tool"));

    let confirmed = resolve(&app, &thread, &action, true).await;
    let confirmed = confirmed.ok(202).clone();
    assert_eq!(confirmed["status"], "processing");
    assert_eq!(confirmed["message"], "Action confirmed, executing...");
    assert_id(confirmed["callback_id"].as_str().unwrap(), "cb");

    let done = wait_response(&app, first["response_id"].as_str().unwrap(), "completed").await;
    assert_eq!(
        done["content"],
        "tool notify_user returned: the user was notified"
    );
    assert_eq!(done["pending_action"], Value::Null);
    // A second decision, either way, is refused.
    resolve(&app, &thread, &action, true)
        .await
        .assert_error(409, "action_already_decided", None);
    resolve(&app, &thread, &action, false)
        .await
        .assert_error(409, "action_already_decided", None);

    // The next pool call on the thread reports the action's result, once.
    let next = ask(
        &app,
        "support",
        json!({"content": "thanks", "thread_id": thread}),
    )
    .await;
    let next = next.ok(200).clone();
    assert_eq!(next["content"], "thanks");
    assert_eq!(next["thread_id"], thread.as_str());
    let results = next["action_results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{next}");
    assert_eq!(results[0]["action_id"], action.as_str());
    assert_eq!(results[0]["status"], "completed");
    assert_eq!(results[0]["result"], "the user was notified");
    assert_eq!(results[0]["callback_id"], confirmed["callback_id"]);
    let later = ask(
        &app,
        "support",
        json!({"content": "bye", "thread_id": thread}),
    )
    .await;
    assert_eq!(later.ok(200)["action_results"], json!([]));

    // Executed exactly once: one notification, one tool result.
    let events = event_kinds(&app, &thread).await;
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "notification").count(),
        1,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"pending_action.created"), "{kinds:?}");
    assert!(kinds.contains(&"pending_action.resolved"), "{kinds:?}");
    let tools = messages(&app, &thread)
        .await
        .into_iter()
        .filter(|m| m["role"] == "tool")
        .count();
    assert_eq!(tools, 1);
    app.stop().await;
}

async fn cancel_is_answered_to_the_model(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "desk", echo(), Some(json!({"tool": "notify_*"}))).await;
    let first = ask(
        &app,
        "desk",
        json!({"content": "/tool notify_user {\"message\": \"x\"}"}),
    )
    .await;
    let first = first.ok(200).clone();
    let thread = first["thread_id"].as_str().unwrap();
    let action = first["pending_action"]["action_id"].as_str().unwrap();
    let cancelled = resolve(&app, thread, action, false).await;
    assert_eq!(
        cancelled.ok(200),
        &json!({"thread_id": thread, "action_id": action, "status": "cancelled", "message": "Action cancelled"})
    );
    let done = wait_response(&app, first["response_id"].as_str().unwrap(), "completed").await;
    assert!(
        done["content"]
            .as_str()
            .unwrap()
            .contains("cancelled this action"),
        "{done}"
    );
    resolve(&app, thread, action, true)
        .await
        .assert_error(409, "action_already_decided", None);
    let events = event_kinds(&app, thread).await;
    assert!(
        events.iter().all(|(k, _)| k != "notification"),
        "{events:?}"
    );
    app.stop().await;
}

async fn concurrent_confirm_and_cancel_have_one_winner(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "race", echo(), Some(json!({"tool": "notify_user"}))).await;
    for round in 0..3 {
        let first = ask(
            &app,
            "race",
            json!({"content": format!("/tool notify_user {{\"message\": \"r{round}\"}}")}),
        )
        .await;
        let first = first.ok(200).clone();
        let thread = first["thread_id"].as_str().unwrap().to_owned();
        let action = first["pending_action"]["action_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (a, b) = tokio::join!(
            resolve(&app, &thread, &action, true),
            resolve(&app, &thread, &action, false)
        );
        let statuses = [a.status, b.status];
        let wins = statuses.iter().filter(|s| **s == 200 || **s == 202).count();
        assert_eq!(
            wins, 1,
            "exactly one decision wins: {} / {}",
            a.text, b.text
        );
        let loser = if a.status == 409 { &a } else { &b };
        loser.assert_error(409, "action_already_decided", None);
        let done = wait_response(&app, first["response_id"].as_str().unwrap(), "completed").await;
        let notified = event_kinds(&app, &thread)
            .await
            .iter()
            .filter(|(k, _)| k == "notification")
            .count();
        assert_eq!(
            notified,
            usize::from(a.status == 202 || b.status == 202),
            "{done}"
        );
    }
    app.stop().await;
}

async fn an_idempotent_decision_replays_its_answer(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "once", echo(), Some(json!({"tool": "notify_user"}))).await;
    let (answer, thread, action) = paused_ask(&app, "once", None).await;
    let path = format!("/api/v1/sessions/{thread}/actions/{action}");
    let decide = |key: &'static str, confirmed: bool| {
        send(
            app.request(Method::POST, &path)
                .header("Idempotency-Key", key)
                .json(&json!({"confirmed": confirmed})),
        )
    };
    // Retries of one decision racing each other all get its answer, with one callback id.
    let (a, b, c, d) = tokio::join!(
        decide("k-1", true),
        decide("k-1", true),
        decide("k-1", true),
        decide("k-1", true)
    );
    let first = a.ok(202).clone();
    assert_eq!(first["status"], "processing", "{first}");
    assert!(first["callback_id"].is_string(), "{first}");
    for retry in [b, c, d] {
        assert_eq!(*retry.ok(202), first);
    }
    wait_response(&app, answer["response_id"].as_str().unwrap(), "completed").await;
    let notified = event_kinds(&app, &thread)
        .await
        .iter()
        .filter(|(k, _)| k == "notification")
        .count();
    assert_eq!(notified, 1, "the action ran once");
    // Once the run is over, the retry still answers the first answer.
    assert_eq!(*decide("k-1", true).await.ok(202), first);
    // The same key with another body is a mistake; another key is another decision.
    decide("k-1", false)
        .await
        .assert_error(409, "idempotency_key_reused", None);
    decide("k-2", true)
        .await
        .assert_error(409, "action_already_decided", None);
    resolve(&app, &thread, &action, true)
        .await
        .assert_error(409, "action_already_decided", None);
    // The key belongs to its path: sent for another session, the action is not found there.
    let (_, elsewhere, _) = paused_ask(&app, "once", None).await;
    send(
        app.request(
            Method::POST,
            &format!("/api/v1/sessions/{elsewhere}/actions/{action}"),
        )
        .header("Idempotency-Key", "k-1")
        .json(&json!({"confirmed": true})),
    )
    .await
    .assert_error(404, "action_not_found", None);
    app.stop().await;
}

async fn an_unanswered_action_expires_and_the_run_resumes(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    // The run's own wall-clock limit (1 s) is shorter than the wait for the decision (2 s):
    // waiting for a person does not count against it.
    app.post(
        "/ai/agents",
        json!({"name": "timer", "model": echo(), "endpoint_slug": "timer",
               "approval_rules": [{"tool": "notify_user", "expires_in_seconds": 2}],
               "limits": {"run_timeout_seconds": 1}}),
    )
    .await
    .ok(201);
    let first = ask(
        &app,
        "timer",
        json!({"content": "/tool notify_user {\"message\": \"late\"}"}),
    )
    .await;
    let first = first.ok(200).clone();
    let thread = first["thread_id"].as_str().unwrap();
    let action = first["pending_action"]["action_id"].as_str().unwrap();
    let done = wait_response(&app, first["response_id"].as_str().unwrap(), "completed").await;
    assert!(
        done["content"].as_str().unwrap().contains("expired"),
        "{done}"
    );
    resolve(&app, thread, action, true)
        .await
        .assert_error(410, "action_expired", None);
    let events = event_kinds(&app, thread).await;
    let expiring = events
        .iter()
        .position(|(k, _)| k == "pending_action.expiring")
        .unwrap_or_else(|| panic!("no expiring event: {events:?}"));
    let resolved = events
        .iter()
        .position(|(k, d)| k == "pending_action.resolved" && d["action"]["status"] == "expired")
        .unwrap_or_else(|| panic!("no expiry: {events:?}"));
    assert!(expiring < resolved);
    assert_eq!(events[expiring].1["action_id"], action);
    assert!(events.iter().all(|(k, _)| k != "notification"));
    app.stop().await;
}

async fn variables_follow_the_rules_and_reach_the_model(db: &TestDatabase) {
    let (app, model) = start(db, 10).await;
    pool_agent(&app, "vars", scripted(), None).await;
    model.push(Script::text(["hello"]));
    let first = ask(
        &app,
        "vars",
        json!({"content": "hi", "context_variables": {"USER_PLAN": "free", "SEATS": 3}}),
    )
    .await;
    let first = first.ok(200).clone();
    let thread = first["thread_id"].as_str().unwrap().to_owned();
    let system = |i: usize| {
        model.requests()[i].body["messages"][0]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(system(0).contains("USER_PLAN = free"), "{}", system(0));
    assert!(system(0).contains("SEATS = 3"));

    let path = format!("/api/v1/sessions/{thread}");
    let ok = app
        .patch(&path, json!({"context_variables": {"USER_PLAN": "enterprise", "SEATS": null, "ACTIVE": true}}))
        .await;
    assert_eq!(
        ok.ok(200),
        &json!({"thread_id": thread, "variables_updated": 3, "total_variables": 2})
    );
    // Every rule, each refusing the whole patch.
    for (body, field) in [
        (
            json!({"context_variables": {"user_plan": "x"}}),
            "context_variables.user_plan",
        ),
        (
            json!({"context_variables": {"1A": "x"}}),
            "context_variables.1A",
        ),
        (
            json!({"context_variables": {"A-B": "x"}}),
            "context_variables.A-B",
        ),
        (
            json!({"context_variables": {"LIST": [1]}}),
            "context_variables.LIST",
        ),
        (
            json!({"context_variables": {"OBJ": {"a": 1}}}),
            "context_variables.OBJ",
        ),
        (json!({"context_variables": "x"}), "context_variables"),
        (json!({}), "context_variables"),
        (json!({"context_variables": {}, "extra": 1}), "extra"),
    ] {
        app.patch(&path, body)
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    let many: serde_json::Map<String, Value> =
        (0..19).map(|i| (format!("V{i}"), json!(i))).collect();
    app.patch(&path, json!({"context_variables": many}))
        .await
        .assert_error(422, "validation_failed", Some("context_variables"));
    app.patch(
        &path,
        json!({"context_variables": {"BIG": "x".repeat(4100)}}),
    )
    .await
    .assert_error(422, "validation_failed", Some("context_variables"));
    // Nothing changed: deleting a missing one changes nothing and counts 2.
    let same = app
        .patch(&path, json!({"context_variables": {"NOPE": null}}))
        .await;
    assert_eq!(same.ok(200)["total_variables"], 2);
    assert_eq!(same.ok(200)["variables_updated"], 0);

    model.push(Script::text(["again"]));
    ask(
        &app,
        "vars",
        json!({"content": "next", "thread_id": thread}),
    )
    .await
    .ok(200);
    assert!(
        system(1).contains("USER_PLAN = enterprise"),
        "{}",
        system(1)
    );
    assert!(system(1).contains("ACTIVE = true"));
    assert!(!system(1).contains("SEATS"));
    app.stop().await;
}

async fn request_variables_tool_fills_requested_variables(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "needs", echo(), None).await;
    let first = ask(
        &app,
        "needs",
        json!({"content": "/tool request_variables {\"names\": [\"ACCOUNT_ID\", \"REGION\"], \"reason\": \"lookup\"}"}),
    )
    .await;
    let first = first.ok(200).clone();
    assert_eq!(
        first["requested_variables"],
        json!(["ACCOUNT_ID", "REGION"]),
        "{first}"
    );
    let thread = first["thread_id"].as_str().unwrap();
    app.patch(
        &format!("/api/v1/sessions/{thread}"),
        json!({"context_variables": {"ACCOUNT_ID": "42"}}),
    )
    .await
    .ok(200);
    let next = ask(&app, "needs", json!({"content": "ok", "thread_id": thread})).await;
    assert_eq!(next.ok(200)["requested_variables"], json!(["REGION"]));
    let bad = ask(
        &app,
        "needs",
        json!({"content": "/tool request_variables {\"names\": [\"lower\"]}", "thread_id": thread}),
    )
    .await;
    assert!(
        bad.ok(200)["content"].as_str().unwrap().contains("^[A-Z]"),
        "{}",
        bad.text
    );
    app.stop().await;
}

async fn ask_validation_rules(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "rules", echo(), None).await;
    pool_agent(&app, "other", echo(), None).await;
    for (body, field) in [
        (json!({"content": ""}), "content"),
        (json!({"content": "   "}), "content"),
        (json!({"content": "x".repeat(10_001)}), "content"),
        (json!({}), "content"),
        (json!({"content": 5}), "content"),
        (json!({"content": "hi", "unknown": 1}), "unknown"),
        (
            json!({"content": "hi", "context_variables": {"bad": 1}}),
            "context_variables.bad",
        ),
        (
            json!({"content": "hi", "context_variables": {"A": [1]}}),
            "context_variables.A",
        ),
        (
            json!({"content": "hi", "context_variables": []}),
            "context_variables",
        ),
    ] {
        ask(&app, "rules", body)
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    assert_eq!(
        ask(&app, "rules", json!({"content": "x".repeat(10_000)}))
            .await
            .status,
        200
    );
    ask(&app, "nobody", json!({"content": "hi"}))
        .await
        .assert_error(404, "endpoint_not_found", None);
    ask(&app, "Not_A_Slug", json!({"content": "hi"}))
        .await
        .assert_error(404, "endpoint_not_found", None);
    ask(&app, "rules", json!({"content": "hi", "thread_id": "nope"}))
        .await
        .assert_error(404, "thread_not_found", Some("thread_id"));
    // A session of another pool is not a session of this one.
    let other = ask(&app, "other", json!({"content": "hi"}))
        .await
        .ok(200)
        .clone();
    ask(
        &app,
        "rules",
        json!({"content": "hi", "thread_id": other["thread_id"]}),
    )
    .await
    .assert_error(404, "thread_not_found", Some("thread_id"));
    let bad_key = send(
        app.request(Method::POST, "/api/v1/ask/rules")
            .header("Idempotency-Key", "")
            .json(&json!({"content": "hi"})),
    )
    .await;
    bad_key.assert_error(400, "invalid_parameter", Some("Idempotency-Key"));
    app.post_text("/api/v1/ask/rules", "{not json")
        .await
        .assert_error(400, "malformed_json", None);
    // X-API-Key is accepted on /api/v1.
    let by_header = send(
        app.anonymous(Method::POST, "/api/v1/ask/rules")
            .header("X-API-Key", &app.key)
            .json(&json!({"content": "with a header key"})),
    )
    .await;
    assert_eq!(by_header.ok(200)["content"], "with a header key");
    let unauthenticated = send(
        app.anonymous(Method::POST, "/api/v1/ask/rules")
            .json(&json!({"content": "hi"})),
    )
    .await;
    unauthenticated.assert_error(401, "unauthorized", None);
    app.stop().await;
}

async fn idempotent_ask_starts_nothing_new(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "idem", echo(), None).await;
    let sessions = app.client.sessions();
    let body = AskRequest {
        content: "once only".into(),
        ..Default::default()
    };
    let a = sessions
        .ask("idem", body.clone())
        .idempotency_key("k-1")
        .send()
        .await
        .unwrap();
    let b = sessions
        .ask("idem", body)
        .idempotency_key("k-1")
        .send()
        .await
        .unwrap();
    assert_eq!(a.response_id, b.response_id);
    assert_eq!(a.thread_id, b.thread_id);
    assert_eq!(b.content.as_deref(), Some("once only"));
    let users = messages(&app, &a.thread_id)
        .await
        .into_iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert_eq!(users, 1);
    let other = sessions
        .ask(
            "idem",
            AskRequest {
                content: "different".into(),
                ..Default::default()
            },
        )
        .idempotency_key("k-1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        other.code(),
        Some(tessera_client::ErrorCode::IdempotencyKeyReused),
        "{other:?}"
    );
    // Retries of a new-session ask racing each other: one session, one answer.
    let racing = || {
        sessions
            .ask(
                "idem",
                AskRequest {
                    content: "racing".into(),
                    ..Default::default()
                },
            )
            .idempotency_key("k-2")
            .send()
    };
    let (r1, r2, r3, r4) = tokio::join!(racing(), racing(), racing(), racing());
    let first = r1.unwrap();
    for retry in [r2, r3, r4] {
        let retry = retry.unwrap();
        assert_eq!(
            (&retry.thread_id, &retry.response_id),
            (&first.thread_id, &first.response_id)
        );
    }
    // No session was left behind by a retry: two asks, two sessions.
    let usage = sessions.usage(UsageParams::default()).send().await.unwrap();
    assert_eq!(usage.totals.sessions, 2, "{usage:?}");
    app.stop().await;
}

async fn close_during_a_run_cancels_it_and_is_idempotent(db: &TestDatabase) {
    let (app, model) = start(db, 1).await;
    pool_agent(&app, "close", scripted(), None).await;
    model.push(Script::Hang);
    let first = ask(&app, "close", json!({"content": "take your time"})).await;
    let first = first.ok(202).clone();
    assert_eq!(first["status"], "processing");
    assert_eq!(first["content"], Value::Null);
    let thread = first["thread_id"].as_str().unwrap().to_owned();
    let closed = app
        .post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200)
        .clone();
    assert_eq!(closed["thread_id"], thread.as_str());
    assert_eq!(closed["billable"], false);
    assert!(closed["duration_seconds"].as_i64().unwrap() >= 0);
    let done = wait_response(&app, first["response_id"].as_str().unwrap(), "cancelled").await;
    assert_eq!(done["status"], "cancelled");
    let again = app
        .post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await;
    assert_eq!(again.ok(200), &closed);
    ask(
        &app,
        "close",
        json!({"content": "more", "thread_id": thread}),
    )
    .await
    .assert_error(409, "session_closed", None);
    app.post(
        &format!("/ai/threads/{thread}/run"),
        json!({"message": {"content": "more"}}),
    )
    .await
    .assert_error(409, "session_closed", None);
    app.patch(
        &format!("/api/v1/sessions/{thread}"),
        json!({"context_variables": {"A": 1}}),
    )
    .await
    .assert_error(409, "session_closed", None);

    // Closing a session paused on a confirmation cancels the action.
    pool_agent(&app, "gated", echo(), Some(json!({"tool": "notify_user"}))).await;
    let paused = ask(
        &app,
        "gated",
        json!({"content": "/tool notify_user {\"message\": \"m\"}"}),
    )
    .await;
    let paused = paused.ok(200).clone();
    let thread = paused["thread_id"].as_str().unwrap();
    let action = paused["pending_action"]["action_id"].as_str().unwrap();
    app.post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200);
    wait_response(&app, paused["response_id"].as_str().unwrap(), "cancelled").await;
    resolve(&app, thread, action, true)
        .await
        .assert_error(409, "action_already_decided", None);
    app.stop().await;
}

async fn usage_is_consistent_with_close(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    let agent = pool_agent(&app, "billing", echo(), None).await;
    let answered = ask(&app, "billing", json!({"content": "hello"}))
        .await
        .ok(200)
        .clone();
    let thread = answered["thread_id"].as_str().unwrap();
    let closed = app
        .post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200)
        .clone();
    assert_eq!(closed["billable"], true);
    let usage = app
        .client
        .sessions()
        .usage(UsageParams {
            group_by: Some(UsageGroupBy::Agent),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(usage.data.len(), 1, "{usage:?}");
    let row = &usage.data[0];
    assert_eq!(row.key, agent);
    assert_eq!((row.sessions, row.billable_sessions, row.runs), (1, 1, 1));
    assert_eq!(
        row.session_seconds as i64,
        closed["duration_seconds"].as_i64().unwrap()
    );
    assert!(row.prompt_tokens > 0 && row.total_tokens == row.prompt_tokens + row.completion_tokens);
    assert_eq!(usage.totals.sessions, 1);
    let by_day = app.get("/api/v1/usage?group_by=day").await.ok(200).clone();
    assert_eq!(by_day["data"][0]["key"].as_str().unwrap().len(), 10);
    let by_actor = app
        .get("/api/v1/usage?group_by=actor")
        .await
        .ok(200)
        .clone();
    assert!(by_actor["data"][0]["key"]
        .as_str()
        .unwrap()
        .starts_with("actor_"));
    for (query, field) in [
        ("from=yesterday", "from"),
        ("to=2025-13-01", "to"),
        ("from=2025-02-01&to=2025-01-01", "from"),
        ("from=2020-01-01&to=2025-01-01", "from"),
        ("group_by=week", "group_by"),
    ] {
        app.get(&format!("/api/v1/usage?{query}"))
            .await
            .assert_error(400, "invalid_parameter", Some(field));
    }
    let empty = app
        .get("/api/v1/usage?from=2020-01-01&to=2020-02-01")
        .await
        .ok(200)
        .clone();
    assert_eq!(empty["data"], json!([]));
    app.stop().await;
}

async fn another_deployments_sessions_are_404(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "mine", echo(), Some(json!({"tool": "notify_user"}))).await;
    let paused = ask(
        &app,
        "mine",
        json!({"content": "/tool notify_user {\"message\": \"m\"}"}),
    )
    .await;
    let paused = paused.ok(200).clone();
    let thread = paused["thread_id"].as_str().unwrap();
    let action = paused["pending_action"]["action_id"].as_str().unwrap();
    let response = paused["response_id"].as_str().unwrap();
    let other = app.create_deployment("other").await;
    let as_other = |method: Method, path: String, body: Option<Value>| {
        let mut r = app
            .http
            .request(method, app.url(&path))
            .bearer_auth(&other.key);
        if let Some(b) = body {
            r = r.json(&b);
        }
        send(r)
    };
    as_other(
        Method::POST,
        format!("/api/v1/sessions/{thread}/close"),
        None,
    )
    .await
    .assert_error(404, "thread_not_found", None);
    as_other(
        Method::PATCH,
        format!("/api/v1/sessions/{thread}"),
        Some(json!({"context_variables": {"A": 1}})),
    )
    .await
    .assert_error(404, "thread_not_found", None);
    as_other(
        Method::POST,
        format!("/api/v1/sessions/{thread}/actions/{action}"),
        Some(json!({"confirmed": true})),
    )
    .await
    .assert_error(404, "action_not_found", None);
    as_other(Method::GET, format!("/api/v1/responses/{response}"), None)
        .await
        .assert_error(404, "response_not_found", None);
    as_other(
        Method::POST,
        "/api/v1/ask/mine".into(),
        Some(json!({"content": "hi"})),
    )
    .await
    .assert_error(404, "endpoint_not_found", None);
    // Still pending for its owner.
    assert_eq!(resolve(&app, thread, action, false).await.status, 200);
    app.stop().await;
}

async fn a_slow_turn_answers_202_and_is_polled(db: &TestDatabase) {
    let (app, model) = start(db, 1).await;
    pool_agent(&app, "slow", scripted(), None).await;
    model.push(Script::Slow {
        first_byte_after: Duration::from_millis(1500),
        chunks: vec!["late ".into(), "answer".into()],
        gap: Duration::from_millis(10),
    });
    let first = ask(&app, "slow", json!({"content": "q"})).await;
    let first = first.ok(202).clone();
    let done = wait_response(&app, first["response_id"].as_str().unwrap(), "completed").await;
    assert_eq!(done["content"], "late answer");
    assert_eq!(done["thread_id"], first["thread_id"]);
    app.get("/api/v1/responses/resp_nope")
        .await
        .assert_error(404, "response_not_found", None);
    app.stop().await;
}

/// The `pending_action.resolved` events of the thread, as (action id, status).
async fn resolved_events(app: &TestApp, thread: &str) -> Vec<(String, String)> {
    event_kinds(app, thread)
        .await
        .into_iter()
        .filter(|(k, _)| k == "pending_action.resolved")
        .map(|(_, d)| {
            (
                d["action"]["action_id"].as_str().unwrap_or("?").to_owned(),
                d["action"]["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

/// Asks `slug` to call the gated `notify_user`; returns (answer, thread, action).
async fn paused_ask(app: &TestApp, slug: &str, thread: Option<&str>) -> (Value, String, String) {
    let mut body = json!({"content": "/tool notify_user {\"message\": \"m\"}"});
    if let Some(thread) = thread {
        body["thread_id"] = json!(thread);
    }
    let answer = ask(app, slug, body).await.ok(200).clone();
    assert_eq!(answer["status"], "waiting_for_input", "{answer}");
    let thread = answer["thread_id"].as_str().unwrap().to_owned();
    let action = answer["pending_action"]["action_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (answer, thread, action)
}

async fn cancel_interrupt_and_close_resolve_open_actions(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "stops", echo(), Some(json!({"tool": "notify_user"}))).await;
    let gate = json!([{"tool": "notify_user"}]);
    app.post(
        "/ai/agents",
        json!({"name": "interrupting", "model": echo(), "endpoint_slug": "interrupts",
               "approval_rules": gate, "multitask": "interrupt"}),
    )
    .await
    .ok(201);

    // Cancelling the paused run cancels its action, and says so on the stream.
    let (answer, thread, action) = paused_ask(&app, "stops", None).await;
    app.post(
        &format!("/ai/threads/{thread}/run"),
        json!({"cancel": true}),
    )
    .await
    .ok(202);
    wait_response(&app, answer["response_id"].as_str().unwrap(), "cancelled").await;
    assert_eq!(
        resolved_events(&app, &thread).await,
        [(action.clone(), "cancelled".to_owned())]
    );
    resolve(&app, &thread, &action, true)
        .await
        .assert_error(409, "action_already_decided", None);

    // A new message interrupting the paused run: the same.
    let (answer, thread, action) = paused_ask(&app, "interrupts", None).await;
    let next = ask(
        &app,
        "interrupts",
        json!({"content": "never mind", "thread_id": thread}),
    )
    .await;
    assert_eq!(next.ok(200)["content"], "never mind");
    wait_response(&app, answer["response_id"].as_str().unwrap(), "cancelled").await;
    assert_eq!(
        resolved_events(&app, &thread).await,
        [(action, "cancelled".to_owned())]
    );

    // Closing the session: the same.
    let (_, thread, action) = paused_ask(&app, "stops", None).await;
    app.post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200);
    assert_eq!(
        resolved_events(&app, &thread).await,
        [(action, "cancelled".to_owned())]
    );
    app.stop().await;
}

async fn a_refused_ask_changes_nothing(db: &TestDatabase) {
    let (app, model) = start(db, 1).await;
    app.post(
        "/ai/agents",
        json!({"name": "strict", "model": scripted(), "endpoint_slug": "strict", "multitask": "reject"}),
    )
    .await
    .ok(201);
    model.push(Script::Hang);
    let first = ask(
        &app,
        "strict",
        json!({"content": "busy", "context_variables": {"KEPT": "yes"}}),
    )
    .await;
    let thread = first.ok(202)["thread_id"].as_str().unwrap().to_owned();
    // The send is refused (a run is active): its variables are not merged either.
    ask(
        &app,
        "strict",
        json!({"content": "again", "thread_id": thread, "context_variables": {"NEW": "x", "KEPT": null}}),
    )
    .await
    .assert_error(409, "run_active", None);
    let unchanged = app
        .patch(
            &format!("/api/v1/sessions/{thread}"),
            json!({"context_variables": {}}),
        )
        .await;
    assert_eq!(
        unchanged.ok(200)["total_variables"],
        1,
        "{}",
        unchanged.text
    );
    let users = messages(&app, &thread)
        .await
        .into_iter()
        .filter(|m| m["role"] == "user")
        .count();
    assert_eq!(users, 1);

    // A new session whose variables are refused is not created at all.
    pool_agent(&app, "fresh", echo(), None).await;
    ask(
        &app,
        "fresh",
        json!({"content": "hi", "context_variables": {"BIG": "x".repeat(5000)}}),
    )
    .await
    .assert_error(422, "validation_failed", Some("context_variables"));
    let pool_actor = app
        .get("/ai/actors/lookup?subject_type=pool&external_key=fresh")
        .await;
    assert_eq!(
        pool_actor.ok(200)["actor"],
        Value::Null,
        "{}",
        pool_actor.text
    );
    app.stop().await;
}

async fn suggested_actions_offer_the_next_steps(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    pool_agent(&app, "next", echo(), Some(json!({"tool": "notify_user"}))).await;
    let (answer, thread, action) = paused_ask(&app, "next", None).await;
    let path = format!("/api/v1/sessions/{thread}/actions/{action}");
    assert_eq!(
        answer["suggested_actions"],
        json!([
            {"type": "confirm_action", "label": "Confirm notify_user", "method": "POST",
             "path": path, "body": {"confirmed": true}, "action_id": action},
            {"type": "cancel_action", "label": "Cancel notify_user", "method": "POST",
             "path": path, "body": {"confirmed": false}, "action_id": action},
        ])
    );
    // The suggestion is a request that works as given.
    let confirm = &answer["suggested_actions"][0];
    app.post(confirm["path"].as_str().unwrap(), confirm["body"].clone())
        .await
        .ok(202);
    let done = wait_response(&app, answer["response_id"].as_str().unwrap(), "completed").await;
    assert_eq!(done["suggested_actions"], json!([]));

    // Variables the agent asked for.
    let asked = ask(
        &app,
        "next",
        json!({"content": "/tool request_variables {\"names\": [\"REGION\"]}", "thread_id": thread}),
    )
    .await;
    assert_eq!(
        asked.ok(200)["suggested_actions"],
        json!([{"type": "set_variables", "label": "Provide REGION", "method": "PATCH",
                "path": format!("/api/v1/sessions/{thread}"), "variables": ["REGION"]}])
    );
    // A closed session suggests nothing.
    app.post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200);
    let closed = app
        .get(&format!(
            "/api/v1/responses/{}",
            asked.ok(200)["response_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(closed.ok(200)["suggested_actions"], json!([]));
    app.stop().await;
}

async fn a_deleted_agent_leaves_its_pool(db: &TestDatabase) {
    let (app, _model) = start(db, 10).await;
    // The first agent would be picked first (equal load, lowest id) were it still served.
    let gone = pool_agent(&app, "desk", echo(), None).await;
    let kept = pool_agent(&app, "desk", echo(), None).await;
    app.call(Method::DELETE, &format!("/ai/agents/{gone}"), None)
        .await
        .ok(200);
    for _ in 0..3 {
        let answered = ask(&app, "desk", json!({"content": "hi"})).await;
        assert_eq!(answered.ok(200)["agent_id"], kept.as_str());
    }
    // A pool whose only agent was deleted serves nobody.
    let alone = pool_agent(&app, "alone", echo(), None).await;
    app.call(Method::DELETE, &format!("/ai/agents/{alone}"), None)
        .await
        .ok(200);
    ask(&app, "alone", json!({"content": "hi"}))
        .await
        .assert_error(404, "endpoint_not_found", None);
    app.stop().await;
}
