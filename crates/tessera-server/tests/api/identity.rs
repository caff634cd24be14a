//! Identity over HTTP: users, organizations and the audit log through the SDK; sign-in, the
//! session cookie, `/me`, user tokens and the sign-in page through raw HTTP where headers and
//! cookies must be inspected.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::models::{
    AddOrganizationMemberRequest, CreateOrganizationRequest, CreateUserRequest,
    CreateUserTokenRequest, ListAuditEventsParams, ListUsersParams, OrganizationRole, PageParams,
    SignInRequest, UpdateUserRequest, User,
};
use tessera_client::{Client, ErrorCode};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{
    assert_api_error, assert_ordered_secret, send, spawn_app, spawn_app_with, Resp, TestApp,
};

backend_tests!(
    users_are_managed_through_the_sdk,
    organizations_and_members,
    another_deployments_users_and_organizations_are_not_found,
    sign_in_sets_a_fresh_cookie_and_me_shows_the_user,
    wrong_password_and_unknown_email_get_the_same_answer,
    disabled_users_cannot_sign_in_and_are_signed_out_everywhere,
    cross_origin_browser_writes_are_refused,
    failed_sign_ins_are_rate_limited_across_nodes,
    user_tokens_verify_with_the_jwks_and_survive_rotation,
    concurrent_failed_sign_ins_cannot_exceed_the_limit,
    busy_password_checks_are_not_counted_as_failures,
    abandoned_sign_ins_are_not_counted_as_failures,
    abandoned_password_checks_keep_their_slot,
    overlong_tokens_and_long_retired_keys_are_refused,
    the_sign_in_page_works_without_javascript,
    the_audit_log_records_keys_and_sign_ins,
    browser_requests_map_to_the_deployment_of_their_host,
    cookies_are_secure_behind_an_https_public_url,
);

const PASSWORD: &str = "correct horse battery staple";

async fn user(app: &TestApp, email: &str, password: Option<&str>) -> User {
    app.client
        .users()
        .create_user(CreateUserRequest {
            email: email.to_owned(),
            first_name: Some("Ada".into()),
            password: password.map(str::to_owned),
            ..Default::default()
        })
        .send()
        .await
        .expect("create user")
}

/// `POST /sign-in` as JSON from the server's own origin, with an optional session cookie.
async fn sign_in(app: &TestApp, email: &str, password: &str, cookie: Option<&str>) -> Resp {
    let mut request = app
        .anonymous(Method::POST, "/sign-in")
        .header("origin", &app.base_url)
        .json(&json!({"email": email, "password": password}));
    if let Some(cookie) = cookie {
        request = request.header("cookie", format!("tessera_session={cookie}"));
    }
    send(request).await
}

/// The `tessera_session` Set-Cookie header of a response, whole.
fn set_cookie(resp: &Resp) -> Option<String> {
    resp.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("tessera_session="))
        .map(str::to_owned)
}

/// The cookie value set by a response.
fn cookie_value(resp: &Resp) -> String {
    let header =
        set_cookie(resp).unwrap_or_else(|| panic!("no session cookie: {:?}", resp.headers));
    header
        .trim_start_matches("tessera_session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn me(app: &TestApp, cookie: &str) -> Resp {
    send(
        app.anonymous(Method::GET, "/me")
            .header("cookie", format!("tessera_session={cookie}")),
    )
    .await
}

async fn users_are_managed_through_the_sdk(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let users = app.client.users();
    let ada = users
        .create_user(CreateUserRequest {
            email: "  Ada.Lovelace@Example.COM ".into(),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            password: Some(PASSWORD.into()),
            metadata: Some(json!({"plan": "pro"})),
        })
        .send()
        .await
        .unwrap();
    crate::helpers::assert_id(&ada.id, "user");
    assert_eq!(ada.email, "ada.lovelace@example.com");
    assert!(ada.has_password && !ada.disabled);
    assert_eq!(ada.metadata, json!({"plan": "pro"}));

    // The raw answer carries no password or hash.
    let raw = app.get(&format!("/users/{}", ada.id)).await;
    let text = raw.text.to_lowercase();
    assert!(!text.contains("\"password\"") && !text.contains("argon2") && !text.contains(PASSWORD));

    let err = users
        .create_user(CreateUserRequest {
            email: "ADA.LOVELACE@example.com".into(),
            ..Default::default()
        })
        .send()
        .await;
    assert_api_error(err, 409, ErrorCode::EmailTaken, Some("email"));
    for (body, field) in [
        (json!({"email": "not-an-email"}), "email"),
        (json!({"email": "a@b.co", "password": "short"}), "password"),
        (json!({"email": "a@b.co", "first_name": ""}), "first_name"),
        (json!({"email": "a@b.co", "metadata": [1]}), "metadata"),
        (json!({"email": "a@b.co", "role": "admin"}), "role"),
        (json!({}), "email"),
    ] {
        app.post("/users", body.clone())
            .await
            .assert_error(422, "validation_failed", Some(field));
    }

    assert_eq!(users.get_user(&ada.id).send().await.unwrap(), ada);
    let found = users
        .list_users(ListUsersParams {
            email: Some("ADA.lovelace@example.com".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(found.data, vec![ada.clone()]);
    user(&app, "bob@example.com", None).await;
    let page = users
        .list_users(ListUsersParams {
            limit: Some(1),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert!(page.has_more);
    assert_eq!(page.data[0].id, ada.id);

    let updated = users
        .update_user(
            &ada.id,
            UpdateUserRequest {
                first_name: Some(None),
                password: Some(None),
                metadata: Some(json!({})),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(updated.first_name, None);
    assert_eq!(updated.last_name.as_deref(), Some("Lovelace"));
    assert!(!updated.has_password);
    let err = users
        .update_user(
            &ada.id,
            UpdateUserRequest {
                email: Some("bob@example.com".into()),
                ..Default::default()
            },
        )
        .send()
        .await;
    assert_api_error(err, 409, ErrorCode::EmailTaken, Some("email"));
    app.patch(&format!("/users/{}", ada.id), json!({"password": "short"}))
        .await
        .assert_error(422, "validation_failed", Some("password"));

    let deleted = users.delete_user(&ada.id).send().await.unwrap();
    assert!(deleted.deleted);
    assert_api_error(
        users.get_user(&ada.id).send().await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    app.get("/users/not-an-id")
        .await
        .assert_error(404, "user_not_found", None);
    app.get("/users?email=nope")
        .await
        .assert_error(400, "invalid_parameter", Some("email"));
    app.stop().await;
}

async fn organizations_and_members(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let orgs = app.client.organizations();
    let acme = orgs
        .create_organization(CreateOrganizationRequest {
            name: "Acme".into(),
            slug: Some("acme".into()),
        })
        .send()
        .await
        .unwrap();
    crate::helpers::assert_id(&acme.id, "org");
    let err = orgs
        .create_organization(CreateOrganizationRequest {
            name: "Acme again".into(),
            slug: Some("acme".into()),
        })
        .send()
        .await;
    assert_api_error(err, 409, ErrorCode::OrganizationSlugTaken, Some("slug"));
    app.post("/organizations", json!({"name": "x", "slug": "Not A Slug"}))
        .await
        .assert_error(422, "validation_failed", Some("slug"));
    assert_eq!(orgs.get_organization(&acme.id).send().await.unwrap(), acme);
    let listed = orgs
        .list_organizations(PageParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(listed.data, vec![acme.clone()]);

    let ada = user(&app, "ada@example.com", None).await;
    let member = orgs
        .add_member(
            &acme.id,
            AddOrganizationMemberRequest {
                user_id: ada.id.clone(),
                role: OrganizationRole::Admin,
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(member.role, OrganizationRole::Admin);
    let again = orgs
        .add_member(
            &acme.id,
            AddOrganizationMemberRequest {
                user_id: ada.id.clone(),
                role: OrganizationRole::Member,
            },
        )
        .send()
        .await;
    assert_api_error(again, 409, ErrorCode::AlreadyMember, Some("user_id"));
    let nobody = tessera_domain::UserId::generate().into_string();
    app.post(
        &format!("/organizations/{}/members", acme.id),
        json!({"user_id": nobody, "role": "member"}),
    )
    .await
    .assert_error(404, "user_not_found", Some("user_id"));
    app.post(
        &format!("/organizations/{}/members", acme.id),
        json!({"user_id": ada.id, "role": "owner"}),
    )
    .await
    .assert_error(422, "validation_failed", Some("role"));
    app.post(
        &format!("/organizations/{}/members", acme.id),
        json!({"user_id": "bogus", "role": "member"}),
    )
    .await
    .assert_error(422, "validation_failed", Some("user_id"));
    let members = orgs
        .list_members(&acme.id, PageParams::default())
        .send()
        .await
        .unwrap();
    assert_eq!(members.data, vec![member]);

    let removed = orgs.remove_member(&acme.id, &ada.id).send().await.unwrap();
    assert!(removed.removed);
    assert_api_error(
        orgs.remove_member(&acme.id, &ada.id).send().await,
        404,
        ErrorCode::MembershipNotFound,
        None,
    );
    let unknown_org = tessera_domain::OrganizationId::generate().into_string();
    assert_api_error(
        orgs.list_members(&unknown_org, PageParams::default())
            .send()
            .await,
        404,
        ErrorCode::OrganizationNotFound,
        None,
    );
    app.stop().await;
}

async fn another_deployments_users_and_organizations_are_not_found(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let other = app.create_deployment("other").await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let acme = app
        .client
        .organizations()
        .create_organization(CreateOrganizationRequest {
            name: "Acme".into(),
            slug: None,
        })
        .send()
        .await
        .unwrap();
    let theirs = other.client.users();
    assert_api_error(
        theirs.get_user(&ada.id).send().await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    assert_api_error(
        theirs
            .update_user(&ada.id, UpdateUserRequest::default())
            .send()
            .await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    assert_api_error(
        theirs.disable_user(&ada.id).send().await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    assert_api_error(
        theirs.enable_user(&ada.id).send().await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    assert_api_error(
        theirs.delete_user(&ada.id).send().await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    assert_api_error(
        theirs
            .create_user_token(&ada.id, CreateUserTokenRequest::default())
            .send()
            .await,
        404,
        ErrorCode::UserNotFound,
        None,
    );
    let their_orgs = other.client.organizations();
    assert_api_error(
        their_orgs.get_organization(&acme.id).send().await,
        404,
        ErrorCode::OrganizationNotFound,
        None,
    );
    assert_api_error(
        their_orgs
            .add_member(
                &acme.id,
                AddOrganizationMemberRequest {
                    user_id: ada.id.clone(),
                    role: OrganizationRole::Member,
                },
            )
            .send()
            .await,
        404,
        ErrorCode::OrganizationNotFound,
        None,
    );
    let own = their_orgs
        .create_organization(CreateOrganizationRequest {
            name: "Theirs".into(),
            slug: None,
        })
        .send()
        .await
        .unwrap();
    assert_api_error(
        their_orgs
            .add_member(
                &own.id,
                AddOrganizationMemberRequest {
                    user_id: ada.id.clone(),
                    role: OrganizationRole::Member,
                },
            )
            .send()
            .await,
        404,
        ErrorCode::UserNotFound,
        Some("user_id"),
    );
    assert!(theirs
        .list_users(Default::default())
        .send()
        .await
        .unwrap()
        .data
        .is_empty());
    let events = other
        .client
        .audit_events()
        .list_audit_events(Default::default())
        .send()
        .await
        .unwrap();
    assert!(
        events
            .data
            .iter()
            .all(|e| e.subject_id.as_deref() != Some(ada.id.as_str())),
        "another deployment's audit log: {events:?}"
    );
    // Still there for its own deployment.
    app.client.users().get_user(&ada.id).send().await.unwrap();
    app.stop().await;
}

async fn sign_in_sets_a_fresh_cookie_and_me_shows_the_user(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let orgs = app.client.organizations();
    let mut org_ids = Vec::new();
    for name in ["Acme", "Globex"] {
        org_ids.push(app.organization_with_member(name, &ada.id).await.id);
    }
    let other_org = orgs
        .create_organization(CreateOrganizationRequest {
            name: "Not hers".into(),
            slug: None,
        })
        .send()
        .await
        .unwrap();

    // Not signed in yet.
    send(app.anonymous(Method::GET, "/me"))
        .await
        .assert_error(401, "unauthorized", None);

    let first = sign_in(&app, " ADA@example.com", PASSWORD, None).await;
    let body = first.ok(200).clone();
    assert_eq!(body["user"]["id"], ada.id.as_str());
    assert_eq!(body["authenticated_by"], "session");
    assert_eq!(body["memberships"].as_array().unwrap().len(), 2);
    assert_eq!(body["active_organization"], Value::Null);
    let header = set_cookie(&first).unwrap();
    let attributes: Vec<&str> = header.split(';').map(str::trim).collect();
    for expected in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(attributes.contains(&expected), "{expected} in {header}");
    }
    assert!(
        attributes
            .iter()
            .any(|a| a.starts_with("Max-Age=") && a != &"Max-Age=0"),
        "{header}"
    );
    assert!(
        !attributes.contains(&"Secure"),
        "plain http: no Secure ({header})"
    );
    let cookie = cookie_value(&first);
    assert_ordered_secret(&cookie, "tss");

    let shown = me(&app, &cookie).await;
    assert_eq!(shown.ok(200)["user"]["email"], "ada@example.com");
    let names: Vec<&str> = shown.body["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["organization"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Acme", "Globex"]);

    // Session fixation: signing in again with a known cookie yields a new value, and the old
    // one is dead.
    let second = sign_in(&app, "ada@example.com", PASSWORD, Some(&cookie)).await;
    second.ok(200);
    let cookie2 = cookie_value(&second);
    assert_ne!(cookie2, cookie);
    me(&app, &cookie)
        .await
        .assert_error(401, "unauthorized", None);
    me(&app, &cookie2).await.ok(200);

    // Choosing the active organization rotates the session too.
    let chosen = send(
        app.anonymous(Method::POST, "/me/active-organization")
            .header("origin", &app.base_url)
            .header("cookie", format!("tessera_session={cookie2}"))
            .json(&json!({"organization_id": org_ids[1]})),
    )
    .await;
    assert_eq!(
        chosen.ok(200)["active_organization"]["id"],
        org_ids[1].as_str()
    );
    let cookie3 = cookie_value(&chosen);
    assert_ne!(cookie3, cookie2);
    me(&app, &cookie2)
        .await
        .assert_error(401, "unauthorized", None);
    let now_active = me(&app, &cookie3).await;
    assert_eq!(now_active.ok(200)["active_organization"]["name"], "Globex");
    for (body, status, code) in [
        (
            json!({"organization_id": other_org.id}),
            404,
            "organization_not_found",
        ),
        (
            json!({"organization_id": "org_nope"}),
            422,
            "validation_failed",
        ),
        (json!({}), 422, "validation_failed"),
    ] {
        send(
            app.anonymous(Method::POST, "/me/active-organization")
                .header("origin", &app.base_url)
                .header("cookie", format!("tessera_session={cookie3}"))
                .json(&body),
        )
        .await
        .assert_error(status, code, Some("organization_id"));
    }

    // Removing the membership takes the organization out of the session.
    orgs.remove_member(&org_ids[1], &ada.id)
        .send()
        .await
        .unwrap();
    let after = me(&app, &cookie3).await;
    assert_eq!(after.ok(200)["active_organization"], Value::Null);

    // Sign-out ends the session and clears the cookie.
    let out = send(
        app.anonymous(Method::POST, "/sign-out")
            .header("origin", &app.base_url)
            .header("cookie", format!("tessera_session={cookie3}")),
    )
    .await;
    assert_eq!(out.ok(200)["signed_out"], true);
    let cleared = set_cookie(&out).unwrap();
    assert!(
        cleared.starts_with("tessera_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    me(&app, &cookie3)
        .await
        .assert_error(401, "unauthorized", None);

    // The SDK signs in too (as a first-party client).
    let anonymous = Client::unauthenticated(app.base_url.clone());
    let signed = anonymous
        .me()
        .sign_in(SignInRequest {
            email: "ada@example.com".into(),
            password: PASSWORD.into(),
            redirect_url: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(signed.user.id, ada.id);
    app.stop().await;
}

/// Median wall time of `n` sign-ins.
async fn median_sign_in(app: &TestApp, email: &str, password: &str, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        sign_in(app, email, password, None).await;
        times.push(started.elapsed());
    }
    times.sort();
    times[n / 2]
}

async fn wrong_password_and_unknown_email_get_the_same_answer(db: &TestDatabase) {
    let app = spawn_app(db).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    user(&app, "nopass@example.com", None).await;
    let answers = [
        sign_in(&app, "ada@example.com", "wrong password", None).await,
        sign_in(&app, "nobody@example.com", PASSWORD, None).await,
        sign_in(&app, "nopass@example.com", PASSWORD, None).await,
        sign_in(&app, "ada@example.com", "", None).await,
    ];
    for resp in &answers {
        resp.assert_error(401, "invalid_credentials", None);
        assert!(set_cookie(resp).is_none(), "no session on failure");
    }
    let shape = |r: &Resp| {
        (
            r.status,
            r.body["error"]["code"].clone(),
            r.body["error"]["message"].clone(),
        )
    };
    assert_eq!(shape(&answers[0]), shape(&answers[1]));
    assert_eq!(shape(&answers[0]), shape(&answers[2]));

    // Also in time: an unknown email is verified against a dummy hash. Without it, the unknown
    // email would answer in a small fraction of the time.
    let wrong = median_sign_in(&app, "ada@example.com", "wrong password", 3).await;
    let unknown = median_sign_in(&app, "nobody2@example.com", "wrong password", 3).await;
    assert!(
        unknown * 3 > wrong && wrong * 3 > unknown,
        "wrong password {wrong:?} vs unknown email {unknown:?}"
    );

    // Input errors are 4xx naming the field.
    let bad = send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .json(&json!({"email": "not-an-email", "password": "x"})),
    )
    .await;
    bad.assert_error(422, "validation_failed", Some("email"));
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .json(&json!({"email": "a@b.co"})),
    )
    .await
    .assert_error(422, "validation_failed", Some("password"));
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .header("content-type", "application/json")
            .body("{\"email\":"),
    )
    .await
    .assert_error(400, "malformed_json", None);
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await
    .assert_error(415, "unsupported_media_type", None);
    app.stop().await;
}

async fn disabled_users_cannot_sign_in_and_are_signed_out_everywhere(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let one = cookie_value(&sign_in(&app, "ada@example.com", PASSWORD, None).await);
    let two = cookie_value(&sign_in(&app, "ada@example.com", PASSWORD, None).await);
    let token = app
        .client
        .users()
        .create_user_token(&ada.id, CreateUserTokenRequest::default())
        .send()
        .await
        .unwrap()
        .token;
    let as_user = Client::new(app.base_url.clone(), token.clone());
    as_user.me().get_me().send().await.unwrap();

    let disabled = app
        .client
        .users()
        .disable_user(&ada.id)
        .send()
        .await
        .unwrap();
    assert!(disabled.disabled);
    for cookie in [&one, &two] {
        me(&app, cookie)
            .await
            .assert_error(401, "unauthorized", None);
    }
    assert_api_error(
        as_user.me().get_me().send().await,
        401,
        ErrorCode::Unauthorized,
        None,
    );
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .assert_error(401, "invalid_credentials", None);
    assert_api_error(
        app.client
            .users()
            .create_user_token(&ada.id, CreateUserTokenRequest::default())
            .send()
            .await,
        409,
        ErrorCode::UserDisabled,
        None,
    );
    let events = app
        .client
        .audit_events()
        .list_audit_events(ListAuditEventsParams {
            kind: Some("user.disabled".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(events.data.len(), 1);
    assert_eq!(events.data[0].subject_id.as_deref(), Some(ada.id.as_str()));
    assert_eq!(events.data[0].data["sessions_ended"], 2);

    app.client
        .users()
        .enable_user(&ada.id)
        .send()
        .await
        .unwrap();
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .ok(200);
    app.stop().await;
}

async fn cross_origin_browser_writes_are_refused(db: &TestDatabase) {
    let app = spawn_app(db).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    let body = json!({"email": "ada@example.com", "password": PASSWORD});
    let refused = [
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", "https://evil.example"),
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", "null"),
        app.anonymous(Method::POST, "/sign-in"),
        app.anonymous(Method::POST, "/sign-in")
            .header("referer", "https://evil.example/page"),
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", format!("{}.evil.example", app.base_url)),
    ];
    for request in refused {
        let resp = send(request.json(&body)).await;
        resp.assert_error(403, "origin_not_allowed", None);
        assert!(set_cookie(&resp).is_none());
    }
    // A same-origin Referer stands in for a missing Origin.
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("referer", format!("{}/sign-in", app.base_url))
            .json(&body),
    )
    .await
    .ok(200);

    let cookie = cookie_value(&sign_in(&app, "ada@example.com", PASSWORD, None).await);
    for (path, payload) in [
        ("/sign-out", None),
        (
            "/me/active-organization",
            Some(json!({"organization_id": "org_x"})),
        ),
    ] {
        let mut request = app
            .anonymous(Method::POST, path)
            .header("origin", "https://evil.example")
            .header("cookie", format!("tessera_session={cookie}"));
        if let Some(payload) = &payload {
            request = request.json(payload);
        }
        send(request)
            .await
            .assert_error(403, "origin_not_allowed", None);
        let mut bare = app
            .anonymous(Method::POST, path)
            .header("cookie", format!("tessera_session={cookie}"));
        if let Some(payload) = &payload {
            bare = bare.json(payload);
        }
        send(bare)
            .await
            .assert_error(403, "origin_not_allowed", None);
    }
    // The refused sign-out did nothing.
    me(&app, &cookie).await.ok(200);

    // The page's form gets the refusal inline.
    let form = send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", "https://evil.example")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "email=ada%40example.com&password={}",
                PASSWORD.replace(' ', "+")
            )),
    )
    .await;
    assert_eq!(form.status, 403);
    assert!(form.text.contains("another site"), "{}", form.text);
    app.stop().await;
}

fn strict_limits(config: &mut tessera_server::Config) {
    config.identity.sign_in_max_failures_per_account = 3;
    config.identity.sign_in_max_failures_per_ip = 6;
    config.identity.sign_in_window_seconds = 120;
}

async fn failed_sign_ins_are_rate_limited_across_nodes(db: &TestDatabase) {
    let app = spawn_app_with(db, strict_limits).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    user(&app, "bob@example.com", Some(PASSWORD)).await;
    user(&app, "cy@example.com", Some(PASSWORD)).await;
    for _ in 0..3 {
        sign_in(&app, "ada@example.com", "wrong", None)
            .await
            .assert_error(401, "invalid_credentials", None);
    }
    // Blocked for this account, even with the right password.
    let blocked = sign_in(&app, "ada@example.com", PASSWORD, None).await;
    blocked.assert_error(429, "too_many_attempts", None);
    let retry: u64 = blocked.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry), "Retry-After {retry}");
    // Another account is not (yet) blocked.
    sign_in(&app, "bob@example.com", PASSWORD, None)
        .await
        .ok(200);

    // The counters live in the database: a second node on it sees the same block.
    let node2 = spawn_app_with(db, strict_limits).await;
    send(
        node2
            .anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .json(&json!({"email": "ada@example.com", "password": PASSWORD})),
    )
    .await
    .assert_error(429, "too_many_attempts", None);
    node2.stop().await;

    // Per address: three more failures (on unknown emails) reach this address's limit of 6,
    // and then even another account's right password is refused.
    for i in 0..3 {
        sign_in(&app, &format!("ghost{i}@example.com"), "wrong", None)
            .await
            .assert_error(401, "invalid_credentials", None);
    }
    sign_in(&app, "cy@example.com", PASSWORD, None)
        .await
        .assert_error(429, "too_many_attempts", None);
    app.stop().await;
}

/// Decodes a base64url segment.
fn b64(segment: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .unwrap()
}

async fn user_tokens_verify_with_the_jwks_and_survive_rotation(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let minted = app
        .client
        .users()
        .create_user_token(
            &ada.id,
            CreateUserTokenRequest {
                expires_in: Some(120),
            },
        )
        .send()
        .await
        .unwrap();
    assert_eq!(minted.token_type, "Bearer");
    assert_eq!(minted.expires_in, 120);
    let parts: Vec<&str> = minted.token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&b64(parts[0])).unwrap();
    let claims: Value = serde_json::from_slice(&b64(parts[1])).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["iss"], app.base_url.as_str());
    assert_eq!(claims["aud"], "tessera:user");
    assert_eq!(claims["sub"], ada.id.as_str());
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );

    // The JWKS publishes the key; the token verifies with it alone.
    let anonymous = Client::unauthenticated(app.base_url.clone());
    let jwks = anonymous.me().jwks().send().await.unwrap();
    let jwk = jwks
        .keys
        .iter()
        .find(|k| Some(k.kid.as_str()) == header["kid"].as_str())
        .expect("the token's kid is published");
    assert_eq!(
        (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
        ("OKP", "Ed25519", "EdDSA")
    );
    let public: [u8; 32] = b64(&jwk.x).try_into().unwrap();
    let verified = tessera_domain::token::verify_user_token(
        &minted.token,
        &public,
        &app.base_url,
        tessera_domain::Timestamp::now().as_secs(),
    )
    .unwrap();
    assert_eq!(verified.user_id.as_str(), ada.id);

    // The token authenticates /me (not the session endpoints).
    let as_user = Client::new(app.base_url.clone(), minted.token.clone());
    let me = as_user.me().get_me().send().await.unwrap();
    assert_eq!(
        (me.user.id.as_str(), me.authenticated_by.as_str()),
        (ada.id.as_str(), "token")
    );
    assert_api_error(
        as_user.me().set_active_organization("org_x").send().await,
        409,
        ErrorCode::NoBrowserSession,
        None,
    );
    // Tampered, foreign or secret-key bearers are refused.
    let mut forged_claims = claims.clone();
    forged_claims["sub"] = json!(tessera_domain::UserId::generate().into_string());
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&forged_claims).unwrap()
        ),
        parts[2]
    );
    for bad in [forged.as_str(), app.key.as_str(), "e30.e30.e30", "nonsense"] {
        let resp = send(app.anonymous(Method::GET, "/me").bearer_auth(bad)).await;
        resp.assert_error(401, "unauthorized", None);
    }
    for bad in [
        json!({"expires_in": 10}),
        json!({"expires_in": 100000}),
        json!({"ttl": 60}),
    ] {
        let field = if bad.get("ttl").is_some() {
            "ttl"
        } else {
            "expires_in"
        };
        app.post(&format!("/users/{}/tokens", ada.id), bad)
            .await
            .assert_error(422, "validation_failed", Some(field));
    }

    // Rotation: a new current key; the old token still verifies until it expires.
    let store = tessera_store::open(&app.db_url, &Default::default())
        .await
        .unwrap();
    let config = tessera_server::Config {
        database_url: app.db_url.clone(),
        secrets_key: Some(tessera_server::Secret::new(
            crate::helpers::test_secrets_key(),
        )),
        ..Default::default()
    };
    let new_kid = tessera_server::rotate_signing_key(&config, store.as_ref())
        .await
        .unwrap();
    store.close().await;
    assert_ne!(Some(new_kid.as_str()), header["kid"].as_str());
    as_user.me().get_me().send().await.unwrap();
    let kids: Vec<String> = anonymous
        .me()
        .jwks()
        .send()
        .await
        .unwrap()
        .keys
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert!(
        kids.contains(&new_kid)
            && kids
                .iter()
                .any(|k| Some(k.as_str()) == header["kid"].as_str())
    );
    let fresh = app
        .client
        .users()
        .create_user_token(&ada.id, CreateUserTokenRequest::default())
        .send()
        .await
        .unwrap();
    let fresh_header: Value =
        serde_json::from_slice(&b64(fresh.token.split('.').next().unwrap())).unwrap();
    assert_eq!(fresh_header["kid"], new_kid.as_str());
    assert_eq!(fresh.expires_in, 900);

    // A deleted user's token stops working.
    app.client
        .users()
        .delete_user(&ada.id)
        .send()
        .await
        .unwrap();
    assert_api_error(
        as_user.me().get_me().send().await,
        401,
        ErrorCode::Unauthorized,
        None,
    );
    app.stop().await;
}

async fn concurrent_failed_sign_ins_cannot_exceed_the_limit(db: &TestDatabase) {
    // 3 failures per account: of 12 guesses sent at once, at most 3 are checked.
    let app = spawn_app_with(db, strict_limits).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    let guesses = (0..12).map(|i| {
        let app = &app;
        async move { sign_in(app, "ada@example.com", &format!("guess-{i}"), None).await }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let checked = answers.iter().filter(|r| r.status == 401).count();
    let refused = answers.iter().filter(|r| r.status == 429).count();
    assert_eq!(checked + refused, 12, "{answers:?}");
    assert!(
        checked <= 3,
        "{checked} guesses were checked against a limit of 3"
    );
    assert!(checked >= 1);
    // The account stays blocked, even for the right password.
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .assert_error(429, "too_many_attempts", None);
    app.stop().await;
}

/// A sign-in answered `503 busy` (no password slot free) had its password never checked: it
/// must not count towards the limit, or a few busy moments lock an account out as if its
/// password had been guessed at. One slot and no wait make most of a burst busy.
async fn busy_password_checks_are_not_counted_as_failures(db: &TestDatabase) {
    const LIMIT: u32 = 6;
    let app = spawn_app_with(db, |c| {
        one_password_slot(c, 0, LIMIT);
        c.bootstrap_admin_password = Some(tessera_server::Secret::new(PASSWORD));
    })
    .await;
    let console = |password: String| {
        send(
            app.anonymous(Method::POST, "/console/api/sign-in")
                .header("origin", &app.base_url)
                .json(&json!({ "password": password })),
        )
    };
    // A burst of 8 is only telling when some of it was busy and fewer than 6 guesses (the
    // limit) were checked: then the busy ones would have reached the limit had they counted.
    // A slow machine may check more; each try takes a fresh user (the console's one admin has
    // its failures cleared).
    let mut telling = [false; 2];
    for round in 0..5 {
        let email = format!("user{round}@example.com");
        user(&app, &email, Some(PASSWORD)).await;
        let guesses = (0..8).map(|i| {
            let (app, email) = (&app, &email);
            async move { sign_in(app, email, &format!("guess-{i}"), None).await }
        });
        let answers = futures_util::future::join_all(guesses).await;
        if burst_is_telling(&answers, LIMIT) {
            telling[0] = true;
            // Only the checked guesses count: the right password still gets in.
            sign_in(&app, &email, PASSWORD, None).await.ok(200);
        }
        if !telling[1] {
            let guesses = (0..8).map(|i| console(format!("guess-{i}")));
            let answers = futures_util::future::join_all(guesses).await;
            if burst_is_telling(&answers, LIMIT) {
                telling[1] = true;
                console(PASSWORD.to_owned()).await.ok(200);
            } else {
                // There is one console admin: forget this burst's failures before the next.
                tessera_store::open(&app.db_url, &Default::default())
                    .await
                    .expect("open the store")
                    .clear_sign_in_failures(tessera_store::Throttle::Console, "console:admin")
                    .await
                    .expect("clear the console's failures");
            }
        }
        if telling == [true, true] {
            break;
        }
    }
    assert_eq!(
        telling,
        [true, true],
        "no burst was partly busy (users, console)"
    );
    app.stop().await;
}

/// One password slot, waited for `wait_ms`, and `limit` failures per account (the address's
/// limit out of the way).
fn one_password_slot(c: &mut tessera_server::Config, wait_ms: u64, limit: u32) {
    c.identity.password_check_slots = 1;
    c.identity.password_check_wait_ms = wait_ms;
    c.identity.sign_in_max_failures_per_account = limit;
    c.identity.sign_in_max_failures_per_ip = 1_000;
}

/// A browser that gives up on a sign-in after a while (its connection closes).
struct Impatient<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
}

impl<'a> Impatient<'a> {
    fn new(app: &'a TestApp, patience: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(patience)
            .build()
            .unwrap();
        Self { app, http }
    }

    async fn sign_in(&self, email: &str, password: String) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}/sign-in", self.app.base_url))
            .header("origin", &self.app.base_url)
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
    }
}

/// A user `slow@example.com` whose stored hash asks for so many argon2 passes that checking a
/// password against it holds a password slot for seconds.
async fn slow_user(app: &TestApp) {
    let store = tessera_store::open(&app.db_url, &Default::default())
        .await
        .expect("open the store");
    let deployment = app.client.deployments().current().send().await.unwrap();
    let scope = tessera_domain::Scope::deployment(
        tessera_domain::DeploymentId::parse(&deployment.id).unwrap(),
    );
    let slow = tessera_domain::password::PasswordHash::from_stored(format!(
        "$argon2id$v=19$m=19456,t=500,p=1$c2FsdHNhbHRzYWx0c2FsdA${}",
        "A".repeat(43)
    ))
    .expect("a PHC string");
    store
        .create_user(
            &scope,
            &tessera_domain::identity::NewUser {
                email: tessera_domain::identity::Email::parse("email", "slow@example.com").unwrap(),
                first_name: None,
                last_name: None,
                password_hash: Some(slow),
                metadata: tessera_domain::validate::Metadata::parse("metadata", json!({})).unwrap(),
            },
            &tessera_domain::identity::AuditBy {
                actor: tessera_domain::identity::AuditActor::Operator,
                client: Default::default(),
            },
        )
        .await
        .expect("create the slow user");
    store.close().await;
}

/// A sign-in whose client gave up while it waited for a password slot was counted and never
/// checked: when the server drops the request, the attempt is taken back. The slow user's
/// check holds the one slot while a burst of guesses for another account waits behind it and
/// is abandoned.
async fn abandoned_sign_ins_are_not_counted_as_failures(db: &TestDatabase) {
    const LIMIT: u32 = 6;
    let app = spawn_app_with(db, |c| one_password_slot(c, 60_000, LIMIT)).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    slow_user(&app).await;
    let (head_start, patience) = (Duration::from_millis(500), Duration::from_millis(1_000));
    let impatient = Impatient::new(&app, patience);
    let holder = async {
        let started = Instant::now();
        sign_in(&app, "slow@example.com", "guess", None)
            .await
            .assert_error(401, "invalid_credentials", None);
        started.elapsed()
    };
    let burst = async {
        // The holder has the slot by then.
        tokio::time::sleep(head_start).await;
        let guesses = (0..8).map(|i| impatient.sign_in("ada@example.com", format!("guess-{i}")));
        futures_util::future::join_all(guesses).await
    };
    let (held, answers) = tokio::join!(holder, burst);
    assert!(
        held > head_start + patience,
        "the slow check took only {held:?}: the burst was not kept waiting"
    );
    let mut abandoned = 0;
    for answer in answers {
        match answer {
            Err(err) if err.is_timeout() => abandoned += 1,
            // Over the limit while the others were counted and waiting.
            Ok(answer) => assert_eq!(answer.status(), 429, "{answer:?}"),
            Err(err) => panic!("{err}"),
        }
    }
    // At least the limit's worth were counted and left waiting (a refusal may come late).
    assert!(abandoned >= LIMIT as usize, "{abandoned} guesses abandoned");
    // None of them was checked: the right password gets in.
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .ok(200);
    app.stop().await;
}

/// A password check whose client went away keeps its slot until the check is done, and its
/// attempt stays counted: otherwise requests abandoned at once would start argon2 work
/// (~19 MiB each) beyond the limit, and without ever reaching the limit of failures.
async fn abandoned_password_checks_keep_their_slot(db: &TestDatabase) {
    let app = spawn_app_with(db, |c| one_password_slot(c, 0, 1)).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    slow_user(&app).await;
    let gave_up = Impatient::new(&app, Duration::from_millis(500))
        .sign_in("slow@example.com", "guess".to_owned())
        .await;
    assert!(
        gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
        "{gave_up:?}"
    );
    // The abandoned check still runs and holds the one slot.
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .assert_error(503, "busy", None);
    // And it counts: the slow account is at its limit of one failure.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sign_in(&app, "slow@example.com", "guess-2", None)
        .await
        .assert_error(429, "too_many_attempts", None);
    // Once it is done, the slot is free again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = sign_in(&app, "ada@example.com", PASSWORD, None).await;
        if answer.status == 200 {
            break;
        }
        answer.assert_error(503, "busy", None);
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    app.stop().await;
}

/// Whether a burst of wrong guesses had some answered `503 busy` and fewer than `limit` checked;
/// every answer is one of 401 (checked), 503 (busy) and 429 (refused by the limit).
fn burst_is_telling(answers: &[Resp], limit: u32) -> bool {
    let count = |status: u16| answers.iter().filter(|r| r.status == status).count();
    let (checked, busy, refused) = (count(401), count(503), count(429));
    assert_eq!(checked + busy + refused, answers.len(), "{answers:?}");
    for answer in answers.iter().filter(|r| r.status == 503) {
        answer.assert_error(503, "busy", None);
    }
    busy > 0 && checked < limit as usize
}

/// Signs claims for `user` of deployment `dep` with `signer`, a key the test put in the
/// database.
fn forge(
    app: &TestApp,
    signer: &tessera_domain::token::TokenSigner,
    (user, dep): (&User, &str),
    iat: i64,
    exp: i64,
) -> String {
    signer.sign(&tessera_domain::token::UserClaims {
        iss: app.base_url.clone(),
        aud: "tessera:user".into(),
        sub: user.id.clone(),
        dep: dep.to_owned(),
        iat,
        exp,
    })
}

async fn me_with(app: &TestApp, token: String) -> Resp {
    send(app.anonymous(Method::GET, "/me").bearer_auth(token)).await
}

async fn overlong_tokens_and_long_retired_keys_are_refused(db: &TestDatabase) {
    use tessera_domain::identity::SigningKeyRecord;
    use tessera_domain::token::{SecretsKey, TokenSigner};
    use tessera_domain::Timestamp;
    let app = spawn_app(db).await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let dep = app.client.deployments().current().send().await.unwrap().id;
    let ada = (&ada, dep.as_str());
    let secrets = SecretsKey::parse(&crate::helpers::test_secrets_key()).unwrap();
    let store = tessera_store::open(&app.db_url, &Default::default())
        .await
        .unwrap();
    // A key the test holds the private half of, made current the way rotation does it.
    let held = TokenSigner::generate(Timestamp::now());
    let record = |signer: &TokenSigner| SigningKeyRecord {
        id: signer.kid().clone(),
        public_key: signer.public_key(),
        sealed_private_key: signer.seal(&secrets),
        created_at: Timestamp::now(),
        retired_at: None,
    };
    store.rotate_signing_key(&record(&held)).await.unwrap();
    let now = Timestamp::now().as_secs();
    // Within the configured maximum (3600 s): accepted.
    let fine = me_with(&app, forge(&app, &held, ada, now, now + 600)).await;
    assert_eq!(fine.status, 200, "{fine:?}");
    // Longer than any token this server mints, or issued in the future: refused.
    for (iat, exp) in [
        (now, now + 3601),
        (now, now + 10 * 365 * 24 * 3600),
        (now - 30, now + 3600 * 2),
        (now + 3600, now + 3700),
    ] {
        me_with(&app, forge(&app, &held, ada, iat, exp))
            .await
            .assert_error(401, "unauthorized", None);
    }

    // Rotated away longer ago than the longest token lifetime (plus skew): no longer trusted,
    // even for an unexpired token (as if the key had leaked). Rotation retires the old key at
    // the new key's creation time; a restarted server reads the keys afresh.
    let next = TokenSigner::generate(Timestamp::now());
    let two_hours_ago = Timestamp::from_millis(Timestamp::now().as_millis() - 2 * 3600 * 1000);
    store
        .rotate_signing_key(&SigningKeyRecord {
            created_at: two_hours_ago,
            ..record(&next)
        })
        .await
        .unwrap();
    let db_url = app.db_url.clone();
    app.stop().await;
    let app = crate::helpers::spawn_app_on(&db_url).await;
    let now = Timestamp::now().as_secs();
    me_with(&app, forge(&app, &held, ada, now, now + 600))
        .await
        .assert_error(401, "unauthorized", None);
    let current = me_with(&app, forge(&app, &next, ada, now, now + 600)).await;
    assert_eq!(current.status, 200, "{current:?}");
    store.close().await;
    app.stop().await;
}

async fn the_sign_in_page_works_without_javascript(db: &TestDatabase) {
    let app = spawn_app(db).await;
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    let page = send(app.anonymous(Method::GET, "/sign-in?redirect_url=/me")).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = &page.text;
    for needle in [
        "<html lang=\"en\">",
        "<label for=\"email\">",
        "id=\"email\"",
        "<label for=\"password\">",
        "id=\"password\"",
        "role=\"alert\"",
        "method=\"post\" action=\"/sign-in\"",
        "name=\"redirect_url\" value=\"/me\"",
    ] {
        assert!(html.contains(needle), "{needle} in {html}");
    }
    assert!(
        !html.contains("<script") && !html.contains("style="),
        "{html}"
    );
    let css = send(app.anonymous(Method::GET, "/static/tessera.css")).await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").unwrap().starts_with("text/css"));
    // An unsafe redirect_url in the address is dropped from the form.
    let page = send(app.anonymous(Method::GET, "/sign-in?redirect_url=//evil.example")).await;
    assert!(!page.text.contains("evil.example"), "{}", page.text);

    // Redirects are inspected, not followed.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |body: String| {
        http.post(app.url("/sign-in"))
            .header("origin", &app.base_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    };
    let wrong = send(form(
        "email=ada%40example.com&password=nope&redirect_url=%2Fme".into(),
    ))
    .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(
        wrong.text.contains("Wrong email or password."),
        "{}",
        wrong.text
    );
    assert!(wrong.text.contains("aria-invalid=\"true\""));
    assert!(
        wrong.text.contains("value=\"ada@example.com\""),
        "the email stays filled in"
    );
    assert!(set_cookie(&wrong).is_none());
    // Values echoed into the page are escaped.
    let xss = send(form(
        "email=%22%3E%3Cscript%3Ex%3C%2Fscript%3E%40e.co&password=x".into(),
    ))
    .await;
    assert!(!xss.text.contains("<script>"), "{}", xss.text);
    for bad in [
        "%2F%2Fevil.example",
        "https%3A%2F%2Fevil.example",
        "%2F%5Cevil.example",
    ] {
        let resp = send(form(format!(
            "email=ada%40example.com&password={}&redirect_url={bad}",
            PASSWORD.replace(' ', "+")
        )))
        .await;
        assert_eq!(resp.status, 422, "{bad}: {}", resp.text);
        assert!(resp.header("location").is_none());
        assert!(set_cookie(&resp).is_none());
    }

    let ok = send(form(format!(
        "email=ada%40example.com&password={}&redirect_url=%2Fme%3Fx%3D1",
        PASSWORD.replace(' ', "+")
    )))
    .await;
    assert_eq!(ok.status, 303, "{}", ok.text);
    assert_eq!(ok.header("location"), Some("/me?x=1"));
    let cookie = cookie_value(&ok);
    me(&app, &cookie).await.ok(200);
    let signed_in = send(
        app.anonymous(Method::GET, "/sign-in")
            .header("cookie", format!("tessera_session={cookie}")),
    )
    .await;
    assert!(signed_in
        .text
        .contains("Signed in as <strong>ada@example.com</strong>"));
    assert!(signed_in.text.contains("action=\"/sign-out\""));
    // Without redirect_url the page itself is the landing.
    let ok = send(form(format!(
        "email=ada%40example.com&password={}",
        PASSWORD.replace(' ', "+")
    )))
    .await;
    assert_eq!(ok.header("location"), Some("/sign-in"));
    // The page's sign-out button: form post, then back to the page.
    let cookie = cookie_value(&ok);
    let out = send(
        http.post(app.url("/sign-out"))
            .header("origin", &app.base_url)
            .header("cookie", format!("tessera_session={cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(""),
    )
    .await;
    assert_eq!(out.status, 303);
    assert_eq!(out.header("location"), Some("/sign-in"));
    me(&app, &cookie)
        .await
        .assert_error(401, "unauthorized", None);
    app.stop().await;
}

async fn the_audit_log_records_keys_and_sign_ins(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let keys = app.client.secret_keys();
    let bootstrap_key_id = keys.list(PageParams::default()).send().await.unwrap().data[0]
        .id
        .clone();
    let created = keys.create(Default::default()).send().await.unwrap();
    keys.revoke(&created.id).send().await.unwrap();
    keys.revoke(&created.id).send().await.unwrap();
    user(&app, "ada@example.com", Some(PASSWORD)).await;
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .header("user-agent", "audit-test-agent/1.0")
            .json(&json!({"email": "ada@example.com", "password": "wrong"})),
    )
    .await;
    let cookie = cookie_value(&sign_in(&app, "ada@example.com", PASSWORD, None).await);
    send(
        app.anonymous(Method::POST, "/sign-out")
            .header("origin", &app.base_url)
            .header("cookie", format!("tessera_session={cookie}")),
    )
    .await
    .ok(200);

    let log = app.client.audit_events();
    let all = log
        .list_audit_events(ListAuditEventsParams::default())
        .send()
        .await
        .unwrap();
    let kinds: Vec<&str> = all.data.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "secret_key.created",
            "secret_key.revoked",
            "user.created",
            "user.sign_in_failed",
            "user.signed_in",
            "user.signed_out"
        ],
        "a second revocation of the same key is not recorded again"
    );
    let key_created = &all.data[0];
    assert_eq!(key_created.actor_type, "secret_key");
    assert_eq!(
        key_created.actor_id.as_deref(),
        Some(bootstrap_key_id.as_str())
    );
    assert_eq!(key_created.subject_id.as_deref(), Some(created.id.as_str()));
    assert_eq!(key_created.ip.as_deref(), Some("127.0.0.1"));
    let failed = &all.data[3];
    assert_eq!(failed.actor_type, "anonymous");
    assert_eq!(failed.user_agent.as_deref(), Some("audit-test-agent/1.0"));
    assert_eq!(failed.data["email"], "ada@example.com");
    assert_eq!(all.data[4].actor_type, "user");
    crate::helpers::assert_timestamp(&all.data[4].created_at);
    // No event carries a secret.
    let text = serde_json::to_string(&all).unwrap();
    assert!(!text.contains(&created.key) && !text.contains(PASSWORD) && !text.contains(&cookie));

    let only = log
        .list_audit_events(ListAuditEventsParams {
            kind: Some("user.signed_in".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(only.data.len(), 1);
    let page = log
        .list_audit_events(ListAuditEventsParams {
            limit: Some(2),
            after: all.data[1].id.clone().into(),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(page.data[0].id, all.data[2].id);
    assert!(page.has_more);
    app.get("/audit-events?kind=nope")
        .await
        .assert_error(400, "invalid_parameter", Some("kind"));
    app.get("/audit-events?after=user_x").await.assert_error(
        400,
        "invalid_parameter",
        Some("after"),
    );
    app.stop().await;
}

async fn browser_requests_map_to_the_deployment_of_their_host(db: &TestDatabase) {
    let app = spawn_app(db).await;
    // Deployment `other` is served at http://localhost:PORT, `default` at http://127.0.0.1:PORT.
    let store = tessera_store::open(&app.db_url, &Default::default())
        .await
        .unwrap();
    let secret = tessera_domain::secret::PlainSecret::generate("tsk");
    let local = format!("http://localhost:{}", app.address.port());
    store
        .create_deployment(
            &tessera_domain::records::NewDeployment {
                name: tessera_domain::validate::DeploymentName::parse("name", "other").unwrap(),
                backend_host: local.clone(),
                frontend_host: local.clone(),
            },
            &tessera_store::NewSecretKey {
                name: tessera_domain::validate::Label::parse("name", "k").unwrap(),
                hash: secret.hash(),
                prefix: secret.display_prefix(),
            },
        )
        .await
        .unwrap();
    store.close().await;
    let other = app.client_with(secret.expose());
    other
        .users()
        .create_user(CreateUserRequest {
            email: "eve@example.com".into(),
            password: Some(PASSWORD.into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let body = json!({"email": "eve@example.com", "password": PASSWORD});
    // On the default deployment's host, Eve does not exist.
    sign_in(&app, "eve@example.com", PASSWORD, None)
        .await
        .assert_error(401, "invalid_credentials", None);
    // On the other deployment's host she signs in; its origin is the one to send.
    let host = format!("localhost:{}", app.address.port());
    let resp = send(
        app.anonymous(Method::POST, "/sign-in")
            .header("host", &host)
            .header("origin", &local)
            .json(&body),
    )
    .await;
    assert_eq!(resp.ok(200)["user"]["email"], "eve@example.com");
    let cookie = cookie_value(&resp);
    send(
        app.anonymous(Method::POST, "/sign-in")
            .header("host", &host)
            .header("origin", &app.base_url)
            .json(&body),
    )
    .await
    .assert_error(403, "origin_not_allowed", None);
    // Her cookie means nothing on the default deployment's host.
    me(&app, &cookie)
        .await
        .assert_error(401, "unauthorized", None);
    let on_her_host = send(
        app.anonymous(Method::GET, "/me")
            .header("host", &host)
            .header("cookie", format!("tessera_session={cookie}")),
    )
    .await;
    assert_eq!(on_her_host.ok(200)["user"]["email"], "eve@example.com");
    app.stop().await;
}

async fn cookies_are_secure_behind_an_https_public_url(db: &TestDatabase) {
    // As behind a TLS-terminating proxy: the public URL is https, the deployment's hosts too.
    let app = spawn_app_with(db, |config| {
        config.public_url = Some("https://tessera.example".into());
    })
    .await;
    let ada = user(&app, "ada@example.com", Some(PASSWORD)).await;
    let body = json!({"email": "ada@example.com", "password": PASSWORD});
    // The server's own plain-http origin is not one of the deployment's hosts.
    sign_in(&app, "ada@example.com", PASSWORD, None)
        .await
        .assert_error(403, "origin_not_allowed", None);
    let resp = send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", "https://tessera.example")
            .json(&body),
    )
    .await;
    resp.ok(200);
    let header = set_cookie(&resp).unwrap();
    let attributes: Vec<&str> = header.split(';').map(str::trim).collect();
    assert!(attributes.contains(&"Secure"), "{header}");
    assert!(attributes.contains(&"HttpOnly") && attributes.contains(&"SameSite=Lax"));
    // Tokens name the public URL as their issuer.
    let token = app
        .client
        .users()
        .create_user_token(&ada.id, CreateUserTokenRequest::default())
        .send()
        .await
        .unwrap()
        .token;
    let claims: Value = serde_json::from_slice(&b64(token.split('.').nth(1).unwrap())).unwrap();
    assert_eq!(claims["iss"], "https://tessera.example");
    Client::new(app.base_url.clone(), token)
        .me()
        .get_me()
        .send()
        .await
        .unwrap();
    app.stop().await;
}
