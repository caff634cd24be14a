//! Operational endpoints and cross-cutting behaviour: health, readiness, metrics, the OpenAPI
//! document, success statuses, request ids and the error body shape.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::api::ops;
use tessera_store::testing::TestDatabase;
use tessera_store::{backend_tests, Backend};

use crate::helpers::{send, spawn_app, spawn_app_on, unknown_id, Resp, TcpProxy};

backend_tests!(
    health_and_readiness_answer_ok,
    readiness_reports_an_unreachable_database,
    metrics_expose_http_and_pool_figures,
    openapi_lists_every_operation,
    operations_answer_their_success_statuses,
    request_ids_are_generated_or_echoed,
    error_bodies_have_one_shape,
);

/// The operations of deployments, keys, actors, agents and projects, whose success statuses
/// this suite pins down.
const FOUNDATION_OPERATIONS: &[&str] = &[
    "getCurrentDeployment",
    "createSecretKey",
    "listSecretKeys",
    "revokeSecretKey",
    "createActor",
    "listActors",
    "lookupActor",
    "getActor",
    "createAiAgent",
    "listAiAgents",
    "getAiAgentById",
    "updateAiAgent",
    "deleteAiAgent",
    "createActorProjectFlat",
    "listActorProjects",
    "getActorProject",
    "archiveActorProject",
];

#[track_caller]
fn assert_json_content(resp: &Resp) {
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "content-type {content_type:?} for {}",
        resp.text
    );
}

async fn health_and_readiness_answer_ok(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for path in ["/healthz", "/readyz"] {
        let resp = send(app.anonymous(Method::GET, path)).await;
        assert_eq!(resp.ok(200), &json!({"status": "ok"}), "GET {path}");
        assert_json_content(&resp);
    }
    let anonymous = tessera_client::Client::unauthenticated(app.base_url.clone());
    assert_eq!(anonymous.health().send().await.unwrap().status, "ok");
    assert_eq!(anonymous.ready().send().await.unwrap().status, "ok");
    app.stop().await;
}

async fn readiness_reports_an_unreachable_database(db: &TestDatabase) {
    if db.backend() == Backend::Sqlite {
        eprintln!(
            "skipped: an embedded SQLite file cannot be made unreachable; runs on PostgreSQL"
        );
        return;
    }
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(5432);
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = TcpProxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.address.port())).unwrap();
    let app = spawn_app_on(url.as_str()).await;
    let ready = app.client.ready();
    assert_eq!(ready.send().await.unwrap().status, "ok");

    proxy.cut();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let down = loop {
        let resp = send(app.anonymous(Method::GET, "/readyz")).await;
        if resp.status == 503 || tokio::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        down.status, 503,
        "readyz with the database down: {}",
        down.text
    );
    assert_eq!(down.body, json!({"status": "unavailable"}));
    down.request_id();
    // Liveness is not readiness: the process still serves.
    let live = send(app.anonymous(Method::GET, "/healthz")).await;
    assert_eq!(live.ok(200), &json!({"status": "ok"}));
    assert_eq!(
        app.client.ready().send().await.unwrap().status,
        "unavailable"
    );

    proxy.restore().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let up = loop {
        let resp = send(app.anonymous(Method::GET, "/readyz")).await;
        if resp.status == 200 || tokio::time::Instant::now() > deadline {
            break resp;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        up.ok(200),
        &json!({"status": "ok"}),
        "readyz recovers with the database"
    );
    app.client
        .ai()
        .actors()
        .list_actors(Default::default())
        .send()
        .await
        .unwrap();
    app.stop().await;
}

/// Sum of every sample of `metric` (all label sets).
fn sample_sum(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_expose_http_and_pool_figures(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let before = send(app.anonymous(Method::GET, "/metrics")).await;
    assert_eq!(before.status, 200, "{}", before.text);
    let content_type = before.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain")
            || content_type.starts_with("application/openmetrics-text"),
        "Prometheus text format, got {content_type:?}"
    );
    let secret_actor = unknown_id("actor");
    for _ in 0..5 {
        app.get("/ai/actors").await.ok(200);
    }
    app.get(&format!("/ai/actors/{secret_actor}")).await;
    let after = send(app.anonymous(Method::GET, "/metrics")).await;
    let text = &after.text;
    for name in [
        "tessera_http_requests_total",
        "tessera_http_request_duration_seconds",
        "tessera_db_pool_connections",
    ] {
        assert!(
            text.lines()
                .any(|l| !l.starts_with('#') && l.starts_with(name)),
            "no sample of {name} in:\n{text}"
        );
    }
    let counted = sample_sum(text, "tessera_http_requests_total")
        - sample_sum(&before.text, "tessera_http_requests_total");
    assert!(
        counted >= 6.0,
        "the six API requests are counted (got {counted}):\n{text}"
    );
    assert!(
        sample_sum(text, "tessera_http_request_duration_seconds_count") >= 6.0,
        "the duration histogram observes requests:\n{text}"
    );
    // Paths are labelled by route template, not by raw path (bounded label cardinality).
    assert!(
        !text.contains(&secret_actor),
        "a raw id appears in the metrics:\n{text}"
    );
    app.stop().await;
}

async fn openapi_lists_every_operation(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let resp = send(app.anonymous(Method::GET, "/openapi.json")).await;
    assert_json_content(&resp);
    let doc = resp.ok(200);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "OpenAPI 3.1, got {version:?}");
    assert!(doc["info"]["title"].is_string());
    for op in ops::ALL {
        let method = op.method.to_ascii_lowercase();
        let operation = &doc["paths"][op.path][&method];
        assert_eq!(
            operation["operationId"].as_str(),
            Some(op.id),
            "{} {} is documented as {}",
            op.method,
            op.path,
            op.id
        );
    }
    let mut seen = HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            if let Some(id) = operation.get("operationId").and_then(Value::as_str) {
                assert!(
                    seen.insert(id.to_owned()),
                    "operationId {id} twice ({method} {path})"
                );
            }
        }
    }
    // The library function serves the same document.
    let served: Value = resp.body.clone();
    let built = serde_json::to_value(tessera_server::openapi_document()).unwrap();
    assert_eq!(served, built);
    app.stop().await;
}

async fn operations_answer_their_success_statuses(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let mut seen = HashSet::new();
    let mut check = |id: &str, resp: &Resp, status: u16| {
        assert_eq!(resp.status, status, "{id}: {}", resp.text);
        assert_json_content(resp);
        assert!(ops::by_id(id).is_some(), "{id} is in the table");
        seen.insert(id.to_owned());
        resp.body.clone()
    };

    let deployment = app.get("/deployments/current").await;
    let deployment = check("getCurrentDeployment", &deployment, 200);
    assert_eq!(deployment["name"], "default");
    assert_eq!(
        deployment["backend_host"],
        format!("http://{}", app.address),
        "{deployment}"
    );
    let key = app.post("/secret-keys", json!({})).await;
    let key = check("createSecretKey", &key, 201);
    check("listSecretKeys", &app.get("/secret-keys").await, 200);
    let revoke = app
        .call(
            Method::POST,
            &format!("/secret-keys/{}/revoke", key["id"].as_str().unwrap()),
            None,
        )
        .await;
    check("revokeSecretKey", &revoke, 200);

    let actor = app
        .post(
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "s"}),
        )
        .await;
    let actor = check("createActor", &actor, 201);
    let actor_id = actor["id"].as_str().unwrap();
    check("listActors", &app.get("/ai/actors").await, 200);
    check(
        "lookupActor",
        &app.get("/ai/actors/lookup?subject_type=user&external_key=s")
            .await,
        200,
    );
    check(
        "getActor",
        &app.get(&format!("/ai/actors/{actor_id}")).await,
        200,
    );

    let agent = app.post("/ai/agents", json!({"name": "s"})).await;
    let agent = check("createAiAgent", &agent, 201);
    let agent_id = agent["id"].as_str().unwrap();
    check("listAiAgents", &app.get("/ai/agents").await, 200);
    check(
        "getAiAgentById",
        &app.get(&format!("/ai/agents/{agent_id}")).await,
        200,
    );
    check(
        "updateAiAgent",
        &app.patch(
            &format!("/ai/agents/{agent_id}"),
            json!({"description": "d"}),
        )
        .await,
        200,
    );

    let project = app
        .post(
            &format!("/ai/actor-projects?actor_id={actor_id}"),
            json!({"agent_id": agent_id, "name": "p"}),
        )
        .await;
    let project = check("createActorProjectFlat", &project, 201);
    let project_id = project["id"].as_str().unwrap();
    check(
        "listActorProjects",
        &app.get("/ai/actor-projects").await,
        200,
    );
    check(
        "getActorProject",
        &app.get(&format!("/ai/actor-projects/{project_id}")).await,
        200,
    );
    check(
        "archiveActorProject",
        &app.call(
            Method::POST,
            &format!("/ai/actor-projects/{project_id}/archive"),
            None,
        )
        .await,
        200,
    );
    check(
        "deleteAiAgent",
        &app.call(Method::DELETE, &format!("/ai/agents/{agent_id}"), None)
            .await,
        200,
    );
    let foundation: HashSet<String> = FOUNDATION_OPERATIONS
        .iter()
        .map(|id| (*id).to_owned())
        .collect();
    assert_eq!(seen, foundation, "every foundation operation was exercised");
    app.stop().await;
}

async fn request_ids_are_generated_or_echoed(db: &TestDatabase) {
    let app = spawn_app(db).await;
    // Generated: on successes, errors of every layer, and public endpoints.
    let mut generated = HashSet::new();
    let requests = [
        app.request(Method::GET, "/ai/actors"),
        app.request(Method::POST, "/ai/actors")
            .json(&json!({"subject_type": "user", "external_key": "r"})),
        app.anonymous(Method::GET, "/ai/actors"),
        app.request(Method::GET, "/nope"),
        app.request(Method::PUT, "/ai/actors"),
        app.request(Method::POST, "/ai/agents")
            .json(&json!({"name": ""})),
        app.request(Method::GET, &format!("/ai/agents/{}", unknown_id("agent"))),
        app.request(Method::POST, "/ai/actors")
            .header("content-type", "text/plain")
            .body("{}"),
        app.anonymous(Method::GET, "/healthz"),
        app.anonymous(Method::GET, "/readyz"),
        app.anonymous(Method::GET, "/metrics"),
        app.anonymous(Method::GET, "/openapi.json"),
    ];
    for request in requests {
        let resp = send(request).await;
        let id = resp.request_id().to_owned();
        assert!(
            id.starts_with("req_") && id.len() > 4,
            "generated id {id:?}"
        );
        if resp.status >= 400 {
            assert_eq!(
                resp.body["error"]["request_id"],
                id.as_str(),
                "{}",
                resp.text
            );
        }
        assert!(
            generated.insert(id.clone()),
            "request ids are unique, {id} repeated"
        );
    }

    // Echoed: 1-128 characters of [A-Za-z0-9._-].
    let long = "a".repeat(128);
    for sent in [
        "x",
        "abc-DEF_1.2",
        "0",
        "-._",
        long.as_str(),
        "req_client-chosen",
    ] {
        for request in [
            app.request(Method::GET, "/ai/actors"),
            app.anonymous(Method::GET, "/ai/actors"),
            app.request(Method::GET, "/nope"),
            app.anonymous(Method::GET, "/healthz"),
        ] {
            let resp = send(request.header("x-request-id", sent)).await;
            assert_eq!(resp.request_id(), sent, "echoed on HTTP {}", resp.status);
            if resp.status >= 400 {
                assert_eq!(resp.body["error"]["request_id"], sent, "{}", resp.text);
            }
        }
    }

    // Replaced: anything else.
    let too_long = "a".repeat(129);
    let invalid: Vec<HeaderValue> = [
        too_long.as_str(),
        "",
        "has space",
        "a/b",
        "a,b",
        "<script>",
        "id\t1",
        "ünï",
    ]
    .iter()
    .map(|v| HeaderValue::from_bytes(v.as_bytes()).unwrap())
    .collect();
    for value in invalid {
        for request in [
            app.request(Method::GET, "/ai/actors"),
            app.anonymous(Method::GET, "/ai/actors"),
        ] {
            let resp = send(request.header("x-request-id", value.clone())).await;
            let id = resp.request_id().to_owned();
            assert!(
                id.starts_with("req_") && id.as_bytes() != value.as_bytes(),
                "{value:?} is replaced by a generated id, got {id:?}"
            );
            if resp.status >= 400 {
                assert_eq!(resp.body["error"]["request_id"], id.as_str());
            }
        }
    }
    app.stop().await;
}

/// The body with `message` and `request_id` replaced by placeholders, after checking them.
fn normalized(resp: &Resp) -> Value {
    let mut body = resp.body.clone();
    let error = &mut body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        resp.text
    );
    assert_eq!(error["request_id"], resp.request_id(), "{}", resp.text);
    error["message"] = json!("[message]");
    error["request_id"] = json!("[request_id]");
    json!({"status": resp.status, "body": body})
}

async fn error_bodies_have_one_shape(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let bodies = vec![
        normalized(
            &app.post(
                "/ai/actors",
                json!({"subject_type": "user", "external_key": "k".repeat(257)}),
            )
            .await,
        ),
        normalized(
            &app.post("/ai/agents", json!({"name": "a", "instructions": "x"}))
                .await,
        ),
        normalized(&app.post_text("/ai/actors", r#"{"subject_type":"#).await),
        normalized(&app.get("/ai/actors?limit=0").await),
        normalized(&send(app.anonymous(Method::GET, "/ai/actors")).await),
        normalized(
            &app.get(&format!("/ai/actors/{}", unknown_id("actor")))
                .await,
        ),
        normalized(&app.get("/nope").await),
        normalized(&app.call(Method::PUT, "/ai/actors", None).await),
    ];
    // The same assertion runs once per backend in this process.
    insta::allow_duplicates! {
    insta::with_settings!({sort_maps => true}, {
        insta::assert_json_snapshot!(bodies, @r###"
        [
          {
            "body": {
              "error": {
                "code": "validation_failed",
                "field": "external_key",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 422
          },
          {
            "body": {
              "error": {
                "code": "validation_failed",
                "field": "instructions",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 422
          },
          {
            "body": {
              "error": {
                "code": "malformed_json",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 400
          },
          {
            "body": {
              "error": {
                "code": "invalid_parameter",
                "field": "limit",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 400
          },
          {
            "body": {
              "error": {
                "code": "unauthorized",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 401
          },
          {
            "body": {
              "error": {
                "code": "actor_not_found",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 404
          },
          {
            "body": {
              "error": {
                "code": "route_not_found",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 404
          },
          {
            "body": {
              "error": {
                "code": "method_not_allowed",
                "message": "[message]",
                "request_id": "[request_id]"
              }
            },
            "status": 405
          }
        ]
        "###);
    });
    }
    app.stop().await;
}
