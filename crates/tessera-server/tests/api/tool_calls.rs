//! Tool records executed by the real driver (echo model, `/tool NAME {json}`, through the pool
//! endpoint): `Api` tools against a local HTTP server (URL, query, body, static headers, every
//! auth, actor tokens verified with the JWKS, invalid arguments, the response cap, per-tool
//! timeouts, confirmation), SSRF refusals without the allow-list (literal addresses, a name
//! resolving to loopback, a redirect), `PlatformEvent`, `CodeRunner` and `Mcp` tools. Also,
//! with the scripted model server (`ScriptedModelServer`) as the model: one streamed turn
//! calling a tool of every variant (its effects, and every result in the next model request);
//! and the confirmation flow (cancel: never runs; confirm: runs once) for every variant.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{poll_until, spawn_app_with, TestApp};

backend_tests!(
    api_tools_fill_the_url_query_body_headers_and_auth,
    invalid_arguments_go_back_to_the_model_and_nothing_runs,
    actor_tokens_verify_against_the_jwks,
    internal_targets_are_refused_without_the_allow_list,
    responses_are_capped_and_calls_time_out_per_tool,
    a_tool_requiring_confirmation_waits_with_its_own_expiry,
    platform_event_tools_store_stream_and_queue_events,
    code_runner_tools_run_their_code_in_the_sandbox,
    mcp_records_offer_their_servers_tools,
    every_variant_runs_from_one_streamed_model_turn,
    every_variant_waits_for_confirmation_and_runs_once_or_never,
    a_name_resolving_to_an_internal_address_is_refused,
);

const WAIT: Duration = Duration::from_secs(20);

/// What the target server saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: String,
}

/// A local HTTP server tools call: `/echo/…` answers what it saw, `/big` 64 KiB, `/slow`
/// after 30 s, `/to-local` redirects to `http://127.0.0.1:PORT/echo/redirected`, `/fail` 500.
struct Target {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Target {
    async fn start() -> Target {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state((seen.clone(), addr));
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Target { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(
    State((seen, addr)): State<(Arc<Mutex<Vec<Seen>>>, SocketAddr)>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let entry = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    seen.lock().unwrap().push(entry.clone());
    let path = parts.uri.path();
    if path == "/big" {
        return "x".repeat(64 * 1024).into_response();
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return "late".into_response();
    }
    if path == "/fail" {
        return (StatusCode::INTERNAL_SERVER_ERROR, "upstream broke").into_response();
    }
    if path == "/to-local" {
        return (
            StatusCode::FOUND,
            [(
                "location",
                format!("http://127.0.0.1:{}/echo/redirected", addr.port()),
            )],
        )
            .into_response();
    }
    let header = |name: &str| {
        entry
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    axum::Json(json!({
        "method": entry.method,
        "uri": entry.uri,
        "authorization": header("authorization"),
        "x_static": header("x-static"),
        "x_api_key": header("x-api-key"),
        "body": entry.body,
    }))
    .into_response()
}

async fn start(db: &TestDatabase, allow: &[&str]) -> TestApp {
    let allow: Vec<String> = allow.iter().map(|s| (*s).to_owned()).collect();
    spawn_app_with(db, move |config| {
        config.tools.allow_hosts = allow;
    })
    .await
}

async fn tool(app: &TestApp, body: Value) -> String {
    let r = app.post("/ai/tools", body).await;
    r.ok(201)["id"].as_str().unwrap().to_owned()
}

/// A pool agent on the echo model with these tools.
async fn agent(app: &TestApp, slug: &str, tool_ids: &[&str]) {
    app.post(
        "/ai/agents",
        json!({"name": slug, "model": {"provider": "echo", "model": "echo"}, "endpoint_slug": slug, "tool_ids": tool_ids}),
    )
    .await
    .ok(201);
}

/// Asks the pool agent to call `name` with `args`; returns the thread and the tool's message.
async fn call(app: &TestApp, slug: &str, name: &str, args: Value) -> (String, Value) {
    let asked = app
        .post(
            &format!("/api/v1/ask/{slug}"),
            json!({"content": format!("/tool {name} {args}")}),
        )
        .await;
    let asked = asked.ok(200).clone();
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    let message = tool_message(app, &thread).await;
    (thread, message)
}

async fn tool_message(app: &TestApp, thread: &str) -> Value {
    poll_until("the tool's result", WAIT, || async move {
        let messages = app
            .get(&format!("/ai/threads/{thread}/messages?limit=100"))
            .await;
        messages.ok(200)["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == "tool")
            .cloned()
            .ok_or_else(|| messages.text.clone())
    })
    .await
}

fn api_tool(name: &str, url: &str, method: &str, auth: Value) -> Value {
    json!({
        "name": name,
        "description": "calls the test server",
        "input_schema": {
            "type": "object",
            "properties": {
                "order_id": {"type": "string"},
                "verbose": {"type": "boolean"},
                "note": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["order_id"],
            "additionalProperties": false
        },
        "configuration": {
            "type": "Api",
            "url": url,
            "method": method,
            "headers": {"X-Static": "static-value"},
            "auth": auth
        }
    })
}

fn result_json(message: &Value) -> Value {
    assert_eq!(message["is_error"], false, "{message}");
    serde_json::from_str(message["content"].as_str().unwrap()).unwrap()
}

async fn api_tools_fill_the_url_query_body_headers_and_auth(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &["127.0.0.1"]).await;
    let get = tool(
        &app,
        api_tool(
            "get_order",
            &target.url("/echo/orders/{order_id}"),
            "GET",
            json!({"type": "bearer", "token": "tok-123"}),
        ),
    )
    .await;
    let mut post_body = api_tool(
        "add_note",
        &target.url("/echo/orders/{order_id}/notes"),
        "POST",
        json!({"type": "basic", "username": "svc", "password": "pw-456"}),
    );
    post_body["configuration"]["query_params"] = json!(["verbose"]);
    let post = tool(&app, post_body).await;
    let keyed = tool(
        &app,
        api_tool(
            "keyed",
            &target.url("/echo/k/{order_id}"),
            "DELETE",
            json!({"type": "header", "name": "X-Api-Key", "value": "key-789"}),
        ),
    )
    .await;
    agent(&app, "ops", &[&get, &post, &keyed]).await;

    let (_, m) = call(
        &app,
        "ops",
        "get_order",
        json!({"order_id": "a/b c?#", "verbose": true, "tags": ["x", "y"]}),
    )
    .await;
    let seen = result_json(&m);
    assert_eq!(seen["method"], "GET");
    assert_eq!(
        seen["uri"], "/echo/orders/a%2Fb%20c%3F%23?verbose=true&tags=x&tags=y",
        "the placeholder is escaped; the other arguments are the query"
    );
    assert_eq!(seen["authorization"], "Bearer tok-123");
    assert_eq!(seen["x_static"], "static-value");

    let (_, m) = call(
        &app,
        "ops",
        "add_note",
        json!({"order_id": "o1", "verbose": false, "note": "hello"}),
    )
    .await;
    let seen = result_json(&m);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/echo/orders/o1/notes?verbose=false");
    assert_eq!(
        serde_json::from_str::<Value>(seen["body"].as_str().unwrap()).unwrap(),
        json!({"note": "hello"})
    );
    // base64("svc:pw-456")
    assert_eq!(seen["authorization"], "Basic c3ZjOnB3LTQ1Ng==");

    let (_, m) = call(&app, "ops", "keyed", json!({"order_id": "z"})).await;
    let seen = result_json(&m);
    assert_eq!(seen["method"], "DELETE");
    assert_eq!(seen["x_api_key"], "key-789");
    assert_eq!(seen["authorization"], Value::Null);

    // An upstream error is the tool's error, with the status.
    let failing = tool(
        &app,
        api_tool(
            "failing",
            &target.url("/fail?o={order_id}"),
            "GET",
            json!({"type": "none"}),
        ),
    )
    .await;
    agent(&app, "failing", &[&failing]).await;
    let (_, m) = call(&app, "failing", "failing", json!({"order_id": "1"})).await;
    assert_eq!(m["is_error"], true);
    assert!(
        m["content"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 500: upstream broke"),
        "{m}"
    );
    app.stop().await;
}

async fn invalid_arguments_go_back_to_the_model_and_nothing_runs(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &["127.0.0.1"]).await;
    let get = tool(
        &app,
        api_tool(
            "get_order",
            &target.url("/echo/{order_id}"),
            "GET",
            json!({"type": "none"}),
        ),
    )
    .await;
    agent(&app, "strict", &[&get]).await;
    for args in [
        json!({"verbose": true}),
        json!({"order_id": 5}),
        json!({"order_id": "x", "extra": 1}),
    ] {
        let (thread, m) = call(&app, "strict", "get_order", args.clone()).await;
        assert_eq!(m["is_error"], true, "{args}: {m}");
        let content = m["content"].as_str().unwrap();
        assert!(content.contains("invalid arguments"), "{content}");
        assert!(content.contains("did not run"), "{content}");
        // The model saw the error and answered with it.
        let messages = app
            .get(&format!("/ai/threads/{thread}/messages?limit=100"))
            .await;
        let last = messages.ok(200)["data"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .clone();
        assert!(
            last["content"]
                .as_str()
                .unwrap()
                .contains("invalid arguments"),
            "{last}"
        );
    }
    assert!(target.seen().is_empty(), "{:?}", target.seen());
    app.stop().await;
}

async fn actor_tokens_verify_against_the_jwks(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &["127.0.0.1"]).await;
    let id = tool(
        &app,
        api_tool(
            "whoami",
            &target.url("/echo/me/{order_id}"),
            "GET",
            json!({"type": "actor_token"}),
        ),
    )
    .await;
    agent(&app, "tokened", &[&id]).await;
    let (thread, m) = call(&app, "tokened", "whoami", json!({"order_id": "1"})).await;
    let seen = result_json(&m);
    let token = seen["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();

    let jwks = app.get("/.well-known/jwks.json").await;
    let kid = tessera_domain::token::token_kid(&token).unwrap();
    let jwk = jwks.ok(200)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .cloned()
        .expect("the token's key is published");
    use base64::Engine as _;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(jwk["x"].as_str().unwrap())
        .unwrap();
    let key: [u8; 32] = x.try_into().unwrap();
    let claims =
        tessera_domain::token::verify_signature(&token, &key).expect("the signature verifies");
    let thread_body = app.get(&format!("/ai/threads/{thread}")).await;
    let thread_body = thread_body.ok(200).clone();
    let project = app
        .get(&format!(
            "/ai/actor-projects/{}",
            thread_body["project_id"].as_str().unwrap()
        ))
        .await;
    let actor_id = project.ok(200)["actor_id"].as_str().unwrap().to_owned();
    assert_eq!(claims["sub"], actor_id.as_str());
    assert_eq!(claims["thread_id"], thread.as_str());
    assert_eq!(claims["tool_id"], id.as_str());
    assert_eq!(claims["iss"], app.base_url.as_str());
    assert_eq!(
        claims["aud"],
        format!("http://127.0.0.1:{}", target.addr.port())
    );
    assert!(claims["exp"].as_i64().unwrap() > claims["iat"].as_i64().unwrap());
    assert!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap() <= 300);
    // A tampered token does not verify.
    let mut forged = token.clone();
    forged.pop();
    forged.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert!(tessera_domain::token::verify_signature(&forged, &key).is_err());
    app.stop().await;
}

async fn internal_targets_are_refused_without_the_allow_list(db: &TestDatabase) {
    let target = Target::start().await;
    let port = target.addr.port();
    // Only `localhost` is allowed: its redirect to 127.0.0.1 is a new, refused target.
    let app = start(db, &["localhost"]).await;
    let targets = [
        (
            "loopback",
            format!("http://127.0.0.1:{port}/echo/{{order_id}}"),
        ),
        (
            "loopback6",
            format!("http://[::1]:{port}/echo/{{order_id}}"),
        ),
        ("private", "http://10.0.0.1/{order_id}".to_owned()),
        (
            "metadata",
            "http://169.254.169.254/latest/meta-data/{order_id}".to_owned(),
        ),
        (
            "mapped",
            format!("http://[::ffff:127.0.0.1]:{port}/echo/{{order_id}}"),
        ),
        (
            "redirect",
            format!("http://localhost:{port}/to-local?o={{order_id}}"),
        ),
    ];
    let mut ids = Vec::new();
    for (name, url) in &targets {
        ids.push(tool(&app, api_tool(name, url, "GET", json!({"type": "none"}))).await);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    agent(&app, "guarded", &refs).await;
    for (name, _) in &targets {
        let (_, m) = call(&app, "guarded", name, json!({"order_id": "1"})).await;
        assert_eq!(m["is_error"], true, "{name}: {m}");
        assert!(
            m["content"].as_str().unwrap().contains("refused"),
            "{name}: {m}"
        );
    }
    // The only request that reached the target is the allowed first hop of the redirect.
    let seen: Vec<String> = target.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, vec!["/to-local?o=1".to_owned()]);
    app.stop().await;
}

async fn responses_are_capped_and_calls_time_out_per_tool(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &["127.0.0.1"]).await;
    let mut big = api_tool(
        "big",
        &target.url("/big?o={order_id}"),
        "GET",
        json!({"type": "none"}),
    );
    big["configuration"]["max_response_bytes"] = json!(1000);
    let big = tool(&app, big).await;
    let mut slow = api_tool(
        "slow",
        &target.url("/slow?o={order_id}"),
        "GET",
        json!({"type": "none"}),
    );
    slow["timeout_seconds"] = json!(1);
    let slow = tool(&app, slow).await;
    agent(&app, "limits", &[&big, &slow]).await;
    let (_, m) = call(&app, "limits", "big", json!({"order_id": "1"})).await;
    assert_eq!(m["is_error"], true);
    assert!(
        m["content"]
            .as_str()
            .unwrap()
            .contains("larger than 1000 bytes"),
        "{m}"
    );
    let asked = app
        .post(
            "/api/v1/ask/limits",
            json!({"content": "/tool slow {\"order_id\": \"1\"}"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    let m = tool_message(&app, asked["thread_id"].as_str().unwrap()).await;
    assert_eq!(m["is_error"], true);
    let timeout = "the tool `slow` did not finish within 1 seconds";
    assert_eq!(
        m["content"], timeout,
        "the tool's own timeout, not the server's 60 s: {m}"
    );
    // A call over its timeout ends the run, with the timeout as its reason.
    assert_eq!(asked["status"], "failed", "{asked}");
    assert_eq!(asked["error"], timeout, "{asked}");
    let run = asked["response_id"]
        .as_str()
        .unwrap()
        .replacen("resp_", "run_", 1);
    let run = app
        .get(&format!(
            "/ai/threads/{}/runs/{run}",
            asked["thread_id"].as_str().unwrap()
        ))
        .await;
    let run = run.ok(200);
    assert_eq!(run["stop_reason"], "tool_timeout", "{run}");
    assert_eq!(run["error"], timeout, "{run}");
    app.stop().await;
}

async fn a_tool_requiring_confirmation_waits_with_its_own_expiry(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &["127.0.0.1"]).await;
    let mut body = api_tool(
        "charge",
        &target.url("/echo/charge/{order_id}"),
        "POST",
        json!({"type": "none"}),
    );
    body["requires_confirmation"] = json!(true);
    body["confirmation_expires_in_seconds"] = json!(3600);
    let id = tool(&app, body).await;
    agent(&app, "careful", &[&id]).await;
    let asked = app
        .post(
            "/api/v1/ask/careful",
            json!({"content": "/tool charge {\"order_id\": \"o9\"}"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "waiting_for_input", "{asked}");
    let pending = &asked["pending_action"];
    assert_eq!(pending["tool"], "charge");
    let expires =
        tessera_domain::Timestamp::parse_rfc3339(pending["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.as_millis() - tessera_domain::Timestamp::now().as_millis();
    assert!(
        left > 1800 * 1000,
        "the tool's one hour, not the default ten minutes: {left} ms"
    );
    assert!(
        target.seen().is_empty(),
        "nothing ran before the confirmation"
    );
    let thread = asked["thread_id"].as_str().unwrap();
    let action = pending["action_id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/sessions/{thread}/actions/{action}"),
        json!({"confirmed": true}),
    )
    .await
    .ok(202);
    let m = tool_message(&app, thread).await;
    assert_eq!(result_json(&m)["uri"], "/echo/charge/o9");
    assert_eq!(target.seen().len(), 1, "ran exactly once");
    app.stop().await;
}

async fn platform_event_tools_store_stream_and_queue_events(db: &TestDatabase) {
    let app = start(db, &[]).await;
    let id = tool(
        &app,
        json!({
            "name": "request_refund",
            "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
            "configuration": {"type": "PlatformEvent", "event_type": "order.refund_requested"}
        }),
    )
    .await;
    agent(&app, "events", &[&id]).await;
    let (thread, m) = call(&app, "events", "request_refund", json!({"order_id": "o-7"})).await;
    let result = result_json(&m);
    assert_eq!(result["type"], "order.refund_requested");
    assert_eq!(result["status"], "emitted");
    let event_id = result["event_id"].as_str().unwrap().to_owned();

    // Streamed on the thread (replayed from storage).
    let mut stream = app
        .client
        .ai()
        .threads()
        .stream(&thread)
        .connect()
        .await
        .unwrap();
    let mut found = None;
    while let Ok(Some(Ok(event))) =
        tokio::time::timeout(Duration::from_millis(500), stream.next()).await
    {
        if event.event == "platform.event" {
            found = Some(event.data.clone());
        }
    }
    let data = found.expect("a platform.event on the stream");
    assert_eq!(data["event"]["id"], event_id.as_str());
    assert_eq!(data["event"]["payload"], json!({"order_id": "o-7"}));
    assert_eq!(data["event"]["thread_id"], thread.as_str());

    // Queued for the webhook app.
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
    assert_eq!(outbox.items.len(), 1);
    assert_eq!(outbox.items[0].event_id.as_str(), event_id);
    assert_eq!(outbox.items[0].status, "pending");
    store.close().await;
    app.stop().await;
}

/// A CodeRunner tool runs its fixed code with the model's arguments as JSON on stdin, under
/// its own limits. Skipped without bubblewrap unless `TESSERA_REQUIRE_SANDBOX=1`.
async fn code_runner_tools_run_their_code_in_the_sandbox(db: &TestDatabase) {
    if tessera_runtime::sandbox::sandbox_for_tests()
        .await
        .is_none()
    {
        return;
    }
    let app = start(db, &[]).await;
    let sum = tool(
        &app,
        json!({"name": "sum", "configuration": {"type": "CodeRunner", "language": "python",
            "code": "import json, sys\nprint(sum(json.load(sys.stdin)[\"numbers\"]))"}}),
    )
    .await;
    let slow = tool(
        &app,
        json!({"name": "slow", "configuration": {"type": "CodeRunner", "language": "bash",
            "code": "sleep 30", "limits": {"wall_seconds": 1}}}),
    )
    .await;
    agent(&app, "code", &[&sum, &slow]).await;

    let (_, m) = call(&app, "code", "sum", json!({"numbers": [1, 2, 39]})).await;
    assert_eq!(m["is_error"], false, "{m}");
    let out: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
    assert_eq!(out["exit_code"], 0, "{out}");
    assert_eq!(out["stdout"], "42\n", "{out}");

    // The tool's own wall-clock limit (1 s, under the operator's) ends it.
    let (_, m) = call(&app, "code", "slow", json!({})).await;
    let out: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
    assert_eq!(out["limit"], "wall_clock", "{out}");
    app.stop().await;
}

/// An `Mcp` record offers its server's tools as `mcp_{slug}_{tool}`; calls reach the real
/// reference server (`TESSERA_TEST_MCP_EVERYTHING`; skipped without it unless
/// `TESSERA_REQUIRE_MCP=1`). The test allows private targets (`mcp.allow_private`) to reach it.
async fn mcp_records_offer_their_servers_tools(db: &TestDatabase) {
    use tessera_runtime::mcp::testing::{everything_bin, Everything};
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let app = spawn_app_with(db, |config| config.mcp.allow_private = true).await;
    let mcp = tool(
        &app,
        json!({"name": "everything", "configuration": {"type": "Mcp", "slug": "ev",
            "transport": "streamable_http", "url": server.url(), "auth": {"type": "none"}}}),
    )
    .await;
    agent(&app, "mcp", &[&mcp]).await;

    let (_, m) = call(&app, "mcp", "mcp_ev_echo", json!({"message": "hello MCP"})).await;
    assert_eq!(m["is_error"], false, "{m}");
    assert_eq!(m["content"], "Echo: hello MCP");
    let (_, m) = call(&app, "mcp", "mcp_ev_get-sum", json!({"a": 2, "b": 40})).await;
    assert!(m["content"].as_str().unwrap().contains("42"), "{m}");
    // The record itself is not a tool the model can call.
    let (_, m) = call(&app, "mcp", "everything", json!({})).await;
    assert_eq!(m["is_error"], true, "{m}");

    // A server tool over its record's timeout ends the run (`tool_timeout`), like any tool:
    // the MCP client's own limit does not answer first with an error for the model.
    let slow = tool(
        &app,
        json!({"name": "slow_server", "timeout_seconds": 1, "configuration": {"type": "Mcp",
            "slug": "sl", "transport": "streamable_http", "url": server.url(),
            "auth": {"type": "none"}}}),
    )
    .await;
    agent(&app, "mcp-slow", &[&slow]).await;
    let asked = app
        .post(
            "/api/v1/ask/mcp-slow",
            json!({"content": "/tool mcp_sl_trigger-long-running-operation {\"duration\": 30, \"steps\": 2}"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    let timeout =
        "the tool `mcp_sl_trigger-long-running-operation` did not finish within 1 seconds";
    assert_eq!(asked["status"], "failed", "{asked}");
    assert_eq!(asked["error"], timeout, "{asked}");
    let m = tool_message(&app, asked["thread_id"].as_str().unwrap()).await;
    assert_eq!(m["content"], timeout, "{m}");

    app.stop().await;
}

/// The ids of the platform events queued for the webhook app.
async fn queued_events(app: &TestApp) -> Vec<String> {
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
    store.close().await;
    outbox
        .items
        .iter()
        .map(|i| i.event_id.as_str().to_owned())
        .collect()
}

/// The thread's tool messages, oldest first.
async fn tool_messages(app: &TestApp, thread: &str) -> Vec<Value> {
    app.get(&format!("/ai/threads/{thread}/messages?limit=100"))
        .await
        .ok(200)["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .cloned()
        .collect()
}

/// A `CodeRunner` tool whose python code GETs `/echo/code/{order_id}` of the target (so that
/// the target counts its runs) and prints the answer.
fn code_runner_calling(name: &str, target: &Target) -> Value {
    json!({
        "name": name,
        "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}},
            "required": ["order_id"]},
        "configuration": {"type": "CodeRunner", "language": "python", "network": true,
            "code": format!(
                "import json, sys, urllib.request\n\
                 order = json.load(sys.stdin)[\"order_id\"]\n\
                 print(urllib.request.urlopen(\"{}\" + order).read().decode())",
                target.url("/echo/code/")
            )}
    })
}

/// One turn of the scripted model calls a tool of each variant at once: an `Api` tool, a
/// `PlatformEvent` tool, the internal `notify_user`, and (when bubblewrap and the MCP reference
/// server are present) a `CodeRunner` tool and an MCP server's tool. Each has its effect, and
/// every result reaches the model's next request, answering its call. (`Virtual` tools have
/// the same test in toolkits.rs, with the toolkit provider.)
async fn every_variant_runs_from_one_streamed_model_turn(db: &TestDatabase) {
    use tessera_runtime::mcp::testing::{everything_bin, Everything};
    use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
    let target = Target::start().await;
    let model = ScriptedModelServer::start().await;
    let scripted = model.provider_config();
    let mcp_server = match everything_bin() {
        Some(bin) => Some(Everything::on_free_port(&bin).await),
        None => None,
    };
    let app = spawn_app_with(db, |config| {
        config.tools.allow_hosts = vec!["127.0.0.1".to_owned()];
        config.mcp.allow_private = true;
        config.providers.insert("scripted".into(), scripted);
    })
    .await;
    let mut ids = vec![
        tool(
            &app,
            api_tool(
                "get_order",
                &target.url("/echo/orders/{order_id}"),
                "GET",
                json!({"type": "bearer", "token": "tok-123"}),
            ),
        )
        .await,
        tool(
            &app,
            json!({"name": "request_refund",
                "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                "configuration": {"type": "PlatformEvent", "event_type": "order.refund_requested"}}),
        )
        .await,
    ];
    // (name, arguments, what its result contains)
    let mut calls: Vec<(&str, Value, String)> = vec![
        (
            "get_order",
            json!({"order_id": "o-1", "verbose": true}),
            "/echo/orders/o-1?verbose=true".to_owned(),
        ),
        (
            "request_refund",
            json!({"order_id": "o-1"}),
            "\"status\":\"emitted\"".to_owned(),
        ),
        (
            "notify_user",
            json!({"message": "on it"}),
            "the user was notified".to_owned(),
        ),
    ];
    let sandboxed = tessera_runtime::sandbox::sandbox_for_tests()
        .await
        .is_some();
    if sandboxed {
        ids.push(tool(&app, code_runner_calling("run_code", &target)).await);
        calls.push((
            "run_code",
            json!({"order_id": "o-2"}),
            "/echo/code/o-2".to_owned(),
        ));
    }
    if let Some(server) = &mcp_server {
        ids.push(
            tool(
                &app,
                json!({"name": "everything", "configuration": {"type": "Mcp", "slug": "ev",
                    "transport": "streamable_http", "url": server.url(), "auth": {"type": "none"}}}),
            )
            .await,
        );
        calls.push((
            "mcp_ev_echo",
            json!({"message": "hello MCP"}),
            "Echo: hello MCP".to_owned(),
        ));
    }
    app.post(
        "/ai/agents",
        json!({"name": "mixed", "model": {"provider": "scripted", "model": "scripted-model"},
            "endpoint_slug": "mixed", "tool_ids": ids}),
    )
    .await
    .ok(201);
    model.push_all([
        Script::tool_calls(calls.iter().map(|(n, a, _)| (*n, a.clone()))),
        Script::text(["All ", "done."]),
    ]);

    let asked = app
        .post(
            "/api/v1/ask/mixed",
            json!({"content": "Sort out order o-1"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "completed", "{asked}");
    assert_eq!(asked["content"], "All done.");
    let thread = asked["thread_id"].as_str().unwrap();

    // The model was offered every tool.
    let requests = model.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    let offered: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    for (name, _, _) in &calls {
        assert!(offered.contains(name), "{name} not in {offered:?}");
    }

    // Each call's effect.
    let seen: Vec<Seen> = target.seen();
    let api: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.uri.starts_with("/echo/orders/"))
        .collect();
    assert_eq!(api.len(), 1, "{seen:?}");
    assert_eq!(api[0].uri, "/echo/orders/o-1?verbose=true");
    assert_eq!(
        api[0].headers.get("authorization").unwrap(),
        "Bearer tok-123"
    );
    let events = queued_events(&app).await;
    assert_eq!(events.len(), 1, "one platform event queued");
    if sandboxed {
        assert_eq!(
            seen.iter().filter(|s| s.uri == "/echo/code/o-2").count(),
            1,
            "the code ran once: {seen:?}"
        );
    }
    let stored = tool_messages(&app, thread).await;
    assert_eq!(stored.len(), calls.len(), "{stored:?}");
    assert!(stored.iter().all(|m| m["is_error"] == false), "{stored:?}");

    // The next request carries the turn's calls and every result, each after its call.
    let second = &requests[1].body;
    let messages = second["messages"].as_array().unwrap();
    let assistant = messages
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("the tool-call turn");
    let turn = assistant["tool_calls"].as_array().unwrap();
    assert_eq!(turn.len(), calls.len(), "{assistant}");
    for (name, arguments, expected) in &calls {
        let call = turn
            .iter()
            .find(|c| c["function"]["name"] == *name)
            .unwrap_or_else(|| panic!("{name} not in {assistant}"));
        let sent: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(&sent, arguments, "{name}");
        let result = messages
            .iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == call["id"])
            .unwrap_or_else(|| panic!("no result for {name} in {second}"));
        let content = result["content"].as_str().unwrap();
        assert!(
            content.contains(expected.as_str()),
            "{name}: {content} lacks {expected}"
        );
    }
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    let mut expected_roles = vec!["system", "user", "assistant"];
    expected_roles.extend(std::iter::repeat_n("tool", calls.len()));
    assert_eq!(roles, expected_roles);
    assert_eq!(model.remaining(), 0);
    app.stop().await;
}

/// Every variant honours `requires_confirmation`: the call waits as a pending action and
/// nothing runs; cancelled, it never runs and the model is told; confirmed, it runs exactly
/// once. (`Virtual` tools: toolkits.rs; the internal tools through approval rules:
/// sessions.rs.) The effects are counted where the tool acts: the target server for `Api` and
/// `CodeRunner` (whose code calls it), the webhook queue for `PlatformEvent`; for the MCP
/// reference server's `echo`, which has no effect to observe, the results the model got.
async fn every_variant_waits_for_confirmation_and_runs_once_or_never(db: &TestDatabase) {
    use tessera_runtime::mcp::testing::{everything_bin, Everything};
    let target = Target::start().await;
    let mcp_server = match everything_bin() {
        Some(bin) => Some(Everything::on_free_port(&bin).await),
        None => None,
    };
    let app = spawn_app_with(db, |config| {
        config.tools.allow_hosts = vec!["127.0.0.1".to_owned()];
        config.mcp.allow_private = true;
    })
    .await;
    let gated = |mut body: Value| {
        body["requires_confirmation"] = json!(true);
        body
    };
    let mut ids = vec![
        tool(
            &app,
            gated(api_tool(
                "charge",
                &target.url("/echo/charge/{order_id}"),
                "POST",
                json!({"type": "none"}),
            )),
        )
        .await,
        tool(
            &app,
            gated(json!({"name": "refund",
                "input_schema": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                "configuration": {"type": "PlatformEvent", "event_type": "order.refunded"}})),
        )
        .await,
    ];
    let mut names = vec!["charge", "refund"];
    if tessera_runtime::sandbox::sandbox_for_tests()
        .await
        .is_some()
    {
        ids.push(tool(&app, gated(code_runner_calling("run_code", &target))).await);
        names.push("run_code");
    }
    if let Some(server) = &mcp_server {
        ids.push(
            tool(
                &app,
                gated(
                    json!({"name": "everything", "configuration": {"type": "Mcp",
                    "slug": "ev", "transport": "streamable_http", "url": server.url(),
                    "auth": {"type": "none"}}}),
                ),
            )
            .await,
        );
        names.push("mcp_ev_echo");
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    agent(&app, "careful", &refs).await;

    for name in names {
        let args = if name == "mcp_ev_echo" {
            json!({"message": "o-1"})
        } else {
            json!({"order_id": "o-1"})
        };
        // Cancelled: it never runs, and the model hears so.
        let asked = ask_for_confirmation(&app, name, &args).await;
        let thread = asked["thread_id"].as_str().unwrap().to_owned();
        let action = asked["pending_action"]["action_id"].as_str().unwrap();
        assert_eq!(
            runs(&app, &target, name, &thread).await,
            0,
            "{name}: nothing ran while waiting"
        );
        let cancelled = app
            .post(
                &format!("/api/v1/sessions/{thread}/actions/{action}"),
                json!({"confirmed": false}),
            )
            .await;
        assert_eq!(cancelled.ok(200)["status"], "cancelled", "{name}");
        let done = crate::sessions::wait_response(
            &app,
            asked["response_id"].as_str().unwrap(),
            "completed",
        )
        .await;
        assert!(
            done["content"]
                .as_str()
                .unwrap()
                .contains("cancelled this action"),
            "{name}: {done}"
        );
        assert_eq!(
            runs(&app, &target, name, &thread).await,
            0,
            "{name}: a cancelled call never runs"
        );

        // Confirmed: it runs, once.
        let asked = ask_for_confirmation(&app, name, &args).await;
        let thread = asked["thread_id"].as_str().unwrap().to_owned();
        let action = asked["pending_action"]["action_id"].as_str().unwrap();
        assert_eq!(
            runs(&app, &target, name, &thread).await,
            0,
            "{name}: nothing ran while waiting"
        );
        app.post(
            &format!("/api/v1/sessions/{thread}/actions/{action}"),
            json!({"confirmed": true}),
        )
        .await
        .ok(202);
        let done = crate::sessions::wait_response(
            &app,
            asked["response_id"].as_str().unwrap(),
            "completed",
        )
        .await;
        let results = tool_messages(&app, &thread).await;
        assert_eq!(results.len(), 1, "{name}: {results:?}");
        assert_eq!(results[0]["is_error"], false, "{name}: {results:?}");
        assert!(
            done["content"]
                .as_str()
                .unwrap()
                .starts_with(&format!("tool {name} returned: ")),
            "{name}: {done}"
        );
        assert_eq!(
            runs(&app, &target, name, &thread).await,
            1,
            "{name}: ran exactly once"
        );
    }
    app.stop().await;
}

/// Asks the `careful` pool to call `name`; the call waits for a confirmation.
async fn ask_for_confirmation(app: &TestApp, name: &str, args: &Value) -> Value {
    let asked = app
        .post(
            "/api/v1/ask/careful",
            json!({"content": format!("/tool {name} {args}")}),
        )
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "waiting_for_input", "{name}: {asked}");
    assert_eq!(asked["pending_action"]["tool"], name);
    assert_eq!(&asked["pending_action"]["preview"], args);
    asked
}

/// How many times the confirmation test's tool `name` ran, counted where it acts.
async fn runs(app: &TestApp, target: &Target, name: &str, thread: &str) -> usize {
    let at_target = |uri: &str| target.seen().iter().filter(|s| s.uri == uri).count();
    match name {
        "charge" => at_target("/echo/charge/o-1"),
        "run_code" => at_target("/echo/code/o-1"),
        "refund" => queued_events(app).await.len(),
        _ => tool_messages(app, thread)
            .await
            .iter()
            .filter(|m| m["content"] == "Echo: o-1")
            .count(),
    }
}

/// The SSRF guard checks the addresses a name resolves to: `localhost` (not allow-listed here)
/// is loopback, so the call is refused and nothing reaches the server listening there.
async fn a_name_resolving_to_an_internal_address_is_refused(db: &TestDatabase) {
    let target = Target::start().await;
    let app = start(db, &[]).await;
    let id = tool(
        &app,
        api_tool(
            "named",
            &format!("http://localhost:{}/echo/{{order_id}}", target.addr.port()),
            "GET",
            json!({"type": "none"}),
        ),
    )
    .await;
    agent(&app, "named", &[&id]).await;
    let (_, m) = call(&app, "named", "named", json!({"order_id": "1"})).await;
    assert_eq!(m["is_error"], true, "{m}");
    let content = m["content"].as_str().unwrap();
    assert!(
        content.contains("refused: localhost resolves to"),
        "{content}"
    );
    assert!(target.seen().is_empty(), "{:?}", target.seen());
    app.stop().await;
}
