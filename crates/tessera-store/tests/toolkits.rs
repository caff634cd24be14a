//! Conformance of third-party toolkits: enabling is idempotent and keeps the latest settings,
//! one connection per (actor, toolkit) that a new one replaces, statuses recorded as reported,
//! disabling takes the connections with it, and another deployment sees none of it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;
use common::*;

use tessera_domain::toolkit::{ConnectionStatus, ToolkitConnection, ToolkitSettings, ToolkitSlug};
use tessera_domain::{ActorId, ConnectionId};

backend_tests!(
    toolkits_are_enabled_idempotently_listed_and_disabled,
    connections_are_per_actor_replaced_and_updated,
    disabling_a_toolkit_deletes_its_connections,
    toolkits_of_another_deployment_are_not_found,
);

fn slug(s: &str) -> ToolkitSlug {
    ToolkitSlug::parse("toolkit", s).unwrap()
}

fn connection(actor: &ActorId, toolkit: &str, account: &str) -> ToolkitConnection {
    let now = Timestamp::now();
    ToolkitConnection {
        id: ConnectionId::generate(),
        actor_id: actor.clone(),
        toolkit: slug(toolkit),
        account_id: account.to_owned(),
        status: ConnectionStatus::Pending,
        redirect_url: Some(format!("https://provider.example/authorize/{account}")),
        created_at: now,
        updated_at: now,
    }
}

fn not_found(entity: Entity) -> impl Fn(&StoreError) -> bool {
    move |e| matches!(e, StoreError::NotFound { entity: found, .. } if *found == entity)
}

async fn toolkits_are_enabled_idempotently_listed_and_disabled(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "k1").await;
    let (github, created) = store
        .enable_toolkit(
            &scope,
            &slug("github"),
            "GitHub",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    assert!(created);
    assert_eq!(github.slug, slug("github"));
    assert_eq!(github.name, "GitHub");
    assert_eq!(github.settings, ToolkitSettings::default());

    let careful = ToolkitSettings {
        requires_confirmation: true,
        confirmation_expires_in_seconds: Some(120),
        timeout_seconds: Some(9),
    };
    let (again, created) = store
        .enable_toolkit(&scope, &slug("github"), "GitHub 2", &careful)
        .await
        .unwrap();
    assert!(!created, "enabling twice keeps one toolkit");
    assert_eq!(again.settings, careful);
    assert_eq!(again.name, "GitHub 2");
    assert_eq!(again.created_at, github.created_at);
    store
        .enable_toolkit(&scope, &slug("asana"), "Asana", &ToolkitSettings::default())
        .await
        .unwrap();

    let listed = store.list_toolkits(&scope).await.unwrap();
    assert_eq!(
        listed.iter().map(|t| t.slug.as_str()).collect::<Vec<_>>(),
        vec!["asana", "github"]
    );
    assert_eq!(
        store.get_toolkit(&scope, &slug("github")).await.unwrap(),
        again
    );

    assert!(store
        .disable_toolkit(&scope, &slug("asana"))
        .await
        .unwrap()
        .is_empty());
    let gone = store.get_toolkit(&scope, &slug("asana")).await.unwrap_err();
    assert!(not_found(Entity::Toolkit)(&gone), "{gone:?}");
    let twice = store
        .disable_toolkit(&scope, &slug("asana"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&twice), "{twice:?}");
    assert_eq!(store.list_toolkits(&scope).await.unwrap().len(), 1);
}

async fn connections_are_per_actor_replaced_and_updated(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "k2").await;
    let actor = t.project.actor_id.clone();
    // No toolkit yet: nothing listed, and an unknown actor is still not found.
    assert!(store
        .actor_toolkits(&t.scope, &actor)
        .await
        .unwrap()
        .is_empty());
    let err = store
        .actor_toolkits(&t.scope, &ActorId::generate())
        .await
        .unwrap_err();
    assert!(not_found(Entity::Actor)(&err), "{err:?}");
    store
        .enable_toolkit(
            &t.scope,
            &slug("github"),
            "GitHub",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    store
        .enable_toolkit(
            &t.scope,
            &slug("slack"),
            "Slack",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();

    let listed = store.actor_toolkits(&t.scope, &actor).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.iter().all(|(_, c)| c.is_none()),
        "nothing connected yet"
    );

    // A connection needs an enabled toolkit and an actor of the deployment.
    let err = store
        .put_toolkit_connection(&t.scope, &connection(&actor, "jira", "ca_0"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&err), "{err:?}");
    let err = store
        .put_toolkit_connection(
            &t.scope,
            &connection(&ActorId::generate(), "github", "ca_0"),
        )
        .await
        .unwrap_err();
    assert!(not_found(Entity::Actor)(&err), "{err:?}");

    let first = connection(&actor, "github", "ca_1");
    assert_eq!(
        store
            .put_toolkit_connection(&t.scope, &first)
            .await
            .unwrap(),
        None
    );
    let listed = store.actor_toolkits(&t.scope, &actor).await.unwrap();
    assert_eq!(listed[0].0.slug, slug("github"));
    assert_eq!(listed[0].1.as_ref(), Some(&first));
    assert_eq!(listed[1].1, None, "slack stays unconnected");

    // Connecting again replaces the connection and hands back the previous one.
    let second = connection(&actor, "github", "ca_2");
    assert_eq!(
        store
            .put_toolkit_connection(&t.scope, &second)
            .await
            .unwrap(),
        Some(first.clone())
    );
    let err = store
        .set_toolkit_connection_status(&t.scope, &first.id, ConnectionStatus::Connected)
        .await
        .unwrap_err();
    assert!(
        not_found(Entity::Toolkit)(&err),
        "a replaced connection is gone: {err:?}"
    );

    let connected = store
        .set_toolkit_connection_status(&t.scope, &second.id, ConnectionStatus::Connected)
        .await
        .unwrap();
    assert_eq!(connected.status, ConnectionStatus::Connected);
    assert_eq!(connected.redirect_url, None, "no redirect once connected");
    assert_eq!(connected.account_id, "ca_2");
    let listed = store.actor_toolkits(&t.scope, &actor).await.unwrap();
    assert_eq!(listed[0].1.as_ref(), Some(&connected));

    // Another actor of the deployment has its own connections.
    let other = store
        .create_actor(
            &t.scope,
            &NewActor {
                subject_type: SubjectType::parse("subject_type", "user").unwrap(),
                external_key: ExternalKey::parse("external_key", "u2").unwrap(),
                display_name: None,
                metadata: Metadata::parse("metadata", json!({})).unwrap(),
            },
        )
        .await
        .unwrap();
    assert!(store
        .actor_toolkits(&t.scope, &other.id)
        .await
        .unwrap()
        .iter()
        .all(|(_, c)| c.is_none()));

    let removed = store
        .delete_toolkit_connection(&t.scope, &actor, &slug("github"))
        .await
        .unwrap();
    assert_eq!(removed.map(|c| c.id), Some(second.id));
    assert_eq!(
        store
            .delete_toolkit_connection(&t.scope, &actor, &slug("github"))
            .await
            .unwrap(),
        None
    );
    let err = store
        .delete_toolkit_connection(&t.scope, &actor, &slug("jira"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&err), "{err:?}");
}

async fn disabling_a_toolkit_deletes_its_connections(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "k3").await;
    let actor = t.project.actor_id.clone();
    store
        .enable_toolkit(
            &t.scope,
            &slug("github"),
            "GitHub",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    let c = connection(&actor, "github", "ca_1");
    store.put_toolkit_connection(&t.scope, &c).await.unwrap();
    let gone = store
        .disable_toolkit(&t.scope, &slug("github"))
        .await
        .unwrap();
    assert_eq!(gone, vec![c.clone()]);
    assert!(store
        .actor_toolkits(&t.scope, &actor)
        .await
        .unwrap()
        .is_empty());
    // Enabling it again starts without connections.
    store
        .enable_toolkit(
            &t.scope,
            &slug("github"),
            "GitHub",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    let listed = store.actor_toolkits(&t.scope, &actor).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, None);
}

async fn toolkits_of_another_deployment_are_not_found(db: &TestDatabase) {
    let store = open(db).await;
    let theirs = tenant(&store, "k4").await;
    let mine = tenant(&store, "k4b").await;
    let their_actor = theirs.project.actor_id.clone();
    let my_actor = mine.project.actor_id.clone();
    store
        .enable_toolkit(
            &theirs.scope,
            &slug("github"),
            "GitHub",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    let c = connection(&their_actor, "github", "ca_1");
    store
        .put_toolkit_connection(&theirs.scope, &c)
        .await
        .unwrap();

    assert!(store.list_toolkits(&mine.scope).await.unwrap().is_empty());
    let err = store
        .get_toolkit(&mine.scope, &slug("github"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&err), "{err:?}");
    let err = store
        .disable_toolkit(&mine.scope, &slug("github"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&err), "{err:?}");
    let err = store
        .actor_toolkits(&mine.scope, &their_actor)
        .await
        .unwrap_err();
    assert!(not_found(Entity::Actor)(&err), "{err:?}");
    let err = store
        .set_toolkit_connection_status(&mine.scope, &c.id, ConnectionStatus::Expired)
        .await
        .unwrap_err();
    assert!(not_found(Entity::Toolkit)(&err), "{err:?}");
    let err = store
        .put_toolkit_connection(&mine.scope, &connection(&my_actor, "github", "ca_2"))
        .await
        .unwrap_err();
    assert!(
        not_found(Entity::Toolkit)(&err),
        "their toolkit is not mine: {err:?}"
    );
    let err = store
        .delete_toolkit_connection(&mine.scope, &their_actor, &slug("github"))
        .await
        .unwrap_err();
    assert!(not_found(Entity::Actor)(&err), "{err:?}");
    // Enabling the same slug in my deployment is independent of theirs.
    store
        .enable_toolkit(
            &mine.scope,
            &slug("github"),
            "Mine",
            &ToolkitSettings::default(),
        )
        .await
        .unwrap();
    let theirs_listed = store
        .actor_toolkits(&theirs.scope, &their_actor)
        .await
        .unwrap();
    assert_eq!(theirs_listed[0].0.name, "GitHub");
    assert_eq!(
        theirs_listed[0].1.as_ref().map(|c| c.status),
        Some(ConnectionStatus::Pending)
    );
    assert_eq!(
        store.actor_toolkits(&mine.scope, &my_actor).await.unwrap()[0].1,
        None
    );
}
