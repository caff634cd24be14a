//! Actor projects: creation with references, archiving, and list filters.

use serde_json::json;
use tessera_client::models::{CreateActorProjectRequest, ListActorProjectsParams, ProjectStatus};
use tessera_client::ErrorCode;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{assert_api_error, assert_id, assert_timestamp, spawn_app, unknown_id};

backend_tests!(
    create_and_get_round_trip,
    archive_is_idempotent,
    references_must_exist,
    list_filters_by_actor_agent_and_status,
);

async fn create_and_get_round_trip(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let resp = app
        .post(
            &format!("/ai/actor-projects?actor_id={}", actor.id),
            json!({"agent_id": agent.id, "name": "Q3 planning"}),
        )
        .await;
    let project = resp.ok(201).clone();
    assert_id(project["id"].as_str().unwrap(), "proj");
    assert_eq!(project["actor_id"], actor.id.as_str());
    assert_eq!(project["agent_id"], agent.id.as_str());
    assert_eq!(project["name"], "Q3 planning");
    assert_eq!(project["status"], "active");
    assert!(
        project
            .get("archived_at")
            .is_none_or(serde_json::Value::is_null),
        "{project}"
    );
    assert_timestamp(project["created_at"].as_str().unwrap());
    let fetched = app
        .get(&format!(
            "/ai/actor-projects/{}",
            project["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(fetched.ok(200), &project);
    // Names need not be unique: a second project of the same pair is its own project.
    let again = app.project(&actor.id, &agent.id, "Q3 planning").await;
    assert_ne!(again.id, project["id"].as_str().unwrap());
    app.stop().await;
}

async fn archive_is_idempotent(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    let projects = app.client.ai().actor_projects();

    let archived = projects
        .archive_actor_project(&project.id)
        .send()
        .await
        .unwrap();
    assert_eq!(archived.status, ProjectStatus::Archived);
    assert_timestamp(archived.archived_at.as_deref().expect("archived_at is set"));
    assert_eq!(archived.id, project.id);
    assert_eq!(archived.name, project.name);
    assert_eq!(archived.created_at, project.created_at);

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let again = projects
        .archive_actor_project(&project.id)
        .send()
        .await
        .unwrap();
    assert_eq!(again, archived, "a second archive returns the same record");
    assert_eq!(
        projects
            .get_actor_project(&project.id)
            .send()
            .await
            .unwrap(),
        archived
    );
    // Raw status: 200 both times.
    let raw = app
        .call(
            reqwest::Method::POST,
            &format!("/ai/actor-projects/{}/archive", project.id),
            None,
        )
        .await;
    assert_eq!(raw.ok(200)["status"], "archived");
    app.stop().await;
}

async fn references_must_exist(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let agent = app.agent("a").await;
    let projects = app.client.ai().actor_projects();
    let body = |agent_id: &str| CreateActorProjectRequest {
        agent_id: agent_id.to_owned(),
        name: "p".into(),
    };
    assert_api_error(
        projects
            .create_actor_project(unknown_id("actor"), body(&agent.id))
            .send()
            .await,
        404,
        ErrorCode::ActorNotFound,
        Some("actor_id"),
    );
    assert_api_error(
        projects
            .create_actor_project(&actor.id, body(&unknown_id("agent")))
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("agent_id"),
    );
    // Ids of the wrong kind are not found either.
    assert_api_error(
        projects
            .create_actor_project(&agent.id, body(&agent.id))
            .send()
            .await,
        404,
        ErrorCode::ActorNotFound,
        Some("actor_id"),
    );
    assert_api_error(
        projects
            .create_actor_project(&actor.id, body(&actor.id))
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("agent_id"),
    );
    let list = projects
        .list_actor_projects(ListActorProjectsParams::default())
        .send()
        .await
        .unwrap();
    assert!(list.data.is_empty());
    app.stop().await;
}

async fn list_filters_by_actor_agent_and_status(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let ann = app.actor("ann").await;
    let bob = app.actor("bob").await;
    let alpha = app.agent("alpha").await;
    let beta = app.agent("beta").await;
    let ann_alpha = app.project(&ann.id, &alpha.id, "1").await;
    let ann_beta = app.project(&ann.id, &beta.id, "2").await;
    let bob_alpha = app.project(&bob.id, &alpha.id, "3").await;
    let bob_beta = app.project(&bob.id, &beta.id, "4").await;
    let projects = app.client.ai().actor_projects();
    let ann_beta = projects
        .archive_actor_project(&ann_beta.id)
        .send()
        .await
        .unwrap();

    let list = |params: ListActorProjectsParams| async move {
        projects
            .list_actor_projects(params)
            .send()
            .await
            .unwrap()
            .data
    };
    assert_eq!(
        list(ListActorProjectsParams::default()).await,
        vec![
            ann_alpha.clone(),
            ann_beta.clone(),
            bob_alpha.clone(),
            bob_beta.clone()
        ]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            actor_id: Some(ann.id.clone()),
            ..Default::default()
        })
        .await,
        vec![ann_alpha.clone(), ann_beta.clone()]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            agent_id: Some(alpha.id.clone()),
            ..Default::default()
        })
        .await,
        vec![ann_alpha.clone(), bob_alpha.clone()]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            status: Some(ProjectStatus::Archived),
            ..Default::default()
        })
        .await,
        vec![ann_beta.clone()]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            status: Some(ProjectStatus::Active),
            ..Default::default()
        })
        .await,
        vec![ann_alpha.clone(), bob_alpha.clone(), bob_beta.clone()]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            actor_id: Some(bob.id.clone()),
            agent_id: Some(beta.id.clone()),
            status: Some(ProjectStatus::Active),
            ..Default::default()
        })
        .await,
        vec![bob_beta.clone()]
    );
    assert_eq!(
        list(ListActorProjectsParams {
            actor_id: Some(ann.id.clone()),
            status: Some(ProjectStatus::Active),
            limit: Some(1),
            ..Default::default()
        })
        .await,
        vec![ann_alpha.clone()]
    );
    assert!(list(ListActorProjectsParams {
        actor_id: Some(bob.id.clone()),
        status: Some(ProjectStatus::Archived),
        ..Default::default()
    })
    .await
    .is_empty());
    app.stop().await;
}
