//! Bad input: every malformed request gets a 4xx naming what is wrong, never a 500, and
//! changes nothing.

use reqwest::Method;
use serde_json::{json, Value};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{raw_http, send, spawn_app, unknown_id, TestApp};

backend_tests!(
    malformed_json_is_400,
    non_json_content_types_are_415,
    json_without_content_type_is_accepted,
    wrong_types_name_the_field,
    missing_fields_are_named,
    unknown_fields_are_named,
    unknown_enum_values_are_named,
    out_of_range_values_name_the_field,
    over_long_strings_name_the_field,
    bodies_over_1_mib_are_413,
    odd_bodies_are_4xx_not_500,
    json_arrays_are_not_objects,
    bad_list_parameters_are_400,
    repeated_query_parameters_name_the_parameter,
    lookup_and_create_project_need_their_parameters,
    bad_ids_in_paths_are_404,
    non_utf8_ids_in_paths_are_404,
    unknown_routes_are_404,
    wrong_methods_are_405,
);

/// Sends `body` as JSON and asserts the error.
async fn expect(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Value,
    status: u16,
    code: &str,
    field: Option<&str>,
) {
    let resp = app.call(method.clone(), path, Some(body.clone())).await;
    assert!(
        resp.status == status,
        "{method} {path} {body}: expected {status} {code} {field:?}, got {}: {}",
        resp.status,
        resp.text
    );
    resp.assert_error(status, code, field);
}

async fn assert_no_actors(app: &TestApp) {
    let list = app.get("/ai/actors").await;
    assert_eq!(list.ok(200)["data"], json!([]), "nothing was created");
}

async fn malformed_json_is_400(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let cases = [
        (Method::POST, "/ai/actors".to_owned(), r#"{"subject_type":"#),
        (
            Method::POST,
            "/ai/actors".to_owned(),
            r#"{"subject_type":"user","external_key":"x",}"#,
        ),
        (Method::POST, "/ai/agents".to_owned(), r#"{"name": 'a'}"#),
        (Method::PATCH, format!("/ai/agents/{}", agent.id), "{"),
        (Method::POST, "/secret-keys".to_owned(), "not json"),
        (
            Method::POST,
            format!("/ai/actor-projects?actor_id={}", actor.id),
            r#"{"agent_id""#,
        ),
    ];
    for (method, path, body) in cases {
        let resp = send(
            app.request(method.clone(), &path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(resp.status, 400, "{method} {path} {body:?}: {}", resp.text);
        resp.assert_error(400, "malformed_json", None);
    }
    let actors = app.get("/ai/actors").await;
    assert_eq!(actors.ok(200)["data"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn non_json_content_types_are_415(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    let body = r#"{"subject_type":"user","external_key":"typed"}"#;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
    ] {
        let resp = send(
            app.request(Method::POST, "/ai/actors")
                .header("content-type", content_type)
                .body(body),
        )
        .await;
        assert_eq!(
            resp.status, 415,
            "Content-Type {content_type}: {}",
            resp.text
        );
        resp.assert_error(415, "unsupported_media_type", None);
    }
    let form = send(
        app.request(Method::POST, "/ai/actors")
            .header("content-type", "application/x-www-form-urlencoded")
            .body("subject_type=user&external_key=form"),
    )
    .await;
    form.assert_error(415, "unsupported_media_type", None);
    let patch = send(
        app.request(Method::PATCH, &format!("/ai/agents/{}", agent.id))
            .header("content-type", "text/plain")
            .body(r#"{"name":"renamed"}"#),
    )
    .await;
    patch.assert_error(415, "unsupported_media_type", None);
    assert_no_actors(&app).await;
    let unchanged = app.get(&format!("/ai/agents/{}", agent.id)).await;
    assert_eq!(unchanged.ok(200)["name"], "a");
    app.stop().await;
}

async fn json_without_content_type_is_accepted(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let resp = send(
        app.request(Method::POST, "/ai/actors")
            .body(r#"{"subject_type":"user","external_key":"no-content-type"}"#),
    )
    .await;
    assert!(
        resp.headers.get("content-type").is_some(),
        "the response itself is typed"
    );
    assert_eq!(resp.ok(201)["external_key"], "no-content-type");
    let resp = send(
        app.request(Method::POST, "/ai/actors")
            .header("content-type", "application/json; charset=utf-8")
            .body(r#"{"subject_type":"user","external_key":"charset"}"#),
    )
    .await;
    assert_eq!(resp.ok(201)["external_key"], "charset");
    app.stop().await;
}

async fn wrong_types_name_the_field(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    let agent_path = format!("/ai/agents/{}", agent.id);
    let cases = [
        (
            "/ai/actors",
            json!({"subject_type": "user", "external_key": 5}),
            "external_key",
        ),
        (
            "/ai/actors",
            json!({"subject_type": null, "external_key": "k"}),
            "subject_type",
        ),
        (
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "k", "metadata": "x"}),
            "metadata",
        ),
        ("/ai/agents", json!({"name": 5}), "name"),
        (
            "/ai/agents",
            json!({"name": "a", "tool_ids": "tool_x"}),
            "tool_ids",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "capability_tags": ["ok", 7]}),
            "capability_tags[1]",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "limits": "fast"}),
            "limits",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "model": {"provider": "echo", "model": "echo", "temperature": "hot"}}),
            "model.temperature",
        ),
        ("/secret-keys", json!({"name": 12}), "name"),
    ];
    for (path, body, field) in cases {
        expect(
            &app,
            Method::POST,
            path,
            body,
            422,
            "validation_failed",
            Some(field),
        )
        .await;
    }
    expect(
        &app,
        Method::PATCH,
        &agent_path,
        json!({"description": 1}),
        422,
        "validation_failed",
        Some("description"),
    )
    .await;
    assert_no_actors(&app).await;
    app.stop().await;
}

async fn missing_fields_are_named(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let project_path = format!("/ai/actor-projects?actor_id={}", actor.id);
    let cases = [
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "user"}),
            "external_key",
        ),
        (
            "/ai/actors".to_owned(),
            json!({"external_key": "k"}),
            "subject_type",
        ),
        ("/ai/agents".to_owned(), json!({}), "name"),
        (
            "/ai/agents".to_owned(),
            json!({"name": "a", "model": {"provider": "echo"}}),
            "model.model",
        ),
        (
            "/ai/agents".to_owned(),
            json!({"name": "a", "approval_rules": [{}]}),
            "approval_rules[0].tool",
        ),
        (project_path.clone(), json!({"name": "p"}), "agent_id"),
        (project_path.clone(), json!({"agent_id": agent.id}), "name"),
    ];
    for (path, body, field) in cases {
        expect(
            &app,
            Method::POST,
            &path,
            body,
            422,
            "validation_failed",
            Some(field),
        )
        .await;
    }
    let projects = app.get("/ai/actor-projects").await;
    assert_eq!(projects.ok(200)["data"], json!([]));
    app.stop().await;
}

async fn unknown_fields_are_named(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    let agent_path = format!("/ai/agents/{}", agent.id);
    let cases = [
        (
            "/ai/agents",
            json!({"name": "a", "instructions": "be nice"}),
            "instructions",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "schedule": {"every": 60}}),
            "schedule",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "model": {"provider": "echo", "model": "echo", "top_p": 1}}),
            "model.top_p",
        ),
        (
            "/ai/agents",
            json!({"name": "a", "limits": {"max_turns": 3}}),
            "limits.max_turns",
        ),
        (
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "k", "nickname": "x"}),
            "nickname",
        ),
        (
            "/secret-keys",
            json!({"name": "n", "scopes": ["all"]}),
            "scopes",
        ),
    ];
    for (path, body, field) in cases {
        expect(
            &app,
            Method::POST,
            path,
            body,
            422,
            "validation_failed",
            Some(field),
        )
        .await;
    }
    expect(
        &app,
        Method::PATCH,
        &agent_path,
        json!({"instructions": "x"}),
        422,
        "validation_failed",
        Some("instructions"),
    )
    .await;
    let agents = app.get("/ai/agents").await;
    assert_eq!(agents.ok(200)["data"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn unknown_enum_values_are_named(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    expect(
        &app,
        Method::POST,
        "/ai/agents",
        json!({"name": "a", "multitask": "sometimes"}),
        422,
        "validation_failed",
        Some("multitask"),
    )
    .await;
    expect(
        &app,
        Method::PATCH,
        &format!("/ai/agents/{}", agent.id),
        json!({"multitask": "Enqueue"}),
        422,
        "validation_failed",
        Some("multitask"),
    )
    .await;
    app.stop().await;
}

async fn out_of_range_values_name_the_field(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let echo = |extra: Value| {
        let mut model = json!({"provider": "echo", "model": "echo"});
        for (k, v) in extra.as_object().unwrap() {
            model[k] = v.clone();
        }
        json!({"name": "a", "model": model})
    };
    let cases = [
        (echo(json!({"temperature": 5})), "model.temperature"),
        (echo(json!({"temperature": -0.1})), "model.temperature"),
        (
            echo(json!({"max_output_tokens": 0})),
            "model.max_output_tokens",
        ),
        (
            json!({"name": "a", "model": {"provider": "Not A Provider", "model": "m"}}),
            "model.provider",
        ),
        (
            json!({"name": "a", "capability_tags": ["ok", "BAD TAG"]}),
            "capability_tags[1]",
        ),
        (
            json!({"name": "a", "capability_tags": ["dup", "dup"]}),
            "capability_tags[1]",
        ),
        (
            json!({"name": "a", "limits": {"max_iterations": 0}}),
            "limits.max_iterations",
        ),
        (
            json!({"name": "a", "limits": {"run_timeout_seconds": 86401}}),
            "limits.run_timeout_seconds",
        ),
        (
            json!({"name": "a", "approval_rules": [{"tool": "send_*"}, {"tool": "bad tool"}]}),
            "approval_rules[1].tool",
        ),
        (
            json!({"name": "a", "endpoint_slug": "Bad Slug"}),
            "endpoint_slug",
        ),
        (json!({"name": ""}), "name"),
    ];
    for (body, field) in cases {
        expect(
            &app,
            Method::POST,
            "/ai/agents",
            body,
            422,
            "validation_failed",
            Some(field),
        )
        .await;
    }
    // The boundaries themselves are accepted.
    let ok = app
        .post(
            "/ai/agents",
            json!({"name": "edge", "model": {"provider": "echo", "model": "echo", "temperature": 2}, "limits": {"max_iterations": 200, "run_timeout_seconds": 86400}}),
        )
        .await;
    ok.ok(201);
    let agents = app.get("/ai/agents").await;
    assert_eq!(agents.ok(200)["data"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn over_long_strings_name_the_field(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let cases = [
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "user", "external_key": "k".repeat(257)}),
            "external_key",
        ),
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "user", "external_key": ""}),
            "external_key",
        ),
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "user", "external_key": "a\u{0}b"}),
            "external_key",
        ),
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "User", "external_key": "k"}),
            "subject_type",
        ),
        (
            "/ai/actors".to_owned(),
            json!({"subject_type": "s".repeat(33), "external_key": "k"}),
            "subject_type",
        ),
        (
            "/ai/agents".to_owned(),
            json!({"name": "n".repeat(201)}),
            "name",
        ),
        (
            "/ai/agents".to_owned(),
            json!({"name": "a", "description": "d".repeat(10_001)}),
            "description",
        ),
        (
            "/secret-keys".to_owned(),
            json!({"name": "n".repeat(201)}),
            "name",
        ),
        (
            format!("/ai/actor-projects?actor_id={}", actor.id),
            json!({"agent_id": agent.id, "name": "p".repeat(201)}),
            "name",
        ),
    ];
    for (path, body, field) in cases {
        expect(
            &app,
            Method::POST,
            &path,
            body,
            422,
            "validation_failed",
            Some(field),
        )
        .await;
    }
    // The limits themselves are accepted (lengths count characters, not bytes).
    app.post(
        "/ai/actors",
        json!({"subject_type": "user", "external_key": "é".repeat(256)}),
    )
    .await
    .ok(201);
    app.post(
        "/ai/actors",
        json!({"subject_type": "s".repeat(32), "external_key": "k"}),
    )
    .await
    .ok(201);
    app.post("/ai/agents", json!({"name": "n".repeat(200)}))
        .await
        .ok(201);
    app.stop().await;
}

async fn bodies_over_1_mib_are_413(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let padded = |total: usize| {
        let head = r#"{"subject_type":"user","external_key":"big","metadata":{"pad":""#;
        let tail = r#""}}"#;
        format!(
            "{head}{}{tail}",
            "x".repeat(total - head.len() - tail.len())
        )
    };
    for (path, size) in [
        ("/ai/actors", 1024 * 1024 + 1),
        ("/ai/agents", 3 * 1024 * 1024),
    ] {
        let body = padded(size);
        assert_eq!(body.len(), size);
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
            app.address, app.key
        );
        let resp = raw_http(app.address, &head, body.as_bytes()).await;
        assert_eq!(
            resp.status, 413,
            "POST {path} with {size} bytes: {}",
            resp.text
        );
        resp.assert_error(413, "payload_too_large", None);
    }

    // Just under the limit the body is read and validated (metadata is capped at 16 KiB).
    let under = padded(1000 * 1024);
    let resp = app.post_text("/ai/actors", &under).await;
    resp.assert_error(422, "validation_failed", Some("metadata"));
    assert_no_actors(&app).await;
    app.stop().await;
}

async fn odd_bodies_are_4xx_not_500(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"\"user\"".to_vec(),
        b"42".to_vec(),
        b"{}".to_vec(),
        nested.into_bytes(),
        b"{\"subject_type\":\"user\",\"external_key\":\"\xff\xfe\"}".to_vec(),
        b"{\"subject_type\":\"user\",\"external_key\":\"k\"} trailing".to_vec(),
    ];
    for path in ["/ai/actors", "/ai/agents", "/secret-keys"] {
        for body in &bodies {
            let resp = send(
                app.request(Method::POST, path)
                    .header("content-type", "application/json")
                    .body(body.clone()),
            )
            .await;
            let shown = String::from_utf8_lossy(&body[..body.len().min(40)]).into_owned();
            if path == "/secret-keys" && body.as_slice() == b"{}" {
                // An empty object is a valid createSecretKey body.
                resp.ok(201);
                continue;
            }
            if path == "/secret-keys" && body.is_empty() && resp.status == 201 {
                // Treating an empty body as `{}` is acceptable for an all-optional body.
                continue;
            }
            assert!(
                resp.status == 400 || resp.status == 422,
                "POST {path} {shown:?}: expected 400/422, got {}: {}",
                resp.status,
                resp.text
            );
            let code = if resp.status == 400 {
                "malformed_json"
            } else {
                "validation_failed"
            };
            resp.assert_error(resp.status, code, None);
        }
    }
    assert_no_actors(&app).await;
    app.stop().await;
}

/// serde accepts a JSON array for a struct (fields by position); the API takes objects only.
async fn json_arrays_are_not_objects(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    let cases = [
        (
            Method::POST,
            "/ai/actors".to_owned(),
            json!(["user", "as-a-sequence"]),
        ),
        (
            Method::POST,
            "/ai/agents".to_owned(),
            json!(["named-by-sequence"]),
        ),
        (
            Method::POST,
            "/secret-keys".to_owned(),
            json!(["named-by-sequence"]),
        ),
        (Method::POST, "/secret-keys".to_owned(), json!([])),
        (
            Method::PATCH,
            format!("/ai/agents/{}", agent.id),
            json!(["renamed-by-sequence"]),
        ),
    ];
    for (method, path, body) in cases {
        let resp = app.call(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(resp.status, 422, "{method} {path} {body}: {}", resp.text);
        resp.assert_error(422, "validation_failed", None);
    }
    assert_no_actors(&app).await;
    let agents = app.get("/ai/agents").await;
    assert_eq!(agents.ok(200)["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(agents.body["data"][0]["name"], "a");
    let keys = app.get("/secret-keys").await;
    assert_eq!(keys.ok(200)["data"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn bad_list_parameters_are_400(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    let keys = app.get("/secret-keys").await;
    let key_id = keys.ok(200)["data"][0]["id"].as_str().unwrap().to_owned();
    let lists = [
        ("/ai/actors", actor.id.clone()),
        ("/ai/agents", agent.id.clone()),
        ("/ai/actor-projects", project.id.clone()),
        ("/secret-keys", key_id),
    ];
    for (path, id) in &lists {
        for (query, field) in [
            ("limit=0", Some("limit")),
            ("limit=101", Some("limit")),
            ("limit=abc", Some("limit")),
            ("limit=-1", Some("limit")),
            ("limit=", Some("limit")),
            ("after=not-an-id", Some("after")),
            ("before=not-an-id", Some("before")),
            (&*format!("before={id}&after={id}"), None),
        ] {
            let resp = app.get(&format!("{path}?{query}")).await;
            assert_eq!(resp.status, 400, "GET {path}?{query}: {}", resp.text);
            resp.assert_error(400, "invalid_parameter", field);
        }
        // Controls: the limits themselves are fine.
        app.get(&format!("{path}?limit=1")).await.ok(200);
        app.get(&format!("{path}?limit=100")).await.ok(200);
        app.get(&format!("{path}?after={id}")).await.ok(200);
    }
    let resp = app.get("/ai/actor-projects?status=deleted").await;
    resp.assert_error(400, "invalid_parameter", Some("status"));
    app.stop().await;
}

async fn repeated_query_parameters_name_the_parameter(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for (path, field) in [
        ("/ai/actors?limit=1&limit=2", "limit"),
        (
            "/ai/agents?endpoint_slug=a&endpoint_slug=b",
            "endpoint_slug",
        ),
        (
            "/ai/actors/lookup?subject_type=user&external_key=a&external_key=b",
            "external_key",
        ),
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status, 400, "GET {path}: {}", resp.text);
        resp.assert_error(400, "invalid_parameter", Some(field));
    }
    app.stop().await;
}

async fn lookup_and_create_project_need_their_parameters(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    let resp = app.get("/ai/actors/lookup?subject_type=user").await;
    resp.assert_error(400, "invalid_parameter", Some("external_key"));
    let resp = app.get("/ai/actors/lookup?external_key=k").await;
    resp.assert_error(400, "invalid_parameter", Some("subject_type"));
    let resp = app.get("/ai/actors/lookup").await;
    assert_eq!(resp.status, 400, "{}", resp.text);
    resp.assert_error(400, "invalid_parameter", None);

    let body = json!({"agent_id": agent.id, "name": "p"});
    let resp = app.post("/ai/actor-projects", body.clone()).await;
    resp.assert_error(400, "invalid_parameter", Some("actor_id"));
    let resp = app.post("/ai/actor-projects?actor_id=", body).await;
    assert!(
        resp.status == 400 || resp.status == 404,
        "empty actor_id: {}",
        resp.text
    );
    let code = if resp.status == 400 {
        "invalid_parameter"
    } else {
        "actor_not_found"
    };
    resp.assert_error(resp.status, code, Some("actor_id"));
    let projects = app.get("/ai/actor-projects").await;
    assert_eq!(projects.ok(200)["data"], json!([]));
    app.stop().await;
}

async fn bad_ids_in_paths_are_404(db: &TestDatabase) {
    let app = spawn_app(db).await;
    // Real objects of other kinds, to check ids are not confused across kinds.
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    let bad_ids = |kind: &str| {
        vec![
            "nope".to_owned(),
            unknown_id(kind),
            "actor_".to_owned(),
            format!("{kind}_{}", "0".repeat(27)),
            "x".repeat(1000),
            "a%2Fb".to_owned(),
            "%00".to_owned(),
            "%E2%82%AC".to_owned(),
        ]
    };
    let update = json!({"description": "changed"});
    for id in bad_ids("actor")
        .into_iter()
        .chain([agent.id.clone(), project.id.clone()])
    {
        let resp = app.get(&format!("/ai/actors/{id}")).await;
        resp.assert_error(404, "actor_not_found", None);
    }
    for id in bad_ids("agent")
        .into_iter()
        .chain([actor.id.clone(), project.id.clone()])
    {
        let path = format!("/ai/agents/{id}");
        app.get(&path)
            .await
            .assert_error(404, "agent_not_found", None);
        app.patch(&path, update.clone())
            .await
            .assert_error(404, "agent_not_found", None);
        app.call(Method::DELETE, &path, None)
            .await
            .assert_error(404, "agent_not_found", None);
    }
    for id in bad_ids("proj")
        .into_iter()
        .chain([actor.id.clone(), agent.id.clone()])
    {
        app.get(&format!("/ai/actor-projects/{id}"))
            .await
            .assert_error(404, "project_not_found", None);
        app.call(
            Method::POST,
            &format!("/ai/actor-projects/{id}/archive"),
            None,
        )
        .await
        .assert_error(404, "project_not_found", None);
    }
    for id in bad_ids("key").into_iter().chain([actor.id.clone()]) {
        app.call(Method::POST, &format!("/secret-keys/{id}/revoke"), None)
            .await
            .assert_error(404, "secret_key_not_found", None);
    }
    // Nothing changed.
    let fetched = app.get(&format!("/ai/agents/{}", agent.id)).await;
    assert_eq!(fetched.ok(200)["description"], "");
    let fetched = app.get(&format!("/ai/actor-projects/{}", project.id)).await;
    assert_eq!(fetched.ok(200)["status"], "active");
    app.stop().await;
}

/// A path segment that does not decode to UTF-8 is still just an id that does not exist.
async fn non_utf8_ids_in_paths_are_404(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for (method, path, code) in [
        (Method::GET, "/ai/actors/%FF%FE", "actor_not_found"),
        (Method::GET, "/ai/agents/%FF", "agent_not_found"),
        (Method::PATCH, "/ai/agents/%C3%28", "agent_not_found"),
        (Method::DELETE, "/ai/agents/%FF", "agent_not_found"),
        (
            Method::GET,
            "/ai/actor-projects/%C3%28",
            "project_not_found",
        ),
        (
            Method::POST,
            "/ai/actor-projects/%FF/archive",
            "project_not_found",
        ),
        (
            Method::POST,
            "/secret-keys/%FF/revoke",
            "secret_key_not_found",
        ),
        (Method::POST, "/api/v1/ask/%FF", "endpoint_not_found"),
        (Method::POST, "/api/v1/ask/%C0%AF", "endpoint_not_found"),
    ] {
        let body = if path.starts_with("/api/v1/ask/") {
            Some(json!({"content": "hi"}))
        } else {
            (method == Method::PATCH).then(|| json!({"name": "x"}))
        };
        let resp = app.call(method.clone(), path, body).await;
        assert_eq!(resp.status, 404, "{method} {path}: {}", resp.text);
        resp.assert_error(404, code, None);
    }
    app.stop().await;
}

async fn unknown_routes_are_404(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app.agent("a").await;
    for (method, path) in [
        (Method::GET, "/nope".to_owned()),
        (Method::GET, "/ai".to_owned()),
        (Method::GET, "/ai/nope".to_owned()),
        (Method::GET, "/ai/actors/lookup/extra".to_owned()),
        (Method::GET, format!("/ai/agents/{}/threads", agent.id)),
        (Method::POST, "/ai/integrations".to_owned()),
        (Method::GET, "/api/v1/nope".to_owned()),
        (Method::GET, "/deployments".to_owned()),
    ] {
        let resp = app.call(method.clone(), &path, None).await;
        assert_eq!(resp.status, 404, "{method} {path}: {}", resp.text);
        resp.assert_error(404, "route_not_found", None);
    }
    app.stop().await;
}

async fn wrong_methods_are_405(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    for (method, path) in [
        (Method::PUT, "/ai/actors".to_owned()),
        (Method::DELETE, "/ai/actors".to_owned()),
        (Method::PATCH, format!("/ai/actors/{}", actor.id)),
        (Method::DELETE, format!("/ai/actors/{}", actor.id)),
        (Method::POST, format!("/ai/agents/{}", agent.id)),
        (Method::PUT, format!("/ai/agents/{}", agent.id)),
        (Method::DELETE, "/ai/agents".to_owned()),
        (
            Method::GET,
            format!("/ai/actor-projects/{}/archive", project.id),
        ),
        (Method::DELETE, format!("/ai/actor-projects/{}", project.id)),
        (Method::DELETE, "/secret-keys".to_owned()),
        (Method::POST, "/deployments/current".to_owned()),
    ] {
        let resp = app.call(method.clone(), &path, None).await;
        assert_eq!(resp.status, 405, "{method} {path}: {}", resp.text);
        resp.assert_error(405, "method_not_allowed", None);
    }
    // Nothing was deleted.
    app.get(&format!("/ai/actors/{}", actor.id)).await.ok(200);
    app.get(&format!("/ai/agents/{}", agent.id)).await.ok(200);
    let project = app.get(&format!("/ai/actor-projects/{}", project.id)).await;
    assert_eq!(project.ok(200)["status"], "active");
    app.stop().await;
}
