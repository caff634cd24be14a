//! Third-party toolkits (`Virtual` tools) against a local toolkit provider speaking the
//! protocol of docs/toolkits.md: enabling (idempotent, checked with the provider), connecting
//! (pending with the provider's redirect URL, connected once the end user authorized),
//! disconnecting and disabling (accounts revoked), and runs on the echo model: a toolkit's
//! tools are unknown before the actor authorized and reach the provider with the actor's
//! connected account after; invalid arguments never reach it; confirmation applies (cancelled:
//! never runs; confirmed: runs once); no provider configured; other deployments see nothing.
//! And a toolkit tool called by the scripted model server (a real streamed tool call), its
//! result reaching the model's next request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::models::{
    ConnectToolkitRequest, EnableToolkitRequest, ToolkitConnectionStatus,
};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{poll_until, spawn_app, spawn_app_with, unknown_id, TestApp};

backend_tests!(
    toolkits_are_enabled_connected_and_disabled,
    toolkit_tools_surface_once_the_actor_authorized,
    toolkit_calls_wait_for_confirmation_when_the_toolkit_requires_it,
    toolkits_need_a_provider_and_stay_in_their_deployment,
    a_streamed_model_call_reaches_the_toolkit_provider,
);

const WAIT: Duration = Duration::from_secs(20);
/// The environment variable the test servers read the provider's key from.
const KEY_ENV: &str = "TOOLKIT_TEST_PROVIDER_KEY";
const KEY: &str = "tkp-test-key-0123456789";

#[derive(Debug, Clone)]
struct Account {
    toolkit: String,
    user_id: String,
    status: String,
    redirect_url: Option<String>,
}

#[derive(Debug, Clone)]
struct Execution {
    tool: String,
    account: String,
    user_id: String,
    arguments: Value,
}

#[derive(Default)]
struct ProviderState {
    addr: Option<SocketAddr>,
    accounts: HashMap<String, Account>,
    executions: Vec<Execution>,
    deleted: Vec<String>,
    created: u32,
    /// Requests without the right bearer key.
    unauthorized: u32,
}

type Shared = Arc<Mutex<ProviderState>>;

/// A toolkit provider on 127.0.0.1:0 with toolkits `github` (tools `create_issue` and
/// `issues.fail`, which always fails) and `slack` (tool `post`). `GET /authorize/{id}` is what
/// the end user's browser opens: it marks the account connected.
struct Provider {
    addr: SocketAddr,
    state: Shared,
}

impl Provider {
    async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: Shared = Arc::default();
        state.lock().unwrap().addr = Some(addr);
        let app = axum::Router::new()
            .route("/v1/toolkits/{slug}", get(toolkit))
            .route("/v1/toolkits/{slug}/tools", get(tools))
            .route("/v1/connected_accounts", post(create_account))
            .route(
                "/v1/connected_accounts/{id}",
                get(get_account).delete(delete_account),
            )
            .route("/v1/tools/{tool}/execute", post(execute))
            .route("/authorize/{id}", get(authorize))
            .with_state(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Provider { addr, state }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn executions(&self) -> Vec<Execution> {
        self.state.lock().unwrap().executions.clone()
    }

    fn account(&self, id: &str) -> Option<Account> {
        self.state.lock().unwrap().accounts.get(id).cloned()
    }

    fn deleted(&self) -> Vec<String> {
        self.state.lock().unwrap().deleted.clone()
    }

    fn unauthorized(&self) -> u32 {
        self.state.lock().unwrap().unauthorized
    }

    /// The end user opens the redirect URL and authorizes.
    async fn authorize(&self, redirect_url: &str) {
        let r = reqwest::get(redirect_url).await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

fn authorized(state: &Shared, headers: &HeaderMap) -> bool {
    let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {KEY}"));
    if !ok {
        state.lock().unwrap().unauthorized += 1;
    }
    ok
}

fn denied() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": "bad key"})),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "not found"})),
    )
        .into_response()
}

async fn toolkit(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(slug): Path<String>,
) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    match slug.as_str() {
        "github" => {
            axum::Json(json!({"slug": "github", "name": "GitHub", "description": "Issues"}))
                .into_response()
        }
        "slack" => axum::Json(json!({"slug": "slack", "name": "Slack"})).into_response(),
        _ => not_found(),
    }
}

async fn tools(State(s): State<Shared>, headers: HeaderMap, Path(slug): Path<String>) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    let tools = match slug.as_str() {
        "github" => json!([
            {"name": "create_issue", "description": "Opens an issue", "input_schema": {
                "type": "object",
                "properties": {"title": {"type": "string", "minLength": 1}, "body": {"type": "string"}},
                "required": ["title"],
                "additionalProperties": false
            }},
            {"name": "issues.fail", "description": "Always fails", "input_schema": {"type": "object"}},
            {"name": "broken", "description": "Its schema is not an object's", "input_schema": {"type": "string"}}
        ]),
        "slack" => json!([
            {"name": "post", "description": "Posts a message", "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
        ]),
        _ => return not_found(),
    };
    axum::Json(json!({"tools": tools})).into_response()
}

async fn create_account(
    State(s): State<Shared>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    let mut state = s.lock().unwrap();
    state.created += 1;
    let id = format!("ca_{}", state.created);
    let addr = state.addr.unwrap();
    let account = Account {
        toolkit: body["toolkit"].as_str().unwrap().to_owned(),
        user_id: body["user_id"].as_str().unwrap().to_owned(),
        status: "pending".into(),
        redirect_url: body["redirect_url"].as_str().map(str::to_owned),
    };
    state.accounts.insert(id.clone(), account);
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "status": "pending", "redirect_url": format!("http://{addr}/authorize/{id}")})),
    )
        .into_response()
}

async fn get_account(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    match s.lock().unwrap().accounts.get(&id) {
        Some(a) => axum::Json(json!({"id": id, "status": a.status})).into_response(),
        None => not_found(),
    }
}

async fn delete_account(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    let mut state = s.lock().unwrap();
    state.accounts.remove(&id);
    state.deleted.push(id);
    StatusCode::NO_CONTENT.into_response()
}

async fn execute(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(tool): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if !authorized(&s, &headers) {
        return denied();
    }
    let mut state = s.lock().unwrap();
    let account = body["connected_account_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let Some(a) = state.accounts.get(&account).cloned() else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "no such account"})),
        )
            .into_response();
    };
    if a.status != "connected" {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(json!({"error": "account not authorized"})),
        )
            .into_response();
    }
    state.executions.push(Execution {
        tool: tool.clone(),
        account: account.clone(),
        user_id: body["user_id"].as_str().unwrap_or_default().to_owned(),
        arguments: body["arguments"].clone(),
    });
    if tool == "issues.fail" {
        return axum::Json(json!({"error": "GitHub said no"})).into_response();
    }
    axum::Json(json!({"result": {"issue": 42, "title": body["arguments"]["title"], "account": account, "toolkit": a.toolkit}}))
        .into_response()
}

async fn authorize(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    match s.lock().unwrap().accounts.get_mut(&id) {
        Some(a) => {
            a.status = "connected".into();
            "authorized".into_response()
        }
        None => not_found(),
    }
}

async fn start(db: &TestDatabase, provider: &Provider) -> TestApp {
    start_with(db, provider, |_| {}).await
}

/// Like [`start`], after `customize` adjusted the configuration further.
async fn start_with(
    db: &TestDatabase,
    provider: &Provider,
    customize: impl FnOnce(&mut tessera_server::Config),
) -> TestApp {
    static KEY_SET: std::sync::Once = std::sync::Once::new();
    KEY_SET.call_once(|| std::env::set_var(KEY_ENV, KEY));
    let base = provider.base_url();
    spawn_app_with(db, move |config| {
        config.toolkits.base_url = Some(base);
        config.toolkits.api_key_env = Some(KEY_ENV.to_owned());
        customize(config);
    })
    .await
}

async fn enable(app: &TestApp, body: Value) -> Value {
    let r = app.post("/ai/toolkits", body).await;
    assert!(r.status == 201 || r.status == 200, "{}", r.text);
    r.body.clone()
}

/// A pool agent on the echo model (it attaches no tool records).
async fn pool_agent(app: &TestApp, slug: &str) {
    app.post(
        "/ai/agents",
        json!({"name": slug, "model": {"provider": "echo", "model": "echo"}, "endpoint_slug": slug}),
    )
    .await
    .ok(201);
}

/// The actor of a pool's sessions (created by its first ask).
async fn pool_actor(app: &TestApp, slug: &str) -> String {
    let r = app
        .get(&format!(
            "/ai/actors/lookup?subject_type=pool&external_key={slug}"
        ))
        .await;
    r.ok(200)["actor"]["id"].as_str().unwrap().to_owned()
}

/// Asks the pool to call `name` with `args`; returns the ask's answer and the tool message.
async fn call(app: &TestApp, slug: &str, name: &str, args: Value) -> (Value, Value) {
    let asked = app
        .post(
            &format!("/api/v1/ask/{slug}"),
            json!({"content": format!("/tool {name} {args}")}),
        )
        .await;
    let asked = asked.ok(200).clone();
    let thread = asked["thread_id"].as_str().unwrap().to_owned();
    let message = tool_message(app, &thread).await;
    (asked, message)
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

/// Connects the actor and lets the end user authorize at the provider.
async fn connect_and_authorize(
    app: &TestApp,
    provider: &Provider,
    actor: &str,
    toolkit: &str,
) -> String {
    let r = app
        .post(
            &format!("/ai/actors/{actor}/toolkits/{toolkit}/connect"),
            json!({}),
        )
        .await;
    let c = r.ok(201).clone();
    assert_eq!(c["status"], "pending", "{c}");
    provider
        .authorize(c["redirect_url"].as_str().unwrap())
        .await;
    c["connection_id"].as_str().unwrap().to_owned()
}

async fn toolkits_are_enabled_connected_and_disabled(db: &TestDatabase) {
    let provider = Provider::start().await;
    let app = start(db, &provider).await;

    // Enabling checks the slug, the limits and the provider's catalogue.
    app.post("/ai/toolkits", json!({"toolkit": "Git Hub"}))
        .await
        .assert_error(422, "validation_failed", Some("toolkit"));
    app.post("/ai/toolkits", json!({"toolkit": "jira"}))
        .await
        .assert_error(422, "validation_failed", Some("toolkit"));
    app.post(
        "/ai/toolkits",
        json!({"toolkit": "github", "timeout_seconds": 0}),
    )
    .await
    .assert_error(422, "validation_failed", Some("timeout_seconds"));
    app.post("/ai/toolkits", json!({"toolkit": "github", "extra": 1}))
        .await
        .assert_error(422, "validation_failed", Some("extra"));

    let created = app.post("/ai/toolkits", json!({"toolkit": "github"})).await;
    let created = created.ok(201);
    assert_eq!(created["toolkit"], "github");
    assert_eq!(created["name"], "GitHub");
    assert_eq!(created["requires_confirmation"], false);
    // Enabling again is idempotent and replaces the settings (through the SDK).
    let again = app
        .client
        .ai()
        .toolkits()
        .enable_toolkit(EnableToolkitRequest {
            toolkit: "github".into(),
            timeout_seconds: Some(20),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(again.timeout_seconds, Some(20));
    assert_eq!(again.created_at, created["created_at"].as_str().unwrap());
    enable(&app, json!({"toolkit": "slack"})).await;
    let listed = app
        .client
        .ai()
        .toolkits()
        .list_toolkits()
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed
            .data
            .iter()
            .map(|t| t.toolkit.as_str())
            .collect::<Vec<_>>(),
        vec!["github", "slack"]
    );
    assert_eq!(provider.unauthorized(), 0, "the provider's key was sent");

    // The actor connects: pending, with the provider's URL for the end user.
    let actor = app.actor("u1").await.id;
    let before = app
        .client
        .ai()
        .toolkits()
        .list_actor_toolkits(&actor)
        .send()
        .await
        .unwrap();
    assert!(before
        .data
        .iter()
        .all(|t| t.status == ToolkitConnectionStatus::NotConnected && t.connection_id.is_none()));
    app.post(
        &format!("/ai/actors/{actor}/toolkits/github/connect"),
        json!({"redirect_url": "not a url"}),
    )
    .await
    .assert_error(422, "validation_failed", Some("redirect_url"));
    app.post(
        &format!("/ai/actors/{actor}/toolkits/jira/connect"),
        json!({}),
    )
    .await
    .assert_error(404, "toolkit_not_found", None);
    app.post(
        &format!("/ai/actors/{}/toolkits/github/connect", unknown_id("actor")),
        json!({}),
    )
    .await
    .assert_error(404, "actor_not_found", None);

    let connection = app
        .client
        .ai()
        .toolkits()
        .connect_actor_toolkit(
            &actor,
            "github",
            ConnectToolkitRequest {
                redirect_url: Some("https://app.example.com/connected".into()),
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(connection.status, ToolkitConnectionStatus::Pending);
    assert!(connection.connection_id.starts_with("conn_"));
    assert_eq!(connection.actor_id, actor);
    let redirect = connection.redirect_url.clone().unwrap();
    assert_eq!(redirect, format!("http://{}/authorize/ca_1", provider.addr));
    let account = provider.account("ca_1").unwrap();
    assert_eq!(
        account.user_id, actor,
        "the external user id is the actor id"
    );
    assert_eq!(account.toolkit, "github");
    assert_eq!(
        account.redirect_url.as_deref(),
        Some("https://app.example.com/connected")
    );

    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    let github = listed.ok(200)["data"][0].clone();
    assert_eq!(github["toolkit"], "github");
    assert_eq!(github["status"], "pending");
    assert_eq!(github["redirect_url"], redirect.as_str());
    assert_eq!(listed.body["data"][1]["status"], "not_connected");

    // The end user authorizes at the provider; the next listing shows it.
    provider.authorize(&redirect).await;
    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    let github = listed.ok(200)["data"][0].clone();
    assert_eq!(github["status"], "connected", "{github}");
    assert_eq!(github["redirect_url"], Value::Null);
    assert_eq!(github["connection_id"], connection.connection_id.as_str());

    // Connecting a connected actor again changes nothing.
    let same = app
        .post(
            &format!("/ai/actors/{actor}/toolkits/github/connect"),
            json!({}),
        )
        .await;
    assert_eq!(
        same.ok(200)["connection_id"],
        connection.connection_id.as_str()
    );
    assert_eq!(same.body["status"], "connected");

    // Disconnecting removes the connection and revokes the account.
    let gone = app
        .client
        .ai()
        .toolkits()
        .disconnect_actor_toolkit(&actor, "github")
        .send()
        .await
        .unwrap();
    assert!(gone.removed);
    assert_eq!(gone.status, ToolkitConnectionStatus::NotConnected);
    let again = app
        .call(
            Method::DELETE,
            &format!("/ai/actors/{actor}/toolkits/github"),
            None,
        )
        .await;
    assert_eq!(again.ok(200)["removed"], false);
    poll_until("the account's revocation", WAIT, || async {
        if provider.deleted() == vec!["ca_1".to_owned()] {
            Ok(())
        } else {
            Err(format!("{:?}", provider.deleted()))
        }
    })
    .await;

    // A connection expired at the provider is reported so, and connecting replaces it.
    let second = connect_and_authorize(&app, &provider, &actor, "slack").await;
    provider.state.lock().unwrap().accounts.remove("ca_2");
    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    assert_eq!(listed.ok(200)["data"][1]["status"], "expired");
    let third = app
        .post(
            &format!("/ai/actors/{actor}/toolkits/slack/connect"),
            json!({}),
        )
        .await;
    assert_ne!(third.ok(201)["connection_id"], second.as_str());
    assert_eq!(third.body["status"], "pending");

    // Disabling removes the actors' connections with the toolkit.
    let disabled = app
        .client
        .ai()
        .toolkits()
        .disable_toolkit("slack")
        .send()
        .await
        .unwrap();
    assert!(disabled.disabled);
    assert_eq!(disabled.connections_removed, 1);
    app.call(Method::DELETE, "/ai/toolkits/slack", None)
        .await
        .assert_error(404, "toolkit_not_found", None);
    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    assert_eq!(listed.ok(200)["data"].as_array().unwrap().len(), 1);
    poll_until(
        "the disabled toolkit's account revocation",
        WAIT,
        || async {
            if provider.deleted().contains(&"ca_3".to_owned()) {
                Ok(())
            } else {
                Err(format!("{:?}", provider.deleted()))
            }
        },
    )
    .await;
    app.stop().await;
}

async fn toolkit_tools_surface_once_the_actor_authorized(db: &TestDatabase) {
    let provider = Provider::start().await;
    let app = start(db, &provider).await;
    enable(&app, json!({"toolkit": "github"})).await;
    pool_agent(&app, "kit").await;

    // Not connected: the toolkit's tools are not offered, so the call is an unknown tool.
    let (_, m) = call(&app, "kit", "tk_github_create_issue", json!({"title": "t"})).await;
    assert_eq!(m["is_error"], true, "{m}");
    assert!(
        m["content"].as_str().unwrap().contains("unknown tool"),
        "{m}"
    );
    let actor = pool_actor(&app, "kit").await;

    // Pending (not yet authorized): still nothing.
    let r = app
        .post(
            &format!("/ai/actors/{actor}/toolkits/github/connect"),
            json!({}),
        )
        .await;
    let redirect = r.ok(201)["redirect_url"].as_str().unwrap().to_owned();
    let (_, m) = call(&app, "kit", "tk_github_create_issue", json!({"title": "t"})).await;
    assert!(
        m["content"].as_str().unwrap().contains("unknown tool"),
        "{m}"
    );
    assert!(provider.executions().is_empty());

    // Authorized: the call reaches the provider with the actor's connected account.
    provider.authorize(&redirect).await;
    let (_, m) = call(
        &app,
        "kit",
        "tk_github_create_issue",
        json!({"title": "Broken build"}),
    )
    .await;
    assert_eq!(m["is_error"], false, "{m}");
    let result: Value = serde_json::from_str(m["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        result,
        json!({"issue": 42, "title": "Broken build", "account": "ca_1", "toolkit": "github"})
    );
    let executions = provider.executions();
    assert_eq!(executions.len(), 1);
    assert_eq!(executions[0].tool, "create_issue");
    assert_eq!(executions[0].account, "ca_1");
    assert_eq!(executions[0].user_id, actor);
    assert_eq!(executions[0].arguments, json!({"title": "Broken build"}));
    // The status was refreshed from the provider when the run started.
    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    assert_eq!(listed.ok(200)["data"][0]["status"], "connected");

    // Arguments are checked against the tool's schema before anything runs.
    let (_, m) = call(&app, "kit", "tk_github_create_issue", json!({"title": 7})).await;
    assert_eq!(m["is_error"], true);
    assert!(
        m["content"].as_str().unwrap().contains("invalid arguments"),
        "{m}"
    );
    assert_eq!(
        provider.executions().len(),
        1,
        "nothing reached the provider"
    );

    // The tool's own failure goes back to the model; a name made model-safe still maps back.
    let failing = tessera_domain::toolkit::exposed_name(
        &tessera_domain::toolkit::ToolkitSlug::parse("t", "github").unwrap(),
        "issues.fail",
    );
    let (_, m) = call(&app, "kit", &failing, json!({})).await;
    assert_eq!(m["is_error"], true);
    assert_eq!(m["content"], "GitHub said no");
    assert_eq!(provider.executions()[1].tool, "issues.fail");
    // A tool whose schema is unusable is not offered.
    let (_, m) = call(&app, "kit", "tk_github_broken", json!({})).await;
    assert!(
        m["content"].as_str().unwrap().contains("unknown tool"),
        "{m}"
    );

    // Disconnected: the tools are gone again.
    app.call(
        Method::DELETE,
        &format!("/ai/actors/{actor}/toolkits/github"),
        None,
    )
    .await
    .ok(200);
    let (_, m) = call(&app, "kit", "tk_github_create_issue", json!({"title": "t"})).await;
    assert!(
        m["content"].as_str().unwrap().contains("unknown tool"),
        "{m}"
    );
    assert_eq!(provider.executions().len(), 2);
    app.stop().await;
}

async fn toolkit_calls_wait_for_confirmation_when_the_toolkit_requires_it(db: &TestDatabase) {
    let provider = Provider::start().await;
    let app = start(db, &provider).await;
    enable(
        &app,
        json!({"toolkit": "github", "requires_confirmation": true, "confirmation_expires_in_seconds": 3600}),
    )
    .await;
    pool_agent(&app, "careful").await;
    // The first ask creates the pool's actor.
    call(
        &app,
        "careful",
        "tk_github_create_issue",
        json!({"title": "t"}),
    )
    .await;
    let actor = pool_actor(&app, "careful").await;
    connect_and_authorize(&app, &provider, &actor, "github").await;

    // Cancelled: it never reaches the provider, and the model is told.
    let asked = app
        .post(
            "/api/v1/ask/careful",
            json!({"content": "/tool tk_github_create_issue {\"title\": \"Needs a no\"}"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "waiting_for_input", "{asked}");
    let thread = asked["thread_id"].as_str().unwrap();
    let action = asked["pending_action"]["action_id"].as_str().unwrap();
    let cancelled = app
        .post(
            &format!("/api/v1/sessions/{thread}/actions/{action}"),
            json!({"confirmed": false}),
        )
        .await;
    assert_eq!(cancelled.ok(200)["status"], "cancelled");
    let done =
        crate::sessions::wait_response(&app, asked["response_id"].as_str().unwrap(), "completed")
            .await;
    assert!(
        done["content"]
            .as_str()
            .unwrap()
            .contains("cancelled this action"),
        "{done}"
    );
    assert!(
        provider.executions().is_empty(),
        "a cancelled call never runs"
    );

    let asked = app
        .post(
            "/api/v1/ask/careful",
            json!({"content": "/tool tk_github_create_issue {\"title\": \"Needs a yes\"}"}),
        )
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "waiting_for_input", "{asked}");
    let pending = &asked["pending_action"];
    assert_eq!(pending["tool"], "tk_github_create_issue");
    let expires =
        tessera_domain::Timestamp::parse_rfc3339(pending["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.as_millis() - tessera_domain::Timestamp::now().as_millis();
    assert!(left > 1800 * 1000, "the toolkit's hour: {left} ms");
    assert!(provider.executions().is_empty(), "nothing ran yet");

    let thread = asked["thread_id"].as_str().unwrap();
    let action = pending["action_id"].as_str().unwrap();
    app.post(
        &format!("/api/v1/sessions/{thread}/actions/{action}"),
        json!({"confirmed": true}),
    )
    .await
    .ok(202);
    let m = tool_message(&app, thread).await;
    assert_eq!(m["is_error"], false, "{m}");
    assert_eq!(provider.executions().len(), 1, "ran exactly once");
    assert_eq!(provider.executions()[0].arguments["title"], "Needs a yes");
    app.stop().await;
}

async fn toolkits_need_a_provider_and_stay_in_their_deployment(db: &TestDatabase) {
    // Without [toolkits] nothing can be enabled or connected; listing still answers.
    let bare = spawn_app(db).await;
    bare.post("/ai/toolkits", json!({"toolkit": "github"}))
        .await
        .assert_error(409, "toolkits_not_configured", None);
    assert_eq!(bare.get("/ai/toolkits").await.ok(200)["data"], json!([]));
    let actor = bare.actor("u1").await.id;
    assert_eq!(
        bare.get(&format!("/ai/actors/{actor}/toolkits"))
            .await
            .ok(200)["data"],
        json!([])
    );
    bare.post(
        &format!("/ai/actors/{actor}/toolkits/github/connect"),
        json!({}),
    )
    .await
    .assert_error(404, "toolkit_not_found", None);
    let key = bare.key.clone();
    bare.stop().await;

    // The same database under a server with a provider (the first server's key stays valid).
    let provider = Provider::start().await;
    let mut app = start(db, &provider).await;
    app.client = app.client_with(&key);
    app.key = key;
    enable(&app, json!({"toolkit": "github"})).await;
    let actor = app.actor("u2").await.id;
    connect_and_authorize(&app, &provider, &actor, "github").await;

    let other = app.create_deployment("other").await;
    let theirs = other.client.ai().toolkits();
    assert!(theirs.list_toolkits().send().await.unwrap().data.is_empty());
    let err = theirs.list_actor_toolkits(&actor).send().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ActorNotFound),
        "{err}"
    );
    let err = theirs
        .connect_actor_toolkit(&actor, "github", ConnectToolkitRequest::default())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ActorNotFound),
        "{err}"
    );
    let err = theirs
        .disconnect_actor_toolkit(&actor, "github")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ActorNotFound),
        "{err}"
    );
    let err = theirs.disable_toolkit("github").send().await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ToolkitNotFound),
        "{err}"
    );
    // Their own actor cannot connect a toolkit only my deployment enabled.
    let their_actor = other
        .client
        .ai()
        .actors()
        .create_actor(crate::helpers::actor_request("user", "u3"))
        .send()
        .await
        .unwrap()
        .id;
    let err = theirs
        .connect_actor_toolkit(&their_actor, "github", ConnectToolkitRequest::default())
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ToolkitNotFound),
        "{err}"
    );
    // Mine is untouched.
    let listed = app.get(&format!("/ai/actors/{actor}/toolkits")).await;
    assert_eq!(listed.ok(200)["data"][0]["status"], "connected");
    app.stop().await;
}

/// The scripted model server (a real OpenAI-compatible stream) calls a toolkit tool: the call
/// reaches the provider with the actor's connected account, and the provider's result is in
/// the model's next request, answering the call.
async fn a_streamed_model_call_reaches_the_toolkit_provider(db: &TestDatabase) {
    use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
    let provider = Provider::start().await;
    let model = ScriptedModelServer::start().await;
    let scripted = model.provider_config();
    let app = start_with(db, &provider, |config| {
        config.providers.insert("scripted".into(), scripted);
    })
    .await;
    enable(&app, json!({"toolkit": "github"})).await;
    app.post(
        "/ai/agents",
        json!({"name": "kit", "model": {"provider": "scripted", "model": "scripted-model"},
            "endpoint_slug": "kit"}),
    )
    .await
    .ok(201);
    // The first ask creates the pool's actor, who then authorizes the toolkit.
    model.push(Script::text(["Hello."]));
    app.post("/api/v1/ask/kit", json!({"content": "hi"}))
        .await
        .ok(200);
    let actor = pool_actor(&app, "kit").await;
    connect_and_authorize(&app, &provider, &actor, "github").await;

    model.push_all([
        Script::tool_call("tk_github_create_issue", json!({"title": "Flaky test"})),
        Script::text(["Opened ", "issue 42."]),
    ]);
    let asked = app
        .post("/api/v1/ask/kit", json!({"content": "Open an issue"}))
        .await;
    let asked = asked.ok(200).clone();
    assert_eq!(asked["status"], "completed", "{asked}");
    assert_eq!(asked["content"], "Opened issue 42.");

    let executions = provider.executions();
    assert_eq!(executions.len(), 1, "{executions:?}");
    assert_eq!(executions[0].tool, "create_issue");
    assert_eq!(executions[0].user_id, actor);
    assert_eq!(executions[0].arguments, json!({"title": "Flaky test"}));

    let requests = model.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let offered: Vec<&str> = requests[1].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert!(offered.contains(&"tk_github_create_issue"), "{offered:?}");
    let messages = requests[2].body["messages"].as_array().unwrap().clone();
    let call = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "assistant")
        .unwrap()["tool_calls"][0]
        .clone();
    assert_eq!(call["function"]["name"], "tk_github_create_issue");
    let result = messages.last().unwrap();
    assert_eq!(result["role"], "tool", "{result}");
    assert_eq!(result["tool_call_id"], call["id"]);
    let content: Value = serde_json::from_str(result["content"].as_str().unwrap()).unwrap();
    assert_eq!(
        content,
        json!({"issue": 42, "title": "Flaky test", "account": executions[0].account, "toolkit": "github"})
    );
    app.stop().await;
}
