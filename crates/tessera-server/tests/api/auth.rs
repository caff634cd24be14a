//! Authentication: every backend operation needs `Authorization: Bearer tsk_…`; anything else
//! is a 401 `unauthorized` with `WWW-Authenticate: Bearer`. (The browser operations of signed-in
//! users authenticate differently: see `identity.rs`.)

use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::json;
use tessera_client::api::ops;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{fresh_key, send, spawn_app, unknown_id, Resp, TestApp};

backend_tests!(
    every_operation_requires_a_key,
    unknown_and_malformed_credentials_are_refused,
    x_api_key_is_refused_outside_api_v1,
    public_endpoints_need_no_key,
);

#[track_caller]
fn assert_unauthorized(resp: &Resp, what: &str) {
    assert_eq!(
        resp.status, 401,
        "{what}: expected 401, got {}: {}",
        resp.status, resp.text
    );
    resp.assert_error(401, "unauthorized", None);
    let challenge = resp.header("www-authenticate").unwrap_or_else(|| {
        panic!(
            "{what}: a 401 carries WWW-Authenticate, headers: {:?}",
            resp.headers
        )
    });
    assert!(
        challenge.to_ascii_lowercase().starts_with("bearer"),
        "{what}: WWW-Authenticate is a Bearer challenge, got {challenge:?}"
    );
}

/// The path of `op` with every placeholder filled by a well-formed id nobody has.
/// The path of `op` with every placeholder filled by a well-formed id nobody has (a made-up
/// one for kinds this suite does not know, so that operations added later are covered too).
fn sample_path(op: &ops::Operation) -> String {
    let filled: Vec<(&str, String)> = op
        .path_params()
        .into_iter()
        .map(|name| {
            let value = match name {
                "actor_id" => unknown_id("actor"),
                "agent_id" => unknown_id("agent"),
                "project_id" => unknown_id("proj"),
                "key_id" => unknown_id("key"),
                other => format!("{}_{}", other.trim_end_matches("_id"), "0".repeat(26)),
            };
            (name, value)
        })
        .collect();
    op.fill_path(|name| {
        filled
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    })
    .unwrap()
}

fn with_body(op: &ops::Operation, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    match op.method {
        "POST" | "PATCH" | "PUT" => request.json(&json!({})),
        _ => request,
    }
}

/// Operations that authenticate a signed-in user (session cookie or user token), an agent
/// session, a console admin or nobody, not a deployment secret key; `identity.rs` and
/// `tickets.rs` test them.
const USER_OPERATIONS: &[&str] = &[
    "signIn",
    "signOut",
    "getMe",
    "setActiveOrganization",
    "getJwks",
    "exchangeSessionTicket",
    "consoleSignIn",
    "consoleSignOut",
    "createSessionTicket",
    "getAgentSession",
    "listAgentContexts",
    "createAgentContext",
    "updateAgentContext",
    "deleteAgentContext",
    "listAgentContextMessages",
    "sendAgentContextMessage",
    "cancelAgentContext",
    "resolveAgentContextAction",
    "streamAgentContext",
];

async fn every_operation_requires_a_key(db: &TestDatabase) {
    let app = spawn_app(db).await;
    assert!(!ops::ALL.is_empty());
    for op in ops::ALL
        .iter()
        .filter(|op| !USER_OPERATIONS.contains(&op.id))
    {
        let path = sample_path(op);
        let method = Method::from_bytes(op.method.as_bytes()).unwrap();
        let anonymous = send(with_body(op, app.anonymous(method.clone(), &path))).await;
        assert_unauthorized(&anonymous, &format!("{} {path} without a key", op.id));

        // Control: the same request with the key gets past authentication.
        let keyed = send(with_body(op, app.request(method, &path))).await;
        assert_ne!(
            keyed.status, 401,
            "{} {path} with a valid key: {}",
            op.id, keyed.text
        );
    }
    app.stop().await;
}

async fn unknown_and_malformed_credentials_are_refused(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let key = app.key.clone();
    let values: Vec<(String, HeaderValue)> = [
        format!("Bearer {}", fresh_key()),
        String::new(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        key.clone(),
        format!("Token {key}"),
        format!("Basic {key}"),
        "Basic dXNlcjpwYXNzd29yZA==".to_owned(),
        format!("Bearer {key}x"),
        format!("Bearer {key} {key}"),
        format!("Bearer {}", &key[..12]),
        format!("Bearer {}", &key[..key.len() - 1]),
        "Bearer tsk_short".to_owned(),
        format!("Bearer {}", key.to_uppercase()),
        format!("Bearer {}", "a".repeat(8000)),
    ]
    .into_iter()
    .map(|v| (v.clone(), HeaderValue::from_str(&v).unwrap()))
    .chain([(
        "non-UTF-8 bytes".to_owned(),
        HeaderValue::from_bytes(b"Bearer tsk_\xff\xfe\xfd").unwrap(),
    )])
    .collect();

    for path in ["/ai/actors", "/deployments/current", "/secret-keys"] {
        for (label, value) in &values {
            let resp = send(
                app.anonymous(Method::GET, path)
                    .header("authorization", value.clone()),
            )
            .await;
            let shown: String = label.chars().take(40).collect();
            assert_unauthorized(&resp, &format!("GET {path} with Authorization {shown:?}"));
        }
    }

    // Control: the well-formed key is accepted.
    let ok = send(app.anonymous(Method::GET, "/ai/actors").bearer_auth(&key)).await;
    ok.ok(200);
    app.stop().await;
}

async fn x_api_key_is_refused_outside_api_v1(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for (method, path) in [
        (Method::GET, "/ai/actors"),
        (Method::GET, "/ai/agents"),
        (Method::GET, "/deployments/current"),
        (Method::GET, "/secret-keys"),
    ] {
        let resp = send(
            app.anonymous(method.clone(), path)
                .header("x-api-key", &app.key),
        )
        .await;
        assert_unauthorized(&resp, &format!("{method} {path} with X-API-Key"));
    }
    let resp = send(
        app.anonymous(Method::POST, "/ai/actors")
            .header("x-api-key", &app.key)
            .json(&json!({"subject_type": "user", "external_key": "via-x-api-key"})),
    )
    .await;
    assert_unauthorized(&resp, "POST /ai/actors with X-API-Key");
    // Nothing was created.
    let list = app.get("/ai/actors").await;
    assert_eq!(list.ok(200)["data"], json!([]));
    app.stop().await;
}

async fn public_endpoints_need_no_key(db: &TestDatabase) {
    let app: TestApp = spawn_app(db).await;
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
        let resp = send(app.anonymous(Method::GET, path)).await;
        assert_eq!(resp.status, 200, "GET {path} without a key: {}", resp.text);
        resp.request_id();
    }
    app.stop().await;
}
