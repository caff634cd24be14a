//! The storage conformance suite: every backend must behave identically.
//!
//! Runs on SQLite always and on PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;

use std::sync::Arc;

use tessera_domain::agent::AgentSpec;
use tessera_domain::identity::{AuditActor, AuditBy, AuditClient};
use tessera_domain::records::{NewActor, NewDeployment, NewProject, ProjectStatus};
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::validate::{
    DeploymentName, EndpointSlug, ExternalKey, Label, Metadata, SubjectType,
};
use tessera_domain::{Scope, Timestamp, ToolId};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, ActorFilter, AgentFilter, Conflict, ConnectOptions, Cursor, Entity,
    NewSecretKey, PageRequest, ProjectFilter, Store, StoreError,
};

async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .expect("open store")
}

fn new_key(name: &str) -> (PlainSecret, NewSecretKey) {
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let key = NewSecretKey {
        name: Label::parse("name", name).unwrap(),
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    (secret, key)
}

fn new_deployment(name: &str) -> NewDeployment {
    NewDeployment {
        name: DeploymentName::parse("name", name).unwrap(),
        backend_host: "http://127.0.0.1:8080".into(),
        frontend_host: "http://127.0.0.1:8080".into(),
    }
}

async fn deployment(store: &Arc<dyn Store>, name: &str) -> (Scope, PlainSecret) {
    let (secret, key) = new_key("first");
    let (dep, _) = store
        .create_deployment(&new_deployment(name), &key)
        .await
        .unwrap();
    (Scope::deployment(dep.id), secret)
}

fn new_actor(subject: &str, key: &str) -> NewActor {
    NewActor {
        subject_type: SubjectType::parse("subject_type", subject).unwrap(),
        external_key: ExternalKey::parse("external_key", key).unwrap(),
        display_name: None,
        metadata: Metadata::parse("metadata", serde_json::json!({"plan": "pro"})).unwrap(),
    }
}

fn spec(name: &str) -> AgentSpec {
    tessera_store::testing::agent_spec(name, "helps")
}

fn is_not_found(err: &StoreError, want: Entity) -> bool {
    matches!(err, StoreError::NotFound { entity, .. } if *entity == want)
}

backend_tests!(
    migrations_are_idempotent_and_data_survives_reopen,
    bootstrap_creates_exactly_one_default_deployment,
    deployment_names_are_unique,
    deployment_settings_are_replaced_per_deployment,
    keys_authenticate_until_revoked,
    last_active_key_cannot_be_revoked,
    concurrent_revocations_are_recorded_once,
    actors_are_unique_per_deployment_and_looked_up,
    lists_page_forwards_and_backwards,
    agents_update_with_versions_and_check_references,
    agents_in_use_cannot_be_deleted,
    projects_require_scoped_actor_and_agent,
    nothing_crosses_deployments,
);

async fn migrations_are_idempotent_and_data_survives_reopen(db: &TestDatabase) {
    let first = tessera_store::migrate(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert!(!first.applied.is_empty());
    let again = tessera_store::migrate(&db.url, &ConnectOptions::default())
        .await
        .unwrap();
    assert!(again.applied.is_empty());
    assert_eq!(again.current_version, first.current_version);

    let store = open(db).await;
    let (scope, _) = deployment(&store, "durable").await;
    let actor = store
        .create_actor(&scope, &new_actor("user", "u1"))
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let store = open(db).await;
    assert_eq!(store.get_actor(&scope, &actor.id).await.unwrap(), actor);
    store.close().await;
}

async fn bootstrap_creates_exactly_one_default_deployment(db: &TestDatabase) {
    let store = open(db).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let (_, key) = new_key("default");
            store
                .bootstrap_deployment(&new_deployment("default"), &key)
                .await
                .unwrap()
        }));
    }
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap().is_some() {
            created += 1;
        }
    }
    assert_eq!(created, 1, "exactly one concurrent bootstrap creates");
    let found = store.find_deployment("default").await.unwrap().unwrap();
    assert_eq!(found.name, "default");
    assert_eq!(
        store
            .find_deployment(found.id.as_str())
            .await
            .unwrap()
            .unwrap(),
        found
    );
    store.close().await;
}

async fn deployment_names_are_unique(db: &TestDatabase) {
    let store = open(db).await;
    deployment(&store, "acme").await;
    let (_, key) = new_key("first");
    let err = store
        .create_deployment(&new_deployment("acme"), &key)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::Conflict(Conflict::DeploymentNameTaken)
    ));
    assert!(store.find_deployment("nope").await.unwrap().is_none());
    store.close().await;
}

async fn deployment_settings_are_replaced_per_deployment(db: &TestDatabase) {
    use tessera_domain::agent::ModelRef;
    use tessera_domain::records::DeploymentSettings;
    let store = open(db).await;
    let (a, _) = deployment(&store, "settings-a").await;
    let (b, _) = deployment(&store, "settings-b").await;
    let fresh = store.get_deployment(&a).await.unwrap();
    assert_eq!(fresh.settings, DeploymentSettings::default());

    use tessera_domain::validate::{ModelName, ProviderName};
    let model = ModelRef::new(
        ProviderName::parse("provider", "openai").unwrap(),
        ModelName::parse("model", "gpt-test").unwrap(),
        Some(0.5),
        Some(256),
    )
    .unwrap();
    let settings = DeploymentSettings {
        default_model: Some(model),
    };
    let updated = store
        .update_deployment_settings(&a, &settings)
        .await
        .unwrap();
    assert_eq!(updated.settings, settings);
    assert_eq!(updated.id, fresh.id);
    assert_eq!(store.get_deployment(&a).await.unwrap().settings, settings);
    assert_eq!(
        store.get_deployment(&b).await.unwrap().settings,
        DeploymentSettings::default(),
        "another deployment's settings are untouched"
    );

    let cleared = store
        .update_deployment_settings(&a, &DeploymentSettings::default())
        .await
        .unwrap();
    assert_eq!(cleared.settings.default_model, None);
    store.close().await;
}

async fn keys_authenticate_until_revoked(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, first) = deployment(&store, "keys").await;
    let now = Timestamp::now();
    let auth = store
        .authenticate_key(&first.hash(), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auth.scope, scope);

    let (second, key) = new_key("second");
    let by = AuditBy {
        actor: AuditActor::SecretKey(auth.key_id.clone()),
        client: AuditClient {
            ip: Some("198.51.100.4".into()),
            user_agent: Some("conformance".into()),
        },
    };
    let record = store.create_key(&scope, &key, &by).await.unwrap();
    assert_eq!(record.prefix, second.display_prefix());
    assert!(store
        .authenticate_key(&second.hash(), now)
        .await
        .unwrap()
        .is_some());

    let revoked = store.revoke_key(&scope, &auth.key_id, &by).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(store
        .authenticate_key(&first.hash(), now)
        .await
        .unwrap()
        .is_none());
    // Revoking again is a no-op that returns the record.
    assert_eq!(
        store.revoke_key(&scope, &auth.key_id, &by).await.unwrap(),
        revoked
    );
    // The creation and the one revocation were recorded by their own transactions, by whom
    // the caller said, about the key.
    let events = common::audited(&store, &scope, None).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.subject_id.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("secret_key.created", Some(record.id.as_str().to_owned())),
            ("secret_key.revoked", Some(auth.key_id.as_str().to_owned())),
        ]
    );
    for event in &events {
        assert_eq!(event.actor_type, "secret_key");
        assert_eq!(event.actor_id.as_deref(), Some(auth.key_id.as_str()));
        assert_eq!(event.ip.as_deref(), Some("198.51.100.4"));
        assert!(event.data["prefix"].is_string());
    }
    let unknown = PlainSecret::generate(SECRET_KEY_PREFIX);
    assert!(store
        .authenticate_key(&unknown.hash(), now)
        .await
        .unwrap()
        .is_none());

    let keys = store
        .list_keys(&scope, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(keys.items.len(), 2);
    assert!(keys.items[1].last_used_at.is_some() || keys.items[0].last_used_at.is_some());
    store.close().await;
}

/// Revocations of one key racing each other all answer the revoked key; the one that revoked
/// it recorded `secret_key.revoked`, and only it.
async fn concurrent_revocations_are_recorded_once(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, _) = deployment(&store, "racing").await;
    let mut doomed = Vec::new();
    for round in 0..5 {
        let (_, key) = new_key(&format!("doomed-{round}"));
        let key = store
            .create_key(&scope, &key, &common::operator())
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (store, scope, id) = (store.clone(), scope.clone(), key.id.clone());
            tasks.push(tokio::spawn(async move {
                store
                    .revoke_key(&scope, &id, &common::operator())
                    .await
                    .unwrap()
            }));
        }
        let mut stamps = Vec::new();
        for task in tasks {
            stamps.push(task.await.unwrap().revoked_at.expect("revoked"));
        }
        stamps.sort();
        stamps.dedup();
        assert_eq!(
            stamps.len(),
            1,
            "round {round}: one revocation, seen by all"
        );
        doomed.push(Some(key.id.as_str().to_owned()));
    }
    let revoked: Vec<_> = common::audited(&store, &scope, Some("secret_key.revoked"))
        .await
        .into_iter()
        .map(|e| e.subject_id)
        .collect();
    assert_eq!(revoked, doomed, "one event per revoked key");
    store.close().await;
}

async fn last_active_key_cannot_be_revoked(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, first) = deployment(&store, "lonely").await;
    let auth = store
        .authenticate_key(&first.hash(), Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    let err = store
        .revoke_key(&scope, &auth.key_id, &common::operator())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::LastActiveKey)));
    assert!(
        common::audited(&store, &scope, None).await.is_empty(),
        "a refused revocation records nothing"
    );
    store.close().await;
}

async fn actors_are_unique_per_deployment_and_looked_up(db: &TestDatabase) {
    let store = open(db).await;
    let (a, _) = deployment(&store, "a").await;
    let (b, _) = deployment(&store, "b").await;
    let actor = store
        .create_actor(&a, &new_actor("user", "ext-1"))
        .await
        .unwrap();
    assert_eq!(actor.metadata, serde_json::json!({"plan": "pro"}));
    let err = store
        .create_actor(&a, &new_actor("user", "ext-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::ActorExists)));
    // Same pair in another deployment or with another subject type is a different actor.
    store
        .create_actor(&b, &new_actor("user", "ext-1"))
        .await
        .unwrap();
    store
        .create_actor(&a, &new_actor("service", "ext-1"))
        .await
        .unwrap();

    let found = store.lookup_actor(&a, "user", "ext-1").await.unwrap();
    assert_eq!(found, Some(actor.clone()));
    assert_eq!(store.lookup_actor(&a, "user", "nope").await.unwrap(), None);
    let users = store
        .list_actors(
            &a,
            &ActorFilter {
                subject_type: Some("user".into()),
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(users.items, vec![actor]);
    store.close().await;
}

async fn lists_page_forwards_and_backwards(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, _) = deployment(&store, "pages").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let actor = store
            .create_actor(&scope, &new_actor("user", &format!("k{i}")))
            .await
            .unwrap();
        ids.push(actor.id.into_string());
    }
    let filter = ActorFilter::default();
    let page = |cursor| PageRequest { limit: 3, cursor };
    let p1 = store
        .list_actors(&scope, &filter, &page(Cursor::First))
        .await
        .unwrap();
    let got: Vec<_> = p1.items.iter().map(|a| a.id.to_string()).collect();
    assert_eq!(got, ids[0..3]);
    assert!(p1.has_more);
    let p3 = store
        .list_actors(&scope, &filter, &page(Cursor::After(ids[5].clone())))
        .await
        .unwrap();
    assert_eq!(p3.items.len(), 1);
    assert!(!p3.has_more);
    let back = store
        .list_actors(&scope, &filter, &page(Cursor::Before(ids[5].clone())))
        .await
        .unwrap();
    let got: Vec<_> = back.items.iter().map(|a| a.id.to_string()).collect();
    assert_eq!(
        got,
        ids[2..5],
        "a page before a cursor is still oldest first"
    );
    assert!(back.has_more);
    let start = store
        .list_actors(&scope, &filter, &page(Cursor::Before(ids[2].clone())))
        .await
        .unwrap();
    assert_eq!(start.items.len(), 2);
    assert!(!start.has_more);
    store.close().await;
}

async fn agents_update_with_versions_and_check_references(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, _) = deployment(&store, "agents").await;
    let (other, _) = deployment(&store, "other").await;
    let helper = store.create_agent(&scope, &spec("helper")).await.unwrap();
    let foreign = store.create_agent(&other, &spec("foreign")).await.unwrap();

    let mut s = spec("lead");
    s.sub_agent_ids = vec![helper.id.clone()];
    s.endpoint_slug = Some(EndpointSlug::parse("endpoint_slug", "support").unwrap());
    let lead = store.create_agent(&scope, &s).await.unwrap();
    assert_eq!(lead.spec, s);
    assert_eq!(lead.version, 1);

    let pooled = store
        .list_agents(
            &scope,
            &AgentFilter {
                endpoint_slug: Some("support".into()),
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(pooled.items.len(), 1);

    // Another deployment's agent is not a valid sub-agent.
    let mut bad = spec("bad");
    bad.sub_agent_ids = vec![helper.id.clone(), foreign.id.clone()];
    let err = store.create_agent(&scope, &bad).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::Agent,
            field: Some("sub_agent_ids"),
            index: Some(1)
        }
    ));
    let mut with_tool = spec("tools");
    with_tool.tool_ids = vec![ToolId::generate()];
    let err = store.create_agent(&scope, &with_tool).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Tool));

    let mut changed = lead.spec.clone();
    changed.name = Label::parse("name", "lead v2").unwrap();
    let updated = store
        .update_agent(&scope, &lead.id, lead.version, &changed)
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.spec.name.as_str(), "lead v2");
    let err = store
        .update_agent(&scope, &lead.id, lead.version, &changed)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::StaleVersion)));
    let err = store
        .update_agent(&other, &lead.id, 2, &changed)
        .await
        .unwrap_err();
    assert!(is_not_found(&err, Entity::Agent));
    store.close().await;
}

async fn agents_in_use_cannot_be_deleted(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, _) = deployment(&store, "del").await;
    let actor = store
        .create_actor(&scope, &new_actor("user", "u"))
        .await
        .unwrap();
    let agent = store.create_agent(&scope, &spec("a")).await.unwrap();
    let project = store
        .create_project(
            &scope,
            &NewProject {
                actor_id: actor.id.clone(),
                agent_id: agent.id.clone(),
                name: Label::parse("name", "p").unwrap(),
            },
        )
        .await
        .unwrap();
    let err = store.delete_agent(&scope, &agent.id).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(Conflict::AgentInUse)));
    store.archive_project(&scope, &project.id).await.unwrap();
    store.delete_agent(&scope, &agent.id).await.unwrap();
    let err = store.get_agent(&scope, &agent.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Agent));
    let err = store.delete_agent(&scope, &agent.id).await.unwrap_err();
    assert!(is_not_found(&err, Entity::Agent));
    let listed = store
        .list_agents(&scope, &AgentFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert!(listed.items.is_empty());
    // The archived project still names its (deleted) agent.
    assert_eq!(
        store
            .get_project(&scope, &project.id)
            .await
            .unwrap()
            .agent_id,
        agent.id
    );
    store.close().await;
}

async fn projects_require_scoped_actor_and_agent(db: &TestDatabase) {
    let store = open(db).await;
    let (scope, _) = deployment(&store, "proj").await;
    let (other, _) = deployment(&store, "proj-other").await;
    let actor = store
        .create_actor(&scope, &new_actor("user", "u"))
        .await
        .unwrap();
    let agent = store.create_agent(&scope, &spec("a")).await.unwrap();
    let foreign_agent = store.create_agent(&other, &spec("f")).await.unwrap();
    let name = Label::parse("name", "Onboarding").unwrap();

    let err = store
        .create_project(
            &scope,
            &NewProject {
                actor_id: actor.id.clone(),
                agent_id: foreign_agent.id.clone(),
                name: name.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::Agent,
            field: Some("agent_id"),
            ..
        }
    ));
    let err = store
        .create_project(
            &other,
            &NewProject {
                actor_id: actor.id.clone(),
                agent_id: foreign_agent.id.clone(),
                name: name.clone(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::Actor,
            field: Some("actor_id"),
            ..
        }
    ));

    let project = store
        .create_project(
            &scope,
            &NewProject {
                actor_id: actor.id.clone(),
                agent_id: agent.id.clone(),
                name,
            },
        )
        .await
        .unwrap();
    assert_eq!(project.status, ProjectStatus::Active);
    let archived = store.archive_project(&scope, &project.id).await.unwrap();
    assert_eq!(archived.status, ProjectStatus::Archived);
    assert!(archived.archived_at.is_some());
    assert_eq!(
        store.archive_project(&scope, &project.id).await.unwrap(),
        archived
    );
    let active = store
        .list_projects(
            &scope,
            &ProjectFilter {
                status: Some(ProjectStatus::Active),
                ..Default::default()
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert!(active.items.is_empty());
    let by_actor = store
        .list_projects(
            &scope,
            &ProjectFilter {
                actor_id: Some(actor.id.clone()),
                ..Default::default()
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(by_actor.items, vec![archived]);
    store.close().await;
}

async fn nothing_crosses_deployments(db: &TestDatabase) {
    let store = open(db).await;
    let (a, _) = deployment(&store, "tenant-a").await;
    let (b, b_secret) = deployment(&store, "tenant-b").await;
    let actor = store
        .create_actor(&a, &new_actor("user", "u"))
        .await
        .unwrap();
    let agent = store.create_agent(&a, &spec("a")).await.unwrap();
    let project = store
        .create_project(
            &a,
            &NewProject {
                actor_id: actor.id.clone(),
                agent_id: agent.id.clone(),
                name: Label::parse("name", "p").unwrap(),
            },
        )
        .await
        .unwrap();
    let (_, extra) = new_key("extra");
    store
        .create_key(&a, &extra, &common::operator())
        .await
        .unwrap();
    let a_keys = store.list_keys(&a, &PageRequest::default()).await.unwrap();
    let b_key = store
        .authenticate_key(&b_secret.hash(), Timestamp::now())
        .await
        .unwrap()
        .unwrap();

    assert!(is_not_found(
        &store.get_actor(&b, &actor.id).await.unwrap_err(),
        Entity::Actor
    ));
    assert_eq!(store.lookup_actor(&b, "user", "u").await.unwrap(), None);
    assert!(is_not_found(
        &store.get_agent(&b, &agent.id).await.unwrap_err(),
        Entity::Agent
    ));
    assert!(is_not_found(
        &store.delete_agent(&b, &agent.id).await.unwrap_err(),
        Entity::Agent
    ));
    assert!(is_not_found(
        &store.get_project(&b, &project.id).await.unwrap_err(),
        Entity::Project
    ));
    assert!(is_not_found(
        &store.archive_project(&b, &project.id).await.unwrap_err(),
        Entity::Project
    ));
    assert!(is_not_found(
        &store
            .revoke_key(&b, &a_keys.items[0].id, &common::operator())
            .await
            .unwrap_err(),
        Entity::SecretKey
    ));
    assert!(is_not_found(
        &store
            .revoke_key(&a, &b_key.key_id, &common::operator())
            .await
            .unwrap_err(),
        Entity::SecretKey
    ));
    let all = PageRequest::default();
    assert!(store
        .list_actors(&b, &ActorFilter::default(), &all)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .list_agents(&b, &AgentFilter::default(), &all)
        .await
        .unwrap()
        .items
        .is_empty());
    assert!(store
        .list_projects(&b, &ProjectFilter::default(), &all)
        .await
        .unwrap()
        .items
        .is_empty());
    assert_eq!(store.list_keys(&b, &all).await.unwrap().items.len(), 1);
    let unknown_scope = Scope::deployment(tessera_domain::DeploymentId::generate());
    assert!(is_not_found(
        &store.get_deployment(&unknown_scope).await.unwrap_err(),
        Entity::Deployment
    ));
    store.close().await;
}
