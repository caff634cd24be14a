//! Actors: creation, lookup by the app's own identifier, uniqueness and filters.

use serde_json::{json, Value};
use tessera_client::models::{CreateActorRequest, ListActorsParams, LookupActorParams};
use tessera_client::ErrorCode;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{actor_request, assert_api_error, assert_id, assert_timestamp, spawn_app};

backend_tests!(
    create_and_get_round_trip,
    lookup_finds_the_pair_or_answers_null,
    pairs_are_unique,
    concurrent_duplicates_create_exactly_one,
    list_filters_by_subject_type,
    metadata_must_be_a_small_object,
);

async fn create_and_get_round_trip(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let resp = app
        .post(
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "ext-1", "display_name": "Ada", "metadata": {"plan": "pro", "seats": 3}}),
        )
        .await;
    let created = resp.ok(201).clone();
    assert_id(created["id"].as_str().unwrap(), "actor");
    assert_eq!(created["subject_type"], "user");
    assert_eq!(created["external_key"], "ext-1");
    assert_eq!(created["display_name"], "Ada");
    assert_eq!(created["metadata"], json!({"plan": "pro", "seats": 3}));
    assert_timestamp(created["created_at"].as_str().unwrap());

    let fetched = app
        .get(&format!("/ai/actors/{}", created["id"].as_str().unwrap()))
        .await;
    assert_eq!(fetched.ok(200), &created);

    // Optional fields default: no display name, empty metadata object.
    let bare = app
        .client
        .ai()
        .actors()
        .create_actor(actor_request("service", "billing-cron"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.display_name, None);
    assert_eq!(bare.metadata, json!({}));
    assert_eq!(
        app.client
            .ai()
            .actors()
            .get_actor(&bare.id)
            .send()
            .await
            .unwrap(),
        bare
    );
    app.stop().await;
}

async fn lookup_finds_the_pair_or_answers_null(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let odd_key = "a&b=c/d?e f#g%h+é";
    let actor = app
        .client
        .ai()
        .actors()
        .create_actor(actor_request("user", odd_key))
        .send()
        .await
        .unwrap();
    let actors = app.client.ai().actors();
    let found = actors
        .lookup_actor(LookupActorParams {
            subject_type: "user".into(),
            external_key: odd_key.into(),
        })
        .send()
        .await
        .unwrap();
    assert_eq!(found.actor, Some(actor));

    for (subject_type, external_key) in [
        ("user", "a&b"),
        ("service", odd_key),
        ("user", "A&B=C/D?E F#G%H+É"),
    ] {
        let missing = actors
            .lookup_actor(LookupActorParams {
                subject_type: subject_type.into(),
                external_key: external_key.into(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(missing.actor, None, "{subject_type}/{external_key}");
    }
    // The wire answer is exactly {"actor": null}, with 200.
    let raw = app
        .get("/ai/actors/lookup?subject_type=user&external_key=nobody")
        .await;
    assert_eq!(raw.ok(200), &json!({"actor": null}));
    app.stop().await;
}

async fn pairs_are_unique(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actors = app.client.ai().actors();
    let first = actors
        .create_actor(actor_request("user", "dup"))
        .send()
        .await
        .unwrap();
    assert_api_error(
        actors
            .create_actor(actor_request("user", "dup"))
            .send()
            .await,
        409,
        ErrorCode::ActorExists,
        None,
    );
    // A different display name does not make it a different actor.
    assert_api_error(
        actors
            .create_actor(CreateActorRequest {
                display_name: Some("Other".into()),
                ..actor_request("user", "dup")
            })
            .send()
            .await,
        409,
        ErrorCode::ActorExists,
        None,
    );
    // The same key under another subject type, or another key, is a different actor.
    let service = actors
        .create_actor(actor_request("service", "dup"))
        .send()
        .await
        .unwrap();
    let other = actors
        .create_actor(actor_request("user", "dup2"))
        .send()
        .await
        .unwrap();
    let list = actors
        .list_actors(ListActorsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(list.data, vec![first, service, other]);
    app.stop().await;
}

async fn concurrent_duplicates_create_exactly_one(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = app.client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .ai()
                .actors()
                .create_actor(actor_request("user", "race"))
                .send()
                .await
        }));
    }
    let mut created = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => created += 1,
            Err(err) => assert_eq!(err.code(), Some(ErrorCode::ActorExists), "{err}"),
        }
    }
    assert_eq!(created, 1, "exactly one concurrent create succeeds");
    let list = app
        .client
        .ai()
        .actors()
        .list_actors(ListActorsParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(list.data.len(), 1);
    app.stop().await;
}

async fn list_filters_by_subject_type(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actors = app.client.ai().actors();
    let mut users = Vec::new();
    let mut services = Vec::new();
    for i in 0..3 {
        users.push(
            actors
                .create_actor(actor_request("user", &format!("u{i}")))
                .send()
                .await
                .unwrap(),
        );
        services.push(
            actors
                .create_actor(actor_request("service", &format!("s{i}")))
                .send()
                .await
                .unwrap(),
        );
    }
    let only_users = actors
        .list_actors(ListActorsParams {
            subject_type: Some("user".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(only_users.data, users);
    let only_services = actors
        .list_actors(ListActorsParams {
            subject_type: Some("service".into()),
            limit: Some(2),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(only_services.data, services[..2]);
    assert!(only_services.has_more);
    let rest = actors
        .list_actors(ListActorsParams {
            subject_type: Some("service".into()),
            after: only_services.last_id.clone(),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(rest.data, services[2..]);
    assert!(!rest.has_more);
    let nobody = actors
        .list_actors(ListActorsParams {
            subject_type: Some("team".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert!(nobody.data.is_empty());
    app.stop().await;
}

async fn metadata_must_be_a_small_object(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for metadata in [
        json!([1, 2]),
        json!("text"),
        json!(5),
        json!({"big": "x".repeat(16 * 1024)}),
    ] {
        let resp = app
            .post(
                "/ai/actors",
                json!({"subject_type": "user", "external_key": "m", "metadata": metadata}),
            )
            .await;
        resp.assert_error(422, "validation_failed", Some("metadata"));
    }
    // A nested object well under 16 KiB is kept as sent.
    let nested = json!({"a": {"b": [1, 2, {"c": null}]}, "unicode": "日本"});
    let resp = app
        .post(
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "m", "metadata": nested}),
        )
        .await;
    assert_eq!(resp.ok(201)["metadata"], nested);
    // `null` metadata means none.
    let resp = app
        .post(
            "/ai/actors",
            json!({"subject_type": "user", "external_key": "n", "metadata": Value::Null}),
        )
        .await;
    assert_eq!(resp.ok(201)["metadata"], json!({}));
    app.stop().await;
}
