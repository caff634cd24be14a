//! Conformance of session-ticket storage: minting checks, the single-winner exchange, replay
//! revocation, signin roll-back, replacement, impersonation, the conversation partition and
//! console admins.
//! Both backends must behave identically.
//!
//! Runs on SQLite always and on PostgreSQL when `TESSERA_TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;

use std::sync::Arc;

use tessera_domain::agent::MultitaskPolicy;
use tessera_domain::identity::{AuditClient, Email, NewSession, NewUser};
use tessera_domain::password::hash_password;
use tessera_domain::records::NewActor;
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SecretHash, SECRET_KEY_PREFIX};
use tessera_domain::thread::{ContextGroup, RunStatus};
use tessera_domain::ticket::{
    Binding, Issuer, SessionMode, SessionName, SessionTicket, TicketGrant, TICKET_PREFIX,
};
use tessera_domain::validate::{DeploymentName, ExternalKey, Label, Metadata, SubjectType};
use tessera_domain::{AgentId, Scope, SecretKeyId, ThreadId, Timestamp};
use tessera_store::testing::TestDatabase;
use tessera_store::{
    backend_tests, Conflict, ConnectOptions, Entity, ExchangeOutcome, ExchangeTicket, NewSecretKey,
    NewTicket, PageRequest, Store, StoreError, SubmitRun,
};

backend_tests!(
    tickets_check_their_references,
    an_app_ticket_is_minted_for_an_app_of_its_deployment,
    one_exchange_wins_and_a_replay_revokes,
    signin_without_a_user_keeps_the_ticket,
    named_sessions_keep_group_and_actor,
    contexts_stay_inside_their_partition,
    each_dimension_of_the_partition_is_checked,
    the_console_admin_is_created_once,
    concurrent_mixed_exchanges_each_get_their_own_outcome,
    the_exchange_answers_with_the_actor_and_the_live_agents,
    an_impersonation_signs_the_browser_in_as_the_user,
    a_rotation_waits_for_a_replay_of_its_ticket,
    a_rotation_into_an_organization_needs_the_membership,
    a_hidden_conversation_keeps_no_open_run,
);

async fn open(db: &TestDatabase) -> Arc<dyn Store> {
    tessera_store::open(&db.url, &ConnectOptions::default())
        .await
        .expect("open store")
}

async fn deployment(store: &Arc<dyn Store>, name: &str) -> Scope {
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
                backend_host: format!("http://{name}"),
                frontend_host: format!("http://{name}-app"),
            },
            &key,
        )
        .await
        .unwrap();
    Scope::deployment(dep.id)
}

async fn agent(store: &Arc<dyn Store>, scope: &Scope) -> AgentId {
    let spec = tessera_store::testing::agent_spec("a", "");
    store.create_agent(scope, &spec).await.unwrap().id
}

fn access(
    agent: &AgentId,
    mode: SessionMode,
    group: Option<&str>,
    binding: Binding,
) -> TicketGrant {
    TicketGrant::AgentAccess {
        agent_ids: vec![agent.clone()],
        binding,
        mode,
        context_group: group.map(|g| ContextGroup::parse("context_group", g).unwrap()),
    }
}

async fn mint(
    store: &Arc<dyn Store>,
    scope: &Scope,
    grant: TicketGrant,
    seconds: i64,
) -> Result<PlainSecret, StoreError> {
    minted(store, scope, grant, seconds)
        .await
        .map(|(secret, _)| secret)
}

/// [`mint`], with the ticket the store answered.
async fn minted(
    store: &Arc<dyn Store>,
    scope: &Scope,
    grant: TicketGrant,
    seconds: i64,
) -> Result<(PlainSecret, SessionTicket), StoreError> {
    let secret = PlainSecret::generate(TICKET_PREFIX);
    let now = Timestamp::now();
    let ticket = store
        .create_ticket(
            scope,
            &NewTicket {
                hash: secret.hash(),
                grant,
                issuer: Issuer::SecretKey(SecretKeyId::generate()),
                now,
                expires_at: now.plus_secs(seconds),
                client: client(),
            },
        )
        .await?;
    Ok((secret, ticket))
}

/// A user of `scope` (ada@example.com, nothing else set).
async fn user(store: &Arc<dyn Store>, scope: &Scope) -> tessera_domain::identity::User {
    store
        .create_user(
            scope,
            &NewUser {
                email: Email::parse("email", "ada@example.com").unwrap(),
                first_name: None,
                last_name: None,
                password_hash: None,
                metadata: Metadata::empty(),
            },
            &common::operator(),
        )
        .await
        .unwrap()
}

fn browser(user: Option<tessera_domain::UserId>) -> (PlainSecret, NewSession) {
    let secret = PlainSecret::generate("tss");
    let now = Timestamp::now();
    let new = NewSession {
        hash: secret.hash(),
        user_id: user,
        active_organization_id: None,
        impersonation: None,
        now,
        idle_expires_at: now.plus_secs(600),
        expires_at: now.plus_secs(3600),
    };
    (secret, new)
}

fn exchange(ticket: &PlainSecret, cookie: Option<&PlainSecret>) -> ExchangeTicket {
    let now = Timestamp::now();
    ExchangeTicket {
        hash: ticket.hash(),
        now,
        browser_session: cookie.map(|c| c.hash()),
        new_browser_session: browser(None).1,
        session_token: PlainSecret::generate_ordered("tas", now).hash(),
        session_lifetime_ms: 3_600_000,
        impersonation_ms: 1_800_000,
        anonymous_key: format!("anon-{}", AgentId::generate()),
        client: client(),
    }
}

/// The client the tests' audit events name.
fn client() -> AuditClient {
    AuditClient {
        ip: Some("203.0.113.7".into()),
        user_agent: Some("store-tests".into()),
    }
}

async fn tickets_check_their_references(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let other = deployment(&store, "two").await;
    let mine = agent(&store, &scope).await;
    let theirs = agent(&store, &other).await;
    let err = mint(
        &store,
        &scope,
        access(&theirs, SessionMode::Static, Some("g"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: Entity::Agent,
                field: Some("agent_ids"),
                index: Some(0)
            }
        ),
        "{err:?}"
    );
    let err = mint(
        &store,
        &scope,
        access(
            &mine,
            SessionMode::Static,
            Some("g"),
            Binding::User(tessera_domain::UserId::generate()),
        ),
        60,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                entity: Entity::User,
                ..
            }
        ),
        "{err:?}"
    );
    for kind in [
        tessera_domain::ticket::AppKind::ApiAuth,
        tessera_domain::ticket::AppKind::Webhook,
    ] {
        let grant = TicketGrant::App {
            kind,
            slug: tessera_domain::ticket::AppSlug::parse("s", "billing").unwrap(),
        };
        let err = mint(&store, &scope, grant, 60).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    entity: Entity::App,
                    ..
                }
            ),
            "{err:?}"
        );
    }
    let named = SessionMode::Named(SessionName::parse("n", "case-1").unwrap());
    let err = mint(
        &store,
        &scope,
        access(&mine, named, None, Binding::Anonymous),
        60,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict(Conflict::NamedSessionNeedsGroup)),
        "{err:?}"
    );
    mint(
        &store,
        &scope,
        access(&mine, SessionMode::Static, Some("g"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
}

/// The app check of minting is a real lookup: an app registered for the deployment is accepted,
/// one of another deployment or of the other kind is not. No API creates apps yet: the rows are
/// written directly.
async fn an_app_ticket_is_minted_for_an_app_of_its_deployment(db: &TestDatabase) {
    use tessera_domain::ticket::{AppKind, AppSlug};
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let other = deployment(&store, "two").await;
    let registered = db
        .execute(
            "INSERT INTO apps (deployment_id, kind, slug, name, created_at)
             VALUES ($1, 'api_auth', 'billing', 'Billing', 0)",
            &[scope.deployment_id().as_str()],
        )
        .await;
    assert_eq!(registered, 1);
    let grant = |kind| TicketGrant::App {
        kind,
        slug: AppSlug::parse("s", "billing").unwrap(),
    };
    let (_, minted) = minted(&store, &scope, grant(AppKind::ApiAuth), 60)
        .await
        .unwrap();
    assert_eq!(minted.grant, grant(AppKind::ApiAuth));
    // The same slug in another deployment, or as a webhook app, names no app.
    for (scope, kind, field) in [
        (&other, AppKind::ApiAuth, "api_auth_app_slug"),
        (&scope, AppKind::Webhook, "webhook_app_slug"),
    ] {
        let err = mint(&store, scope, grant(kind), 60).await.unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    entity: Entity::App,
                    field: Some(f),
                    ..
                } if f == field
            ),
            "{err:?}"
        );
    }
}

async fn one_exchange_wins_and_a_replay_revokes(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let other = deployment(&store, "two").await;
    let a = agent(&store, &scope).await;
    let ticket = mint(
        &store,
        &scope,
        access(&a, SessionMode::Static, Some("g"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    // Another deployment does not know the ticket.
    let foreign = store
        .exchange_ticket(&other, &exchange(&ticket, None))
        .await
        .unwrap();
    assert_eq!(foreign, ExchangeOutcome::Invalid { replayed: None });

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let scope = scope.clone();
        let ex = exchange(&ticket, None);
        tasks.push(tokio::spawn(async move {
            store.exchange_ticket(&scope, &ex).await.unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            ExchangeOutcome::Agent { .. } => winners += 1,
            ExchangeOutcome::Invalid { replayed } => assert!(replayed.is_some()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(winners, 1);
    // Each losing exchange recorded its replay; an agent_access mint records nothing.
    assert_eq!(
        common::audited(&store, &scope, Some("session_ticket.replayed"))
            .await
            .len(),
        19
    );
    assert!(
        common::audited(&store, &scope, Some("session_ticket.created"))
            .await
            .is_empty()
    );
    assert!(
        common::audited(&store, &other, Some("session_ticket.replayed"))
            .await
            .is_empty()
    );

    // A fresh ticket: its session lives until the ticket is replayed.
    let ticket = mint(
        &store,
        &scope,
        access(&a, SessionMode::Static, Some("g"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    let ex = exchange(&ticket, None);
    let token = ex.session_token.clone();
    let ExchangeOutcome::Agent {
        session,
        browser,
        browser_created,
        ..
    } = store.exchange_ticket(&scope, &ex).await.unwrap()
    else {
        panic!("the first exchange wins")
    };
    assert!(browser_created);
    let now = Timestamp::now();
    // What the exchange answered is what it stored (it does not read its rows back).
    assert_eq!(
        store
            .agent_session_by_token(&scope, &token, now)
            .await
            .unwrap(),
        Some(session.clone())
    );
    assert_eq!(
        store
            .find_session(&scope, &ex.new_browser_session.hash, now, 600_000)
            .await
            .unwrap(),
        Some(browser.clone())
    );
    assert!(store
        .agent_session_by_token(&other, &token, now)
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        store
            .active_agent_session(&scope, &browser.id, now)
            .await
            .unwrap()
            .unwrap()
            .id,
        session.id
    );
    let replay = store
        .exchange_ticket(&scope, &exchange(&ticket, None))
        .await
        .unwrap();
    assert!(matches!(
        replay,
        ExchangeOutcome::Invalid { replayed: Some(_) }
    ));
    assert!(store
        .agent_session_by_token(&scope, &token, now)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .active_agent_session(&scope, &browser.id, now)
        .await
        .unwrap()
        .is_none());

    // Expired: refused like unknown, and nothing is revoked.
    let short = mint(
        &store,
        &scope,
        access(&a, SessionMode::Static, Some("g"), Binding::Anonymous),
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .exchange_ticket(&scope, &exchange(&short, None))
            .await
            .unwrap(),
        ExchangeOutcome::Invalid { replayed: None }
    );
    let unknown = PlainSecret::generate(TICKET_PREFIX);
    assert_eq!(
        store
            .exchange_ticket(&scope, &exchange(&unknown, None))
            .await
            .unwrap(),
        ExchangeOutcome::Invalid { replayed: None }
    );
}

async fn signin_without_a_user_keeps_the_ticket(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let a = agent(&store, &scope).await;
    let ticket = mint(
        &store,
        &scope,
        access(&a, SessionMode::Signin, None, Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .exchange_ticket(&scope, &exchange(&ticket, None))
            .await
            .unwrap(),
        ExchangeOutcome::SigninRequired
    );
    let user = user(&store, &scope).await;
    let (cookie, new) = browser(Some(user.id.clone()));
    let signed_in = store.create_session(&scope, &new).await.unwrap();
    // Two exchanges on one browser: the second replaces the first's agent session.
    let ExchangeOutcome::Agent {
        session,
        browser_created,
        ..
    } = store
        .exchange_ticket(&scope, &exchange(&ticket, Some(&cookie)))
        .await
        .unwrap()
    else {
        panic!("signed in now")
    };
    assert!(!browser_created);
    assert_eq!(session.context_group.as_str(), format!("user:{}", user.id));
    let second = mint(
        &store,
        &scope,
        access(&a, SessionMode::Static, Some("other"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    let ExchangeOutcome::Agent { session: newer, .. } = store
        .exchange_ticket(&scope, &exchange(&second, Some(&cookie)))
        .await
        .unwrap()
    else {
        panic!("second ticket")
    };
    let active = store
        .active_agent_session(&scope, &signed_in.id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(active.id, newer.id);
    assert_ne!(active.id, session.id);
}

async fn named_sessions_keep_group_and_actor(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let a = agent(&store, &scope).await;
    let named = || SessionMode::Named(SessionName::parse("n", "case-7").unwrap());
    let first = mint(
        &store,
        &scope,
        access(&a, named(), Some("grp"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    let ExchangeOutcome::Agent { session: s1, .. } = store
        .exchange_ticket(&scope, &exchange(&first, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    let err = mint(
        &store,
        &scope,
        access(&a, named(), Some("else"), Binding::Anonymous),
        60,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict(Conflict::NamedSessionGroupMismatch)
        ),
        "{err:?}"
    );
    let again = mint(
        &store,
        &scope,
        access(&a, named(), None, Binding::Anonymous),
        60,
    )
    .await
    .unwrap();
    let ExchangeOutcome::Agent { session: s2, .. } = store
        .exchange_ticket(&scope, &exchange(&again, None))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(s2.context_group, s1.context_group);
    assert_eq!(s2.actor_id, s1.actor_id);
    assert_eq!(s2.session_name.as_deref(), Some("case-7"));
}

async fn contexts_stay_inside_their_partition(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let a = agent(&store, &scope).await;
    let mut sessions = Vec::new();
    for group in ["g1", "g2"] {
        sessions.push(static_session(&store, &scope, &a, group).await);
    }
    let title = Label::parse("title", "chat").unwrap();
    let mine = store
        .create_context(&scope, &sessions[0], &a, &title)
        .await
        .unwrap();
    assert_eq!(mine.context_group.as_deref(), Some("g1"));
    let stranger = agent(&store, &scope).await;
    let err = store
        .create_context(&scope, &sessions[0], &stranger, &title)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::NotFound {
            entity: Entity::Agent,
            ..
        }
    ));
    let page = store
        .list_contexts(&scope, &sessions[0], &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    let page = store
        .list_contexts(&scope, &sessions[1], &PageRequest::default())
        .await
        .unwrap();
    assert!(page.items.is_empty());
    for result in [
        store
            .get_context(&scope, &sessions[1], &mine.id)
            .await
            .map(|_| ()),
        store
            .rename_context(&scope, &sessions[1], &mine.id, &title)
            .await
            .map(|_| ()),
        store
            .hide_context(&scope, &sessions[1], &mine.id)
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(
                result,
                Err(StoreError::NotFound {
                    entity: Entity::Context,
                    ..
                })
            ),
            "{result:?}"
        );
    }
    // Hiding stops the conversation's runs in the same transaction.
    let queued = common::created(
        store
            .submit_run(&scope, &mine.id, &from_session(&mine.id, "hello"))
            .await
            .unwrap(),
    )
    .0;
    let stopped = store
        .hide_context(&scope, &sessions[0], &mine.id)
        .await
        .unwrap();
    assert_eq!(stopped.len(), 1);
    assert_eq!(
        (&stopped[0].id, stopped[0].status),
        (&queued.id, RunStatus::Cancelled)
    );
    assert!(store
        .get_context(&scope, &sessions[0], &mine.id)
        .await
        .is_err());
    // The session can send it nothing more; the backend still has the thread and can.
    let err = store
        .submit_run(&scope, &mine.id, &from_session(&mine.id, "again"))
        .await
        .unwrap_err();
    assert!(common::is_not_found(&err, Entity::Context), "{err:?}");
    store.get_thread(&scope, &mine.id).await.unwrap();
    let backend = common::submission(&mine.id, "from the backend", MultitaskPolicy::Enqueue);
    common::created(store.submit_run(&scope, &mine.id, &backend).await.unwrap());
}

/// A conversation is found only by a session that matches it in every dimension: a session
/// that differs in just one (the actor, the context group, or the agents), or the right session
/// asked in another deployment, does not see it, whatever it tries.
async fn each_dimension_of_the_partition_is_checked(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let other = deployment(&store, "two").await;
    let a = agent(&store, &scope).await;
    let b = agent(&store, &scope).await;
    let (ada, bob) = (
        customer(&store, &scope, "ada").await,
        customer(&store, &scope, "bob").await,
    );
    let session = |agent: &AgentId, actor: &tessera_domain::ActorId, group: &'static str| {
        let (store, scope) = (store.clone(), scope.clone());
        let (agent, binding) = (agent.clone(), Binding::Actor(actor.clone()));
        async move { bound_session(&store, &scope, &agent, group, binding).await }
    };
    let owner = session(&a, &ada, "g1").await;
    let title = Label::parse("title", "chat").unwrap();
    let chat = store
        .create_context(&scope, &owner, &a, &title)
        .await
        .unwrap();
    // Another session of the same actor, group and agent sees it (so the refusals below come
    // from the one dimension each differs in).
    let twin = session(&a, &ada, "g1").await;
    assert_eq!(
        store.get_context(&scope, &twin, &chat.id).await.unwrap().id,
        chat.id
    );
    let strangers = [
        (
            "same actor and agent, another group",
            &scope,
            session(&a, &ada, "g2").await,
        ),
        (
            "same group and agent, another actor",
            &scope,
            session(&a, &bob, "g1").await,
        ),
        (
            "same actor and group, another agent",
            &scope,
            session(&b, &ada, "g1").await,
        ),
        (
            "the same session, another deployment",
            &other,
            owner.clone(),
        ),
    ];
    for (case, scope, stranger) in &strangers {
        let listed = store
            .list_contexts(scope, stranger, &PageRequest::default())
            .await
            .unwrap();
        assert!(listed.items.is_empty(), "{case}: {listed:?}");
        for result in [
            store
                .get_context(scope, stranger, &chat.id)
                .await
                .map(|_| ()),
            store
                .rename_context(
                    scope,
                    stranger,
                    &chat.id,
                    &Label::parse("t", "theirs").unwrap(),
                )
                .await
                .map(|_| ()),
            store
                .hide_context(scope, stranger, &chat.id)
                .await
                .map(|_| ()),
        ] {
            assert!(
                matches!(
                    result,
                    Err(StoreError::NotFound {
                        entity: Entity::Context,
                        ..
                    })
                ),
                "{case}: {result:?}"
            );
        }
    }
    // Nothing they tried changed it.
    let page = store
        .list_contexts(&scope, &owner, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].title, "chat");
}

/// A new actor of `scope` (subject type `customer`, external key `key`).
async fn customer(store: &Arc<dyn Store>, scope: &Scope, key: &str) -> tessera_domain::ActorId {
    let actor = NewActor {
        subject_type: SubjectType::parse("subject_type", "customer").unwrap(),
        external_key: ExternalKey::parse("external_key", key).unwrap(),
        display_name: None,
        metadata: Metadata::empty(),
    };
    store.create_actor(scope, &actor).await.unwrap().id
}

/// The agent session of a fresh browser that exchanged a static anonymous ticket of context
/// group `group` for agent `a`.
async fn static_session(
    store: &Arc<dyn Store>,
    scope: &Scope,
    a: &AgentId,
    group: &str,
) -> tessera_domain::ticket::AgentSession {
    bound_session(store, scope, a, group, Binding::Anonymous).await
}

/// The agent session of a fresh browser that exchanged a static ticket of context group `group`
/// for agent `a`, bound as `binding` says.
async fn bound_session(
    store: &Arc<dyn Store>,
    scope: &Scope,
    a: &AgentId,
    group: &str,
    binding: Binding,
) -> tessera_domain::ticket::AgentSession {
    let t = mint(
        store,
        scope,
        access(a, SessionMode::Static, Some(group), binding),
        60,
    )
    .await
    .unwrap();
    let ExchangeOutcome::Agent { session, .. } = store
        .exchange_ticket(scope, &exchange(&t, None))
        .await
        .unwrap()
    else {
        panic!("a static ticket opens an agent session")
    };
    session
}

/// A message of a browser's agent session to `thread`.
fn from_session(thread: &ThreadId, text: &str) -> SubmitRun {
    SubmitRun {
        refuse_hidden: true,
        ..common::submission(thread, text, MultitaskPolicy::Enqueue)
    }
}

async fn a_hidden_conversation_keeps_no_open_run(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "hide-race").await;
    let a = agent(&store, &scope).await;
    let session = static_session(&store, &scope, &a, "g").await;
    let title = Label::parse("title", "chat").unwrap();
    // Messages racing the deletion: each is refused, or its run is stopped by it.
    for round in 0..10 {
        let chat = store
            .create_context(&scope, &session, &a, &title)
            .await
            .unwrap();
        let sends = (0..4).map(|i| {
            let (store, scope, id) = (store.clone(), scope.clone(), chat.id.clone());
            tokio::spawn(async move {
                store
                    .submit_run(&scope, &id, &from_session(&id, &format!("m{i}")))
                    .await
            })
        });
        let hide = {
            let (store, scope, session, id) = (
                store.clone(),
                scope.clone(),
                session.clone(),
                chat.id.clone(),
            );
            tokio::spawn(async move { store.hide_context(&scope, &session, &id).await })
        };
        let mut runs = Vec::new();
        for sent in futures_util::future::join_all(sends).await {
            match sent.unwrap() {
                Ok(outcome) => runs.push(common::created(outcome).0.id),
                Err(err) if common::is_not_found(&err, Entity::Context) => {}
                Err(err) => panic!("round {round}: {err:?}"),
            }
        }
        hide.await.unwrap().unwrap();
        for id in &runs {
            let run = store.get_run(&scope, &chat.id, id).await.unwrap();
            assert_eq!(
                run.status,
                RunStatus::Cancelled,
                "round {round}: a run still open after the deletion: {run:?}"
            );
        }
    }
}

async fn the_console_admin_is_created_once(db: &TestDatabase) {
    let store = open(db).await;
    let password =
        tessera_domain::identity::Password::presented("p", "a long password".into()).unwrap();
    let hash = hash_password(&password).unwrap();
    let admin = store
        .bootstrap_console_admin("admin", &hash)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .bootstrap_console_admin("admin", &hash)
        .await
        .unwrap()
        .is_none());
    let (found, _) = store
        .console_admin_credentials("admin")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, admin.id);
    let token = SecretHash::of("tca_x");
    let now = Timestamp::now();
    store
        .create_console_session(&admin.id, &token, now, now.plus_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store
            .find_console_session(&token, now)
            .await
            .unwrap()
            .unwrap()
            .0
            .id,
        admin.id
    );
    assert!(store
        .find_console_session(&token, now.plus_secs(61))
        .await
        .unwrap()
        .is_none());
    store.delete_console_session(&token).await.unwrap();
    assert!(store
        .find_console_session(&token, now)
        .await
        .unwrap()
        .is_none());
}

/// Many different exchanges at once (SQLite writes them in shared transactions, one savepoint
/// each): every winner keeps its session, and a signin roll-back in the same batch undoes only
/// its own redemption.
async fn concurrent_mixed_exchanges_each_get_their_own_outcome(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "one").await;
    let a = agent(&store, &scope).await;
    let mut tasks = Vec::new();
    let mut signin_tickets = Vec::new();
    for i in 0..60 {
        let signin = i % 6 == 0;
        let grant = if signin {
            access(&a, SessionMode::Signin, None, Binding::Anonymous)
        } else {
            access(&a, SessionMode::Static, Some("g"), Binding::Anonymous)
        };
        let ticket = mint(&store, &scope, grant, 60).await.unwrap();
        if signin {
            signin_tickets.push(ticket.clone());
        }
        let (store, scope) = (store.clone(), scope.clone());
        let ex = exchange(&ticket, None);
        let token = ex.session_token.clone();
        tasks.push(tokio::spawn(async move {
            (
                signin,
                token,
                store.exchange_ticket(&scope, &ex).await.unwrap(),
            )
        }));
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            (true, _, outcome) => assert_eq!(outcome, ExchangeOutcome::SigninRequired),
            (false, token, ExchangeOutcome::Agent { session, .. }) => {
                // Committed: the session is found by its token.
                let found = store
                    .agent_session_by_token(&scope, &token, Timestamp::now())
                    .await
                    .unwrap()
                    .expect("the winner's session was committed");
                assert_eq!(found.id, session.id);
                winners += 1;
            }
            (false, _, other) => panic!("{other:?}"),
        }
    }
    assert_eq!(winners, 50);
    // The signin tickets were not used up: still SigninRequired (not invalid).
    for ticket in signin_tickets {
        assert_eq!(
            store
                .exchange_ticket(&scope, &exchange(&ticket, None))
                .await
                .unwrap(),
            ExchangeOutcome::SigninRequired
        );
    }
}

/// An exchange's outcome carries the session's actor as stored (the whole row, for a bound
/// actor as for a new anonymous one) and its agents that still exist, in the ticket's order,
/// so that its answer needs no further reads.
async fn the_exchange_answers_with_the_actor_and_the_live_agents(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "answers").await;
    let (a, b, c) = (
        agent(&store, &scope).await,
        agent(&store, &scope).await,
        agent(&store, &scope).await,
    );
    let bound = store
        .create_actor(
            &scope,
            &NewActor {
                subject_type: SubjectType::parse("subject_type", "customer").unwrap(),
                external_key: ExternalKey::parse("external_key", "c-42").unwrap(),
                display_name: Some(Label::parse("display_name", "Ada").unwrap()),
                metadata: Metadata::parse("metadata", serde_json::json!({"plan": "pro"})).unwrap(),
            },
        )
        .await
        .unwrap();
    let grant = |binding: Binding| TicketGrant::AgentAccess {
        agent_ids: vec![c.clone(), a.clone(), b.clone()],
        binding,
        mode: SessionMode::Static,
        context_group: Some(ContextGroup::parse("context_group", "g").unwrap()),
    };
    let to_bound = mint(&store, &scope, grant(Binding::Actor(bound.id.clone())), 60)
        .await
        .unwrap();
    let to_anonymous = mint(&store, &scope, grant(Binding::Anonymous), 60)
        .await
        .unwrap();
    store.delete_agent(&scope, &a).await.unwrap();

    for (ticket, expected) in [(&to_bound, Some(&bound)), (&to_anonymous, None)] {
        let ex = exchange(ticket, None);
        let ExchangeOutcome::Agent {
            session,
            actor,
            agents,
            ..
        } = store.exchange_ticket(&scope, &ex).await.unwrap()
        else {
            panic!("the exchange opens a session")
        };
        assert_eq!(actor.id, session.actor_id);
        assert_eq!(
            actor,
            store.get_actor(&scope, &session.actor_id).await.unwrap()
        );
        match expected {
            Some(bound) => assert_eq!(&actor, bound),
            None => assert_eq!(
                (actor.subject_type.as_str(), actor.external_key.as_str()),
                ("anonymous", ex.anonymous_key.as_str())
            ),
        }
        let ids: Vec<_> = agents.iter().map(|agent| agent.id.clone()).collect();
        assert_eq!(
            ids,
            vec![c.clone(), b.clone()],
            "the live agents, in the ticket's order"
        );
        assert_eq!(agents[0], store.get_agent(&scope, &c).await.unwrap());
    }
}

async fn an_impersonation_signs_the_browser_in_as_the_user(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "imp").await;
    let other = deployment(&store, "imp-other").await;
    let user = user(&store, &scope).await;
    let grant = TicketGrant::Impersonation {
        user_id: user.id.clone(),
    };
    let (ticket, minted) = minted(&store, &scope, grant.clone(), 60).await.unwrap();
    let issuer = minted.issuer.clone();
    // The mint records itself in the audit log, in its own transaction.
    let created = common::audited(&store, &scope, Some("session_ticket.created")).await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].subject_id.as_deref(), Some(minted.id.as_str()));
    assert_eq!(
        (
            created[0].actor_type.as_str(),
            created[0].actor_id.as_deref()
        ),
        ("secret_key", Some(issuer.id()))
    );
    assert_eq!(
        (created[0].ip.clone(), created[0].user_agent.clone()),
        (client().ip, client().user_agent)
    );
    assert_eq!(created[0].data["ticket_type"], "impersonation");
    assert_eq!(created[0].data["expires_at"], minted.expires_at.as_secs());

    // The browser already has a session (signed in as nobody): the exchange replaces it.
    let (old_cookie, old) = browser(None);
    store.create_session(&scope, &old).await.unwrap();
    // Impersonation lasts a minute here, less than the new session's own lifetimes.
    let ex = ExchangeTicket {
        impersonation_ms: 60_000,
        ..exchange(&ticket, Some(&old_cookie))
    };
    assert_eq!(
        store.exchange_ticket(&other, &ex).await.unwrap(),
        ExchangeOutcome::Invalid { replayed: None },
        "another deployment does not know the ticket"
    );
    let ExchangeOutcome::Impersonation {
        ticket: redeemed,
        user: signed_in,
        browser,
    } = store.exchange_ticket(&scope, &ex).await.unwrap()
    else {
        panic!("the impersonation ticket signs the browser in")
    };
    assert_eq!(
        redeemed,
        SessionTicket {
            redeemed_at: Some(ex.now),
            ..minted.clone()
        }
    );
    assert_eq!(signed_in, user);
    let limit = ex.now.plus_millis(60_000);
    assert_eq!(browser.user_id.as_ref(), Some(&user.id));
    assert_eq!(browser.impersonator.as_ref(), Some(&issuer));
    assert_eq!(browser.expires_at, limit);
    assert_eq!(browser.idle_expires_at, limit);
    assert_eq!(browser.created_at, ex.new_browser_session.now);
    // The transaction that signed the browser in recorded who impersonates whom.
    let started = common::audited(&store, &scope, Some("user.impersonation_started")).await;
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].subject_id.as_deref(), Some(user.id.as_str()));
    assert_eq!(
        (
            started[0].actor_type.as_str(),
            started[0].actor_id.as_deref()
        ),
        ("secret_key", Some(issuer.id()))
    );
    assert_eq!(started[0].ip, client().ip);
    assert_eq!(started[0].data["ticket_id"], minted.id.as_str());
    assert_eq!(started[0].data["impersonator_id"], issuer.id());
    assert_eq!(started[0].data["expires_at"], limit.to_rfc3339());
    assert!(
        common::audited(&store, &other, Some("user.impersonation_started"))
            .await
            .is_empty(),
        "the other deployment's log has nothing"
    );
    // What the exchange answered is what it stored (it does not read its row back).
    let now = Timestamp::now();
    assert_eq!(
        store
            .find_session(&scope, &ex.new_browser_session.hash, now, 600_000)
            .await
            .unwrap(),
        Some(browser.clone())
    );
    assert_eq!(
        store
            .find_session(&scope, &old_cookie.hash(), now, 600_000)
            .await
            .unwrap(),
        None,
        "the browser's previous session is gone"
    );

    // A rotation (choosing an organization) keeps the impersonator, the ticket and the
    // impersonation's limit, whatever the new row asks for.
    let (rotated_cookie, rotation) = crate::browser(Some(user.id.clone()));
    assert!(rotation.expires_at > limit);
    assert!(matches!(
        store
            .rotate_session(&other, &ex.new_browser_session.hash, &rotation, None)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    let rotated = store
        .rotate_session(&scope, &ex.new_browser_session.hash, &rotation, None)
        .await
        .unwrap();
    assert_eq!(rotated.impersonator.as_ref(), Some(&issuer));
    assert_eq!(rotated.expires_at, limit);
    assert_eq!(rotated.idle_expires_at, limit);
    assert_eq!(
        store
            .find_session(&scope, &rotated_cookie.hash(), now, 600_000)
            .await
            .unwrap(),
        Some(rotated)
    );
    // The rotated session is gone: rotating it again creates nothing.
    let (again_cookie, again) = crate::browser(Some(user.id.clone()));
    assert!(matches!(
        store
            .rotate_session(&scope, &ex.new_browser_session.hash, &again, None)
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .find_session(&scope, &again_cookie.hash(), now, 600_000)
            .await
            .unwrap(),
        None
    );

    // A replay signs the impersonated browser out, rotated or not.
    assert_eq!(
        store
            .exchange_ticket(&scope, &exchange(&ticket, None))
            .await
            .unwrap(),
        ExchangeOutcome::Invalid {
            replayed: Some(redeemed)
        }
    );
    for hash in [&ex.new_browser_session.hash, &rotated_cookie.hash()] {
        assert_eq!(
            store
                .find_session(&scope, hash, now, 600_000)
                .await
                .unwrap(),
            None
        );
    }
    let replayed = common::audited(&store, &scope, Some("session_ticket.replayed")).await;
    assert_eq!(
        replayed.len(),
        1,
        "the replay is recorded with its revocation"
    );
    assert_eq!(replayed[0].subject_id.as_deref(), Some(minted.id.as_str()));
    assert_eq!(replayed[0].actor_type, "anonymous");
    assert_eq!(replayed[0].data["ticket_type"], "impersonation");

    // A disabled user cannot be impersonated, and the refused exchange leaves the ticket
    // unused: it works once the user is enabled again.
    let ticket = mint(&store, &scope, grant, 60).await.unwrap();
    store
        .set_user_disabled(&scope, &user.id, true, &common::operator())
        .await
        .unwrap();
    assert!(matches!(
        store
            .exchange_ticket(&scope, &exchange(&ticket, None))
            .await,
        Err(StoreError::Conflict(Conflict::UserDisabled))
    ));
    assert_eq!(
        common::audited(&store, &scope, Some("user.impersonation_started"))
            .await
            .len(),
        1,
        "a refused exchange records nothing"
    );
    store
        .set_user_disabled(&scope, &user.id, false, &common::operator())
        .await
        .unwrap();
    assert!(matches!(
        store
            .exchange_ticket(&scope, &exchange(&ticket, None))
            .await
            .unwrap(),
        ExchangeOutcome::Impersonation { .. }
    ));
    assert_eq!(
        common::audited(&store, &scope, Some("user.impersonation_started"))
            .await
            .len(),
        2
    );
    assert_eq!(
        common::audited(&store, &scope, Some("session_ticket.created"))
            .await
            .len(),
        2
    );
}

/// A rotation (choosing an organization) while the session's impersonation ticket is replayed.
/// The replay locks the ticket, deletes the ticket's sessions and commits; a rotation that did
/// not wait for the ticket could commit its new session after that delete had looked (on
/// PostgreSQL), and the replayed impersonation would live on. The rotation takes the ticket's
/// lock first: it waits, then finds the ticket replayed and creates nothing.
async fn a_rotation_waits_for_a_replay_of_its_ticket(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "race").await;
    let user = user(&store, &scope).await;
    let grant = TicketGrant::Impersonation {
        user_id: user.id.clone(),
    };
    let (ticket, minted) = minted(&store, &scope, grant, 60).await.unwrap();
    let ex = ExchangeTicket {
        impersonation_ms: 60_000,
        ..exchange(&ticket, None)
    };
    assert!(matches!(
        store.exchange_ticket(&scope, &ex).await.unwrap(),
        ExchangeOutcome::Impersonation { .. }
    ));
    let signed_in = ex.new_browser_session.hash.clone();
    let (rotated_cookie, rotation) = crate::browser(Some(user.id.clone()));
    let now = Timestamp::now();
    if db.backend() == tessera_store::Backend::Postgres {
        // A replay in progress: it holds the ticket.
        let (mut replay, pid) = common::hold(
            db,
            "SELECT id FROM session_tickets WHERE id = $1 FOR UPDATE",
            minted.id.as_str(),
        )
        .await;
        let rotating = {
            let (store, scope, rotation) = (store.clone(), scope.clone(), rotation.clone());
            let signed_in = signed_in.clone();
            tokio::spawn(async move {
                store
                    .rotate_session(&scope, &signed_in, &rotation, None)
                    .await
            })
        };
        common::wait_until_blocked_by(&mut replay, pid, "the rotation never waited for the ticket")
            .await;
        // The rest of the replay (`revoke_replayed`): the ticket's sessions, then the mark.
        sqlx::query("DELETE FROM browser_sessions WHERE ticket_id = $1")
            .bind(minted.id.as_str())
            .execute(&mut replay)
            .await
            .unwrap();
        sqlx::query("UPDATE session_tickets SET replayed_at = $1 WHERE id = $2")
            .bind(now.as_millis())
            .bind(minted.id.as_str())
            .execute(&mut replay)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut replay).await.unwrap();
        assert!(matches!(
            rotating.await.unwrap(),
            Err(StoreError::NotFound { .. })
        ));
    } else {
        // One writer at a time: the replay, then the rotation.
        assert!(matches!(
            store
                .exchange_ticket(&scope, &exchange(&ticket, None))
                .await
                .unwrap(),
            ExchangeOutcome::Invalid { replayed: Some(_) }
        ));
        assert!(matches!(
            store
                .rotate_session(&scope, &signed_in, &rotation, None)
                .await,
            Err(StoreError::NotFound { .. })
        ));
    }
    for hash in [&signed_in, &rotated_cookie.hash()] {
        assert_eq!(
            store
                .find_session(&scope, hash, now, 600_000)
                .await
                .unwrap(),
            None
        );
    }
}

async fn a_rotation_into_an_organization_needs_the_membership(db: &TestDatabase) {
    use tessera_domain::identity::{NewOrganization, Role};
    let store = open(db).await;
    let scope = deployment(&store, "orgs").await;
    let user = user(&store, &scope).await;
    let org = store
        .create_organization(
            &scope,
            &NewOrganization {
                name: Label::parse("name", "Acme").unwrap(),
                slug: None,
            },
        )
        .await
        .unwrap();
    let (cookie, signed_in) = browser(Some(user.id.clone()));
    store.create_session(&scope, &signed_in).await.unwrap();
    let into_org = |cookie_of: &PlainSecret| {
        let (next_cookie, mut next) = browser(Some(user.id.clone()));
        next.active_organization_id = Some(org.id.clone());
        (cookie_of.hash(), next_cookie, next)
    };
    let now = Timestamp::now();

    // Not a member: refused, and the session stays as it was.
    let (old, _, next) = into_org(&cookie);
    let err = store
        .rotate_session(&scope, &old, &next, None)
        .await
        .unwrap_err();
    assert!(common::is_not_found(&err, Entity::Organization), "{err:?}");
    assert!(store
        .find_session(&scope, &old, now, 600_000)
        .await
        .unwrap()
        .is_some());

    // A member: rotated into it.
    store
        .add_member(&scope, &org.id, &user.id, Role::Member)
        .await
        .unwrap();
    let (old, cookie, next) = into_org(&cookie);
    let rotated = store
        .rotate_session(&scope, &old, &next, None)
        .await
        .unwrap();
    assert_eq!(rotated.active_organization_id.as_ref(), Some(&org.id));

    // A removal of the membership racing the next rotation: either the removal goes first and
    // the organization is refused, or it waits and clears the organization from the new session.
    let (old, next_cookie, next) = into_org(&cookie);
    if db.backend() == tessera_store::Backend::Postgres {
        let (mut removal, pid) = common::hold(
            db,
            "DELETE FROM memberships WHERE user_id = $1",
            user.id.as_str(),
        )
        .await;
        let rotating = {
            let (store, scope, old, next) =
                (store.clone(), scope.clone(), old.clone(), next.clone());
            tokio::spawn(async move { store.rotate_session(&scope, &old, &next, None).await })
        };
        common::wait_until_blocked_by(
            &mut removal,
            pid,
            "the rotation never waited for the membership",
        )
        .await;
        sqlx::query("UPDATE browser_sessions SET active_organization_id = NULL WHERE user_id = $1")
            .bind(user.id.as_str())
            .execute(&mut removal)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut removal).await.unwrap();
        let err = rotating.await.unwrap().unwrap_err();
        assert!(common::is_not_found(&err, Entity::Organization), "{err:?}");
    } else {
        // One writer at a time: the removal, then the rotation.
        store
            .remove_member(&scope, &org.id, &user.id)
            .await
            .unwrap();
        let err = store
            .rotate_session(&scope, &old, &next, None)
            .await
            .unwrap_err();
        assert!(common::is_not_found(&err, Entity::Organization), "{err:?}");
    }
    assert!(store
        .find_session(&scope, &next_cookie.hash(), now, 600_000)
        .await
        .unwrap()
        .is_none());
    let kept = store
        .find_session(&scope, &old, now, 600_000)
        .await
        .unwrap()
        .expect("the refused rotation keeps the session");
    assert_eq!(kept.active_organization_id, None, "the removal cleared it");
}
