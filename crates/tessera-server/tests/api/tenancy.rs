//! Tenancy: a deployment never sees, changes or learns of another deployment's objects.

use tessera_client::models::{
    CreateActorProjectRequest, CreateAgentRequest, ListActorProjectsParams, ListActorsParams,
    ListAgentsParams, LookupActorParams, PageParams, ProjectStatus, UpdateAgentRequest,
};
use tessera_client::ErrorCode;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{actor_request, assert_api_error, echo_agent, spawn_app};

backend_tests!(
    another_deployment_gets_404_for_every_object,
    lists_and_lookups_stay_within_the_deployment,
    each_caller_sees_its_own_deployment,
);

async fn another_deployment_gets_404_for_every_object(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let b = app.create_deployment("other").await;
    let a_actor = app.actor("shared-key").await;
    let a_agent = app.agent("a-agent").await;
    let a_project = app.project(&a_actor.id, &a_agent.id, "a-project").await;
    let a_keys = app
        .client
        .secret_keys()
        .list(PageParams::default())
        .send()
        .await
        .unwrap();
    let a_key_id = a_keys.data[0].id.clone();

    let ai = b.client.ai();
    assert_api_error(
        ai.actors().get_actor(&a_actor.id).send().await,
        404,
        ErrorCode::ActorNotFound,
        None,
    );
    assert_api_error(
        ai.agents().get_agent(&a_agent.id).send().await,
        404,
        ErrorCode::AgentNotFound,
        None,
    );
    assert_api_error(
        ai.agents()
            .update_agent(
                &a_agent.id,
                UpdateAgentRequest {
                    name: Some("hijacked".into()),
                    ..Default::default()
                },
            )
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        None,
    );
    assert_api_error(
        ai.agents().delete_agent(&a_agent.id).send().await,
        404,
        ErrorCode::AgentNotFound,
        None,
    );
    assert_api_error(
        ai.actor_projects()
            .get_actor_project(&a_project.id)
            .send()
            .await,
        404,
        ErrorCode::ProjectNotFound,
        None,
    );
    assert_api_error(
        ai.actor_projects()
            .archive_actor_project(&a_project.id)
            .send()
            .await,
        404,
        ErrorCode::ProjectNotFound,
        None,
    );
    assert_api_error(
        b.client.secret_keys().revoke(&a_key_id).send().await,
        404,
        ErrorCode::SecretKeyNotFound,
        None,
    );

    // B's own actor and agent, so that only the foreign reference is wrong.
    let b_actor = ai
        .actors()
        .create_actor(actor_request("user", "b-user"))
        .send()
        .await
        .unwrap();
    let b_agent = ai
        .agents()
        .create_agent(echo_agent("b-agent"))
        .send()
        .await
        .unwrap();
    assert_api_error(
        ai.actor_projects()
            .create_actor_project(
                &a_actor.id,
                CreateActorProjectRequest {
                    agent_id: b_agent.id.clone(),
                    name: "p".into(),
                },
            )
            .send()
            .await,
        404,
        ErrorCode::ActorNotFound,
        Some("actor_id"),
    );
    assert_api_error(
        ai.actor_projects()
            .create_actor_project(
                &b_actor.id,
                CreateActorProjectRequest {
                    agent_id: a_agent.id.clone(),
                    name: "p".into(),
                },
            )
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("agent_id"),
    );
    assert_api_error(
        ai.agents()
            .create_agent(CreateAgentRequest {
                sub_agent_ids: Some(vec![a_agent.id.clone()]),
                ..echo_agent("delegator")
            })
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("sub_agent_ids[0]"),
    );
    assert_api_error(
        ai.agents()
            .update_agent(
                &b_agent.id,
                UpdateAgentRequest {
                    sub_agent_ids: Some(vec![a_agent.id.clone()]),
                    ..Default::default()
                },
            )
            .send()
            .await,
        404,
        ErrorCode::AgentNotFound,
        Some("sub_agent_ids[0]"),
    );

    // A's objects are untouched and A's key still works.
    let a_ai = app.client.ai();
    assert_eq!(
        a_ai.agents().get_agent(&a_agent.id).send().await.unwrap(),
        a_agent
    );
    let project = a_ai
        .actor_projects()
        .get_actor_project(&a_project.id)
        .send()
        .await
        .unwrap();
    assert_eq!(project.status, ProjectStatus::Active);
    let a_keys_after = app
        .client
        .secret_keys()
        .list(PageParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(a_keys_after.data[0].revoked_at, None);
    // B's agent list holds only B's agent, with no sub-agent from A.
    let b_agents = ai
        .agents()
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(b_agents.data, vec![b_agent]);
    // And the reverse direction: A cannot see B's objects either.
    assert_api_error(
        a_ai.actors().get_actor(&b_actor.id).send().await,
        404,
        ErrorCode::ActorNotFound,
        None,
    );
    app.stop().await;
}

async fn lists_and_lookups_stay_within_the_deployment(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let b = app.create_deployment("other").await;
    let a_actor = app.actor("shared-key").await;
    let a_agent = app.agent("a-agent").await;
    app.project(&a_actor.id, &a_agent.id, "a-project").await;
    let ai = b.client.ai();

    let lookup = ai
        .actors()
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: "shared-key".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(lookup.actor, None);
    assert!(ai
        .actors()
        .list_actors(ListActorsParams::default())
        .send()
        .await
        .unwrap()
        .data
        .is_empty());
    assert!(ai
        .agents()
        .list_agents(ListAgentsParams::default())
        .send()
        .await
        .unwrap()
        .data
        .is_empty());
    assert!(ai
        .actor_projects()
        .list_actor_projects(ListActorProjectsParams::default())
        .send()
        .await
        .unwrap()
        .data
        .is_empty());
    // Filtering by A's ids does not reveal A's projects either.
    let filtered = ai
        .actor_projects()
        .list_actor_projects(ListActorProjectsParams {
            actor_id: Some(a_actor.id.clone()),
            agent_id: Some(a_agent.id.clone()),
            ..Default::default()
        })
        .send()
        .await;
    match filtered {
        Ok(page) => assert!(page.data.is_empty(), "{page:?}"),
        // Refusing the foreign filter as unknown is acceptable too; revealing it is not.
        Err(err) => assert_eq!(err.status(), Some(404), "{err}"),
    }
    let b_keys = b
        .client
        .secret_keys()
        .list(PageParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(b_keys.data.len(), 1, "B sees only its own key");
    assert_eq!(b_keys.data[0].prefix, b.key[..12]);

    // The same (subject_type, external_key) pair is free in another deployment.
    let b_actor = ai
        .actors()
        .create_actor(actor_request("user", "shared-key"))
        .send()
        .await
        .unwrap();
    assert_ne!(b_actor.id, a_actor.id);
    let a_lookup = app
        .client
        .ai()
        .actors()
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: "shared-key".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(a_lookup.actor.map(|a| a.id), Some(a_actor.id.clone()));
    let a_actors = app
        .client
        .ai()
        .actors()
        .list_actors(ListActorsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(a_actors.data, vec![a_actor]);
    app.stop().await;
}

async fn each_caller_sees_its_own_deployment(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let b = app.create_deployment("other").await;
    let a_dep = app.client.deployments().current().send().await.unwrap();
    let b_dep = b.client.deployments().current().send().await.unwrap();
    assert_eq!(a_dep.name, "default");
    assert_eq!(b_dep.name, "other");
    assert_eq!(b_dep.id, b.deployment_id);
    assert_ne!(a_dep.id, b_dep.id);
    assert_eq!(b_dep.backend_host, app.base_url);
    // A second key of B still belongs to B.
    let created = b
        .client
        .secret_keys()
        .create(Default::default())
        .send()
        .await
        .unwrap();
    let again = app
        .client_with(&created.key)
        .deployments()
        .current()
        .send()
        .await
        .unwrap();
    assert_eq!(again, b_dep);
    app.stop().await;
}
