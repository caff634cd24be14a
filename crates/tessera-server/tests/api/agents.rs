//! Agents: defaults, round trips, PATCH semantics, deletion and references.

use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::models::{
    AgentLimits, ApprovalRule, CreateAgentRequest, ListAgentsParams, ModelConfig, MultitaskPolicy,
    UpdateAgentRequest,
};
use tessera_client::ErrorCode;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{
    assert_api_error, assert_id, assert_timestamp, echo_agent, spawn_app, unknown_id,
};

backend_tests!(
    create_applies_defaults,
    create_round_trips_every_field,
    update_changes_only_given_fields,
    delete_answers_deleted_then_404,
    agent_in_use_until_its_projects_are_archived,
    referenced_tools_and_sub_agents_must_exist,
    list_filters_by_endpoint_slug,
    delete_never_leaves_an_active_project_without_its_agent,
);

async fn create_applies_defaults(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let resp = app.post("/ai/agents", json!({"name": "Minimal"})).await;
    let agent = resp.ok(201).clone();
    let mut keys: Vec<&str> = agent
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "approval_rules",
            "capability_tags",
            "created_at",
            "description",
            "endpoint_slug",
            "id",
            "limits",
            "model",
            "multitask",
            "name",
            "sub_agent_ids",
            "tool_ids",
            "updated_at",
        ],
        "agent fields: {agent}"
    );
    assert_id(agent["id"].as_str().unwrap(), "agent");
    assert_eq!(agent["name"], "Minimal");
    assert_eq!(agent["description"], "");
    assert_eq!(agent["model"], Value::Null);
    assert_eq!(agent["tool_ids"], json!([]));
    assert_eq!(agent["sub_agent_ids"], json!([]));
    assert_eq!(agent["capability_tags"], json!([]));
    assert_eq!(agent["endpoint_slug"], Value::Null);
    assert_eq!(agent["approval_rules"], json!([]));
    assert_eq!(agent["limits"]["max_iterations"], 20);
    assert_eq!(agent["limits"]["run_timeout_seconds"], 600);
    assert!(
        agent["limits"]
            .get("token_budget")
            .is_none_or(Value::is_null),
        "{agent}"
    );
    assert_eq!(agent["multitask"], "enqueue");
    assert_timestamp(agent["created_at"].as_str().unwrap());
    assert_timestamp(agent["updated_at"].as_str().unwrap());
    let fetched = app
        .get(&format!("/ai/agents/{}", agent["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched.ok(200), &agent);
    app.stop().await;
}

fn full_request(sub_agent: &str) -> CreateAgentRequest {
    CreateAgentRequest {
        name: "Full".into(),
        description: Some("Answers billing questions.\nPolitely.".into()),
        model: Some(ModelConfig {
            provider: "echo".into(),
            model: "echo".into(),
            temperature: Some(0.7),
            max_output_tokens: Some(2048),
        }),
        tool_ids: Some(vec![]),
        sub_agent_ids: Some(vec![sub_agent.to_owned()]),
        capability_tags: Some(vec![
            "billing".into(),
            "data-validation".into(),
            "v1.2:x_y".into(),
        ]),
        endpoint_slug: Some("billing-pool".into()),
        approval_rules: Some(vec![
            ApprovalRule {
                tool: "send_*".into(),
                expires_in_seconds: None,
            },
            ApprovalRule {
                tool: "delete_account".into(),
                expires_in_seconds: Some(120),
            },
        ]),
        limits: Some(AgentLimits {
            max_iterations: Some(7),
            token_budget: Some(50_000),
            run_timeout_seconds: Some(30),
        }),
        multitask: Some(MultitaskPolicy::Interrupt),
    }
}

async fn create_round_trips_every_field(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let helper = app.agent("Helper").await;
    let request = full_request(&helper.id);
    let agent = app
        .client
        .ai()
        .agents()
        .create_agent(request.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(agent.name, request.name);
    assert_eq!(agent.description, request.description.clone().unwrap());
    assert_eq!(agent.model, request.model);
    assert_eq!(agent.tool_ids, Vec::<String>::new());
    assert_eq!(agent.sub_agent_ids, vec![helper.id.clone()]);
    assert_eq!(
        agent.capability_tags,
        request.capability_tags.clone().unwrap()
    );
    assert_eq!(agent.endpoint_slug.as_deref(), Some("billing-pool"));
    assert_eq!(
        agent.approval_rules,
        request.approval_rules.clone().unwrap()
    );
    assert_eq!(agent.limits, request.limits.clone().unwrap());
    assert_eq!(agent.multitask, MultitaskPolicy::Interrupt);

    let fetched = app
        .client
        .ai()
        .agents()
        .get_agent(&agent.id)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched, agent);
    let listed = app
        .client
        .ai()
        .agents()
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data, vec![helper, agent]);
    app.stop().await;
}

async fn update_changes_only_given_fields(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let helper = app.agent("Helper").await;
    let agents = app.client.ai().agents();
    let original = agents
        .create_agent(full_request(&helper.id))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;

    let described = agents
        .update_agent(
            &original.id,
            UpdateAgentRequest {
                description: Some("New description".into()),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(described.description, "New description");
    assert_eq!(described.name, original.name);
    assert_eq!(described.model, original.model);
    assert_eq!(described.sub_agent_ids, original.sub_agent_ids);
    assert_eq!(described.capability_tags, original.capability_tags);
    assert_eq!(described.endpoint_slug, original.endpoint_slug);
    assert_eq!(described.approval_rules, original.approval_rules);
    assert_eq!(described.limits, original.limits);
    assert_eq!(described.multitask, original.multitask);
    assert_eq!(described.created_at, original.created_at);
    assert!(
        described.updated_at > original.updated_at,
        "updated_at moves forward"
    );
    assert_eq!(
        agents.get_agent(&original.id).send().await.unwrap(),
        described
    );

    // An empty PATCH changes nothing visible.
    let same = app
        .patch(&format!("/ai/agents/{}", original.id), json!({}))
        .await;
    let same = same.ok(200);
    assert_eq!(same["description"], "New description");
    assert_eq!(same["endpoint_slug"], "billing-pool");

    // `null` clears the nullable fields.
    let cleared = app
        .patch(
            &format!("/ai/agents/{}", original.id),
            json!({"model": null, "endpoint_slug": null}),
        )
        .await;
    let cleared = cleared.ok(200);
    assert_eq!(cleared["model"], Value::Null);
    assert_eq!(cleared["endpoint_slug"], Value::Null);
    assert_eq!(cleared["description"], "New description");
    assert_eq!(cleared["name"], "Full");

    // Lists are replaced whole.
    let retagged = agents
        .update_agent(
            &original.id,
            UpdateAgentRequest {
                name: Some("Renamed".into()),
                capability_tags: Some(vec!["ops".into()]),
                sub_agent_ids: Some(vec![]),
                multitask: Some(MultitaskPolicy::Reject),
                model: Some(Some(crate::helpers::echo_model())),
                endpoint_slug: Some(Some("ops-pool".into())),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(retagged.name, "Renamed");
    assert_eq!(retagged.capability_tags, vec!["ops".to_owned()]);
    assert!(retagged.sub_agent_ids.is_empty());
    assert_eq!(retagged.multitask, MultitaskPolicy::Reject);
    assert_eq!(retagged.model, Some(crate::helpers::echo_model()));
    assert_eq!(retagged.endpoint_slug.as_deref(), Some("ops-pool"));
    assert_eq!(retagged.description, "New description");

    // Invalid changes are refused and change nothing.
    let resp = app
        .patch(&format!("/ai/agents/{}", original.id), json!({"name": ""}))
        .await;
    resp.assert_error(422, "validation_failed", Some("name"));
    let resp = app
        .patch(
            &format!("/ai/agents/{}", original.id),
            json!({"sub_agent_ids": [original.id]}),
        )
        .await;
    resp.assert_error(422, "validation_failed", Some("sub_agent_ids[0]"));
    let resp = app
        .patch(
            &format!("/ai/agents/{}", original.id),
            json!({"description": "partial", "model": {"provider": "echo"}}),
        )
        .await;
    resp.assert_error(422, "validation_failed", Some("model.model"));
    assert_eq!(
        agents.get_agent(&original.id).send().await.unwrap(),
        retagged
    );
    app.stop().await;
}

async fn delete_answers_deleted_then_404(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let keep = app.agent("keep").await;
    let doomed = app.agent("doomed").await;
    let path = format!("/ai/agents/{}", doomed.id);
    let resp = app.call(Method::DELETE, &path, None).await;
    assert_eq!(resp.ok(200), &json!({"id": doomed.id, "deleted": true}));
    app.get(&path)
        .await
        .assert_error(404, "agent_not_found", None);
    app.call(Method::DELETE, &path, None)
        .await
        .assert_error(404, "agent_not_found", None);
    app.patch(&path, json!({"name": "back"}))
        .await
        .assert_error(404, "agent_not_found", None);
    let listed = app
        .client
        .ai()
        .agents()
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data, vec![keep]);
    app.stop().await;
}

async fn agent_in_use_until_its_projects_are_archived(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("busy").await;
    let first = app.project(&actor.id, &agent.id, "one").await;
    let second = app.project(&actor.id, &agent.id, "two").await;
    let agents = app.client.ai().agents();
    let projects = app.client.ai().actor_projects();

    assert_api_error(
        agents.delete_agent(&agent.id).send().await,
        409,
        ErrorCode::AgentInUse,
        None,
    );
    projects
        .archive_actor_project(&first.id)
        .send()
        .await
        .unwrap();
    // One active project is enough to keep it.
    assert_api_error(
        agents.delete_agent(&agent.id).send().await,
        409,
        ErrorCode::AgentInUse,
        None,
    );
    assert_eq!(agents.get_agent(&agent.id).send().await.unwrap(), agent);
    projects
        .archive_actor_project(&second.id)
        .send()
        .await
        .unwrap();

    let deleted = agents.delete_agent(&agent.id).send().await.unwrap();
    assert_eq!(deleted.id, agent.id);
    assert!(deleted.deleted);
    assert_api_error(
        agents.get_agent(&agent.id).send().await,
        404,
        ErrorCode::AgentNotFound,
        None,
    );
    // A deleted agent cannot be used for a new project.
    assert_api_error(
        projects
            .create_actor_project(
                &actor.id,
                tessera_client::models::CreateActorProjectRequest {
                    agent_id: agent.id.clone(),
                    name: "three".into(),
                },
            )
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("agent_id"),
    );
    app.stop().await;
}

async fn referenced_tools_and_sub_agents_must_exist(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let helper = app.agent("Helper").await;
    let agents = app.client.ai().agents();

    assert_api_error(
        agents
            .create_agent(CreateAgentRequest {
                tool_ids: Some(vec![unknown_id("tool")]),
                ..echo_agent("with tool")
            })
            .send()
            .await,
        404,
        ErrorCode::ToolNotFound,
        Some("tool_ids[0]"),
    );
    assert_api_error(
        agents
            .create_agent(CreateAgentRequest {
                sub_agent_ids: Some(vec![unknown_id("agent")]),
                ..echo_agent("with ghost")
            })
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("sub_agent_ids[0]"),
    );
    assert_api_error(
        agents
            .create_agent(CreateAgentRequest {
                sub_agent_ids: Some(vec![helper.id.clone(), unknown_id("agent")]),
                ..echo_agent("half ghost")
            })
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("sub_agent_ids[1]"),
    );
    assert_api_error(
        agents
            .update_agent(
                &helper.id,
                UpdateAgentRequest {
                    tool_ids: Some(vec![unknown_id("tool")]),
                    ..Default::default()
                },
            )
            .send()
            .await,
        404,
        ErrorCode::ToolNotFound,
        Some("tool_ids[0]"),
    );
    // A malformed reference names the item too (as not found or as invalid).
    for (body, field) in [
        (json!({"name": "x", "tool_ids": ["nope"]}), "tool_ids[0]"),
        (
            json!({"name": "x", "sub_agent_ids": ["nope"]}),
            "sub_agent_ids[0]",
        ),
    ] {
        let resp = app.post("/ai/agents", body.clone()).await;
        assert!(
            resp.status == 404 || resp.status == 422,
            "{body}: {}",
            resp.text
        );
        let code = resp.body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        resp.assert_error(resp.status, &code, Some(field));
    }
    let listed = agents
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data, vec![helper.clone()]);
    assert_eq!(agents.get_agent(&helper.id).send().await.unwrap(), helper);
    app.stop().await;
}

async fn list_filters_by_endpoint_slug(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agents = app.client.ai().agents();
    let mut made = Vec::new();
    for (name, slug) in [
        ("s1", Some("support")),
        ("x", Some("sales")),
        ("s2", Some("support")),
        ("n", None),
    ] {
        made.push(
            agents
                .create_agent(CreateAgentRequest {
                    endpoint_slug: slug.map(str::to_owned),
                    ..echo_agent(name)
                })
                .send()
                .await
                .unwrap(),
        );
    }
    let support = agents
        .list_agents(ListAgentsParams {
            endpoint_slug: Some("support".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(support.data, vec![made[0].clone(), made[2].clone()]);
    assert!(!support.has_more);
    let none = agents
        .list_agents(ListAgentsParams {
            endpoint_slug: Some("nobody".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert!(none.data.is_empty());
    let all = agents
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(all.data, made);
    app.stop().await;
}

/// A delete racing a project creation must not both succeed: an active project would then use
/// a deleted agent.
async fn delete_never_leaves_an_active_project_without_its_agent(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    for round in 0..30 {
        let agent = app.agent(&format!("racer {round}")).await;
        let (creator, deleter) = (app.client.clone(), app.client.clone());
        let (actor_id, agent_id) = (actor.id.clone(), agent.id.clone());
        let create = tokio::spawn(async move {
            creator
                .ai()
                .actor_projects()
                .create_actor_project(
                    &actor_id,
                    tessera_client::models::CreateActorProjectRequest {
                        agent_id,
                        name: "race".into(),
                    },
                )
                .send()
                .await
        });
        let agent_id = agent.id.clone();
        let delete =
            tokio::spawn(async move { deleter.ai().agents().delete_agent(&agent_id).send().await });
        let (created, deleted) = (create.await.unwrap(), delete.await.unwrap());
        match (&created, &deleted) {
            (Ok(project), Ok(_)) => panic!(
                "round {round}: both the project {} and the deletion of its agent {} succeeded",
                project.id, agent.id
            ),
            (Ok(_), Err(err)) => assert_eq!(
                err.code(),
                Some(ErrorCode::AgentInUse),
                "round {round}: {err}"
            ),
            (Err(err), Ok(_)) => assert_eq!(
                err.code(),
                Some(ErrorCode::AgentNotFound),
                "round {round}: {err}"
            ),
            (Err(a), Err(b)) => panic!("round {round}: both failed: {a} / {b}"),
        }
    }
    app.stop().await;
}
