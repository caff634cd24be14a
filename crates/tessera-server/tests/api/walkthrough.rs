//! The README walk-through (actor → lookup → agent → project → a mistake), end to end through
//! the SDK.

use tessera_client::models::{
    CreateActorProjectRequest, CreateActorRequest, CreateAgentRequest, LookupActorParams,
    ModelConfig, MultitaskPolicy, ProjectStatus,
};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use tessera_client::ErrorCode;

use crate::helpers::{actor_request, assert_api_error, assert_id, assert_timestamp, spawn_app};

backend_tests!(readme_walkthrough);

async fn readme_walkthrough(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let ai = app.client.ai();

    let deployment = app.client.deployments().current().send().await.unwrap();
    assert_eq!(deployment.name, "default");
    assert_id(&deployment.id, "dep");

    // 1. An actor for one of the app's users.
    let actor = ai
        .actors()
        .create_actor(CreateActorRequest {
            display_name: Some("Ada".into()),
            ..actor_request("user", "ext-1234")
        })
        .send()
        .await
        .unwrap();
    assert_id(&actor.id, "actor");
    assert_eq!(actor.subject_type, "user");
    assert_eq!(actor.external_key, "ext-1234");
    assert_eq!(actor.display_name.as_deref(), Some("Ada"));
    assert_timestamp(&actor.created_at);

    // 2. Found again by the app's own identifier.
    let found = ai
        .actors()
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: "ext-1234".into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(found.actor.as_ref(), Some(&actor));

    // 3. An agent on the offline echo model.
    let agent = ai
        .agents()
        .create_agent(CreateAgentRequest {
            name: "Support bot".into(),
            model: Some(ModelConfig {
                provider: "echo".into(),
                model: "echo".into(),
                temperature: None,
                max_output_tokens: None,
            }),
            capability_tags: Some(vec!["support".into()]),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_id(&agent.id, "agent");
    assert_eq!(agent.name, "Support bot");
    assert_eq!(
        agent.model.as_ref().map(|m| m.provider.as_str()),
        Some("echo")
    );
    assert_eq!(agent.multitask, MultitaskPolicy::Enqueue);
    assert_eq!(agent.capability_tags, vec!["support".to_owned()]);

    // 4. A project binding the two.
    let project = ai
        .actor_projects()
        .create_actor_project(
            &actor.id,
            CreateActorProjectRequest {
                agent_id: agent.id.clone(),
                name: "Onboarding".into(),
            },
        )
        .send()
        .await
        .unwrap();
    assert_id(&project.id, "proj");
    assert_eq!(project.actor_id, actor.id);
    assert_eq!(project.agent_id, agent.id);
    assert_eq!(project.name, "Onboarding");
    assert_eq!(project.status, ProjectStatus::Active);
    assert_eq!(project.archived_at, None);

    let fetched = ai
        .actor_projects()
        .get_actor_project(&project.id)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched, project);

    // 5. Mistakes are answered with a code and the field at fault.
    let err = assert_api_error(
        app.client
            .operation::<serde_json::Value>(tessera_client::api::ops::CREATE_AI_AGENT, &[])
            .json(serde_json::json!({"name": "x", "instructions": "agents have no instructions"}))
            .send()
            .await,
        422,
        ErrorCode::ValidationFailed,
        Some("instructions"),
    );
    assert!(
        err.request_id().is_some_and(|id| id.starts_with("req_")),
        "{err}"
    );
    app.stop().await;
}
