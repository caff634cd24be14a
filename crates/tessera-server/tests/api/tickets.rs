//! Session tickets, their exchange, agent sessions and the browser API, the console admin and
//! impersonation, over raw HTTP (cookies and headers are inspected) and the SDK.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tessera_client::models::{CreateSessionTicketRequest, CreateUserRequest};
use tessera_runtime::provider::testing::{Script, ScriptedModelServer};
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{
    assert_ordered_secret, echo_agent, send, spawn_app, spawn_app_with, unknown_id, Resp, TestApp,
};

backend_tests!(
    minting_checks_every_rule_and_reference,
    app_tickets_are_minted_for_an_app_of_the_deployment,
    disabled_users_get_no_ticket_and_no_session,
    exactly_one_of_100_concurrent_exchanges_wins,
    a_replayed_ticket_revokes_its_session,
    expired_and_unknown_tickets_are_refused_alike,
    static_anonymous_user_and_actor_bound_sessions,
    signin_sessions_need_a_signed_in_user,
    named_sessions_are_resumed,
    a_new_exchange_replaces_the_older_agent_session,
    a_session_sees_only_its_partition,
    each_dimension_of_the_partition_is_enforced,
    an_agent_session_ends_with_its_lifetime,
    chatting_through_the_browser_api,
    a_reply_is_cancelled_from_the_browser,
    pending_actions_are_decided_from_the_browser,
    impersonation_signs_in_for_at_most_30_minutes,
    console_sign_in_failures_are_counted_once_for_every_host,
    console_admins_mint_for_any_deployment,
    pages_cors_and_origin_checks,
);

const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// A browser without a cookie jar of its own: the cookie is carried by hand.
#[derive(Clone, Default)]
struct Jar {
    cookie: Option<String>,
}

impl Jar {
    fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => request.header("cookie", format!("tessera_session={c}")),
            None => request,
        }
    }

    fn keep(&mut self, resp: &Resp) {
        for value in resp.headers.get_all("set-cookie") {
            let value = value.to_str().unwrap();
            if let Some(rest) = value.strip_prefix("tessera_session=") {
                let v = rest.split(';').next().unwrap();
                self.cookie = (!v.is_empty()).then(|| v.to_owned());
            }
        }
    }
}

async fn agent_id(app: &TestApp, name: &str) -> String {
    app.client
        .ai()
        .agents()
        .create_agent(echo_agent(name))
        .send()
        .await
        .unwrap()
        .id
}

async fn mint(app: &TestApp, body: Value) -> Resp {
    app.post("/session/tickets", body).await
}

async fn ticket(app: &TestApp, body: Value) -> String {
    let resp = mint(app, body).await;
    resp.ok(201)["ticket"].as_str().unwrap().to_owned()
}

/// `POST /session/tickets/exchange` as the browser `jar`, from the server's own origin.
async fn exchange(app: &TestApp, jar: &mut Jar, ticket: &str) -> Resp {
    let request = app
        .anonymous(Method::POST, "/session/tickets/exchange")
        .header("origin", &app.base_url)
        .json(&json!({ "ticket": ticket }));
    let resp = send(jar.apply(request)).await;
    jar.keep(&resp);
    resp
}

/// A browser-API call with the cookie of `jar` (writes carry the server's origin).
async fn browser(
    app: &TestApp,
    jar: &Jar,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut request = app.anonymous(method.clone(), path);
    if method != Method::GET {
        request = request.header("origin", &app.base_url);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(jar.apply(request)).await
}

/// A browser-API call with a bearer session token.
async fn bearer(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let mut request = app.anonymous(method, path).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

async fn minting_checks_every_rule_and_reference(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let other = app.create_deployment("other").await;
    let foreign_agent = other
        .client
        .ai()
        .agents()
        .create_agent(echo_agent("theirs"))
        .send()
        .await
        .unwrap()
        .id;

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let resp = mint(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "workspace:1"}),
    )
    .await;
    let body = resp.ok(201);
    let ticket = body["ticket"].as_str().unwrap();
    assert_ordered_secret(ticket, "tkt");
    assert_eq!(
        body["url"],
        format!("{}/vanity/agents?ticket={ticket}", app.base_url)
    );
    let expires = body["expires_at"].as_i64().unwrap();
    assert!(
        (before + 899..=before + 902).contains(&expires),
        "{expires}"
    );

    // Impersonation URLs go to the frontend host's sign-in page.
    let user = app.user("ada@example.com", None).await;
    let resp = mint(
        &app,
        json!({"ticket_type": "impersonation", "user_id": user.id, "expires_in": 60}),
    )
    .await;
    let url = resp.ok(201)["url"].as_str().unwrap().to_owned();
    assert!(
        url.starts_with(&format!("{}/sign-in?ticket=tkt_", app.base_url)),
        "{url}"
    );

    // Field rules: 422 naming the field.
    let cases = [
        (json!({"ticket_type": "bogus"}), "ticket_type"),
        (
            json!({"ticket_type": "agent_access", "context_group": "g"}),
            "agent_ids",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent]}),
            "context_group",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "a b"}),
            "context_group",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "signin", "context_group": "g"}),
            "context_group",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "expires_in": 86401}),
            "expires_in",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "expires_in": 0}),
            "expires_in",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": ["nope"], "context_group": "g"}),
            "agent_ids[0]",
        ),
        (json!({"ticket_type": "impersonation"}), "user_id"),
        (
            json!({"ticket_type": "api_auth_access"}),
            "api_auth_app_slug",
        ),
        (
            json!({"ticket_type": "webhook_app_access", "webhook_app_slug": "hooks", "agent_ids": [agent]}),
            "agent_ids",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "new-named"}),
            "context_group",
        ),
    ];
    for (body, field) in cases {
        mint(&app, body.clone())
            .await
            .assert_error(422, "validation_failed", Some(field));
    }
    // Unknown fields are refused, malformed JSON is a 400.
    mint(&app, json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "instructions": "x"}))
        .await
        .assert_error(422, "validation_failed", Some("instructions"));
    app.post_text("/session/tickets", "{nope")
        .await
        .assert_error(400, "malformed_json", None);

    // References: 404 for what does not exist in this deployment.
    let unknown_actor = tessera_domain::ActorId::generate().into_string();
    let unknown_user = tessera_domain::UserId::generate().into_string();
    let references = [
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent, foreign_agent], "context_group": "g"}),
            "agent_not_found",
            "agent_ids[1]",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "actor_id": unknown_actor}),
            "actor_not_found",
            "actor_id",
        ),
        (
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "user_id": unknown_user}),
            "user_not_found",
            "user_id",
        ),
        (
            json!({"ticket_type": "impersonation", "user_id": unknown_user}),
            "user_not_found",
            "user_id",
        ),
        (
            json!({"ticket_type": "api_auth_access", "api_auth_app_slug": "billing"}),
            "app_not_found",
            "api_auth_app_slug",
        ),
        (
            json!({"ticket_type": "webhook_app_access", "webhook_app_slug": "hooks"}),
            "app_not_found",
            "webhook_app_slug",
        ),
    ];
    for (body, code, field) in references {
        mint(&app, body).await.assert_error(404, code, Some(field));
    }
    // Without a key: 401.
    send(
        app.anonymous(Method::POST, "/session/tickets")
            .json(&json!({"ticket_type": "agent_access"})),
    )
    .await
    .assert_error(401, "unauthorized", None);
    // The SDK mints the same way.
    let via_sdk = app
        .client
        .session_tickets()
        .create_backend_session_ticket(CreateSessionTicketRequest {
            ticket_type: "agent_access".into(),
            agent_ids: Some(vec![agent.clone()]),
            context_group: Some("g".into()),
            expires_in: Some(30),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    assert!(via_sdk.url.ends_with(&via_sdk.ticket));
    app.stop().await;
}

/// No API registers apps yet; once one is (a row of the deployment's app registry), tickets
/// naming it are minted, with their page's URL. Another deployment's app of the same slug stays
/// unknown.
async fn app_tickets_are_minted_for_an_app_of_the_deployment(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let other = app.create_deployment("other").await;
    let own = app.client.deployments().current().send().await.unwrap();
    for kind in ["api_auth", "webhook"] {
        let registered = db
            .execute(
                &format!(
                    "INSERT INTO apps (deployment_id, kind, slug, name, created_at)
                     VALUES ($1, '{kind}', 'billing', 'Billing', 0)"
                ),
                &[&own.id],
            )
            .await;
        assert_eq!(registered, 1);
    }
    let cases = [
        (
            "api_auth_access",
            "api_auth_app_slug",
            "/vanity/api-auth?ticket=tkt_",
        ),
        (
            "webhook_app_access",
            "webhook_app_slug",
            "/vanity/webhook?ticket=tkt_",
        ),
    ];
    for (ticket_type, field, page) in cases {
        let body = json!({"ticket_type": ticket_type, field: "billing"});
        let resp = mint(&app, body.clone()).await;
        let url = resp.ok(201)["url"].as_str().unwrap().to_owned();
        assert!(url.starts_with(&format!("{}{page}", app.base_url)), "{url}");
        let refused = send(
            app.anonymous(Method::POST, "/session/tickets")
                .bearer_auth(&other.key)
                .json(&body),
        )
        .await;
        refused.assert_error(404, "app_not_found", Some(field));
        assert_eq!(
            refused.body["error"]["message"],
            format!("{field}: no app with this slug exists")
        );
    }
    app.stop().await;
}

/// A disabled user gets no ticket minted for them, and a ticket minted before they were
/// disabled is refused at the exchange without being used up.
async fn disabled_users_get_no_ticket_and_no_session(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let user = app.user("ada@example.com", None).await;
    let bodies = [
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "user_id": user.id}),
        json!({"ticket_type": "impersonation", "user_id": user.id}),
    ];
    let mut minted = Vec::new();
    for body in &bodies {
        minted.push(ticket(&app, body.clone()).await);
    }
    let users = app.client.users();
    assert!(users.disable_user(&user.id).send().await.unwrap().disabled);
    for body in &bodies {
        mint(&app, body.clone())
            .await
            .assert_error(409, "user_disabled", Some("user_id"));
    }
    let mut jar = Jar::default();
    for t in &minted {
        exchange(&app, &mut jar, t)
            .await
            .assert_error(409, "user_disabled", Some("user_id"));
    }
    assert!(jar.cookie.is_none(), "a refused exchange sets no cookie");
    // Enabled again, the same tickets work: the refusals did not use them up.
    assert!(!users.enable_user(&user.id).send().await.unwrap().disabled);
    for t in &minted {
        exchange(&app, &mut Jar::default(), t).await.ok(200);
    }
    app.stop().await;
}

async fn exactly_one_of_100_concurrent_exchanges_wins(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Racer").await;
    let ticket = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "race"}),
    )
    .await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let http = app.http.clone();
        let url = app.url("/session/tickets/exchange");
        let origin = app.base_url.clone();
        let ticket = ticket.clone();
        tasks.push(tokio::spawn(async move {
            send(
                http.post(url)
                    .header("origin", origin)
                    .json(&json!({ "ticket": ticket })),
            )
            .await
        }));
    }
    let mut won = 0;
    for task in tasks {
        let resp = task.await.unwrap();
        match resp.status {
            200 => won += 1,
            401 => {
                resp.assert_error(401, "invalid_ticket", None);
            }
            other => panic!("unexpected HTTP {other}: {}", resp.text),
        }
    }
    assert_eq!(won, 1, "exactly one exchange wins");
    app.stop().await;
}

async fn a_replayed_ticket_revokes_its_session(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
    )
    .await;
    let mut jar = Jar::default();
    let first = exchange(&app, &mut jar, &t).await;
    let token = first.ok(200)["session_token"].as_str().unwrap().to_owned();
    assert_ordered_secret(&token, "tas");
    assert_eq!(first.header("cache-control"), Some("no-store"));
    assert!(
        jar.cookie.is_some(),
        "the exchange set a browser session cookie"
    );
    let session = browser(&app, &jar, Method::GET, "/agent/session", None).await;
    assert_eq!(session.ok(200)["has_session"], true);
    bearer(&app, &token, Method::GET, "/agent/contexts", None)
        .await
        .ok(200);

    // Someone else presents the same ticket: refused, and what it opened is revoked.
    let mut thief = Jar::default();
    exchange(&app, &mut thief, &t)
        .await
        .assert_error(401, "invalid_ticket", None);
    let session = browser(&app, &jar, Method::GET, "/agent/session", None).await;
    assert_eq!(session.ok(200)["has_session"], false, "{}", session.text);
    bearer(&app, &token, Method::GET, "/agent/contexts", None)
        .await
        .assert_error(401, "unauthorized", None);
    let audit = app.get("/audit-events?kind=session_ticket.replayed").await;
    assert_eq!(audit.ok(200)["data"].as_array().unwrap().len(), 1);
    app.stop().await;
}

async fn expired_and_unknown_tickets_are_refused_alike(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "expires_in": 1}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut jar = Jar::default();
    let expired = exchange(&app, &mut jar, &t).await;
    expired.assert_error(401, "invalid_ticket", None);
    let unknown = exchange(
        &app,
        &mut jar,
        tessera_domain::secret::PlainSecret::generate("tkt").expose(),
    )
    .await;
    unknown.assert_error(401, "invalid_ticket", None);
    assert_eq!(
        expired.body["error"]["message"],
        unknown.body["error"]["message"]
    );
    exchange(&app, &mut jar, "")
        .await
        .assert_error(401, "invalid_ticket", None);
    exchange(&app, &mut jar, &"x".repeat(5000))
        .await
        .assert_error(401, "invalid_ticket", None);
    assert!(jar.cookie.is_none(), "a refused exchange sets no cookie");
    app.stop().await;
}

async fn static_anonymous_user_and_actor_bound_sessions(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    // Anonymous: a fresh `anonymous` actor per exchange.
    let mut actors = Vec::new();
    for _ in 0..2 {
        let t = ticket(
            &app,
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "workspace:9"}),
        )
        .await;
        let resp = exchange(&app, &mut Jar::default(), &t).await;
        let session = resp.ok(200)["session"].clone();
        assert_eq!(session["actor"]["subject_type"], "anonymous");
        assert_eq!(session["context_group"], "workspace:9");
        assert_eq!(session["agents"][0]["name"], "Support");
        assert_eq!(session["active_agent"]["id"], agent);
        actors.push(session["actor"]["id"].clone());
        // The agent session has its own lifetime (12 h), not the ticket's.
        let expires = session["expires_at"].as_str().unwrap().to_owned();
        assert!(
            expires
                > tessera_domain::Timestamp::now()
                    .plus_secs(11 * 3600)
                    .to_rfc3339()
        );
    }
    assert_ne!(actors[0], actors[1]);

    // User-bound: actor user/<user_id>, the same one every time.
    let user = app.user("grace@example.com", None).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        let t = ticket(
            &app,
            json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "user_id": user.id}),
        )
        .await;
        let session = exchange(&app, &mut Jar::default(), &t).await.ok(200)["session"].clone();
        assert_eq!(session["actor"]["subject_type"], "user");
        assert_eq!(session["actor"]["external_key"], user.id);
        seen.push(session["actor"]["id"].clone());
    }
    assert_eq!(seen[0], seen[1]);

    // Actor-bound.
    let actor = app.actor("svc-1").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g", "actor_id": actor.id}),
    )
    .await;
    let session = exchange(&app, &mut Jar::default(), &t).await.ok(200)["session"].clone();
    assert_eq!(session["actor"]["id"], actor.id);
    app.stop().await;
}

async fn signin_sessions_need_a_signed_in_user(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let user = app.user("ada@example.com", Some("analytical engine")).await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "signin"}),
    )
    .await;
    let mut jar = Jar::default();
    exchange(&app, &mut jar, &t)
        .await
        .assert_error(401, "signin_required", None);

    // Sign in, then the same ticket works (it was not used up).
    let signed_in = send(
        app.anonymous(Method::POST, "/sign-in")
            .header("origin", &app.base_url)
            .json(&json!({"email": "ada@example.com", "password": "analytical engine"})),
    )
    .await;
    signed_in.ok(200);
    jar.keep(&signed_in);
    let session = exchange(&app, &mut jar, &t).await.ok(200)["session"].clone();
    assert_eq!(session["context_group"], format!("user:{}", user.id));
    assert_eq!(session["actor"]["subject_type"], "user");
    assert_eq!(session["actor"]["external_key"], user.id);
    app.stop().await;
}

async fn named_sessions_are_resumed(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let first = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "case-42", "context_group": "ticket:42"}),
    )
    .await;
    let resp = exchange(&app, &mut Jar::default(), &first).await;
    let token = resp.ok(200)["session_token"].as_str().unwrap().to_owned();
    assert_eq!(resp.body["session"]["session_name"], "case-42");
    let context = bearer(
        &app,
        &token,
        Method::POST,
        "/agent/contexts",
        Some(json!({"title": "Refund"})),
    )
    .await;
    let context_id = context.ok(201)["id"].as_str().unwrap().to_owned();

    // Resumed later without a context group: same group, same actor, same conversations.
    let again = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "case-42"}),
    )
    .await;
    let resp = exchange(&app, &mut Jar::default(), &again).await;
    let session = resp.ok(200)["session"].clone();
    assert_eq!(session["context_group"], "ticket:42");
    let token2 = resp.body["session_token"].as_str().unwrap().to_owned();
    let list = bearer(&app, &token2, Method::GET, "/agent/contexts", None).await;
    assert_eq!(list.ok(200)["data"][0]["id"], context_id);

    // Naming another group for an existing named session is refused.
    mint(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "agent_session_identifier": "case-42", "context_group": "other"}),
    )
    .await
    .assert_error(422, "validation_failed", Some("context_group"));
    app.stop().await;
}

async fn a_new_exchange_replaces_the_older_agent_session(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let mut jar = Jar::default();
    let a = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "first"}),
    )
    .await;
    let b = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "second"}),
    )
    .await;
    let first = exchange(&app, &mut jar, &a).await;
    let old_token = first.ok(200)["session_token"].as_str().unwrap().to_owned();
    let cookie = jar.cookie.clone();
    let second = exchange(&app, &mut jar, &b).await;
    second.ok(200);
    assert_eq!(
        jar.cookie, cookie,
        "the browser session is kept; only its agent session changes"
    );
    let session = browser(&app, &jar, Method::GET, "/agent/session", None).await;
    assert_eq!(session.ok(200)["context_group"], "second");
    bearer(&app, &old_token, Method::GET, "/agent/session", None)
        .await
        .assert_error(401, "unauthorized", None);
    app.stop().await;
}

/// Every browser-API route that names conversation `id`: method, path and body.
fn context_routes(id: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::PATCH,
            format!("/agent/contexts/{id}"),
            Some(json!({"title": "mine"})),
        ),
        (Method::DELETE, format!("/agent/contexts/{id}"), None),
        (Method::GET, format!("/agent/contexts/{id}/messages"), None),
        (
            Method::POST,
            format!("/agent/contexts/{id}/messages"),
            Some(json!({"content": "x"})),
        ),
        (Method::POST, format!("/agent/contexts/{id}/cancel"), None),
        (Method::GET, format!("/agent/contexts/{id}/stream"), None),
        (
            Method::POST,
            format!("/agent/contexts/{id}/actions/{}", unknown_id("act")),
            Some(json!({"confirmed": true})),
        ),
    ]
}

async fn a_session_sees_only_its_partition(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let other_agent = agent_id(&app, "Other").await;
    let mut alice = Jar::default();
    let mut bob = Jar::default();
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "tenant:a"}),
    )
    .await;
    exchange(&app, &mut alice, &t).await.ok(200);
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "tenant:b"}),
    )
    .await;
    exchange(&app, &mut bob, &t).await.ok(200);
    let created = browser(
        &app,
        &alice,
        Method::POST,
        "/agent/contexts",
        Some(json!({"title": "Secret plans"})),
    )
    .await;
    let id = created.ok(201)["id"].as_str().unwrap().to_owned();
    browser(
        &app,
        &alice,
        Method::POST,
        &format!("/agent/contexts/{id}/messages"),
        Some(json!({"content": "hi"})),
    )
    .await
    .ok(202);

    // Bob's session tries every route with Alice's conversation: 404, like a missing one.
    let routes = context_routes(&id);
    for (method, path, body) in &routes {
        browser(&app, &bob, method.clone(), path, body.clone())
            .await
            .assert_error(404, "context_not_found", None);
        // A malformed id is answered the same way.
        let malformed = path.replace(&id, "thread_nope");
        browser(&app, &bob, method.clone(), &malformed, body.clone())
            .await
            .assert_error(404, "context_not_found", None);
    }
    let list = browser(&app, &bob, Method::GET, "/agent/contexts", None).await;
    assert_eq!(list.ok(200)["data"], json!([]));
    // Bob cannot start a conversation with an agent his ticket did not name.
    browser(
        &app,
        &bob,
        Method::POST,
        "/agent/contexts",
        Some(json!({"agent_id": other_agent})),
    )
    .await
    .assert_error(404, "agent_not_found", Some("agent_id"));
    // Without any session: 401.
    let nobody = Jar::default();
    for (method, path, body) in &routes {
        browser(&app, &nobody, method.clone(), path, body.clone())
            .await
            .assert_error(401, "unauthorized", None);
    }
    let none = browser(&app, &nobody, Method::GET, "/agent/session", None).await;
    assert_eq!(none.ok(200)["has_session"], false);
    // Alice still sees hers.
    let list = browser(&app, &alice, Method::GET, "/agent/contexts", None).await;
    assert_eq!(list.ok(200)["data"][0]["title"], "Secret plans");

    // Another deployment's ticket does not work on this deployment's host.
    let other = app.create_deployment("other").await;
    let theirs = other
        .client
        .ai()
        .agents()
        .create_agent(echo_agent("x"))
        .send()
        .await
        .unwrap();
    let foreign = other
        .client
        .session_tickets()
        .create_backend_session_ticket(CreateSessionTicketRequest {
            ticket_type: "agent_access".into(),
            agent_ids: Some(vec![theirs.id]),
            context_group: Some("g".into()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    exchange(&app, &mut Jar::default(), &foreign.ticket)
        .await
        .assert_error(401, "invalid_ticket", None);
    app.stop().await;
}

/// A session that differs from the conversation's in only one dimension (the actor, the context
/// group or the agents) is as much a stranger as one that differs in all of them.
async fn each_dimension_of_the_partition_is_enforced(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let other_agent = agent_id(&app, "Other").await;
    let (ada, bob) = (app.actor("ada").await, app.actor("bob").await);
    // A browser with the session of a static ticket for `agent`, acting for `actor`.
    let session = |agent: &str, actor: &str, group: &str| {
        let body = json!({"ticket_type": "agent_access", "agent_ids": [agent],
                          "context_group": group, "actor_id": actor});
        let app = &app;
        async move {
            let t = ticket(app, body).await;
            let mut jar = Jar::default();
            exchange(app, &mut jar, &t).await.ok(200);
            jar
        }
    };
    let owner = session(&agent, &ada.id, "tenant:a").await;
    let created = browser(
        &app,
        &owner,
        Method::POST,
        "/agent/contexts",
        Some(json!({"title": "Secret plans"})),
    )
    .await;
    let id = created.ok(201)["id"].as_str().unwrap().to_owned();
    let strangers = [
        (
            "same actor and agent, another group",
            session(&agent, &ada.id, "tenant:b").await,
        ),
        (
            "same group and agent, another actor",
            session(&agent, &bob.id, "tenant:a").await,
        ),
        (
            "same actor and group, another agent",
            session(&other_agent, &ada.id, "tenant:a").await,
        ),
    ];
    for (case, jar) in &strangers {
        for (method, path, body) in context_routes(&id) {
            let resp = browser(&app, jar, method.clone(), &path, body).await;
            assert_eq!(resp.status, 404, "{case}: {method} {path}: {}", resp.text);
            resp.assert_error(404, "context_not_found", None);
        }
        let list = browser(&app, jar, Method::GET, "/agent/contexts", None).await;
        assert_eq!(list.ok(200)["data"], json!([]), "{case}");
    }
    // Another session matching in every dimension sees it, untouched by all of the above.
    let twin = session(&agent, &ada.id, "tenant:a").await;
    let list = browser(&app, &twin, Method::GET, "/agent/contexts", None).await;
    let data = list.ok(200)["data"].clone();
    assert_eq!(data.as_array().unwrap().len(), 1, "{data}");
    assert_eq!(
        (&data[0]["id"], &data[0]["title"]),
        (&json!(id), &json!("Secret plans"))
    );
    app.stop().await;
}

/// Past `sessions.agent_session_lifetime_seconds` the agent session is over: its token and its
/// browser's cookie are refused, though the browser session itself lives on.
async fn an_agent_session_ends_with_its_lifetime(db: &TestDatabase) {
    let app = spawn_app_with(db, |c| c.sessions.agent_session_lifetime_seconds = 60).await;
    let agent = agent_id(&app, "Support").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
    )
    .await;
    let mut jar = Jar::default();
    let resp = exchange(&app, &mut jar, &t).await;
    let body = resp.ok(200);
    let token = body["session_token"].as_str().unwrap().to_owned();
    let session_id = body["session"]["id"].as_str().unwrap().to_owned();
    let expires = body["session"]["expires_at"].as_str().unwrap().to_owned();
    let now = tessera_domain::Timestamp::now();
    assert!(
        (now.plus_secs(55).to_rfc3339()..=now.plus_secs(60).to_rfc3339()).contains(&expires),
        "the configured lifetime: {expires}"
    );
    let created = bearer(&app, &token, Method::POST, "/agent/contexts", None).await;
    let context = created.ok(201)["id"].as_str().unwrap().to_owned();
    // The lifetime passes: the session is moved back by it (no test waits a minute).
    let moved = db
        .execute(
            "UPDATE agent_sessions
             SET created_at = created_at - 60000, expires_at = expires_at - 60000
             WHERE id = $1",
            &[&session_id],
        )
        .await;
    assert_eq!(moved, 1);
    for (method, path) in [
        (Method::GET, "/agent/session".to_owned()),
        (Method::GET, "/agent/contexts".to_owned()),
        (Method::GET, format!("/agent/contexts/{context}/messages")),
    ] {
        bearer(&app, &token, method.clone(), &path, None)
            .await
            .assert_error(401, "unauthorized", None);
        if path != "/agent/session" {
            browser(&app, &jar, method, &path, None)
                .await
                .assert_error(401, "unauthorized", None);
        }
    }
    let session = browser(&app, &jar, Method::GET, "/agent/session", None).await;
    assert_eq!(session.ok(200)["has_session"], false, "{}", session.text);
    // The backend still has the conversation.
    app.client
        .ai()
        .threads()
        .get_thread(&context)
        .send()
        .await
        .unwrap();
    app.stop().await;
}

/// The durable events (those with an id) of a stream up to the next completed run, and the
/// last reply completed on the way.
async fn read_turn(
    stream: &mut tessera_client::ThreadStream,
) -> (Vec<(i64, String)>, Option<String>) {
    let (mut durable, mut reply) = (Vec::new(), None);
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the stream delivers")
    {
        let event = event.unwrap();
        if let Some(id) = event.id {
            durable.push((id, event.event.clone()));
        }
        if event.event == "message.completed" {
            reply = event.data["message"]["content"].as_str().map(str::to_owned);
        }
        if event.event == "run.status" && event.data["status"] == "completed" {
            break;
        }
    }
    (durable, reply)
}

async fn chatting_through_the_browser_api(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Echo").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
    )
    .await;
    let exchanged = app
        .client
        .session_tickets()
        .exchange(&t)
        .send()
        .await
        .unwrap();
    let token = exchanged.session_token.unwrap();
    // The SDK with the session token as its bearer credential.
    let me = tessera_client::Client::new(app.base_url.clone(), token.clone());
    let session = me.agent().get_session().send().await.unwrap();
    assert!(session.has_session);
    let chat = me
        .agent()
        .create_context(Default::default())
        .send()
        .await
        .unwrap();
    assert_eq!(chat.title, "New chat");
    assert_eq!(chat.agent_id, agent);
    let mut stream = me.agent().stream(&chat.id).connect().await.unwrap();
    let accepted = me
        .agent()
        .send_message(&chat.id, "Hello from the browser API")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status, "queued");
    let (durable, reply) = read_turn(&mut stream).await;
    assert_eq!(reply.as_deref(), Some("Hello from the browser API"));
    assert!(durable.len() >= 3, "{durable:?}");
    // Resuming after an event replays exactly the durable events that followed it.
    let mut resumed = me
        .agent()
        .stream(&chat.id)
        .last_event_id(durable[0].0)
        .connect()
        .await
        .unwrap();
    let (replayed, reply) = read_turn(&mut resumed).await;
    assert_eq!(replayed, durable[1..]);
    assert_eq!(reply.as_deref(), Some("Hello from the browser API"));
    // Resuming after the last event replays nothing old: the first event is the next turn's.
    let last_id = durable.last().unwrap().0;
    let mut resumed = me
        .agent()
        .stream(&chat.id)
        .last_event_id(last_id)
        .connect()
        .await
        .unwrap();
    me.agent()
        .send_message(&chat.id, "And again")
        .send()
        .await
        .unwrap();
    let (next, reply) = read_turn(&mut resumed).await;
    assert!(next.iter().all(|(id, _)| *id > last_id), "{next:?}");
    assert_eq!(next[0].1, "message.created", "{next:?}");
    assert_eq!(reply.as_deref(), Some("And again"));

    let messages = me
        .agent()
        .list_messages(&chat.id, Default::default())
        .send()
        .await
        .unwrap();
    let roles: Vec<_> = messages
        .data
        .iter()
        .map(|m| format!("{:?}", m.role))
        .collect();
    assert_eq!(roles, ["User", "Assistant", "User", "Assistant"]);
    let err = me.agent().cancel(&chat.id).send().await.unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::RunNotActive));
    let renamed = me
        .agent()
        .update_context(&chat.id, "Greetings")
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.title, "Greetings");
    let list = me
        .agent()
        .list_contexts(Default::default())
        .send()
        .await
        .unwrap();
    assert_eq!(list.data.len(), 1);
    me.agent().delete_context(&chat.id).send().await.unwrap();
    let list = me
        .agent()
        .list_contexts(Default::default())
        .send()
        .await
        .unwrap();
    assert!(list.data.is_empty());
    let err = me
        .agent()
        .list_messages(&chat.id, Default::default())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::ContextNotFound));
    let err = me
        .agent()
        .send_message(&chat.id, "still there?")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::ContextNotFound));
    // The backend keeps the thread.
    app.client
        .ai()
        .threads()
        .get_thread(&chat.id)
        .send()
        .await
        .unwrap();
    // Bad input is named.
    let resp = bearer(
        &app,
        &token,
        Method::POST,
        "/agent/contexts",
        Some(json!({"title": ""})),
    )
    .await;
    resp.assert_error(422, "validation_failed", Some("title"));
    app.stop().await;
}

/// A reply still being written is stopped from the browser: `cancelAgentContext` (the cookie's
/// session, from the page's origin) cancels the running run promptly, the stream says so, and
/// the conversation is idle again.
async fn a_reply_is_cancelled_from_the_browser(db: &TestDatabase) {
    let model = ScriptedModelServer::start().await;
    let app = spawn_app_with(db, |c| {
        c.providers
            .insert("scripted".into(), model.provider_config());
    })
    .await;
    let agent = app
        .post(
            "/ai/agents",
            json!({"name": "Slow", "model": {"provider": "scripted", "model": "scripted-model"}}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
    )
    .await;
    let mut jar = Jar::default();
    let token = exchange(&app, &mut jar, &t).await.ok(200)["session_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let me = tessera_client::Client::new(app.base_url.clone(), token);
    let chat = me
        .agent()
        .create_context(Default::default())
        .send()
        .await
        .unwrap();
    let mut stream = me.agent().stream(&chat.id).connect().await.unwrap();
    // The first words come at once, the rest only after 30 s.
    model.push(Script::Slow {
        first_byte_after: Duration::ZERO,
        chunks: vec!["Let me think".into(), " about it".into()],
        gap: Duration::from_secs(30),
    });
    let path = format!("/agent/contexts/{}", chat.id);
    let sent = browser(
        &app,
        &jar,
        Method::POST,
        &format!("{path}/messages"),
        Some(json!({"content": "Tell me everything"})),
    )
    .await;
    let run_id = sent.ok(202)["run_id"].as_str().unwrap().to_owned();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the stream delivers")
            .expect("the stream stays open")
            .unwrap();
        if event.event == "message.delta" {
            assert_eq!(event.data["text"], "Let me think");
            break;
        }
    }

    let asked = std::time::Instant::now();
    let cancelled = browser(&app, &jar, Method::POST, &format!("{path}/cancel"), None).await;
    let cancelled = cancelled.ok(202);
    assert_eq!(cancelled["status"], "cancelling", "{cancelled}");
    assert_eq!(cancelled["run_id"], run_id.as_str());
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("the stream delivers")
            .expect("the stream stays open")
            .unwrap();
        seen.push(event.event.clone());
        if event.event == "run.status" && event.data["run_id"] == run_id.as_str() {
            if event.data["status"] == "cancelled" {
                break;
            }
            assert_ne!(event.data["status"], "completed", "{seen:?}");
        }
    }
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancelled promptly, not after the model's 30 s: {:?}",
        asked.elapsed()
    );
    assert!(
        !seen.iter().any(|e| e == "message.completed"),
        "the interrupted reply is not stored: {seen:?}"
    );
    let run = app
        .client
        .ai()
        .threads()
        .get_run(&chat.id, &run_id)
        .send()
        .await
        .unwrap();
    assert_eq!(run.status, tessera_client::models::RunStatus::Cancelled);
    assert_eq!(run.stop_reason.as_deref(), Some("cancelled"), "{run:?}");
    // Nothing runs any more.
    browser(&app, &jar, Method::POST, &format!("{path}/cancel"), None)
        .await
        .assert_error(409, "run_not_active", None);
    app.stop().await;
}

/// The browser side of session management: a pending action of a conversation is confirmed
/// from the browser API (SPEC §4), only by the session that sees the conversation, and a
/// conversation whose session the backend closed refuses new messages with `session_closed`.
async fn pending_actions_are_decided_from_the_browser(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = app
        .post(
            "/ai/agents",
            json!({"name": "Notifier", "model": {"provider": "echo", "model": "echo"},
                   "approval_rules": [{"tool": "notify_user"}]}),
        )
        .await
        .ok(201)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let session_client = |group: &'static str| {
        let app = &app;
        let agent = agent.clone();
        async move {
            let t = ticket(
                app,
                json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": group}),
            )
            .await;
            let exchanged = app
                .client
                .session_tickets()
                .exchange(&t)
                .send()
                .await
                .unwrap();
            tessera_client::Client::new(app.base_url.clone(), exchanged.session_token.unwrap())
        }
    };
    let alice = session_client("tenant:a").await;
    let bob = session_client("tenant:b").await;
    let chat = alice
        .agent()
        .create_context(Default::default())
        .send()
        .await
        .unwrap();
    let mut stream = alice.agent().stream(&chat.id).connect().await.unwrap();
    alice
        .agent()
        .send_message(
            &chat.id,
            r#"/tool notify_user {"message": "parcel shipped"}"#,
        )
        .send()
        .await
        .unwrap();
    // The pause arrives on the conversation's stream with the action to decide on.
    let mut action = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the stream delivers")
    {
        let event = event.unwrap();
        if event.event == "pending_action.created" {
            action = Some(event.data["action"].clone());
            break;
        }
    }
    let action = action.expect("a pending action was streamed");
    assert_eq!(action["tool"], "notify_user");
    assert_eq!(action["preview"], json!({"message": "parcel shipped"}));
    let action_id = action["action_id"].as_str().unwrap().to_owned();

    // Another session: Alice's conversation is not found, whatever the action id…
    let err = bob
        .agent()
        .resolve_action(&chat.id, &action_id, true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::ContextNotFound));
    // …and Alice's action is not found on Bob's own conversation.
    let own = bob
        .agent()
        .create_context(Default::default())
        .send()
        .await
        .unwrap();
    let err = bob
        .agent()
        .resolve_action(&own.id, &action_id, true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::ActionNotFound));
    // A malformed or unknown action id on Alice's conversation: 404 as well.
    for bad in ["act_nope".to_owned(), unknown_id("act")] {
        let err = alice
            .agent()
            .resolve_action(&chat.id, &bad, true)
            .send()
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(tessera_client::ErrorCode::ActionNotFound));
    }

    // Alice confirms: 202, the tool runs once and the turn completes.
    let decided = alice
        .agent()
        .resolve_action(&chat.id, &action_id, true)
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status, "processing");
    assert_eq!(decided.action_id, action_id);
    assert!(decided.callback_id.unwrap().starts_with("cb_"));
    let err = alice
        .agent()
        .resolve_action(&chat.id, &action_id, false)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(tessera_client::ErrorCode::ActionAlreadyDecided)
    );
    let mut reply = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the stream delivers")
    {
        let event = event.unwrap();
        if event.event == "message.completed" {
            reply = event.data["message"]["content"].as_str().map(str::to_owned);
        }
        if event.event == "run.status" && event.data["status"] == "completed" {
            break;
        }
    }
    assert_eq!(
        reply.as_deref(),
        Some("tool notify_user returned: the user was notified")
    );

    // The backend closes the session: the browser's next message is refused as closed.
    app.post(&format!("/api/v1/sessions/{}/close", chat.id), json!({}))
        .await
        .ok(200);
    let err = alice
        .agent()
        .send_message(&chat.id, "one more thing")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(tessera_client::ErrorCode::SessionClosed));
    app.stop().await;
}

async fn impersonation_signs_in_for_at_most_30_minutes(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let user = app.user("ada@example.com", None).await;
    let t = ticket(
        &app,
        json!({"ticket_type": "impersonation", "user_id": user.id}),
    )
    .await;
    let mut jar = Jar::default();
    let resp = exchange(&app, &mut jar, &t).await;
    let body = resp.ok(200);
    assert_eq!(body["ticket_type"], "impersonation");
    assert_eq!(body["redirect_url"], "/sign-in");
    assert_eq!(
        body["impersonation"]["impersonated_by"]["type"],
        "secret_key"
    );
    assert!(body.get("session_token").is_none());
    let me = send(jar.apply(app.anonymous(Method::GET, "/me"))).await;
    let me = me.ok(200);
    assert_eq!(me["user"]["id"], user.id);
    let limit = tessera_domain::Timestamp::now()
        .plus_secs(30 * 60 + 5)
        .to_rfc3339();
    assert!(me["expires_at"].as_str().unwrap() <= limit.as_str(), "{me}");
    // The signed-in page shows the banner.
    let page = send(jar.apply(app.anonymous(Method::GET, "/sign-in"))).await;
    assert!(page.text.contains("id=\"impersonation\""), "{}", page.text);
    // The audit log keeps who impersonated whom.
    let audit = app
        .get("/audit-events?kind=user.impersonation_started")
        .await;
    let events = audit.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor_type"], "secret_key");
    assert_eq!(events[0]["subject_id"], user.id);
    // Choosing an organization rotates the session; it stays the impersonation's, with its
    // limit, its banner and its ticket.
    let org = app.organization_with_member("Acme", &user.id).await;
    let before = jar.cookie.clone();
    let chosen = send(
        jar.apply(app.anonymous(Method::POST, "/me/active-organization"))
            .header("origin", &app.base_url)
            .json(&json!({"organization_id": org.id})),
    )
    .await;
    assert_eq!(chosen.ok(200)["active_organization"]["id"], org.id.as_str());
    assert!(chosen.body["expires_at"].as_str().unwrap() <= limit.as_str());
    jar.keep(&chosen);
    assert_ne!(jar.cookie, before, "the session was rotated");
    let page = send(jar.apply(app.anonymous(Method::GET, "/sign-in"))).await;
    assert!(page.text.contains("id=\"impersonation\""), "{}", page.text);
    // What the impersonator did is recorded as theirs, about the user.
    let audit = app
        .get("/audit-events?kind=user.active_organization_changed")
        .await;
    let events = audit.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor_type"], "secret_key");
    assert_eq!(events[0]["subject_id"], user.id);
    // Replaying the ticket ends the impersonation session, rotated or not.
    exchange(&app, &mut Jar::default(), &t)
        .await
        .assert_error(401, "invalid_ticket", None);
    send(jar.apply(app.anonymous(Method::GET, "/me")))
        .await
        .assert_error(401, "unauthorized", None);
    // The mint and the replay are in the log too, with the client that sent them.
    for kind in ["session_ticket.created", "session_ticket.replayed"] {
        let audit = app.get(&format!("/audit-events?kind={kind}")).await;
        let events = audit.ok(200)["data"].as_array().unwrap().clone();
        assert_eq!(events.len(), 1, "{kind}");
        assert_eq!(events[0]["ip"], "127.0.0.1", "{kind}");
        assert!(events[0]["subject_id"]
            .as_str()
            .unwrap()
            .starts_with("tkt_"));
    }
    // Signing out of an impersonation is the impersonator's act too.
    let t = ticket(
        &app,
        json!({"ticket_type": "impersonation", "user_id": user.id}),
    )
    .await;
    let mut jar = Jar::default();
    exchange(&app, &mut jar, &t).await.ok(200);
    send(
        jar.apply(app.anonymous(Method::POST, "/sign-out"))
            .header("origin", &app.base_url),
    )
    .await;
    let audit = app.get("/audit-events?kind=user.signed_out").await;
    let events = audit.ok(200)["data"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor_type"], "secret_key");
    assert_eq!(events[0]["subject_id"], user.id);
    app.stop().await;
}

async fn console_admins_mint_for_any_deployment(db: &TestDatabase) {
    let app = spawn_app_with(db, |c| {
        c.bootstrap_admin_password = Some(tessera_server::Secret::new(ADMIN_PASSWORD));
    })
    .await;
    let other = app.create_deployment("other").await;
    let agent = other
        .client
        .ai()
        .agents()
        .create_agent(echo_agent("x"))
        .send()
        .await
        .unwrap();
    let console = |token: Option<&str>| match token {
        Some(t) => tessera_client::Client::new(app.base_url.clone(), t.to_owned()),
        None => tessera_client::Client::unauthenticated(app.base_url.clone()),
    };
    let wrong = console(None)
        .console()
        .sign_in(tessera_client::models::ConsoleSignInRequest {
            username: None,
            password: "not the password".into(),
        })
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        wrong.code(),
        Some(tessera_client::ErrorCode::InvalidCredentials)
    );
    let signed_in = console(None)
        .console()
        .sign_in(tessera_client::models::ConsoleSignInRequest {
            username: Some("admin".into()),
            password: ADMIN_PASSWORD.into(),
        })
        .send()
        .await
        .unwrap();
    assert!(signed_in.token.starts_with("tca_"));
    let admin = console(Some(&signed_in.token));
    let request = CreateSessionTicketRequest {
        ticket_type: "agent_access".into(),
        agent_ids: Some(vec![agent.id.clone()]),
        context_group: Some("g".into()),
        ..Default::default()
    };
    let minted = admin
        .console()
        .create_session_ticket(&other.deployment_id, request.clone())
        .send()
        .await
        .unwrap();
    assert!(minted.url.contains("/vanity/agents?ticket=tkt_"));
    let missing = admin
        .console()
        .create_session_ticket(
            tessera_domain::DeploymentId::generate().as_str(),
            request.clone(),
        )
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        missing.code(),
        Some(tessera_client::ErrorCode::DeploymentNotFound)
    );
    // An id that is not even UTF-8 is just as missing.
    send(
        app.anonymous(Method::POST, "/console/api/deployments/%FF/session/tickets")
            .bearer_auth(&signed_in.token)
            .json(&request),
    )
    .await
    .assert_error(404, "deployment_not_found", None);
    // A secret key is not a console credential.
    let keyed = app
        .client
        .console()
        .create_session_ticket(&other.deployment_id, request.clone())
        .send()
        .await
        .unwrap_err();
    assert_eq!(keyed.code(), Some(tessera_client::ErrorCode::Unauthorized));
    // The cookie works too; cookie-authenticated writes are Origin-checked.
    let raw = send(
        app.anonymous(Method::POST, "/console/api/sign-in")
            .header("origin", &app.base_url)
            .json(&json!({"password": ADMIN_PASSWORD})),
    )
    .await;
    let set = raw.header("set-cookie").unwrap().to_owned();
    assert!(
        set.contains("HttpOnly")
            && set.contains("SameSite=Strict")
            && set.contains("Path=/console"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let path = format!(
        "/console/api/deployments/{}/session/tickets",
        other.deployment_id
    );
    send(
        app.anonymous(Method::POST, &path)
            .header("cookie", &cookie)
            .header("origin", "https://evil.example")
            .json(&request),
    )
    .await
    .assert_error(403, "origin_not_allowed", None);
    send(
        app.anonymous(Method::POST, &path)
            .header("cookie", &cookie)
            .header("origin", &app.base_url)
            .json(&request),
    )
    .await
    .ok(201);
    // Impersonation by an admin is audited with the admin as actor.
    let user = other
        .client
        .users()
        .create_user(CreateUserRequest {
            email: "u@example.com".into(),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    admin
        .console()
        .create_session_ticket(
            &other.deployment_id,
            CreateSessionTicketRequest {
                ticket_type: "impersonation".into(),
                user_id: Some(user.id.clone()),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    let audit = other
        .client
        .audit_events()
        .list_audit_events(Default::default())
        .send()
        .await
        .unwrap();
    let created = audit
        .data
        .iter()
        .find(|e| e.kind == "session_ticket.created")
        .unwrap();
    assert_eq!(created.actor_type, "console_admin");
    assert_eq!(
        created.actor_id.as_deref(),
        Some(signed_in.admin.id.as_str())
    );
    // Signing out ends the token.
    admin.console().sign_out().send().await.unwrap();
    let gone = admin
        .console()
        .create_session_ticket(&other.deployment_id, request)
        .send()
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Some(tessera_client::ErrorCode::Unauthorized));
    app.stop().await;
}

/// What in `html` runs as inline script: `<script>` elements without a `src` or with a body,
/// and `on…=` event-handler attributes.
fn inline_scripts(html: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let mut found = Vec::new();
    for (at, _) in lower.match_indices("<script") {
        let end = lower[at..].find('>').map_or(lower.len(), |e| at + e + 1);
        let tag = &lower[at..end];
        let empty = lower[end..].starts_with("</script>");
        if !tag.contains(" src=") || !empty {
            found.push(html[at..end].to_owned());
        }
    }
    for word in lower.split(|c: char| c.is_whitespace() || c == '<') {
        let Some(rest) = word.strip_prefix("on") else {
            continue;
        };
        if let Some((name, _)) = rest.split_once('=') {
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphabetic()) {
                found.push(word.to_owned());
            }
        }
    }
    found
}

async fn pages_cors_and_origin_checks(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let agent = agent_id(&app, "Support").await;
    let t = ticket(
        &app,
        json!({"ticket_type": "agent_access", "agent_ids": [agent], "context_group": "g"}),
    )
    .await;
    // GET of the page changes nothing; it is strict about scripts and referrers.
    let page = send(app.anonymous(Method::GET, &format!("/vanity/agents?ticket={t}"))).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(
        inline_scripts(&page.text),
        Vec::<String>::new(),
        "no inline script"
    );
    assert!(
        page.text
            .contains(r#"<script type="module" src="/static/vanity-agents.js"></script>"#),
        "{}",
        page.text
    );
    let js = send(app.anonymous(Method::GET, "/static/tessera.js")).await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    assert!(js.text.contains("export class TesseraClient"));
    // A write from another origin is refused, and does not use the ticket up.
    send(
        app.anonymous(Method::POST, "/session/tickets/exchange")
            .header("origin", "https://evil.example")
            .json(&json!({"ticket": t})),
    )
    .await
    .assert_error(403, "origin_not_allowed", None);
    let mut jar = Jar::default();
    exchange(&app, &mut jar, &t).await.ok(200);
    browser(&app, &jar, Method::GET, "/agent/session", None)
        .await
        .ok(200);
    // Cookie-authenticated writes need the origin; bearer ones do not.
    send(
        jar.apply(
            app.anonymous(Method::POST, "/agent/contexts")
                .header("origin", "https://evil.example")
                .json(&json!({})),
        ),
    )
    .await
    .assert_error(403, "origin_not_allowed", None);
    // CORS: the deployment's own origins get credentials; others nothing.
    let preflight = send(
        app.anonymous(Method::OPTIONS, "/agent/contexts")
            .header("origin", &app.base_url)
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some(app.base_url.as_str())
    );
    assert_eq!(
        preflight.header("access-control-allow-credentials"),
        Some("true")
    );
    let evil = send(
        app.anonymous(Method::OPTIONS, "/agent/contexts")
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST"),
    )
    .await;
    assert!(evil.header("access-control-allow-origin").is_none());
    let session = send(
        jar.apply(
            app.anonymous(Method::GET, "/agent/session")
                .header("origin", &app.base_url),
        ),
    )
    .await;
    assert_eq!(
        session.header("access-control-allow-origin"),
        Some(app.base_url.as_str())
    );
    app.stop().await;
}

async fn console_sign_in_failures_are_counted_once_for_every_host(db: &TestDatabase) {
    let app = spawn_app_with(db, |c| {
        c.bootstrap_admin_password = Some(tessera_server::Secret::new(ADMIN_PASSWORD));
        c.identity.sign_in_max_failures_per_account = 2;
        c.identity.sign_in_max_failures_per_ip = 100;
    })
    .await;
    // Another deployment, served at another host: naming it does not open a second allowance.
    app.create_deployment_at("other", "http://other.test").await;
    let own = app.base_url.trim_start_matches("http://").to_owned();
    // `Host` picks the deployment (an unknown host falls back to `default`); `Origin` must be
    // one of its hosts.
    let attempt = |host: &str, origin: &str, password: &str| {
        send(
            app.anonymous(Method::POST, "/console/api/sign-in")
                .header("host", host)
                .header("origin", origin)
                .json(&json!({ "password": password })),
        )
    };
    let hosts = [
        (own.as_str(), app.base_url.as_str()),
        ("other.test", "http://other.test"),
        ("unknown.test", app.base_url.as_str()),
    ];
    attempt(hosts[0].0, hosts[0].1, "guess-1")
        .await
        .assert_error(401, "invalid_credentials", None);
    attempt(hosts[1].0, hosts[1].1, "guess-2")
        .await
        .assert_error(401, "invalid_credentials", None);
    attempt(hosts[2].0, hosts[2].1, "guess-3")
        .await
        .assert_error(429, "too_many_attempts", None);
    // Blocked through every host, even with the right password.
    for (host, origin) in hosts {
        attempt(host, origin, ADMIN_PASSWORD)
            .await
            .assert_error(429, "too_many_attempts", None);
    }
    app.stop().await;
}
