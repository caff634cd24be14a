//! The internal `ask_user` tool through the real driver (echo model: `/tool ask_user {…}` makes
//! it ask): the run waits in `waiting_for_input` with the question streamed as the call's
//! `tool.started`; the next message on the thread — through the pool, the backend thread API or
//! the browser API — is the answer and the same run resumes. A question survives a restart and
//! always ends: answered, expired, cancelled or closed. Also: arguments of a call held for a
//! person are checked before anyone is asked.

use std::time::Duration;

use serde_json::{json, Value};
use tessera_client::StreamEvent;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{poll_until, spawn_app, spawn_app_with, TestApp};

backend_tests!(
    the_next_message_answers_the_question_and_the_same_run_resumes,
    the_browser_api_answers_a_question_on_the_stream,
    held_calls_with_invalid_arguments_are_refused_before_anyone_is_asked,
    a_question_survives_a_restart,
    an_unanswered_question_expires_and_the_run_goes_on,
    cancelling_or_closing_ends_a_waiting_question,
);

const WAIT: Duration = Duration::from_secs(20);

async fn pool_agent(app: &TestApp, slug: &str, extra: Value) {
    let mut body = json!({"name": slug, "model": {"provider": "echo", "model": "echo"}, "endpoint_slug": slug});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.post("/ai/agents", body).await.ok(201);
}

fn ask_user(args: Value) -> String {
    format!("/tool ask_user {args}")
}

/// `askAgentPool`, expecting a settled turn (200).
async fn ask(app: &TestApp, slug: &str, content: &str, thread: Option<&str>) -> Value {
    let mut body = json!({ "content": content });
    if let Some(thread) = thread {
        body["thread_id"] = json!(thread);
    }
    app.post(&format!("/api/v1/ask/{slug}"), body)
        .await
        .ok(200)
        .clone()
}

async fn messages(app: &TestApp, thread: &str) -> Vec<Value> {
    app.get(&format!("/ai/threads/{thread}/messages?limit=100"))
        .await
        .ok(200)["data"]
        .as_array()
        .unwrap()
        .clone()
}

/// Polls the pool response of `run` until its status is `status`.
async fn response_in(app: &TestApp, response_id: &str, status: &str) -> Value {
    poll_until(&format!("response {status}"), WAIT, || async move {
        let r = app.get(&format!("/api/v1/responses/{response_id}")).await;
        let body = r.ok(200).clone();
        if body["status"] == status {
            Ok(body)
        } else {
            Err(body.to_string())
        }
    })
    .await
}

/// The response id of a run id (same body, other prefix).
fn response_of(run_id: &str) -> String {
    format!("resp_{}", run_id.strip_prefix("run_").unwrap())
}

async fn the_next_message_answers_the_question_and_the_same_run_resumes(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let catalog = app.get("/ai/tools/internal").await;
    let ask_spec = catalog.ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ask_user")
        .cloned()
        .expect("ask_user is in the internal catalog");
    assert_eq!(ask_spec["input_schema"]["required"], json!(["question"]));
    pool_agent(&app, "helpdesk", json!({})).await;

    // The pool: the turn pauses on the question, which the answer shows.
    let asked = ask(
        &app,
        "helpdesk",
        &ask_user(json!({"question": "Which plan?", "choices": ["Basic", "Pro"]})),
        None,
    )
    .await;
    assert_eq!(asked["status"], "waiting_for_input", "{asked}");
    assert_eq!(asked["content"], "Which plan?");
    assert_eq!(asked["question"]["question"], "Which plan?");
    assert_eq!(asked["question"]["choices"], json!(["Basic", "Pro"]));
    assert!(
        asked["pending_action"].is_null(),
        "a question is no pending action"
    );
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    let suggested = asked["suggested_actions"].as_array().unwrap();
    assert_eq!(suggested.len(), 2, "{asked}");
    assert_eq!(suggested[1]["type"], "answer_question");
    assert_eq!(suggested[1]["path"], "/api/v1/ask/helpdesk");
    assert_eq!(
        suggested[1]["body"],
        json!({"content": "Pro", "thread_id": thread})
    );
    // The stream: the call's `tool.started` carries the question, then the run waits.
    let mut stream = app
        .client
        .ai()
        .threads()
        .stream(&thread)
        .last_event_id(0)
        .connect()
        .await
        .unwrap();
    let seen = read_until(&mut stream, |e| {
        e.event == "run.status" && e.data["status"] == "waiting_for_input"
    })
    .await;
    let started = seen
        .iter()
        .find(|e| e.event == "tool.started")
        .expect("tool.started");
    assert_eq!(started.data["name"], "ask_user");
    assert_eq!(started.data["question"], "Which plan?");
    assert_eq!(started.data["choices"], json!(["Basic", "Pro"]));
    assert!(started.data["expires_at"].is_string());
    assert!(
        !seen.iter().any(|e| e.event.starts_with("pending_action")),
        "no pending action is streamed for a question"
    );

    // The answer (a choice in other case) resumes the same run: same response id.
    let answered = ask(&app, "helpdesk", " pro ", Some(&thread)).await;
    assert_eq!(answered["status"], "completed", "{answered}");
    assert_eq!(
        answered["response_id"], asked["response_id"],
        "the same run"
    );
    assert_eq!(answered["content"], "tool ask_user returned: Pro");
    assert!(answered["question"].is_null());
    let after = read_until(&mut stream, |e| {
        e.event == "run.status" && e.data["status"] == "completed"
    })
    .await;
    let completed = after
        .iter()
        .find(|e| e.event == "tool.completed")
        .expect("tool.completed");
    assert_eq!(completed.data["message"]["content"], "Pro");
    assert!(
        !after.iter().any(|e| e.event == "tool.started"),
        "the question is not started twice"
    );
    let roles: Vec<String> = messages(&app, &thread)
        .await
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, ["user", "assistant", "user", "tool", "assistant"]);

    // The backend thread API: an answer outside the choices is delivered as written, and
    // the 202 names the resumed run.
    let sent = app
        .post(
            &format!("/ai/threads/{thread}/run"),
            json!({"message": {"content": ask_user(json!({"question": "Ship now?", "choices": ["yes", "no"]}))}}),
        )
        .await;
    let run = sent.ok(202)["run_id"].as_str().unwrap().to_owned();
    let waiting = response_in(&app, &response_of(&run), "waiting_for_input").await;
    assert_eq!(waiting["question"]["question"], "Ship now?");
    let sent = app
        .post(
            &format!("/ai/threads/{thread}/run"),
            json!({"message": {"content": "maybe after lunch"}}),
        )
        .await;
    assert_eq!(sent.ok(202)["run_id"], run, "the waiting run resumes");
    let done = response_in(&app, &response_of(&run), "completed").await;
    assert_eq!(done["content"], "tool ask_user returned: maybe after lunch");
    // With the question answered, the next message is a new run again.
    let next = ask(&app, "helpdesk", "thanks", Some(&thread)).await;
    assert_ne!(next["response_id"], asked["response_id"]);
    assert_eq!(next["content"], "thanks");
    app.stop().await;
}

async fn the_browser_api_answers_a_question_on_the_stream(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app
        .post(
            "/ai/agents",
            json!({"name": "Asker", "model": {"provider": "echo", "model": "echo"}}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let ticket = app
        .post(
            "/session/tickets",
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
        )
        .await
        .ok(201)["ticket"]
        .as_str()
        .unwrap()
        .to_owned();
    let exchanged = app
        .client
        .session_tickets()
        .exchange(&ticket)
        .send()
        .await
        .unwrap();
    let browser =
        tessera_client::Client::new(app.base_url.clone(), exchanged.session_token.unwrap());
    let chat = browser
        .agent()
        .create_context(Default::default())
        .send()
        .await
        .unwrap();
    let mut stream = browser.agent().stream(&chat.id).connect().await.unwrap();
    let first = browser
        .agent()
        .send_message(&chat.id, ask_user(json!({"question": "Your name?"})))
        .send()
        .await
        .unwrap();
    let run = first.run_id.unwrap();
    let seen = read_until(&mut stream, |e| {
        e.event == "run.status" && e.data["status"] == "waiting_for_input"
    })
    .await;
    assert!(seen
        .iter()
        .any(|e| e.event == "tool.started" && e.data["question"] == "Your name?"));
    let second = browser
        .agent()
        .send_message(&chat.id, "Ada")
        .send()
        .await
        .unwrap();
    assert_eq!(second.run_id.as_deref(), Some(run.as_str()), "same run");
    let after = read_until(&mut stream, |e| {
        e.event == "run.status" && e.data["status"] == "completed"
    })
    .await;
    assert!(after.iter().any(|e| e.event == "message.completed"
        && e.data["message"]["content"] == "tool ask_user returned: Ada"));
    app.stop().await;
}

async fn held_calls_with_invalid_arguments_are_refused_before_anyone_is_asked(db: &TestDatabase) {
    let app = spawn_app(db).await;
    // A PlatformEvent tool needing confirmation, and an approval rule on `notify_user`.
    let tool = app
        .post(
            "/ai/tools",
            json!({
                "name": "refund",
                "description": "asks for a refund",
                "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}},
                                 "required": ["order_id"], "additionalProperties": false},
                "requires_confirmation": true,
                "configuration": {"type": "PlatformEvent", "event_type": "order.refund"}
            }),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    pool_agent(
        &app,
        "careful",
        json!({"tool_ids": [tool], "approval_rules": [{"tool": "notify_user"}]}),
    )
    .await;
    for (call, problem) in [
        (
            "/tool refund {\"order\": 1}",
            "invalid arguments for `refund`",
        ),
        (
            "/tool notify_user {}",
            "invalid arguments for `notify_user`",
        ),
        ("/tool ask_user {}", "invalid arguments for `ask_user`"),
        (
            "/tool ask_user {\"question\": \"  \"}",
            "invalid arguments for `ask_user`",
        ),
        (
            "/tool ask_user {\"question\": \"?\", \"choices\": []}",
            "invalid arguments for `ask_user`",
        ),
    ] {
        let asked = ask(&app, "careful", call, None).await;
        assert_eq!(asked["status"], "completed", "{call}: {asked}");
        assert!(asked["pending_action"].is_null() && asked["question"].is_null());
        let content = asked["content"].as_str().unwrap();
        assert!(content.contains(problem), "{call}: {content}");
        let thread = asked["thread_id"].as_str().unwrap();
        let tool_message = messages(&app, thread)
            .await
            .into_iter()
            .find(|m| m["role"] == "tool")
            .unwrap();
        assert_eq!(tool_message["is_error"], true);
    }
    // Nothing was emitted.
    let store = tessera_store::open(&app.db_url, &tessera_store::ConnectOptions::default())
        .await
        .unwrap();
    let deployment = app.client.deployments().current().send().await.unwrap();
    let scope = tessera_domain::Scope::deployment(
        tessera_domain::DeploymentId::parse(&deployment.id).unwrap(),
    );
    let outbox = store
        .list_webhook_outbox(&scope, &tessera_store::PageRequest::default())
        .await
        .unwrap();
    assert!(outbox.items.is_empty(), "{outbox:?}");
    store.close().await;
    // Valid arguments are held as before.
    let asked = ask(&app, "careful", "/tool refund {\"order_id\": \"o1\"}", None).await;
    assert_eq!(asked["status"], "waiting_for_input", "{asked}");
    assert_eq!(asked["pending_action"]["tool"], "refund");
    let asked = ask(
        &app,
        "careful",
        "/tool notify_user {\"message\": \"hi\"}",
        None,
    )
    .await;
    assert_eq!(asked["pending_action"]["tool"], "notify_user", "{asked}");
    app.stop().await;
}

async fn a_question_survives_a_restart(db: &TestDatabase) {
    let first = spawn_app(db).await;
    pool_agent(&first, "durable", json!({})).await;
    let asked = ask(
        &first,
        "durable",
        &ask_user(json!({"question": "Colour?"})),
        None,
    )
    .await;
    assert_eq!(asked["status"], "waiting_for_input");
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    let key = first.key.clone();
    first.stop().await;

    // Another node on the same database (the first one is gone).
    // (The database has its deployment: the new node's bootstrap key is not used.)
    let mut second = spawn_app_with(db, |_| {}).await;
    second.key = key.clone();
    second.client = tessera_client::Client::new(second.base_url.clone(), key);
    let still = second
        .get(&format!(
            "/api/v1/responses/{}",
            asked["response_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(still.ok(200)["question"]["question"], "Colour?");
    let answered = ask(&second, "durable", "green", Some(&thread)).await;
    assert_eq!(answered["response_id"], asked["response_id"]);
    assert_eq!(answered["content"], "tool ask_user returned: green");
    second.stop().await;
}

async fn an_unanswered_question_expires_and_the_run_goes_on(db: &TestDatabase) {
    let app = spawn_app_with(db, |config| {
        config.sessions.action_expiry_seconds = 1;
    })
    .await;
    pool_agent(&app, "patient", json!({})).await;
    let asked = ask(
        &app,
        "patient",
        &ask_user(json!({"question": "Still there?"})),
        None,
    )
    .await;
    assert_eq!(asked["status"], "waiting_for_input");
    let done = response_in(&app, asked["response_id"].as_str().unwrap(), "completed").await;
    assert_eq!(
        done["content"],
        "tool ask_user returned: nobody answered the question before it expired"
    );
    // A message after the expiry starts a new run.
    let thread = asked["thread_id"].as_str().unwrap();
    let late = ask(&app, "patient", "yes!", Some(thread)).await;
    assert_ne!(late["response_id"], asked["response_id"]);
    assert_eq!(late["content"], "yes!");
    app.stop().await;
}

async fn cancelling_or_closing_ends_a_waiting_question(db: &TestDatabase) {
    let app = spawn_app(db).await;
    pool_agent(&app, "quitter", json!({})).await;
    // Cancelled: the run ends cancelled and the call gets that outcome.
    let asked = ask(&app, "quitter", &ask_user(json!({"question": "A?"})), None).await;
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    app.post(
        &format!("/ai/threads/{thread}/run"),
        json!({"cancel": true}),
    )
    .await
    .ok(202);
    let cancelled = response_in(&app, asked["response_id"].as_str().unwrap(), "cancelled").await;
    assert!(cancelled["question"].is_null());
    assert_eq!(
        tool_outcome(&app, &thread).await,
        "the run was cancelled before anyone answered the question"
    );

    // Closed: the same, and the session takes no answer.
    let asked = ask(&app, "quitter", &ask_user(json!({"question": "B?"})), None).await;
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    app.post(&format!("/api/v1/sessions/{thread}/close"), json!({}))
        .await
        .ok(200);
    response_in(&app, asked["response_id"].as_str().unwrap(), "cancelled").await;
    assert_eq!(
        tool_outcome(&app, &thread).await,
        "the run was cancelled before anyone answered the question"
    );
    app.post(
        "/api/v1/ask/quitter",
        json!({"content": "late answer", "thread_id": thread}),
    )
    .await
    .assert_error(409, "session_closed", None);
    app.stop().await;
}

/// The content of the thread's tool message, once there is one.
async fn tool_outcome(app: &TestApp, thread: &str) -> String {
    poll_until("the question's outcome", WAIT, || async move {
        messages(app, thread)
            .await
            .into_iter()
            .find(|m| m["role"] == "tool")
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .ok_or_else(|| "no tool message yet".to_owned())
    })
    .await
}

/// Reads events until one matches `stop` (included); panics after [`WAIT`].
async fn read_until(
    stream: &mut tessera_client::ThreadStream,
    mut stop: impl FnMut(&StreamEvent) -> bool,
) -> Vec<StreamEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("no awaited event within {WAIT:?}; got {seen:?}"));
        let event = next
            .unwrap_or_else(|| panic!("the stream ended; got {seen:?}"))
            .expect("the stream reads");
        let done = stop(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
}
