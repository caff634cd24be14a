//! Secret keys: shown once, listed without the secret, revoked at once, never the last one.

use tessera_client::models::{CreateSecretKeyRequest, PageParams};
use tessera_client::ErrorCode;
use tessera_domain::secret::SecretHash;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{assert_api_error, assert_id, assert_timestamp, send, spawn_app, unknown_id};

backend_tests!(
    created_key_is_shown_once_and_works,
    list_never_shows_the_secret,
    revoked_key_is_refused_at_once,
    last_active_key_cannot_be_revoked,
    unknown_keys_are_404,
    concurrent_revokes_keep_one_key_active,
);

#[track_caller]
fn assert_key_format(key: &str) {
    let body = key
        .strip_prefix("tsk_")
        .unwrap_or_else(|| panic!("{key:?} starts with tsk_"));
    assert_eq!(body.len(), 52, "{key:?}");
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()), "{key:?}");
}

async fn created_key_is_shown_once_and_works(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let resp = app
        .post("/secret-keys", serde_json::json!({"name": "ci"}))
        .await;
    let created = resp.ok(201).clone();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_key_format(&key);
    assert_id(created["id"].as_str().unwrap(), "key");
    assert_eq!(created["name"], "ci");
    assert_eq!(created["prefix"], &key[..12]);
    assert_timestamp(created["created_at"].as_str().unwrap());

    let unnamed = app
        .client
        .secret_keys()
        .create(CreateSecretKeyRequest::default())
        .send()
        .await
        .unwrap();
    assert_key_format(&unnamed.key);
    assert_eq!(unnamed.name, "default");
    assert_ne!(unnamed.key, key);

    for secret in [&key, &unnamed.key] {
        let client = app.client_with(secret);
        let deployment = client.deployments().current().send().await.unwrap();
        assert_eq!(deployment.name, "default");
        client
            .ai()
            .actors()
            .list_actors(Default::default())
            .send()
            .await
            .unwrap();
    }
    app.stop().await;
}

async fn list_never_shows_the_secret(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let created = app
        .client
        .secret_keys()
        .create(CreateSecretKeyRequest {
            name: Some("second".into()),
        })
        .send()
        .await
        .unwrap();
    let resp = app.get("/secret-keys").await;
    let list = resp.ok(200);
    let items = list["data"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(
        items[0]["prefix"],
        &app.key[..12],
        "the bootstrap key is listed first"
    );
    assert_eq!(items[1]["id"], created.id.as_str());
    assert_eq!(items[1]["prefix"], &created.key[..12]);
    assert_eq!(items[1]["name"], "second");
    for item in items {
        for field in item.as_object().unwrap().keys() {
            assert!(
                [
                    "id",
                    "name",
                    "prefix",
                    "created_at",
                    "last_used_at",
                    "revoked_at"
                ]
                .contains(&field.as_str()),
                "unexpected field {field:?} in a listed key: {item}"
            );
        }
        assert_eq!(item["prefix"].as_str().map(str::len), Some(12));
    }
    for secret in [&app.key, &created.key] {
        let digest = SecretHash::of(secret);
        let hex: String = digest
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        for needle in [secret.as_str(), &secret[4..], &hex, &hex.to_uppercase()] {
            assert!(
                !resp.text.contains(needle),
                "the list leaks a secret or its hash: {}",
                resp.text
            );
        }
    }
    app.stop().await;
}

async fn revoked_key_is_refused_at_once(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let keys = app.client.secret_keys();
    let second = keys
        .create(CreateSecretKeyRequest {
            name: Some("rotating".into()),
        })
        .send()
        .await
        .unwrap();
    let second_client = app.client_with(&second.key);
    // Warm up any cache of the key before revoking it.
    second_client.deployments().current().send().await.unwrap();

    let revoked = keys.revoke(&second.id).send().await.unwrap();
    assert_eq!(revoked.id, second.id);
    assert_timestamp(revoked.revoked_at.as_deref().expect("revoked_at is set"));
    assert_api_error(
        second_client.deployments().current().send().await,
        401,
        ErrorCode::Unauthorized,
        None,
    );
    assert_api_error(
        second_client
            .ai()
            .actors()
            .list_actors(Default::default())
            .send()
            .await,
        401,
        ErrorCode::Unauthorized,
        None,
    );
    let raw = send(
        app.anonymous(reqwest::Method::GET, "/deployments/current")
            .bearer_auth(&second.key),
    )
    .await;
    raw.assert_error(401, "unauthorized", None);
    assert!(raw
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Bearer")));
    // The other key keeps working, and the revoked key is still listed, as revoked.
    let list = keys.list(PageParams::default()).send().await.unwrap();
    let listed = list
        .data
        .iter()
        .find(|k| k.id == second.id)
        .expect("revoked keys stay listed");
    assert_eq!(listed.revoked_at, revoked.revoked_at);
    assert!(list
        .data
        .iter()
        .any(|k| k.id != second.id && k.revoked_at.is_none()));
    // Revoking again is harmless and returns the same record.
    assert_eq!(keys.revoke(&second.id).send().await.unwrap(), revoked);

    // A key may revoke itself while another stays active; it is refused right after.
    let third = keys
        .create(CreateSecretKeyRequest::default())
        .send()
        .await
        .unwrap();
    let third_client = app.client_with(&third.key);
    let bootstrap_id = list.data[0].id.clone();
    let gone = third_client
        .secret_keys()
        .revoke(&bootstrap_id)
        .send()
        .await
        .unwrap();
    assert!(gone.revoked_at.is_some());
    assert_api_error(
        app.client.deployments().current().send().await,
        401,
        ErrorCode::Unauthorized,
        None,
    );
    third_client.deployments().current().send().await.unwrap();
    app.stop().await;
}

async fn last_active_key_cannot_be_revoked(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let keys = app.client.secret_keys();
    let list = keys.list(PageParams::default()).send().await.unwrap();
    assert_eq!(list.data.len(), 1);
    let bootstrap_id = list.data[0].id.clone();
    assert_api_error(
        keys.revoke(&bootstrap_id).send().await,
        409,
        ErrorCode::LastActiveKey,
        None,
    );
    app.client.deployments().current().send().await.unwrap();

    // With a second key, one of the two can go, but then not the other.
    let second = keys
        .create(CreateSecretKeyRequest::default())
        .send()
        .await
        .unwrap();
    keys.revoke(&second.id).send().await.unwrap();
    assert_api_error(
        keys.revoke(&bootstrap_id).send().await,
        409,
        ErrorCode::LastActiveKey,
        None,
    );
    let after = keys.list(PageParams::default()).send().await.unwrap();
    assert_eq!(
        after.data.iter().filter(|k| k.revoked_at.is_none()).count(),
        1
    );
    app.client.deployments().current().send().await.unwrap();
    app.stop().await;
}

async fn unknown_keys_are_404(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let keys = app.client.secret_keys();
    keys.create(CreateSecretKeyRequest::default())
        .send()
        .await
        .unwrap();
    for id in [unknown_id("key"), "nope".to_owned(), app.key.clone()] {
        assert_api_error(
            keys.revoke(&id).send().await,
            404,
            ErrorCode::SecretKeyNotFound,
            None,
        );
    }
    let list = keys.list(PageParams::default()).send().await.unwrap();
    assert!(list.data.iter().all(|k| k.revoked_at.is_none()));
    app.stop().await;
}

async fn concurrent_revokes_keep_one_key_active(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let listed = app
        .client
        .secret_keys()
        .list(PageParams::default())
        .send()
        .await
        .unwrap();
    // (id, secret) of every key known to be active.
    let mut active = vec![(listed.data[0].id.clone(), app.key.clone())];
    for round in 0..10 {
        let admin = app.client_with(&active[0].1);
        for _ in 0..3 {
            let created = admin
                .secret_keys()
                .create(CreateSecretKeyRequest::default())
                .send()
                .await
                .unwrap();
            active.push((created.id, created.key));
        }
        // Every active key revokes itself at the same moment: exactly one must survive.
        let mut tasks = Vec::new();
        for (id, secret) in active.clone() {
            let client = app.client_with(&secret);
            tasks.push(tokio::spawn(async move {
                client.secret_keys().revoke(&id).send().await
            }));
        }
        let mut refused = 0;
        for task in tasks {
            if let Err(err) = task.await.unwrap() {
                assert_eq!(
                    err.code(),
                    Some(ErrorCode::LastActiveKey),
                    "round {round}: {err}"
                );
                refused += 1;
            }
        }
        assert!(
            refused != 0,
            "round {round}: all {} concurrent self-revocations succeeded: the deployment has no active key left",
            active.len()
        );
        assert_eq!(refused, 1, "round {round}: exactly one revoke is refused");
        let mut working = Vec::new();
        for (id, secret) in &active {
            if app
                .client_with(secret)
                .deployments()
                .current()
                .send()
                .await
                .is_ok()
            {
                working.push((id.clone(), secret.clone()));
            }
        }
        assert_eq!(
            working.len(),
            1,
            "round {round}: exactly one key still works"
        );
        active = working;
    }
    app.stop().await;
}
