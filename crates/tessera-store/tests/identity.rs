//! Conformance of the identity storage (users, organizations, memberships, browser sessions,
//! sign-in throttling, audit log, signing keys): both backends must behave identically.
//!
//! Runs on SQLite always and on PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;

use std::sync::Arc;

use tessera_domain::identity::{
    AuditActor, AuditBy, AuditClient, AuditKind, Email, NewAuditEvent, NewOrganization, NewSession,
    NewUser, OrganizationSlug, Password, PersonName, Role, SigningKeyRecord, UserPatch,
};
use tessera_domain::password::hash_password;
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::token::{SecretsKey, TokenSigner};
use tessera_domain::validate::{DeploymentName, Label, Metadata};
use tessera_domain::{OrganizationId, Scope, SecretKeyId, Timestamp, UserId};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, AuditFilter, Conflict, ConnectOptions, Cursor, Entity, NewSecretKey,
    PageRequest, Store, StoreError, Throttle, ThrottleBucket, UserFilter,
};

backend_tests!(
    users_are_unique_per_deployment_and_scoped,
    users_update_and_delete,
    organizations_and_memberships,
    sessions_expire_rotate_and_end_with_their_user,
    a_member_removal_waits_for_a_deletion_of_the_user,
    sign_in_failures_are_counted_per_bucket_and_window,
    audit_events_are_scoped_filtered_and_paged,
    signing_keys_are_created_once_and_rotated,
    deployments_are_found_by_origin,
    user_writes_record_their_audit_events,
    session_writes_record_their_audit_events,
);

async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .expect("open store")
}

async fn deployment(store: &Arc<dyn Store>, name: &str, host: &str) -> Scope {
    let secret = PlainSecret::generate(SECRET_KEY_PREFIX);
    let key = NewSecretKey {
        name: Label::parse("name", "first").unwrap(),
        hash: secret.hash(),
        prefix: secret.display_prefix(),
    };
    let (dep, _) = store
        .create_deployment(
            &NewDeployment {
                name: DeploymentName::parse("name", name).unwrap(),
                backend_host: host.to_owned(),
                frontend_host: format!("{host}-app"),
            },
            &key,
        )
        .await
        .unwrap();
    Scope::deployment(dep.id)
}

fn new_user(email: &str) -> NewUser {
    NewUser {
        email: Email::parse("email", email).unwrap(),
        first_name: Some(PersonName::parse("first_name", "Ada").unwrap()),
        last_name: None,
        password_hash: None,
        metadata: Metadata::parse("metadata", serde_json::json!({"plan": "pro"})).unwrap(),
    }
}

fn session(user: Option<&UserId>, now: Timestamp) -> (PlainSecret, NewSession) {
    let secret = PlainSecret::generate("tss");
    let new = NewSession {
        hash: secret.hash(),
        user_id: user.cloned(),
        active_organization_id: None,
        impersonation: None,
        now,
        idle_expires_at: now.plus_secs(600),
        expires_at: now.plus_secs(3600),
    };
    (secret, new)
}

/// A new organization "Acme" with `user` as its only member, with `role`.
async fn acme_with(
    store: &Arc<dyn Store>,
    scope: &Scope,
    user: &UserId,
    role: Role,
) -> tessera_domain::identity::Organization {
    let org = store
        .create_organization(
            scope,
            &NewOrganization {
                name: Label::parse("name", "Acme").unwrap(),
                slug: None,
            },
        )
        .await
        .unwrap();
    store.add_member(scope, &org.id, user, role).await.unwrap();
    org
}

#[track_caller]
fn assert_not_found<T: std::fmt::Debug>(result: Result<T, StoreError>, entity: Entity) {
    match result {
        Err(StoreError::NotFound { entity: got, .. }) => assert_eq!(got, entity),
        other => panic!("expected {entity:?} not found, got {other:?}"),
    }
}

#[track_caller]
fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, conflict: Conflict) {
    match result {
        Err(StoreError::Conflict(got)) => assert_eq!(got, conflict),
        other => panic!("expected {conflict:?}, got {other:?}"),
    }
}

async fn users_are_unique_per_deployment_and_scoped(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;

    let mut new = new_user("ada@example.com");
    let password = Password::new_choice("password", "correct horse".into()).unwrap();
    new.password_hash = Some(hash_password(&password).unwrap());
    let ada = store
        .create_user(&a, &new, &common::operator())
        .await
        .unwrap();
    assert_eq!(ada.email, "ada@example.com");
    assert!(ada.has_password);
    assert!(!ada.disabled);
    assert_eq!(ada.metadata, serde_json::json!({"plan": "pro"}));
    assert_eq!(ada.first_name.as_deref(), Some("Ada"));

    // The email is normalized before it gets here, so the same address is taken whatever its case.
    assert_conflict(
        store
            .create_user(&a, &new_user(" ADA@Example.com "), &common::operator())
            .await,
        Conflict::EmailTaken,
    );
    // Another deployment may have a user with the same email.
    let other = store
        .create_user(&b, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    assert_ne!(other.id, ada.id);

    assert_eq!(store.get_user(&a, &ada.id).await.unwrap(), ada);
    assert_not_found(store.get_user(&b, &ada.id).await, Entity::User);

    let creds = store
        .user_credentials(&a, &Email::parse("e", "ada@example.com").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(creds.user.id, ada.id);
    assert!(creds.password_hash.is_some());
    let none = store
        .user_credentials(&a, &Email::parse("e", "nobody@example.com").unwrap())
        .await
        .unwrap();
    assert!(none.is_none());

    store
        .create_user(&a, &new_user("bob@example.com"), &common::operator())
        .await
        .unwrap();
    let all = store
        .list_users(&a, &UserFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(all.items.len(), 2);
    assert_eq!(all.items[0].id, ada.id, "oldest first");
    let filtered = store
        .list_users(
            &a,
            &UserFilter {
                email: Some("bob@example.com".into()),
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(filtered.items.len(), 1);
    assert_eq!(filtered.items[0].email, "bob@example.com");
    let page = store
        .list_users(&a, &UserFilter::default(), &PageRequest::first(1))
        .await
        .unwrap();
    assert!(page.has_more);
    db_cleanup(store).await;
}

async fn db_cleanup(store: Arc<dyn Store>) {
    store.close().await;
}

async fn users_update_and_delete(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    let bob = store
        .create_user(&a, &new_user("bob@example.com"), &common::operator())
        .await
        .unwrap();

    let patch = UserPatch {
        email: Some(Email::parse("email", "ada.l@example.com").unwrap()),
        first_name: Some(None),
        last_name: Some(Some(PersonName::parse("last_name", "Lovelace").unwrap())),
        password_hash: Some(Some(
            hash_password(&Password::new_choice("p", "a long password".into()).unwrap()).unwrap(),
        )),
        metadata: Some(Metadata::parse("metadata", serde_json::json!({})).unwrap()),
    };
    let updated = store.update_user(&a, &ada.id, &patch).await.unwrap();
    assert_eq!(updated.email, "ada.l@example.com");
    assert_eq!(updated.first_name, None);
    assert_eq!(updated.last_name.as_deref(), Some("Lovelace"));
    assert!(updated.has_password);
    assert_eq!(updated.metadata, serde_json::json!({}));
    assert!(updated.updated_at >= ada.updated_at);

    // An empty patch changes nothing but is still scoped.
    let same = store
        .update_user(&a, &ada.id, &UserPatch::default())
        .await
        .unwrap();
    assert_eq!(same.email, "ada.l@example.com");
    assert_not_found(
        store.update_user(&b, &ada.id, &UserPatch::default()).await,
        Entity::User,
    );
    assert_conflict(
        store
            .update_user(
                &a,
                &bob.id,
                &UserPatch {
                    email: Some(Email::parse("email", "ada.l@example.com").unwrap()),
                    ..Default::default()
                },
            )
            .await,
        Conflict::EmailTaken,
    );
    let cleared = store
        .update_user(
            &a,
            &ada.id,
            &UserPatch {
                password_hash: Some(None),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!cleared.has_password);

    // Deleting takes memberships and sessions along; another deployment cannot delete it.
    let org = acme_with(&store, &a, &ada.id, Role::Admin).await;
    let (secret, new) = session(Some(&ada.id), Timestamp::now());
    store.create_session(&a, &new).await.unwrap();
    assert_not_found(
        store.delete_user(&b, &ada.id, &common::operator()).await,
        Entity::User,
    );
    store
        .delete_user(&a, &ada.id, &common::operator())
        .await
        .unwrap();
    assert_not_found(store.get_user(&a, &ada.id).await, Entity::User);
    assert_not_found(
        store.delete_user(&a, &ada.id, &common::operator()).await,
        Entity::User,
    );
    let members = store
        .list_members(&a, &org.id, &PageRequest::default())
        .await
        .unwrap();
    assert!(members.items.is_empty());
    let found = store
        .find_session(&a, &secret.hash(), Timestamp::now(), 600_000)
        .await
        .unwrap();
    assert!(found.is_none(), "the deleted user's session ended");
    // The email is free again.
    store
        .create_user(&a, &new_user("ada.l@example.com"), &common::operator())
        .await
        .unwrap();
    db_cleanup(store).await;
}

async fn organizations_and_memberships(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let org = |name: &str, slug: Option<&str>| NewOrganization {
        name: Label::parse("name", name).unwrap(),
        slug: slug.map(|s| OrganizationSlug::parse("slug", s).unwrap()),
    };
    let acme = store
        .create_organization(&a, &org("Acme", Some("acme")))
        .await
        .unwrap();
    assert_eq!(acme.slug.as_deref(), Some("acme"));
    assert_conflict(
        store
            .create_organization(&a, &org("Acme 2", Some("acme")))
            .await,
        Conflict::OrganizationSlugTaken,
    );
    // Without slugs, any number; with the same slug, in another deployment.
    store
        .create_organization(&a, &org("No slug", None))
        .await
        .unwrap();
    store
        .create_organization(&a, &org("No slug 2", None))
        .await
        .unwrap();
    store
        .create_organization(&b, &org("Acme", Some("acme")))
        .await
        .unwrap();
    assert_eq!(store.get_organization(&a, &acme.id).await.unwrap(), acme);
    assert_not_found(
        store.get_organization(&b, &acme.id).await,
        Entity::Organization,
    );
    let listed = store
        .list_organizations(&a, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 3);

    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    let bob = store
        .create_user(&a, &new_user("bob@example.com"), &common::operator())
        .await
        .unwrap();
    let stranger = store
        .create_user(&b, &new_user("eve@example.com"), &common::operator())
        .await
        .unwrap();
    let m = store
        .add_member(&a, &acme.id, &ada.id, Role::Admin)
        .await
        .unwrap();
    assert_eq!(
        (m.role, &m.user_id, &m.organization_id),
        (Role::Admin, &ada.id, &acme.id)
    );
    store
        .add_member(&a, &acme.id, &bob.id, Role::Member)
        .await
        .unwrap();
    assert_conflict(
        store.add_member(&a, &acme.id, &ada.id, Role::Member).await,
        Conflict::AlreadyMember,
    );
    match store
        .add_member(&a, &acme.id, &stranger.id, Role::Member)
        .await
    {
        Err(StoreError::NotFound {
            entity: Entity::User,
            field: Some("user_id"),
            ..
        }) => {}
        other => panic!("another deployment's user is not found: {other:?}"),
    }
    assert_not_found(
        store
            .add_member(&b, &acme.id, &stranger.id, Role::Member)
            .await,
        Entity::Organization,
    );
    let members = store
        .list_members(&a, &acme.id, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        members.items.iter().map(|m| &m.user_id).collect::<Vec<_>>(),
        [&ada.id, &bob.id]
    );
    assert_not_found(
        store
            .list_members(&b, &acme.id, &PageRequest::default())
            .await,
        Entity::Organization,
    );
    let mine = store.user_memberships(&a, &ada.id).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].1, acme);
    assert!(store
        .user_memberships(&b, &ada.id)
        .await
        .unwrap()
        .is_empty());

    // Removing a membership takes it out of the sessions that had that organization active.
    let now = Timestamp::now();
    let (secret, mut new) = session(Some(&ada.id), now);
    new.active_organization_id = Some(acme.id.clone());
    store.create_session(&a, &new).await.unwrap();
    assert_not_found(
        store.remove_member(&b, &acme.id, &ada.id).await,
        Entity::Membership,
    );
    store.remove_member(&a, &acme.id, &ada.id).await.unwrap();
    assert_not_found(
        store.remove_member(&a, &acme.id, &ada.id).await,
        Entity::Membership,
    );
    let s = store
        .find_session(&a, &secret.hash(), now, 600_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.active_organization_id, None);
    assert!(store
        .user_memberships(&a, &ada.id)
        .await
        .unwrap()
        .is_empty());
    db_cleanup(store).await;
}

async fn sessions_expire_rotate_and_end_with_their_user(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    let now = Timestamp::now();

    let (anon_secret, anon) = session(None, now);
    let created = store.create_session(&a, &anon).await.unwrap();
    assert_eq!(created.user_id, None);
    assert_eq!(created.expires_at, now.plus_secs(3600));
    let found = store
        .find_session(&a, &anon_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, created.id);
    // Another deployment, another cookie, or past either expiry: nothing.
    assert!(store
        .find_session(&b, &anon_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    let (other, _) = session(None, now);
    assert!(store
        .find_session(&a, &other.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .find_session(&a, &anon_secret.hash(), now.plus_secs(3600), 600_000)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .find_session(&a, &anon_secret.hash(), now.plus_secs(601), 600_000)
        .await
        .unwrap()
        .is_none());
    // A use extends the idle expiry (at most up to the absolute one).
    let touched = store
        .find_session(&a, &anon_secret.hash(), now.plus_secs(500), 600_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(touched.idle_expires_at, now.plus_secs(1100));
    assert!(store
        .find_session(&a, &anon_secret.hash(), now.plus_secs(1000), 600_000)
        .await
        .unwrap()
        .is_some());
    let late = store
        .find_session(&a, &anon_secret.hash(), now.plus_secs(3500), 600_000)
        .await;
    assert!(late.unwrap().is_none(), "idle expiry passed at +1100 s");

    // Rotation: the old cookie stops working as the new one starts.
    let (first_secret, first) = session(None, now);
    store.create_session(&a, &first).await.unwrap();
    let (signed_secret, signed) = session(Some(&ada.id), now);
    let rotated = store
        .replace_session(&a, Some(&first_secret.hash()), &signed, None)
        .await
        .unwrap();
    assert_eq!(rotated.user_id.as_ref(), Some(&ada.id));
    assert!(store
        .find_session(&a, &first_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .find_session(&a, &signed_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_some());
    // Another deployment cannot delete it by its hash.
    let (_, foreign) = session(None, now);
    store
        .replace_session(&b, Some(&signed_secret.hash()), &foreign, None)
        .await
        .unwrap();
    assert!(store
        .find_session(&a, &signed_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_some());

    // A rotation replaces a live session only: one past its idle limit (or gone) is not
    // brought back, and another deployment's hash matches nothing.
    let (idle_secret, idle) = session(None, now);
    store.create_session(&a, &idle).await.unwrap();
    let (_, too_late) = session(None, now.plus_secs(601));
    assert_not_found(
        store
            .rotate_session(&a, &idle_secret.hash(), &too_late, None)
            .await,
        Entity::User,
    );
    let (_, elsewhere) = session(None, now);
    assert_not_found(
        store
            .rotate_session(&b, &signed_secret.hash(), &elsewhere, None)
            .await,
        Entity::User,
    );
    let (kept_secret, kept) = session(Some(&ada.id), now.plus_secs(10));
    let kept_row = store
        .rotate_session(&a, &signed_secret.hash(), &kept, None)
        .await
        .unwrap();
    assert_eq!(kept_row.impersonator, None);
    assert_eq!(
        kept_row.expires_at,
        now.plus_secs(3600),
        "the old session's limit stays"
    );
    assert!(store
        .find_session(&a, &signed_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    let signed_secret = kept_secret;

    // Disabling the user ends all their sessions; enabling does not bring them back.
    let (second_secret, second) = session(Some(&ada.id), now);
    store.create_session(&a, &second).await.unwrap();
    let (user, ended) = store
        .set_user_disabled(&a, &ada.id, true, &common::operator())
        .await
        .unwrap();
    assert!(user.disabled);
    assert_eq!(ended, 2);
    for secret in [&signed_secret, &second_secret] {
        assert!(store
            .find_session(&a, &secret.hash(), now, 600_000)
            .await
            .unwrap()
            .is_none());
    }
    let (user, ended) = store
        .set_user_disabled(&a, &ada.id, false, &common::operator())
        .await
        .unwrap();
    assert!(!user.disabled);
    assert_eq!(ended, 0);
    assert_not_found(
        store
            .set_user_disabled(&b, &ada.id, true, &common::operator())
            .await,
        Entity::User,
    );

    // Explicit deletion.
    let (third_secret, third) = session(Some(&ada.id), now);
    store.create_session(&a, &third).await.unwrap();
    store
        .delete_session(&a, &third_secret.hash(), None)
        .await
        .unwrap();
    assert!(store
        .find_session(&a, &third_secret.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    db_cleanup(store).await;
}

async fn sign_in_failures_are_counted_per_bucket_and_window(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let account = ThrottleBucket {
        key: "account:ada@example.com".into(),
        max_failures: 3,
    };
    let ip = ThrottleBucket {
        key: "ip:127.0.0.1".into(),
        max_failures: 5,
    };
    let both = [account.clone(), ip.clone()];
    let window = 60_000;
    let t0 = Timestamp::now();
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Deployment(&a), &both, t0, window)
            .await
            .unwrap(),
        None
    );
    for i in 0..3 {
        assert_eq!(
            store
                .count_sign_in_attempt(Throttle::Deployment(&a), &both, t0.plus_secs(i), window)
                .await
                .unwrap()
                .wait_ms,
            None,
            "attempt {i} is within the limit of 3"
        );
    }
    // The attempt after the limit is counted and refused at once, with the time left.
    assert_eq!(
        store
            .count_sign_in_attempt(Throttle::Deployment(&a), &both, t0.plus_secs(5), window)
            .await
            .unwrap()
            .wait_ms,
        Some(55_000)
    );
    // Blocked until the window that started at t0 ends.
    let wait = store
        .sign_in_blocked(Throttle::Deployment(&a), &both, t0.plus_secs(10), window)
        .await
        .unwrap();
    assert_eq!(wait, Some(50_000));
    // Another deployment's counters are its own.
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Deployment(&b), &both, t0, window)
            .await
            .unwrap(),
        None
    );
    // The IP bucket alone is not at its limit yet.
    assert_eq!(
        store
            .sign_in_blocked(
                Throttle::Deployment(&a),
                std::slice::from_ref(&ip),
                t0,
                window
            )
            .await
            .unwrap(),
        None
    );
    // After the window, counting starts again.
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Deployment(&a), &both, t0.plus_secs(61), window)
            .await
            .unwrap(),
        None
    );
    store
        .count_sign_in_attempt(Throttle::Deployment(&a), &both, t0.plus_secs(61), window)
        .await
        .unwrap();
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Deployment(&a), &both, t0.plus_secs(62), window)
            .await
            .unwrap(),
        None,
        "one failure in the new window"
    );
    // A success takes its attempt back from the address's bucket…
    let ip_only = std::slice::from_ref(&ip);
    for _ in 0..4 {
        store
            .count_sign_in_attempt(Throttle::Deployment(&a), ip_only, t0.plus_secs(62), window)
            .await
            .unwrap();
    }
    store
        .uncount_sign_in_attempt(
            Throttle::Deployment(&a),
            &ip.key,
            t0.plus_secs(61).as_millis(),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .count_sign_in_attempt(Throttle::Deployment(&a), ip_only, t0.plus_secs(62), window)
            .await
            .unwrap()
            .wait_ms,
        None,
        "5 counted after one was taken back: at the limit, not over it"
    );
    assert!(store
        .count_sign_in_attempt(Throttle::Deployment(&a), ip_only, t0.plus_secs(62), window)
        .await
        .unwrap()
        .wait_ms
        .is_some());
    // …and clears the account's bucket.
    for _ in 0..3 {
        store
            .count_sign_in_attempt(
                Throttle::Deployment(&a),
                std::slice::from_ref(&account),
                t0.plus_secs(62),
                window,
            )
            .await
            .unwrap();
    }
    assert!(store
        .sign_in_blocked(
            Throttle::Deployment(&a),
            std::slice::from_ref(&account),
            t0.plus_secs(63),
            window
        )
        .await
        .unwrap()
        .is_some());
    store
        .clear_sign_in_failures(Throttle::Deployment(&a), &account.key)
        .await
        .unwrap();
    assert_eq!(
        store
            .sign_in_blocked(
                Throttle::Deployment(&a),
                std::slice::from_ref(&account),
                t0.plus_secs(63),
                window
            )
            .await
            .unwrap(),
        None
    );
    // The console's counters are the installation's, apart from every deployment's.
    let admin = ThrottleBucket {
        key: "console:admin".into(),
        max_failures: 1,
    };
    let admin = std::slice::from_ref(&admin);
    assert_eq!(
        store
            .count_sign_in_attempt(Throttle::Console, admin, t0, window)
            .await
            .unwrap()
            .wait_ms,
        None
    );
    assert_eq!(
        store
            .count_sign_in_attempt(Throttle::Console, admin, t0.plus_secs(1), window)
            .await
            .unwrap()
            .wait_ms,
        Some(59_000)
    );
    for scope in [&a, &b] {
        assert_eq!(
            store
                .sign_in_blocked(Throttle::Deployment(scope), admin, t0, window)
                .await
                .unwrap(),
            None
        );
    }
    store
        .uncount_sign_in_attempt(Throttle::Console, "console:admin", t0.as_millis())
        .await
        .unwrap();
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Console, admin, t0.plus_secs(2), window)
            .await
            .unwrap(),
        Some(58_000),
        "one failure left: at the limit of 1"
    );
    store
        .clear_sign_in_failures(Throttle::Console, "console:admin")
        .await
        .unwrap();
    assert_eq!(
        store
            .sign_in_blocked(Throttle::Console, admin, t0.plus_secs(2), window)
            .await
            .unwrap(),
        None
    );

    // An attempt is taken back only from the window it was counted in: one counted at t0 + 2 s
    // and taken back after the window started again (t0 + 63 s) or after the failures were
    // cleared and counted anew leaves the newer failure counted.
    for restart in ["window", "clear"] {
        let counted = store
            .count_sign_in_attempt(Throttle::Console, admin, t0.plus_secs(2), window)
            .await
            .unwrap();
        assert_eq!(
            counted.windows,
            [t0.plus_secs(2).as_millis()],
            "a new window"
        );
        let later = match restart {
            "window" => t0.plus_secs(63),
            _ => {
                store
                    .clear_sign_in_failures(Throttle::Console, "console:admin")
                    .await
                    .unwrap();
                t0.plus_secs(3)
            }
        };
        store
            .count_sign_in_attempt(Throttle::Console, admin, later, window)
            .await
            .unwrap();
        store
            .uncount_sign_in_attempt(Throttle::Console, "console:admin", counted.windows[0])
            .await
            .unwrap();
        assert!(
            store
                .count_sign_in_attempt(Throttle::Console, admin, later, window)
                .await
                .unwrap()
                .wait_ms
                .is_some(),
            "after a {restart}, the late take-back removed a newer failure"
        );
        store
            .clear_sign_in_failures(Throttle::Console, "console:admin")
            .await
            .unwrap();
    }
    // Attempts made at once carry their own clock readings: one read before the window's
    // first attempt but counted after it is counted in that window, and taken back from it.
    let two = ThrottleBucket {
        key: "console:two".into(),
        max_failures: 2,
    };
    let two = std::slice::from_ref(&two);
    let first = store
        .count_sign_in_attempt(Throttle::Console, two, t0.plus_secs(5), window)
        .await
        .unwrap();
    let earlier = store
        .count_sign_in_attempt(Throttle::Console, two, t0.plus_secs(4), window)
        .await
        .unwrap();
    assert_eq!(earlier.windows, first.windows, "the same window");
    store
        .uncount_sign_in_attempt(Throttle::Console, "console:two", earlier.windows[0])
        .await
        .unwrap();
    assert_eq!(
        store
            .count_sign_in_attempt(Throttle::Console, two, t0.plus_secs(6), window)
            .await
            .unwrap()
            .wait_ms,
        None,
        "two counted after one was taken back: at the limit, not over it"
    );
    db_cleanup(store).await;
}

async fn audit_events_are_scoped_filtered_and_paged(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let key = SecretKeyId::generate();
    let (mut ids, mut recorded) = (Vec::new(), Vec::new());
    for kind in [
        AuditKind::SecretKeyCreated,
        AuditKind::SignInFailed,
        AuditKind::SignedIn,
    ] {
        let event = store
            .record_audit(
                &a,
                &NewAuditEvent {
                    kind,
                    actor: AuditActor::SecretKey(key.clone()),
                    subject_id: Some("user_x".into()),
                    ip: Some("127.0.0.1".into()),
                    user_agent: Some("test-agent".into()),
                    data: serde_json::json!({"n": ids.len()}),
                },
            )
            .await
            .unwrap();
        assert_eq!(event.kind, kind.as_str());
        assert_eq!(event.actor_type, "secret_key");
        assert_eq!(event.actor_id.as_deref(), Some(key.as_str()));
        assert_eq!(event.ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(event.user_agent.as_deref(), Some("test-agent"));
        ids.push(event.id.clone());
        recorded.push(event);
    }
    store
        .record_audit(
            &b,
            &NewAuditEvent {
                kind: AuditKind::SignedOut,
                actor: AuditActor::Anonymous,
                subject_id: None,
                ip: None,
                user_agent: None,
                data: serde_json::json!({}),
            },
        )
        .await
        .unwrap();
    let all = store
        .list_audit_events(&a, &AuditFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(
        all.items.iter().map(|e| &e.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    assert_eq!(all.items, recorded, "each answer is the row it wrote");
    let failed = store
        .list_audit_events(
            &a,
            &AuditFilter {
                kind: Some("user.sign_in_failed".into()),
            },
            &PageRequest::default(),
        )
        .await
        .unwrap();
    assert_eq!(failed.items.len(), 1);
    assert_eq!(failed.items[0].data, serde_json::json!({"n": 1}));
    let page = store
        .list_audit_events(
            &a,
            &AuditFilter::default(),
            &PageRequest {
                limit: 1,
                cursor: Cursor::After(ids[0].as_str().to_owned()),
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items[0].id, ids[1]);
    assert!(page.has_more);
    let other = store
        .list_audit_events(&b, &AuditFilter::default(), &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(other.items.len(), 1);
    assert_eq!(other.items[0].actor_type, "anonymous");
    db_cleanup(store).await;
}

fn signing_key(secrets: &SecretsKey, now: Timestamp) -> SigningKeyRecord {
    let signer = TokenSigner::generate(now);
    SigningKeyRecord {
        id: signer.kid().clone(),
        public_key: signer.public_key(),
        sealed_private_key: signer.seal(secrets),
        created_at: now,
        retired_at: None,
    }
}

async fn signing_keys_are_created_once_and_rotated(db: &TestDatabase) {
    let store = open(db).await;
    let secrets = SecretsKey::generate();
    assert!(store.signing_keys().await.unwrap().is_empty());
    let first = signing_key(&secrets, Timestamp::now());
    let current = store.ensure_signing_key(&first).await.unwrap();
    assert_eq!(current, first);
    // A second node starting finds the first key and stores nothing.
    let second = signing_key(&secrets, Timestamp::now());
    assert_eq!(store.ensure_signing_key(&second).await.unwrap(), first);
    assert_eq!(store.signing_keys().await.unwrap().len(), 1);
    // The sealed private key round-trips.
    let stored = &store.signing_keys().await.unwrap()[0];
    let signer =
        TokenSigner::unseal(stored.id.clone(), &stored.sealed_private_key, &secrets).unwrap();
    assert_eq!(signer.public_key(), first.public_key);

    let rotated = signing_key(&secrets, Timestamp::now());
    store.rotate_signing_key(&rotated).await.unwrap();
    let keys = store.signing_keys().await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].id, rotated.id, "newest first");
    assert_eq!(keys[0].retired_at, None);
    assert_eq!(keys[1].id, first.id);
    assert_eq!(keys[1].retired_at, Some(rotated.created_at));
    assert_eq!(
        store.ensure_signing_key(&second).await.unwrap().id,
        rotated.id
    );
    db_cleanup(store).await;
}

async fn deployments_are_found_by_origin(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let found = |origins: &[&str]| {
        let store = store.clone();
        let origins: Vec<String> = origins.iter().map(|o| (*o).to_owned()).collect();
        async move {
            store
                .deployment_for_origin(&origins)
                .await
                .unwrap()
                .map(|d| d.id)
        }
    };
    assert_eq!(
        found(&["http://a.test"]).await.as_ref(),
        Some(a.deployment_id())
    );
    assert_eq!(
        found(&["https://b.test", "http://b.test"]).await.as_ref(),
        Some(b.deployment_id())
    );
    // The frontend host maps too.
    assert_eq!(
        found(&["http://b.test-app"]).await.as_ref(),
        Some(b.deployment_id())
    );
    assert_eq!(found(&["http://c.test"]).await, None);
    assert_eq!(found(&[]).await, None);
    let _ = OrganizationId::generate();
    db_cleanup(store).await;
}

async fn a_member_removal_waits_for_a_deletion_of_the_user(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    let org = acme_with(&store, &a, &ada.id, Role::Member).await;
    let (_, mut signed_in) = session(Some(&ada.id), Timestamp::now());
    signed_in.active_organization_id = Some(org.id.clone());
    store.create_session(&a, &signed_in).await.unwrap();
    if db.backend() == tessera_store::Backend::Postgres {
        // A deletion of the user in progress: it holds the user and has deleted the sessions
        // (`delete_user`'s order); the removal must wait for the user instead of taking the
        // membership the deletion needs next (which deadlocked).
        let (mut deleting, pid) = common::hold(
            db,
            "SELECT id FROM users WHERE id = $1 FOR UPDATE",
            ada.id.as_str(),
        )
        .await;
        sqlx::query("DELETE FROM browser_sessions WHERE user_id = $1")
            .bind(ada.id.as_str())
            .execute(&mut deleting)
            .await
            .unwrap();
        let removing = {
            let (store, scope, org, user) =
                (store.clone(), a.clone(), org.id.clone(), ada.id.clone());
            tokio::spawn(async move { store.remove_member(&scope, &org, &user).await })
        };
        common::wait_until_blocked_by(&mut deleting, pid, "the removal never waited").await;
        for sql in [
            "DELETE FROM memberships WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ] {
            sqlx::query(sql)
                .bind(ada.id.as_str())
                .execute(&mut deleting)
                .await
                .expect("the deletion goes on (no deadlock)");
        }
        sqlx::query("COMMIT").execute(&mut deleting).await.unwrap();
        assert_not_found(removing.await.unwrap(), Entity::Membership);
    } else {
        // One writer at a time: the deletion, then the removal.
        store
            .delete_user(&a, &ada.id, &common::operator())
            .await
            .unwrap();
        assert_not_found(
            store.remove_member(&a, &org.id, &ada.id).await,
            Entity::Membership,
        );
    }
    db_cleanup(store).await;
}

/// A user's creation, disabling, enabling and deletion record their audit events in their own
/// transactions: with who did it, from where, about whom; a write that fails or is refused
/// records nothing, and nothing reaches another deployment's log.
async fn user_writes_record_their_audit_events(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let key = SecretKeyId::generate();
    let by = AuditBy {
        actor: AuditActor::SecretKey(key.clone()),
        client: AuditClient {
            ip: Some("203.0.113.7".into()),
            user_agent: Some("backend/1.0".into()),
        },
    };
    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &by)
        .await
        .unwrap();
    assert_conflict(
        store
            .create_user(&a, &new_user("ada@example.com"), &by)
            .await,
        Conflict::EmailTaken,
    );
    let (_, new) = session(Some(&ada.id), Timestamp::now());
    store.create_session(&a, &new).await.unwrap();
    let (disabled, ended) = store
        .set_user_disabled(&a, &ada.id, true, &by)
        .await
        .unwrap();
    assert_eq!(ended, 1);
    store
        .set_user_disabled(&a, &ada.id, false, &by)
        .await
        .unwrap();
    // Another deployment's writes do not reach the user, and record nothing.
    assert_not_found(
        store.set_user_disabled(&b, &ada.id, true, &by).await,
        Entity::User,
    );
    assert_not_found(store.delete_user(&b, &ada.id, &by).await, Entity::User);
    store.delete_user(&a, &ada.id, &by).await.unwrap();
    assert_not_found(store.delete_user(&a, &ada.id, &by).await, Entity::User);

    let events = common::audited(&store, &a, None).await;
    let seen: Vec<(&str, Option<&str>, serde_json::Value)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.subject_id.as_deref(), e.data.clone()))
        .collect();
    let subject = Some(ada.id.as_str());
    assert_eq!(
        seen,
        vec![
            ("user.created", subject, serde_json::json!({})),
            (
                "user.disabled",
                subject,
                serde_json::json!({"sessions_ended": 1})
            ),
            ("user.enabled", subject, serde_json::json!({})),
            ("user.deleted", subject, serde_json::json!({})),
        ]
    );
    // Each event has its write's time.
    assert_eq!(events[0].created_at, ada.created_at);
    assert_eq!(events[1].created_at, disabled.updated_at);
    for e in &events {
        assert_eq!(
            (e.actor_type.as_str(), e.actor_id.as_deref()),
            ("secret_key", Some(key.as_str())),
            "{e:?}"
        );
        assert_eq!(e.ip.as_deref(), Some("203.0.113.7"));
        assert_eq!(e.user_agent.as_deref(), Some("backend/1.0"));
    }
    assert!(common::audited(&store, &b, None).await.is_empty());
}

/// A sign-in, an organization switch and a sign-out record their events in the transactions that
/// create, rotate and end the session: one each, and none when the write is refused or ends
/// nothing.
async fn session_writes_record_their_audit_events(db: &TestDatabase) {
    let store = open(db).await;
    let a = deployment(&store, "a", "http://a.test").await;
    let b = deployment(&store, "b", "http://b.test").await;
    let ada = store
        .create_user(&a, &new_user("ada@example.com"), &common::operator())
        .await
        .unwrap();
    let by_ada = |kind: AuditKind, data: serde_json::Value| {
        NewAuditEvent::new(
            kind,
            AuditActor::User(ada.id.clone()),
            Some(ada.id.as_str().to_owned()),
            AuditClient::default(),
            data,
        )
    };
    let kinds = |scope: Scope| {
        let store = store.clone();
        async move {
            common::audited(&store, &scope, None)
                .await
                .into_iter()
                .map(|e| e.kind)
                .collect::<Vec<_>>()
        }
    };
    let signed_in = by_ada(
        AuditKind::SignedIn,
        serde_json::json!({"method": "password"}),
    );

    // Refused (the user was disabled meanwhile): no session, no event.
    store
        .set_user_disabled(&a, &ada.id, true, &common::operator())
        .await
        .unwrap();
    let (_, refused) = session(Some(&ada.id), Timestamp::now());
    assert_not_found(
        store
            .replace_session(&a, None, &refused, Some(&signed_in))
            .await,
        Entity::User,
    );
    store
        .set_user_disabled(&a, &ada.id, false, &common::operator())
        .await
        .unwrap();
    let users = ["user.created", "user.disabled", "user.enabled"];
    assert_eq!(kinds(a.clone()).await, users);

    let (secret, new) = session(Some(&ada.id), Timestamp::now());
    store
        .replace_session(&a, None, &new, Some(&signed_in))
        .await
        .unwrap();
    // A switch to an organization Ada is not a member of changes nothing and records nothing.
    let org = acme_with(&store, &a, &ada.id, Role::Member).await;
    let stranger = store
        .create_organization(
            &a,
            &NewOrganization {
                name: Label::parse("name", "Other").unwrap(),
                slug: None,
            },
        )
        .await
        .unwrap();
    let switch = |to: &OrganizationId| {
        let (secret, mut new) = session(Some(&ada.id), Timestamp::now());
        new.active_organization_id = Some(to.clone());
        (secret, new)
    };
    let changed = by_ada(
        AuditKind::ActiveOrganizationChanged,
        serde_json::json!({"organization_id": org.id.as_str()}),
    );
    let (_, wrong) = switch(&stranger.id);
    assert_not_found(
        store
            .rotate_session(&a, &secret.hash(), &wrong, Some(&changed))
            .await,
        Entity::Organization,
    );
    let (rotated_secret, rotated) = switch(&org.id);
    store
        .rotate_session(&a, &secret.hash(), &rotated, Some(&changed))
        .await
        .unwrap();
    // Signing out twice ends one session: one event.
    let signed_out = by_ada(AuditKind::SignedOut, serde_json::json!({}));
    for _ in 0..2 {
        store
            .delete_session(&a, &rotated_secret.hash(), Some(&signed_out))
            .await
            .unwrap();
    }
    let sessions = [
        "user.signed_in",
        "user.active_organization_changed",
        "user.signed_out",
    ];
    assert_eq!(kinds(a.clone()).await, [&users[..], &sessions[..]].concat());
    assert!(kinds(b.clone()).await.is_empty());
}
