//! Tool records over HTTP: create/list/get/update/delete, validation naming the field,
//! secrets that are never returned and stored sealed, attachment to agents (unique names,
//! internal names, deletion refused while attached), tenancy, the internal catalogue, and the
//! start-up check that the node's secrets key opens the stored tool secrets.

use serde_json::{json, Value};
use tessera_client::models::{CreateToolRequest, ListToolsParams};
use tessera_client::ErrorCode;
use tessera_store::testing::TestDatabase;
use tessera_store::{backend_tests, ConnectOptions};

use crate::helpers::*;

backend_tests!(
    tools_are_created_listed_read_updated_and_deleted,
    bad_tool_definitions_are_refused_naming_the_field,
    secrets_are_never_returned_and_are_stored_sealed,
    agents_attach_tools_with_unique_names,
    attached_tools_cannot_be_deleted,
    another_deployments_tools_are_not_found,
    the_internal_catalogue_lists_schemas,
    a_node_without_the_key_of_stored_tool_secrets_refuses_to_start,
);

pub fn lookup_tool(name: &str, url: &str) -> Value {
    json!({
        "name": name,
        "description": "Looks an order up.",
        "input_schema": {
            "type": "object",
            "properties": {"order_id": {"type": "string"}, "verbose": {"type": "boolean"}},
            "required": ["order_id"],
            "additionalProperties": false
        },
        "timeout_seconds": 5,
        "configuration": {"type": "Api", "url": url, "method": "GET"}
    })
}

async fn tools_are_created_listed_read_updated_and_deleted(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let created = app
        .post(
            "/ai/tools",
            lookup_tool("get_order", "https://api.example.com/orders/{order_id}"),
        )
        .await;
    let tool = created.ok(201).clone();
    assert_id(tool["id"].as_str().unwrap(), "tool");
    assert_eq!(tool["name"], "get_order");
    assert_eq!(tool["requires_confirmation"], false);
    assert_eq!(tool["timeout_seconds"], 5);
    assert_eq!(tool["configuration"]["type"], "Api");
    assert_eq!(tool["configuration"]["auth"], json!({"type": "none"}));
    assert_timestamp(tool["created_at"].as_str().unwrap());
    let id = tool["id"].as_str().unwrap().to_owned();

    // The SDK reaches the same operations.
    let second = app
        .client
        .ai()
        .tools()
        .create_tool(
            serde_json::from_value::<CreateToolRequest>(json!({
                "name": "refund",
                "configuration": {"type": "PlatformEvent", "event_type": "order.refund_requested"}
            }))
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(second.input_schema, json!({"type": "object"}));
    let page = app
        .client
        .ai()
        .tools()
        .list_tools(ListToolsParams {
            limit: Some(1),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(page.data.len(), 1);
    assert!(page.has_more);
    assert_eq!(page.data[0].id, id);
    let got = app.client.ai().tools().get_tool(&id).send().await.unwrap();
    assert_eq!(serde_json::to_value(&got).unwrap(), tool);

    let updated = app
        .patch(
            &format!("/ai/tools/{id}"),
            json!({"description": "Finds an order.", "requires_confirmation": true, "timeout_seconds": null}),
        )
        .await;
    let updated = updated.ok(200);
    assert_eq!(updated["description"], "Finds an order.");
    assert_eq!(updated["requires_confirmation"], true);
    assert_eq!(updated["timeout_seconds"], Value::Null);
    assert_eq!(updated["name"], "get_order", "absent fields stay");

    let deleted = app
        .call(reqwest::Method::DELETE, &format!("/ai/tools/{id}"), None)
        .await;
    assert_eq!(deleted.ok(200), &json!({"id": id, "deleted": true}));
    app.get(&format!("/ai/tools/{id}"))
        .await
        .assert_error(404, "tool_not_found", None);
    app.get("/ai/tools/not-a-tool-id")
        .await
        .assert_error(404, "tool_not_found", None);
    app.stop().await;
}

async fn bad_tool_definitions_are_refused_naming_the_field(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let url = "https://api.example.com/orders/{order_id}";
    let mut cases: Vec<(Value, &str)> = Vec::new();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = lookup_tool("ok_name", url);
        f(&mut v);
        v
    };
    cases.push((with(&|v| v["name"] = json!("has space")), "name"));
    cases.push((with(&|v| v["name"] = json!("x".repeat(65))), "name"));
    cases.push((with(&|v| v["name"] = json!("notify_user")), "name"));
    cases.push((with(&|v| v["name"] = json!("mcp_github_search")), "name"));
    cases.push((
        with(&|v| v["input_schema"] = json!({"type": "string"})),
        "input_schema",
    ));
    cases.push((
        with(&|v| v["input_schema"] = json!({"type": "object", "properties": {"a": {"type": 5}}})),
        "input_schema",
    ));
    cases.push((
        with(&|v| v["input_schema"]["required"] = json!([])),
        "configuration.url",
    ));
    cases.push((
        with(&|v| v["configuration"]["url"] = json!("ftp://x/")),
        "configuration.url",
    ));
    cases.push((
        with(&|v| v["configuration"]["url"] = json!("https://{order_id}.example.com/")),
        "configuration.url",
    ));
    cases.push((
        with(&|v| v["configuration"]["auth"] = json!({"type": "bearer"})),
        "configuration.auth.token",
    ));
    cases.push((
        with(&|v| v["configuration"]["headers"] = json!({"Authorization": "Bearer x"})),
        "configuration.headers.Authorization",
    ));
    cases.push((
        with(&|v| v["configuration"]["query_params"] = json!(["nope"])),
        "configuration.query_params[0]",
    ));
    cases.push((
        with(&|v| v["timeout_seconds"] = json!(601)),
        "timeout_seconds",
    ));
    cases.push((
        json!({"name": "ev", "configuration": {"type": "PlatformEvent", "event_type": "Bad Type"}}),
        "configuration.event_type",
    ));
    cases.push((
        json!({"name": "code", "configuration": {"type": "CodeRunner", "language": "python", "code": ""}}),
        "configuration.code",
    ));
    cases.push((
        json!({"name": "m", "configuration": {"type": "Mcp", "slug": "Bad!", "transport": "streamable_http", "url": "https://mcp.example.com/"}}),
        "configuration.slug",
    ));
    for (body, field) in cases {
        app.post("/ai/tools", body.clone()).await.assert_error(
            422,
            "validation_failed",
            Some(field),
        );
    }
    // Unknown variants and fields are refused too (the body does not parse).
    let unknown = app
        .post(
            "/ai/tools",
            json!({"name": "v", "configuration": {"type": "Virtual"}}),
        )
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.text);
    let extra = app
        .post(
            "/ai/tools",
            with(&|v| v["configuration"]["surprise"] = json!(1)),
        )
        .await;
    assert_eq!(extra.status, 422, "{}", extra.text);
    assert!(app
        .client
        .ai()
        .tools()
        .list_tools(ListToolsParams::default())
        .send()
        .await
        .unwrap()
        .data
        .is_empty());
    app.stop().await;
}

async fn secrets_are_never_returned_and_are_stored_sealed(db: &TestDatabase) {
    let app = spawn_app(db).await;
    const SECRET: &str = "sk-live-7f3a9c1d2e5b8a40";
    let mut body = lookup_tool("billing", "https://billing.example.com/orders/{order_id}");
    body["configuration"]["auth"] = json!({"type": "bearer", "token": SECRET});
    let created = app.post("/ai/tools", body).await;
    let tool = created.ok(201).clone();
    assert!(!created.text.contains(SECRET), "{}", created.text);
    assert_eq!(
        tool["configuration"]["auth"],
        json!({"type": "bearer", "token": {"set": true}})
    );
    let id = tool["id"].as_str().unwrap().to_owned();
    for path in [format!("/ai/tools/{id}"), "/ai/tools".to_owned()] {
        let r = app.get(&path).await;
        assert_eq!(r.status, 200);
        assert!(!r.text.contains(SECRET), "{path}: {}", r.text);
    }

    // In the database: the ciphertext only.
    let store = tessera_store::open(&app.db_url, &ConnectOptions::default())
        .await
        .unwrap();
    let deployment = app.client.deployments().current().send().await.unwrap();
    let scope = tessera_domain::Scope::deployment(
        tessera_domain::DeploymentId::parse(&deployment.id).unwrap(),
    );
    let tool_id = tessera_domain::ToolId::parse(&id).unwrap();
    let stored = store.get_tool(&scope, &tool_id).await.unwrap();
    let sealed = stored.sealed_secret.clone().unwrap();
    assert!(!sealed.windows(8).any(|w| w == &SECRET.as_bytes()[..8]));
    assert!(!serde_json::to_string(&stored.spec)
        .unwrap()
        .contains(SECRET));
    let key = tessera_domain::token::SecretsKey::parse(&test_secrets_key()).unwrap();
    let opened = tessera_domain::tool::ToolSecret::open(&key, &tool_id, &sealed).unwrap();
    assert_eq!(opened.expose(), SECRET);

    // An update without the secret keeps it; `{"set": true}` keeps it too.
    let mut config = tool["configuration"].clone();
    config["url"] = json!("https://billing.example.com/v2/orders/{order_id}");
    app.patch(&format!("/ai/tools/{id}"), json!({"configuration": config}))
        .await
        .ok(200);
    config["auth"] = json!({"type": "bearer"});
    let kept = app
        .patch(&format!("/ai/tools/{id}"), json!({"configuration": config}))
        .await;
    assert_eq!(
        kept.ok(200)["configuration"]["auth"]["token"],
        json!({"set": true})
    );
    let after = store.get_tool(&scope, &tool_id).await.unwrap();
    assert_eq!(
        tessera_domain::tool::ToolSecret::open(
            &key,
            &tool_id,
            after.sealed_secret.as_ref().unwrap()
        )
        .unwrap()
        .expose(),
        SECRET
    );
    // Another auth type needs its own secret.
    config["auth"] = json!({"type": "header", "name": "X-Api-Key"});
    app.patch(&format!("/ai/tools/{id}"), json!({"configuration": config}))
        .await
        .assert_error(422, "validation_failed", Some("configuration.auth.value"));
    config["auth"] = json!({"type": "header", "name": "X-Api-Key", "value": "other-secret"});
    let replaced = app
        .patch(&format!("/ai/tools/{id}"), json!({"configuration": config}))
        .await;
    assert!(!replaced.text.contains("other-secret"));
    assert_eq!(
        replaced.ok(200)["configuration"]["auth"],
        json!({"type": "header", "name": "X-Api-Key", "value": {"set": true}})
    );
    // No auth: the secret is dropped.
    config["auth"] = json!({"type": "none"});
    app.patch(&format!("/ai/tools/{id}"), json!({"configuration": config}))
        .await
        .ok(200);
    assert_eq!(
        store
            .get_tool(&scope, &tool_id)
            .await
            .unwrap()
            .sealed_secret,
        None
    );
    store.close().await;
    app.stop().await;
}

async fn create_tool(app: &TestApp, name: &str) -> String {
    let r = app
        .post(
            "/ai/tools",
            lookup_tool(name, "https://api.example.com/orders/{order_id}"),
        )
        .await;
    r.ok(201)["id"].as_str().unwrap().to_owned()
}

async fn agents_attach_tools_with_unique_names(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let a = create_tool(&app, "lookup").await;
    let b = create_tool(&app, "lookup").await;
    let c = create_tool(&app, "other").await;
    let agent = app
        .post(
            "/ai/agents",
            json!({"name": "a", "model": {"provider": "echo", "model": "echo"}, "tool_ids": [a, c]}),
        )
        .await;
    let agent = agent.ok(201).clone();
    assert_eq!(agent["tool_ids"], json!([a, c]));
    let agent_id = agent["id"].as_str().unwrap();
    app.patch(
        &format!("/ai/agents/{agent_id}"),
        json!({"tool_ids": [c, a, b]}),
    )
    .await
    .assert_error(422, "validation_failed", Some("tool_ids[2]"));
    app.post("/ai/agents", json!({"name": "b", "tool_ids": [b, a]}))
        .await
        .assert_error(422, "validation_failed", Some("tool_ids[1]"));
    app.post(
        "/ai/agents",
        json!({"name": "b", "tool_ids": [a, unknown_id("tool")]}),
    )
    .await
    .assert_error(404, "tool_not_found", Some("tool_ids[1]"));
    // Renaming an attached tool into a clash is refused; elsewhere the name is free.
    app.patch(&format!("/ai/tools/{c}"), json!({"name": "lookup"}))
        .await
        .assert_error(422, "validation_failed", Some("name"));
    app.patch(&format!("/ai/tools/{b}"), json!({"name": "other"}))
        .await
        .ok(200);
    app.stop().await;
}

async fn attached_tools_cannot_be_deleted(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let a = create_tool(&app, "lookup").await;
    let agent = app
        .post("/ai/agents", json!({"name": "a", "tool_ids": [a]}))
        .await;
    let agent_id = agent.ok(201)["id"].as_str().unwrap().to_owned();
    let refused = assert_api_error(
        app.client.ai().tools().delete_tool(&a).send().await,
        409,
        ErrorCode::ToolInUse,
        None,
    );
    drop(refused);
    app.patch(&format!("/ai/agents/{agent_id}"), json!({"tool_ids": []}))
        .await
        .ok(200);
    app.client
        .ai()
        .tools()
        .delete_tool(&a)
        .send()
        .await
        .unwrap();
    app.stop().await;
}

async fn another_deployments_tools_are_not_found(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let other = app.create_deployment("other").await;
    let theirs = other
        .client
        .ai()
        .tools()
        .create_tool(
            serde_json::from_value(lookup_tool("theirs", "https://x.example.com/{order_id}"))
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let id = theirs.id;
    app.get(&format!("/ai/tools/{id}"))
        .await
        .assert_error(404, "tool_not_found", None);
    app.patch(
        &format!("/ai/tools/{id}"),
        json!({"description": "mine now"}),
    )
    .await
    .assert_error(404, "tool_not_found", None);
    app.call(reqwest::Method::DELETE, &format!("/ai/tools/{id}"), None)
        .await
        .assert_error(404, "tool_not_found", None);
    app.post("/ai/agents", json!({"name": "a", "tool_ids": [id]}))
        .await
        .assert_error(404, "tool_not_found", Some("tool_ids[0]"));
    let mine = app.get("/ai/tools").await;
    assert_eq!(mine.ok(200)["data"], json!([]));
    // Still there for its owner.
    other
        .client
        .ai()
        .tools()
        .get_tool(&id)
        .send()
        .await
        .unwrap();
    app.stop().await;
}

async fn the_internal_catalogue_lists_schemas(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let catalogue = app
        .client
        .ai()
        .tools()
        .list_internal_tools()
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = catalogue.data.iter().map(|t| t.name.as_str()).collect();
    for expected in [
        "notify_user",
        "request_variables",
        "list_files",
        "read_file",
        "write_file",
        "delegate_task",
        "schedule_task",
        "execute_code",
        "ask_user",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    for t in &catalogue.data {
        assert_eq!(t.input_schema["type"], "object", "{}", t.name);
        assert!(!t.description.is_empty());
        assert!(
            tessera_domain::tool::INTERNAL_TOOL_NAMES.contains(&t.name.as_str()),
            "{} is reserved for records",
            t.name
        );
    }
    app.anonymous(reqwest::Method::GET, "/ai/tools/internal")
        .send()
        .await
        .map(|r| assert_eq!(r.status(), 401))
        .unwrap();
    app.stop().await;
}

/// Tool secrets are sealed with the node's secrets key: a node started without that key (its
/// key file missing, so a new one is made; or another key configured) refuses to start, naming
/// the tool and the setting, rather than failing every call of the tool later.
async fn a_node_without_the_key_of_stored_tool_secrets_refuses_to_start(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let mut body = lookup_tool("billing", "https://billing.example.com/orders/{order_id}");
    body["configuration"]["auth"] = json!({"type": "bearer", "token": "sk-live-start-check"});
    let created = app.post("/ai/tools", body).await;
    let id = created.ok(201)["id"].as_str().unwrap().to_owned();
    app.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let config = |key: Option<String>| tessera_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        database_url: db.url.clone(),
        secrets_key: key.map(tessera_server::Secret::new),
        secrets_key_file: Some(dir.path().join("secrets.key")),
        shutdown_timeout_seconds: 2,
        ..tessera_server::Config::default()
    };
    let other = tessera_domain::token::SecretsKey::generate().to_hex();
    for (case, key) in [("a missing key file", None), ("another key", Some(other))] {
        let error = match tessera_server::Application::build(config(key)).await {
            Ok(_) => panic!("{case}: the node started without the tools' secrets key"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains(&format!("the secret of tool {id} cannot be decrypted")),
            "{case}: {error}"
        );
        assert!(error.contains("TESSERA_SECRETS_KEY"), "{case}: {error}");
    }
    // With the key that sealed it, the node starts.
    if let Err(error) = tessera_server::Application::build(config(Some(test_secrets_key()))).await {
        panic!("the node with the right key did not start: {error:#}");
    }
}
