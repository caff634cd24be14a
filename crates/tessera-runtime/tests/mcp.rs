//! The MCP client against the reference server `@modelcontextprotocol/server-everything` (npm,
//! not written by us): tools listed and called over streamable HTTP and stdio, error results,
//! timeouts, the tools cache (kept, refreshed on demand, for an unknown name and after its
//! TTL), session expiry (the server restarted under the client), bearer and OAuth client
//! credentials auth (through a small authenticating proxy in front of it), and the private
//! address guard. The server's executable comes from `TESSERA_TEST_MCP_EVERYTHING`; without it
//! the tests that need it skip, unless `TESSERA_REQUIRE_MCP=1` (CI) makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tessera_runtime::mcp::{
    McpAuth, McpClient, McpError, McpPolicy, McpServerConfig, McpTransport,
};

use tessera_runtime::mcp::testing::{everything_bin, Everything};

fn local() -> McpPolicy {
    McpPolicy {
        allow_stdio: false,
        allow_private: true,
    }
}

fn http_config(url: String) -> McpServerConfig {
    McpServerConfig::new("everything", McpTransport::StreamableHttp { url })
}

#[tokio::test]
async fn tools_are_listed_and_called_over_streamable_http() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let client = McpClient::new(http_config(server.url()), local()).unwrap();
    let tools = client.tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.exposed_name.as_str()).collect();
    for expected in [
        "mcp_everything_echo",
        "mcp_everything_get-sum",
        "mcp_everything_trigger-long-running-operation",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let echo = tools.iter().find(|t| t.name == "echo").unwrap();
    assert!(
        echo.input_schema["properties"]["message"].is_object(),
        "{echo:?}"
    );
    assert!(!echo.description.is_empty());

    let out = client
        .call("mcp_everything_echo", json!({"message": "hello MCP"}))
        .await
        .unwrap();
    assert_eq!(out, Ok("Echo: hello MCP".to_owned()));
    let sum = client
        .call("mcp_everything_get-sum", json!({"a": 2, "b": 40}))
        .await
        .unwrap()
        .unwrap();
    assert!(sum.contains("42"), "{sum}");

    // Structured content comes back too (as text for the model).
    let structured = client
        .call(
            "mcp_everything_get-structured-content",
            json!({"location": "New York"}),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(structured.contains("temperature"), "{structured}");

    // Bad arguments: the server's error goes back as a tool error, not a failure.
    let bad = client
        .call("mcp_everything_get-sum", json!({"a": "two"}))
        .await
        .unwrap();
    assert!(bad.is_err(), "{bad:?}");
    // A tool the server does not have.
    let unknown = client.call("mcp_everything_nope", json!({})).await;
    assert!(
        matches!(unknown, Err(McpError::UnknownTool(_))),
        "{unknown:?}"
    );
    client.close().await;
}

#[tokio::test]
async fn a_slow_tool_times_out() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let mut config = http_config(server.url());
    config.call_timeout = Duration::from_secs(2);
    let client = McpClient::new(config, local()).unwrap();
    let out = client
        .call(
            "mcp_everything_trigger-long-running-operation",
            json!({"duration": 120, "steps": 2}),
        )
        .await;
    assert!(matches!(out, Err(McpError::Timeout(_))), "{out:?}");
    // The client is still usable afterwards.
    let echo = client
        .call("mcp_everything_echo", json!({"message": "still here"}))
        .await
        .unwrap();
    assert_eq!(echo, Ok("Echo: still here".to_owned()));
}

#[tokio::test]
async fn an_expired_session_is_initialized_again_and_the_call_retried() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let (addr, proxy) = start_proxy(server.url(), None).await;
    let client = McpClient::new(http_config(format!("http://{addr}/mcp")), local()).unwrap();
    let echo = |message: &'static str| {
        let client = &client;
        async move {
            client
                .call("mcp_everything_echo", json!({"message": message}))
                .await
                .unwrap()
        }
    };
    assert_eq!(echo("one").await, Ok("Echo: one".to_owned()));
    assert_eq!(proxy.initializes.load(Ordering::SeqCst), 1);

    // The spec's way: 404 for the session id.
    let session = proxy.session.lock().unwrap().clone().unwrap();
    proxy.expired.lock().unwrap().push(session);
    assert_eq!(echo("two").await, Ok("Echo: two".to_owned()));
    assert_eq!(
        proxy.initializes.load(Ordering::SeqCst),
        2,
        "initialized again"
    );

    // The reference server's way: restarted, it forgets every session and answers 400
    // "No valid session ID".
    let _server = server.restart().await;
    assert_eq!(echo("three").await, Ok("Echo: three".to_owned()));
    assert_eq!(
        proxy.initializes.load(Ordering::SeqCst),
        3,
        "initialized again"
    );
}

#[tokio::test]
async fn the_tool_list_is_cached_and_refreshed() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let (addr, proxy) = start_proxy(server.url(), None).await;
    let lists = || proxy.lists.load(Ordering::SeqCst);
    let client = McpClient::new(http_config(format!("http://{addr}/mcp")), local()).unwrap();
    let tools = client.tools().await.unwrap();
    for message in ["a", "b"] {
        let out = client
            .call("mcp_everything_echo", json!({"message": message}))
            .await
            .unwrap();
        assert_eq!(out, Ok(format!("Echo: {message}")));
    }
    assert_eq!(client.tools().await.unwrap(), tools);
    assert_eq!(lists(), 1, "listed once, then served from the cache");
    assert_eq!(client.refresh().await.unwrap(), tools);
    assert_eq!(lists(), 2, "refresh lists again");
    // A name the cache does not know makes the client look again before giving up.
    let unknown = client.call("mcp_everything_added-later", json!({})).await;
    assert!(
        matches!(unknown, Err(McpError::UnknownTool(_))),
        "{unknown:?}"
    );
    assert_eq!(lists(), 3);
    client.close().await;

    // Past its TTL the cache is listed again.
    let mut config = http_config(format!("http://{addr}/mcp"));
    config.tools_ttl = Duration::ZERO;
    let client = McpClient::new(config, local()).unwrap();
    client.tools().await.unwrap();
    client.tools().await.unwrap();
    assert_eq!(lists(), 5);
    client.close().await;
}

#[tokio::test]
async fn stdio_servers_run_only_when_the_operator_allows_them() {
    let transport = McpTransport::Stdio {
        command: "/usr/bin/true".into(),
        args: Vec::new(),
        env: Default::default(),
    };
    let refused = McpClient::new(McpServerConfig::new("s", transport), McpPolicy::default());
    assert!(
        matches!(refused, Err(McpError::StdioDisabled)),
        "{refused:?}"
    );

    let Some(bin) = everything_bin() else {
        return;
    };
    let transport = McpTransport::Stdio {
        command: bin,
        args: vec!["stdio".into()],
        env: Default::default(),
    };
    let policy = McpPolicy {
        allow_stdio: true,
        allow_private: false,
    };
    let client = McpClient::new(McpServerConfig::new("ev", transport), policy).unwrap();
    let out = client
        .call("mcp_ev_echo", json!({"message": "over stdio"}))
        .await
        .unwrap();
    assert_eq!(out, Ok("Echo: over stdio".to_owned()));
    client.close().await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    // Something listening on loopback, so a refusal is the guard's, not a dead port's.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{port}/mcp"),
        format!("http://localhost:{port}/mcp"),
        "http://169.254.169.254/mcp".to_owned(),
    ] {
        let client = McpClient::new(http_config(url.clone()), McpPolicy::default()).unwrap();
        let err = client.tools().await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("private"), "{url}: {text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Auth, through a proxy that checks the token and forwards to server-everything.

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    /// The token the proxy accepts now (`None`: no auth).
    valid: Mutex<Option<String>>,
    /// Tokens issued by `/token` so far.
    issued: AtomicUsize,
    /// `initialize` requests forwarded so far.
    initializes: AtomicUsize,
    /// `tools/list` requests forwarded so far.
    lists: AtomicUsize,
    /// The last session id the server handed out.
    session: Mutex<Option<String>>,
    /// Sessions the proxy answers 404 for, as a server does for an expired session.
    expired: Mutex<Vec<String>>,
}

async fn proxy_mcp(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    let expected = proxy
        .valid
        .lock()
        .unwrap()
        .clone()
        .map(|t| format!("Bearer {t}"));
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if expected.is_some() && given != expected {
        return (StatusCode::UNAUTHORIZED, "bad token").into_response();
    }
    let session = request
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if session.is_some_and(|s| proxy.expired.lock().unwrap().contains(&s)) {
        return (StatusCode::NOT_FOUND, "session expired").into_response();
    }
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).unwrap();
    let mut forward = proxy.http.request(method, &proxy.upstream);
    for name in [
        "content-type",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    ] {
        if let Some(value) = request.headers().get(name) {
            forward = forward.header(name, value.as_bytes());
        }
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    if String::from_utf8_lossy(&body).contains("\"method\":\"initialize\"") {
        proxy.initializes.fetch_add(1, Ordering::SeqCst);
    }
    if String::from_utf8_lossy(&body).contains("\"method\":\"tools/list\"") {
        proxy.lists.fetch_add(1, Ordering::SeqCst);
    }
    let upstream = forward.body(body).send().await.unwrap();
    if let Some(id) = upstream.headers().get("mcp-session-id") {
        *proxy.session.lock().unwrap() = Some(id.to_str().unwrap().to_owned());
    }
    let mut response = Response::builder().status(upstream.status().as_u16());
    for (name, value) in upstream.headers() {
        if matches!(name.as_str(), "content-type" | "mcp-session-id") {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response
        .body(Body::from_stream(upstream.bytes_stream()))
        .unwrap()
}

async fn token(State(proxy): State<Arc<Proxy>>, body: axum::body::Bytes) -> Response {
    let form: std::collections::HashMap<String, String> =
        url::form_urlencoded::parse(&body).into_owned().collect();
    let ok = form.get("grant_type").map(String::as_str) == Some("client_credentials")
        && form.get("client_id").map(String::as_str) == Some("tessera")
        && form.get("client_secret").map(String::as_str) == Some("s3cret");
    if !ok {
        return (StatusCode::UNAUTHORIZED, "bad client").into_response();
    }
    let n = proxy.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let value = format!("token-{n}");
    *proxy.valid.lock().unwrap() = Some(value.clone());
    axum::Json(json!({"access_token": value, "token_type": "Bearer", "expires_in": 3600}))
        .into_response()
}

async fn start_proxy(upstream: String, valid: Option<&str>) -> (SocketAddr, Arc<Proxy>) {
    let proxy = Arc::new(Proxy {
        upstream,
        http: reqwest::Client::new(),
        valid: Mutex::new(valid.map(str::to_owned)),
        issued: AtomicUsize::new(0),
        initializes: AtomicUsize::new(0),
        lists: AtomicUsize::new(0),
        session: Mutex::new(None),
        expired: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/mcp", axum::routing::any(proxy_mcp))
        .route("/token", axum::routing::post(token))
        .with_state(proxy.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, proxy)
}

#[tokio::test]
async fn bearer_tokens_are_sent_and_a_wrong_one_is_refused() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let (addr, _proxy) = start_proxy(server.url(), Some("static-token")).await;
    let url = format!("http://{addr}/mcp");

    let mut config = http_config(url.clone());
    config.auth = McpAuth::Bearer {
        token: "static-token".into(),
    };
    let client = McpClient::new(config, local()).unwrap();
    let out = client
        .call("mcp_everything_echo", json!({"message": "authorized"}))
        .await
        .unwrap();
    assert_eq!(out, Ok("Echo: authorized".to_owned()));

    let mut config = http_config(url);
    config.auth = McpAuth::Bearer {
        token: "wrong".into(),
    };
    let client = McpClient::new(config, local()).unwrap();
    let err = client.tools().await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn oauth_client_credentials_fetch_cache_and_refresh_on_401() {
    let Some(bin) = everything_bin() else {
        return;
    };
    let server = Everything::on_free_port(&bin).await;
    let (addr, proxy) = start_proxy(server.url(), Some("none-yet")).await;
    let mut config = http_config(format!("http://{addr}/mcp"));
    config.auth = McpAuth::OauthClientCredentials {
        token_url: format!("http://{addr}/token"),
        client_id: "tessera".into(),
        client_secret: "s3cret".into(),
        scope: Some("tools".into()),
        audience: None,
    };
    let client = McpClient::new(config, local()).unwrap();
    for message in ["a", "b"] {
        let out = client
            .call("mcp_everything_echo", json!({"message": message}))
            .await
            .unwrap();
        assert_eq!(out, Ok(format!("Echo: {message}")));
    }
    assert_eq!(
        proxy.issued.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    // The provider revokes the token: the next request gets a 401, and the client fetches a
    // new token and sends again.
    *proxy.valid.lock().unwrap() = Some("revoked".into());
    let out = client
        .call("mcp_everything_echo", json!({"message": "c"}))
        .await
        .unwrap();
    assert_eq!(out, Ok("Echo: c".to_owned()));
    assert_eq!(proxy.issued.load(Ordering::SeqCst), 2);
}
