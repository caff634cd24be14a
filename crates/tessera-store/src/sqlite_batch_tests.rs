//! SQLite's group-commit batches (`do_hot_writes`): what each write of a shared transaction gets
//! back, and what it leaves behind, when the batch mixes writes that commit, writes that fail or
//! are undone alone, and writes written together (`bulk_in`).

use tessera_domain::identity::NewSession;
use tessera_domain::records::NewDeployment;
use tessera_domain::secret::{PlainSecret, SECRET_KEY_PREFIX};
use tessera_domain::thread::ContextGroup;
use tessera_domain::ticket::{
    Binding, Issuer, SessionMode, SessionTicket, TicketGrant, TICKET_PREFIX,
};
use tessera_domain::validate::{DeploymentName, Label};
use tessera_domain::{AgentId, Scope, SecretKeyId, Timestamp};

use crate::sql_runs::{HotDone, HotWrite};
use crate::sqlite::SqliteStore;
use crate::{
    ActorStore as _, AgentStore as _, ConnectOptions, DeploymentStore as _, ExchangeOutcome,
    ExchangeTicket, IdentityStore as _, NewSecretKey, NewTicket, StoreResult, TicketStore as _,
};

/// A store in a temporary directory.
struct Fixture {
    store: SqliteStore,
    _dir: tempfile::TempDir,
}

/// A deployment with one agent.
struct Tenant {
    scope: Scope,
    agent: AgentId,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("batch.db").display());
        let store = SqliteStore::connect(&url, &ConnectOptions::default())
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        Self { store, _dir: dir }
    }

    async fn tenant(&self, name: &str) -> Tenant {
        let key = PlainSecret::generate(SECRET_KEY_PREFIX);
        let (dep, _) = self
            .store
            .create_deployment(
                &NewDeployment {
                    name: DeploymentName::parse("name", name).expect("name"),
                    backend_host: format!("http://{name}"),
                    frontend_host: format!("http://{name}-app"),
                },
                &NewSecretKey {
                    name: Label::parse("name", "first").expect("label"),
                    hash: key.hash(),
                    prefix: key.display_prefix(),
                },
            )
            .await
            .expect("deployment");
        let scope = Scope::deployment(dep.id);
        let agent = self
            .store
            .create_agent(&scope, &crate::testing::agent_spec("a", ""))
            .await
            .expect("agent")
            .id;
        Tenant { scope, agent }
    }

    /// Which writes of `batch` the store writes together (`bulk_in`), found in a transaction
    /// that is rolled back.
    async fn written_together(&self, batch: &[HotWrite]) -> Vec<bool> {
        let mut tx = self.store.begin_write().await.expect("begin");
        let together = self
            .store
            .bulk_in(&mut tx, batch)
            .await
            .expect("bulk")
            .iter()
            .map(Option::is_some)
            .collect();
        tx.rollback().await.expect("rollback");
        together
    }

    async fn batch(&self, batch: &[HotWrite]) -> Vec<StoreResult<HotDone>> {
        self.store
            .do_hot_writes(batch)
            .await
            .expect("the batch commits")
    }
}

impl Tenant {
    /// An anonymous agent_access ticket for the agent (static ones in context group `g`).
    fn ticket(&self, secret: &PlainSecret, mode: SessionMode) -> NewTicket {
        let now = Timestamp::now();
        NewTicket {
            hash: secret.hash(),
            grant: TicketGrant::AgentAccess {
                agent_ids: vec![self.agent.clone()],
                binding: Binding::Anonymous,
                context_group: (mode == SessionMode::Static)
                    .then(|| ContextGroup::parse("context_group", "g").expect("group")),
                mode,
            },
            issuer: Issuer::SecretKey(SecretKeyId::generate()),
            now,
            expires_at: now.plus_secs(60),
            client: Default::default(),
        }
    }

    /// Mints a fresh ticket with `mode` and lifetime `seconds`.
    async fn minted(&self, fixture: &Fixture, mode: SessionMode, seconds: i64) -> PlainSecret {
        let secret = PlainSecret::generate(TICKET_PREFIX);
        let mut new = self.ticket(&secret, mode);
        new.expires_at = new.now.plus_secs(seconds);
        fixture
            .store
            .create_ticket(&self.scope, &new)
            .await
            .expect("mint");
        secret
    }

    /// Exchanges of two fresh tickets that bring the same session token, so that a batch
    /// writing them together fails as a whole; with the second ticket (alone, the second
    /// exchange fails and leaves it unused).
    async fn clashing_exchanges(
        &self,
        fixture: &Fixture,
    ) -> (ExchangeTicket, ExchangeTicket, PlainSecret) {
        let (a, b) = (
            self.minted(fixture, SessionMode::Static, 60).await,
            self.minted(fixture, SessionMode::Static, 60).await,
        );
        let first = fresh_exchange(&a, 0);
        let mut second = fresh_exchange(&b, 1);
        second.session_token = first.session_token.clone();
        (first, second, b)
    }

    fn mint(&self, new: NewTicket) -> HotWrite {
        HotWrite::Ticket {
            scope: self.scope.clone(),
            new,
        }
    }

    fn exchange(&self, exchange: ExchangeTicket) -> HotWrite {
        HotWrite::Exchange {
            scope: self.scope.clone(),
            exchange,
        }
    }
}

/// An exchange of `secret` by a browser without a session cookie; `n` sets apart its time (by
/// `n` ms) and the lifetime of the browser session it creates, so that each outcome can be
/// told to be its own.
fn fresh_exchange(secret: &PlainSecret, n: i64) -> ExchangeTicket {
    let now = Timestamp::now().plus_millis(n);
    ExchangeTicket {
        hash: secret.hash(),
        now,
        browser_session: None,
        new_browser_session: NewSession {
            hash: PlainSecret::generate_ordered("tss", now).hash(),
            user_id: None,
            active_organization_id: None,
            impersonation: None,
            now,
            idle_expires_at: now.plus_secs(600),
            expires_at: now.plus_secs(3600 + n),
        },
        session_token: PlainSecret::generate_ordered("tas", now).hash(),
        session_lifetime_ms: 3_600_000,
        impersonation_ms: 1_800_000,
        anonymous_key: format!("anon-{}", SecretKeyId::generate()),
        client: Default::default(),
    }
}

/// Rows without a key in the tables whose batch statements are padded with `NULL` rows
/// (`bulk::padded`): each would be a padding row the statement failed to leave out. Today every
/// such table also has a `NOT NULL` column, so a leaked padding row fails its statement (and
/// the batch) first; this holds even for a table without one (SQLite takes a `NULL` in a
/// `TEXT PRIMARY KEY`).
async fn padding_rows_written(fixture: &Fixture) -> i64 {
    let mut found = 0;
    for (table, key) in [
        ("session_tickets", "id"),
        ("actors", "id"),
        ("browser_sessions", "id"),
        ("agent_sessions", "id"),
        ("messages", "id"),
        ("thread_events", "thread_id"),
    ] {
        let (n,): (i64,) =
            sqlx::query_as(&format!("SELECT COUNT(*) FROM {table} WHERE {key} IS NULL"))
                .fetch_one(fixture.store.reader())
                .await
                .expect("count");
        found += n;
    }
    found
}

fn outcome(done: StoreResult<HotDone>) -> ExchangeOutcome {
    done.and_then(|d| d.exchanged())
        .expect("an exchange outcome")
}

/// One group-commit batch of writes with and without savepoints: the write that is not kept
/// (a signin ticket opened by a browser nobody signed in to) is undone alone, a mint naming a
/// missing agent fails alone, and the writes before and after them, one-statement mints
/// among them, all commit.
#[tokio::test]
async fn a_batch_undoes_only_the_write_it_does_not_keep() {
    let fixture = Fixture::new().await;
    let tenant = fixture.tenant("batch").await;
    let store = &fixture.store;
    let first = fresh_exchange(&tenant.minted(&fixture, SessionMode::Static, 60).await, 0);
    let signin = tenant.minted(&fixture, SessionMode::Signin, 60).await;
    let last = fresh_exchange(&tenant.minted(&fixture, SessionMode::Static, 60).await, 1);
    let (minted_a, minted_b) = (
        PlainSecret::generate(TICKET_PREFIX),
        PlainSecret::generate(TICKET_PREFIX),
    );
    let mut orphan = tenant.ticket(&PlainSecret::generate(TICKET_PREFIX), SessionMode::Static);
    orphan.grant = TicketGrant::AgentAccess {
        agent_ids: vec![AgentId::generate()],
        binding: Binding::Anonymous,
        mode: SessionMode::Static,
        context_group: Some(ContextGroup::parse("context_group", "g").expect("group")),
    };
    // Kept, a mint, an undone write, a mint, one that fails alone (its agent does not exist),
    // and a last kept one. The mints and the two fresh static exchanges are written together
    // first; the signin exchange then runs alone in a savepoint that is rolled back.
    // The two mints differ in lifetime, so that each result can be told to be its own
    // (the batch's mints are one statement, whose rows come back in any order).
    let mint_a = tenant.ticket(&minted_a, SessionMode::Static);
    let mut mint_b = tenant.ticket(&minted_b, SessionMode::Static);
    mint_b.expires_at = mint_b.expires_at.plus_secs(60);
    let results = fixture
        .batch(&[
            tenant.exchange(first.clone()),
            tenant.mint(mint_a.clone()),
            tenant.exchange(fresh_exchange(&signin, 2)),
            tenant.mint(mint_b.clone()),
            tenant.mint(orphan),
            tenant.exchange(last.clone()),
        ])
        .await;
    let [first_done, minted_a_done, signin_done, minted_b_done, orphan_done, last_done] =
        <[_; 6]>::try_from(results).unwrap_or_else(|_| panic!("one result per write"));
    for done in [first_done, last_done] {
        assert!(matches!(outcome(done), ExchangeOutcome::Agent { .. }));
    }
    assert_eq!(outcome(signin_done), ExchangeOutcome::SigninRequired);
    for (done, new) in [(minted_a_done, &mint_a), (minted_b_done, &mint_b)] {
        assert_eq!(
            done.and_then(|d| d.ticket()).expect("minted").expires_at,
            new.expires_at,
            "each mint gets its own ticket back"
        );
    }
    assert!(
        matches!(orphan_done, Err(crate::StoreError::NotFound { .. })),
        "a mint naming a missing agent fails alone"
    );

    let scope = &tenant.scope;
    for ex in [&first, &last] {
        assert!(
            store
                .agent_session_by_token(scope, &ex.session_token, Timestamp::now())
                .await
                .expect("read")
                .is_some(),
            "an exchange around the undone one was committed"
        );
    }
    assert_eq!(
        store
            .exchange_ticket(scope, &fresh_exchange(&signin, 3))
            .await
            .expect("exchange"),
        ExchangeOutcome::SigninRequired,
        "the undone redemption left the ticket usable"
    );
    for minted in [&minted_a, &minted_b] {
        assert!(
            matches!(
                store
                    .exchange_ticket(scope, &fresh_exchange(minted, 4))
                    .await,
                Ok(ExchangeOutcome::Agent { .. })
            ),
            "the mints around the undone write were committed"
        );
    }
    assert!(
        matches!(
            store.exchange_ticket(scope, &first).await,
            Ok(ExchangeOutcome::Invalid { .. })
        ),
        "the first exchange's redemption was committed"
    );
    assert_eq!(padding_rows_written(&fixture).await, 0);
    store.close_pools().await;
}

/// The exchanges a batch writes together (fresh browsers, static anonymous tickets) each get
/// their own ticket, actor, browser session and agent session, exactly as written alone; and
/// the batch's other exchanges keep their own outcomes: a ticket presented again later in the
/// same batch is a replay that revokes what the first presentation opened, and unknown, expired,
/// signin and other deployments' tickets are refused as alone, leaving the tickets as they were.
#[tokio::test]
async fn fresh_exchanges_written_together_each_get_their_own_session() {
    let fixture = Fixture::new().await;
    let tenant = fixture.tenant("together").await;
    let other = fixture.tenant("other").await;
    let store = &fixture.store;
    let scope = &tenant.scope;
    // Minted together (one statement), in the form the server mints them.
    let tickets: Vec<_> = (0..3)
        .map(|_| PlainSecret::generate_ordered(TICKET_PREFIX, Timestamp::now()))
        .collect();
    let mints: Vec<_> = tickets
        .iter()
        .map(|secret| tenant.mint(tenant.ticket(secret, SessionMode::Static)))
        .collect();
    let minted: Vec<SessionTicket> = fixture
        .batch(&mints)
        .await
        .into_iter()
        .map(|done| done.and_then(|d| d.ticket()).expect("minted"))
        .collect();
    let expired = tenant.minted(&fixture, SessionMode::Static, 1).await;
    let signin = tenant.minted(&fixture, SessionMode::Signin, 60).await;
    let foreign = other.minted(&fixture, SessionMode::Static, 60).await;
    let unknown = PlainSecret::generate(TICKET_PREFIX);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    let opened: Vec<_> = (0..3)
        .map(|n| fresh_exchange(&tickets[n], n as i64))
        .collect();
    let replay = fresh_exchange(&tickets[1], 10);
    let batch = [
        tenant.exchange(opened[0].clone()),
        tenant.exchange(fresh_exchange(&unknown, 11)),
        tenant.exchange(opened[1].clone()),
        tenant.exchange(fresh_exchange(&expired, 12)),
        tenant.exchange(replay),
        tenant.exchange(fresh_exchange(&signin, 13)),
        tenant.exchange(fresh_exchange(&foreign, 14)),
        tenant.exchange(opened[2].clone()),
    ];
    // Only the three first presentations of live static tickets from fresh browsers are
    // written together; the others go one by one after them.
    let together = fixture.written_together(&batch).await;
    assert_eq!(
        together,
        [true, false, true, false, false, false, false, true]
    );
    let results = fixture.batch(&batch).await;
    let outcomes: Vec<_> = results.into_iter().map(outcome).collect();
    let [first, unknown_done, second, expired_done, replay_done, signin_done, foreign_done, third] =
        <[_; 8]>::try_from(outcomes).unwrap_or_else(|_| panic!("one result per write"));
    let mut actors = std::collections::HashSet::new();
    for (n, outcome) in [first, second, third].into_iter().enumerate() {
        let ex = &opened[n];
        let ExchangeOutcome::Agent {
            ticket,
            session,
            browser,
            browser_created,
            actor,
            agents,
        } = outcome
        else {
            panic!("exchange {n} opened no session: {outcome:?}");
        };
        assert!(browser_created);
        assert_eq!(
            ticket.redeemed_at,
            Some(ex.now),
            "exchange {n}'s own ticket"
        );
        // The mint and the exchange answer what they wrote (neither reads its rows back): the
        // ticket as the exchange read it is the minted one, and the sessions are as stored.
        assert_eq!(
            ticket,
            SessionTicket {
                redeemed_at: Some(ex.now),
                ..minted[n].clone()
            },
            "exchange {n}'s ticket as minted"
        );
        assert_eq!(
            browser.expires_at, ex.new_browser_session.expires_at,
            "exchange {n}'s own browser session"
        );
        assert_eq!(
            session.expires_at,
            ex.now.plus_millis(ex.session_lifetime_ms)
        );
        assert_eq!(session.ticket_id, ticket.id);
        assert_eq!(session.context_group.as_str(), "g");
        assert_eq!(session.agent_ids, vec![tenant.agent.clone()]);
        assert_eq!(
            actor,
            store
                .get_actor(scope, &session.actor_id)
                .await
                .expect("actor"),
            "exchange {n}'s actor as stored"
        );
        assert_eq!(
            agents,
            [store.get_agent(scope, &tenant.agent).await.expect("agent")],
            "exchange {n}'s agents as stored"
        );
        assert_eq!(
            (actor.subject_type.as_str(), actor.external_key.as_str()),
            ("anonymous", ex.anonymous_key.as_str())
        );
        assert!(actors.insert(actor.id), "each exchange has its own actor");
        let found = store
            .find_session(
                scope,
                &ex.new_browser_session.hash,
                Timestamp::now(),
                600_000,
            )
            .await
            .expect("read");
        assert_eq!(
            found.as_ref(),
            Some(&browser),
            "exchange {n}'s browser session under its cookie, as stored"
        );
        let by_token = store
            .agent_session_by_token(scope, &ex.session_token, Timestamp::now())
            .await
            .expect("read");
        // The second was replayed later in the batch: its session is revoked.
        assert_eq!(
            by_token.as_ref(),
            (n != 1).then_some(&session),
            "exchange {n}'s agent session, as stored"
        );
    }

    assert_eq!(
        unknown_done,
        ExchangeOutcome::Invalid { replayed: None },
        "unknown"
    );
    assert_eq!(
        expired_done,
        ExchangeOutcome::Invalid { replayed: None },
        "expired"
    );
    match &replay_done {
        ExchangeOutcome::Invalid {
            replayed: Some(ticket),
        } => assert_eq!(
            ticket.redeemed_at,
            Some(opened[1].now),
            "the replay names the ticket redeemed earlier in the batch"
        ),
        other => panic!("the replay: {other:?}"),
    }
    assert_eq!(signin_done, ExchangeOutcome::SigninRequired, "signin");
    assert_eq!(
        foreign_done,
        ExchangeOutcome::Invalid { replayed: None },
        "another deployment's ticket"
    );

    assert_eq!(
        store
            .exchange_ticket(scope, &fresh_exchange(&signin, 20))
            .await
            .expect("exchange"),
        ExchangeOutcome::SigninRequired,
        "the signin ticket is still unused"
    );
    assert!(
        matches!(
            store
                .exchange_ticket(&other.scope, &fresh_exchange(&foreign, 21))
                .await,
            Ok(ExchangeOutcome::Agent { .. })
        ),
        "another deployment's ticket still opens a session there"
    );
    assert_eq!(padding_rows_written(&fixture).await, 0);
    store.close_pools().await;
}

/// What a batch does not write together stays alone: an exchange by a browser that has a
/// session (it replaces that session's agent session). What it writes together leaves out a
/// deleted agent, keeping the ticket's order of the others.
#[tokio::test]
async fn a_batch_keeps_cookie_exchanges_alone_and_leaves_out_deleted_agents() {
    let fixture = Fixture::new().await;
    let tenant = fixture.tenant("apart").await;
    let store = &fixture.store;
    let scope = &tenant.scope;
    let (gone, kept) = (
        store
            .create_agent(scope, &crate::testing::agent_spec("gone", ""))
            .await
            .expect("agent")
            .id,
        store
            .create_agent(scope, &crate::testing::agent_spec("kept", ""))
            .await
            .expect("agent")
            .id,
    );
    let several = PlainSecret::generate(TICKET_PREFIX);
    let mut new = tenant.ticket(&several, SessionMode::Static);
    new.grant = TicketGrant::AgentAccess {
        agent_ids: vec![kept.clone(), gone.clone(), tenant.agent.clone()],
        binding: Binding::Anonymous,
        mode: SessionMode::Static,
        context_group: Some(ContextGroup::parse("context_group", "g").expect("group")),
    };
    store.create_ticket(scope, &new).await.expect("mint");
    store.delete_agent(scope, &gone).await.expect("delete");

    // A browser that already has a session and an agent session.
    let cookie = PlainSecret::generate("tss");
    let mut first = fresh_exchange(&tenant.minted(&fixture, SessionMode::Static, 60).await, 0);
    let had = store
        .create_session(
            scope,
            &NewSession {
                hash: cookie.hash(),
                ..first.new_browser_session.clone()
            },
        )
        .await
        .expect("browser session");
    first.browser_session = Some(cookie.hash());
    let ExchangeOutcome::Agent { session: older, .. } = store
        .exchange_ticket(scope, &first)
        .await
        .expect("exchange")
    else {
        panic!("the first exchange opens a session");
    };
    let mut again = fresh_exchange(&tenant.minted(&fixture, SessionMode::Static, 60).await, 1);
    again.browser_session = Some(cookie.hash());

    let batch = [
        tenant.exchange(again.clone()),
        tenant.exchange(fresh_exchange(&several, 2)),
    ];
    let together = fixture.written_together(&batch).await;
    assert_eq!(
        together,
        [false, true],
        "the browser with a session goes alone"
    );

    let results = fixture.batch(&batch).await;
    let [with_cookie, with_several] =
        <[_; 2]>::try_from(results).unwrap_or_else(|_| panic!("one result per write"));
    let again_ticket = match outcome(with_cookie) {
        ExchangeOutcome::Agent {
            ticket,
            browser,
            browser_created,
            ..
        } => {
            assert!(!browser_created);
            assert_eq!(browser.id, had.id, "the browser keeps its session");
            ticket.id
        }
        other => panic!("the cookie exchange: {other:?}"),
    };
    assert_eq!(
        store
            .active_agent_session(scope, &had.id, Timestamp::now())
            .await
            .expect("read")
            .map(|s| s.ticket_id),
        Some(again_ticket),
        "the browser's agent session is the new one"
    );
    assert!(
        store
            .agent_session_by_token(scope, &first.session_token, Timestamp::now())
            .await
            .expect("read")
            .is_none(),
        "the browser's older agent session {} was replaced",
        older.id
    );
    let ExchangeOutcome::Agent { agents, .. } = outcome(with_several) else {
        panic!("the exchange of the ticket with several agents opens a session");
    };
    let ids: Vec<_> = agents.into_iter().map(|a| a.id).collect();
    assert_eq!(
        ids,
        [kept, tenant.agent.clone()],
        "the live agents in the ticket's order"
    );
    store.close_pools().await;
}

/// A statement of the writes written together fails (two exchanges bringing the same session
/// token): the whole batch fails and nothing of it is written; retried one by one, the first
/// exchange opens its session, the second fails alone and leaves its ticket unused.
#[tokio::test]
async fn a_failing_statement_written_together_fails_the_batch_then_each_write_alone() {
    let fixture = Fixture::new().await;
    let tenant = fixture.tenant("retry").await;
    let store = &fixture.store;
    let scope = &tenant.scope;
    let (first, second, b) = tenant.clashing_exchanges(&fixture).await;
    let batch = [
        tenant.exchange(first.clone()),
        tenant.exchange(second.clone()),
    ];
    assert!(
        store.do_hot_writes(&batch).await.is_err(),
        "the shared transaction fails as a whole"
    );
    let [first_done, second_done] = <[_; 2]>::try_from(store.do_hot_writes_isolated(&batch).await)
        .unwrap_or_else(|_| panic!("one result per write"));
    assert!(matches!(outcome(first_done), ExchangeOutcome::Agent { .. }));
    match second_done {
        Err(crate::StoreError::Database(_)) => {}
        Err(other) => panic!("the second fails alone, as a database error: {other:?}"),
        Ok(_) => panic!("the second exchange reused a session token and succeeded"),
    }
    assert!(
        matches!(
            store.exchange_ticket(scope, &fresh_exchange(&b, 2)).await,
            Ok(ExchangeOutcome::Agent { .. })
        ),
        "the failed exchange left its ticket unused"
    );
    store.close_pools().await;
}

/// Mints written together (`insert_tickets`) record the audit event an impersonation ticket's
/// mint calls for, in the batch's transaction, once per impersonation ticket and for nothing
/// else.
#[tokio::test]
async fn impersonation_mints_written_together_are_audited() {
    let fixture = Fixture::new().await;
    let tenant = fixture.tenant("audit").await;
    let store = &fixture.store;
    let scope = &tenant.scope;
    let user = store
        .create_user(
            scope,
            &tessera_domain::identity::NewUser {
                email: tessera_domain::identity::Email::parse("email", "ada@example.com")
                    .expect("email"),
                first_name: None,
                last_name: None,
                password_hash: None,
                metadata: tessera_domain::validate::Metadata::empty(),
            },
            &tessera_domain::identity::AuditBy {
                actor: tessera_domain::identity::AuditActor::Operator,
                client: Default::default(),
            },
        )
        .await
        .expect("user");
    let impersonation = || {
        let mut new = tenant.ticket(&PlainSecret::generate(TICKET_PREFIX), SessionMode::Static);
        new.grant = TicketGrant::Impersonation {
            user_id: user.id.clone(),
        };
        new.client = tessera_domain::identity::AuditClient {
            ip: Some("203.0.113.9".into()),
            user_agent: None,
        };
        new
    };
    let batch = [
        tenant.mint(impersonation()),
        tenant.mint(tenant.ticket(&PlainSecret::generate(TICKET_PREFIX), SessionMode::Static)),
        tenant.mint(impersonation()),
    ];
    assert_eq!(
        fixture.written_together(&batch).await,
        [true, true, true],
        "the mints are one statement"
    );
    let minted: Vec<_> = fixture
        .batch(&batch)
        .await
        .into_iter()
        .map(|done| done.and_then(HotDone::ticket).expect("minted"))
        .collect();
    let created = || async {
        store
            .list_audit_events(
                scope,
                &crate::AuditFilter {
                    kind: Some("session_ticket.created".into()),
                },
                &crate::PageRequest::default(),
            )
            .await
            .expect("audit log")
            .items
    };
    let events = created().await;
    let mut subjects: Vec<_> = events.iter().map(|e| e.subject_id.clone()).collect();
    subjects.sort();
    let mut expected = vec![
        Some(minted[0].id.as_str().to_owned()),
        Some(minted[2].id.as_str().to_owned()),
    ];
    expected.sort();
    assert_eq!(subjects, expected, "one event per impersonation ticket");
    assert!(events.iter().all(
        |e| e.ip.as_deref() == Some("203.0.113.9") && e.data["ticket_type"] == "impersonation"
    ));

    // A batch whose shared transaction fails (two exchanges bringing one session token) keeps
    // nothing of its mint's event; retried write by write, the mint records it once.
    let (first, second, _) = tenant.clashing_exchanges(&fixture).await;
    let batch = [
        tenant.exchange(first),
        tenant.mint(impersonation()),
        tenant.exchange(second),
    ];
    assert!(store.do_hot_writes(&batch).await.is_err());
    assert_eq!(
        created().await.len(),
        2,
        "the failed batch recorded nothing"
    );
    let retried = store.do_hot_writes_isolated(&batch).await;
    let again = retried
        .into_iter()
        .nth(1)
        .expect("the mint's result")
        .and_then(HotDone::ticket)
        .expect("minted alone");
    let events = created().await;
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2].subject_id.as_deref(),
        Some(again.id.as_str()),
        "the retried mint recorded its event once"
    );
    store.close_pools().await;
}

/// One of [`runs_ended_together_get_what_each_gets_ended_alone`]'s threads: a run started on it
/// for a worker, and the worker's lease.
struct Started {
    thread: tessera_domain::ThreadId,
    run: tessera_domain::RunId,
    lease: crate::Lease,
}

impl Tenant {
    /// A thread (of a fresh actor and project) whose run was started for a worker.
    async fn started(&self, fixture: &Fixture, title: &str) -> Started {
        use crate::{ProjectStore as _, RunStore as _, ThreadStore as _};
        use tessera_domain::records::{NewActor, NewProject};
        use tessera_domain::validate::{ExternalKey, Metadata, SubjectType};
        let store = &fixture.store;
        let actor = store
            .create_actor(
                &self.scope,
                &NewActor {
                    subject_type: SubjectType::parse("subject_type", "user").expect("type"),
                    external_key: ExternalKey::parse("external_key", title).expect("key"),
                    display_name: None,
                    metadata: Metadata::parse("metadata", serde_json::json!({})).expect("meta"),
                },
            )
            .await
            .expect("actor");
        let project = store
            .create_project(
                &self.scope,
                &NewProject {
                    actor_id: actor.id,
                    agent_id: self.agent.clone(),
                    name: Label::parse("name", title).expect("label"),
                },
            )
            .await
            .expect("project");
        let thread = store
            .create_thread(
                &self.scope,
                &tessera_domain::thread::NewThread {
                    project_id: project.id,
                    title: Label::parse("title", title).expect("title"),
                    system_instructions: None,
                    purpose: tessera_domain::thread::ThreadPurpose::Conversation,
                    capability_tags: vec![],
                    context_group: None,
                },
            )
            .await
            .expect("thread")
            .id;
        let run = tessera_domain::RunId::generate();
        let submit = crate::SubmitRun {
            message: crate::testing::message(
                &thread,
                &run,
                tessera_domain::thread::Role::User,
                "go",
            ),
            run_id: run.clone(),
            policy: None,
            idempotency: None,
            new_thread: None,
            refuse_hidden: false,
            variables: Default::default(),
            start: Some(crate::StartHere {
                owner: "worker".to_owned(),
                lease_ms: 60_000,
            }),
        };
        match store
            .submit_run(&self.scope, &thread, &submit)
            .await
            .expect("submit")
        {
            crate::SubmitOutcome::Created {
                started: Some(started),
                ..
            } => Started {
                thread,
                run,
                lease: started.lease,
            },
            other => panic!("the run was not started here: {other:?}"),
        }
    }
}

/// A step of `texts` (assistant messages, step keys `k0`, `k1`, …) for `started`'s run.
fn step_of(started: &Started, texts: &[&str]) -> Vec<crate::StepMessage> {
    use tessera_domain::event;
    texts
        .iter()
        .enumerate()
        .map(|(k, text)| {
            let m = tessera_domain::thread::Message {
                // A usage, so that the messages' JSON columns are all written.
                usage: Some(tessera_domain::thread::TokenUsage {
                    prompt_tokens: 7,
                    completion_tokens: 3,
                }),
                ..crate::testing::message(
                    &started.thread,
                    &started.run,
                    tessera_domain::thread::Role::Assistant,
                    text,
                )
            };
            crate::StepMessage {
                event: event::message_event(event::MESSAGE_COMPLETED, &m),
                message: m,
                step_key: format!("k{k}"),
            }
        })
        .collect()
}

fn run_end(
    status: tessera_domain::thread::RunStatus,
    stop: tessera_domain::thread::StopReason,
    error: Option<&str>,
    n: u32,
) -> crate::RunEnd {
    crate::RunEnd {
        status,
        stop_reason: stop,
        error: error.map(str::to_owned),
        usage: tessera_domain::thread::RunUsage {
            prompt_tokens: 100 + u64::from(n),
            completion_tokens: 10 + u64::from(n),
            iterations: n,
            tool_calls: n * 2,
            wall_ms: 0,
        },
    }
}

/// What a run end's result and what it left behind look like, without the ids and times that
/// differ between two tenants: the result (the run's fields, each event's number, kind and
/// text), the run as stored, the thread's status and every event and message text on it.
async fn ended_shape(
    fixture: &Fixture,
    tenant: &Tenant,
    started: &Started,
    result: StoreResult<HotDone>,
) -> String {
    use crate::{RunStore as _, ThreadStore as _};
    let store = &fixture.store;
    let event_shape = |e: &crate::ThreadEvent| {
        format!(
            "{}:{}:{}:{}",
            e.seq,
            e.kind,
            e.run_id.as_ref() == Some(&started.run),
            e.data
                .pointer("/message/content")
                .or_else(|| e.data.get("status"))
                .cloned()
                .unwrap_or_default()
        )
    };
    let run_shape = |r: &tessera_domain::thread::Run| {
        format!(
            "{}/{:?}/{:?}/{}/{}/{}/{}/{}/{}",
            r.status.as_str(),
            r.stop_reason,
            r.error,
            r.attempt,
            r.usage.prompt_tokens,
            r.usage.completion_tokens,
            r.usage.iterations,
            r.usage.tool_calls,
            r.finished_at.is_some()
        )
    };
    let result = match result.and_then(|done| done.finished()) {
        Ok((run, events)) => {
            assert_eq!(run.id, started.run);
            let stored = store
                .events_after(&tenant.scope, &started.thread, events[0].seq - 1, 100)
                .await
                .expect("events");
            assert_eq!(stored, events, "the events returned are the events stored");
            format!(
                "ended {} [{}]",
                run_shape(&run),
                events
                    .iter()
                    .map(event_shape)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Err(err) => format!("failed: {err}"),
    };
    let run = store
        .get_run(&tenant.scope, &started.thread, &started.run)
        .await
        .expect("run");
    let thread = store
        .get_thread(&tenant.scope, &started.thread)
        .await
        .expect("thread");
    let events = store
        .events_after(&tenant.scope, &started.thread, 0, 100)
        .await
        .expect("events");
    let history = store
        .thread_history(&tenant.scope, &started.thread)
        .await
        .expect("history");
    format!(
        "{result}\nstored: {} thread {:?}\nevents: {}\nmessages: {:?}",
        run_shape(&run),
        thread.status,
        events
            .iter()
            .map(event_shape)
            .collect::<Vec<_>>()
            .join(", "),
        history.iter().map(|m| &m.content).collect::<Vec<_>>()
    )
}

/// Run ends written together (`finish_together`) answer and store exactly what writing each
/// alone, one after the other, does: ends of several threads with steps of one and two
/// messages (one text holding a NUL character), an end whose step was partly stored before (a
/// retried step), an end with no step, one whose lease was taken over, one with a step too long
/// to go together, and second ends of runs ended earlier in the batch, together or alone (the
/// last three are written alone, in batch order). Five ends go together: every padded
/// statement gets padding rows.
#[tokio::test]
async fn runs_ended_together_get_what_each_gets_ended_alone() {
    use crate::RunStore as _;
    use tessera_domain::thread::{RunStatus, StopReason};
    let fixture = Fixture::new().await;
    let mut shapes = Vec::new();
    for (name, together) in [("together", true), ("alone", false)] {
        let tenant = fixture.tenant(name).await;
        let mut threads = Vec::new();
        for t in 0..6 {
            threads.push(tenant.started(&fixture, &format!("t{t}")).await);
        }
        // A retried step: its first message was stored by the step before.
        let retried = step_of(&threads[1], &["first", "second"]);
        fixture
            .store
            .record_step(&threads[1].lease, &retried[..1])
            .await
            .expect("the first message");
        let lost = crate::Lease {
            attempt: threads[2].lease.attempt + 1,
            ..threads[2].lease.clone()
        };
        let long: Vec<String> = (0..=crate::sql_runs::FINISH_TOGETHER_MAX_STEP)
            .map(|k| format!("long {k}"))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let completed = |n| run_end(RunStatus::Completed, StopReason::Completed, None, n);
        let jobs = vec![
            HotWrite::Finish {
                lease: threads[0].lease.clone(),
                step: step_of(&threads[0], &["reply"]),
                end: completed(1),
            },
            HotWrite::Finish {
                lease: threads[1].lease.clone(),
                step: retried,
                end: completed(2),
            },
            HotWrite::Finish {
                lease: lost,
                step: step_of(&threads[2], &["never"]),
                end: completed(3),
            },
            HotWrite::Finish {
                lease: threads[3].lease.clone(),
                step: vec![],
                end: run_end(
                    RunStatus::Failed,
                    StopReason::ModelError,
                    Some("model: 500"),
                    4,
                ),
            },
            HotWrite::Finish {
                lease: threads[4].lease.clone(),
                step: step_of(&threads[4], &long),
                end: completed(5),
            },
            HotWrite::Finish {
                lease: threads[5].lease.clone(),
                step: step_of(&threads[5], &["re\u{0}ply"]),
                end: completed(6),
            },
            HotWrite::Finish {
                lease: threads[0].lease.clone(),
                step: step_of(&threads[0], &["again"]),
                end: completed(7),
            },
            // After the long end of the same run, which it must not overtake.
            HotWrite::Finish {
                lease: threads[4].lease.clone(),
                step: step_of(&threads[4], &["short"]),
                end: completed(8),
            },
        ];
        let results = if together {
            assert_eq!(
                fixture.written_together(&jobs).await,
                [true, true, true, true, false, true, false, false],
                "which ends go together"
            );
            fixture.batch(&jobs).await
        } else {
            let mut results = Vec::new();
            for job in &jobs {
                results.extend(fixture.batch(std::slice::from_ref(job)).await);
            }
            results
        };
        assert_eq!(results.len(), jobs.len());
        let mut shape = Vec::new();
        // The thread each end is on.
        let on = [0, 1, 2, 3, 4, 5, 0, 4];
        for (result, t) in results.into_iter().zip(on) {
            shape.push(ended_shape(&fixture, &tenant, &threads[t], result).await);
        }
        shapes.push(shape);
    }
    let (together, alone) = (&shapes[0], &shapes[1]);
    for (k, (t, a)) in together.iter().zip(alone).enumerate() {
        assert_eq!(t, a, "end {k}: together (left) and alone (right) differ");
    }
    // What the comparison rests on, spelled out once.
    assert!(
        together[0].starts_with("ended completed/"),
        "{}",
        together[0]
    );
    assert!(together[0].contains("thread Idle"), "{}", together[0]);
    assert!(together[0].contains(":\"reply\""), "{}", together[0]);
    assert!(
        together[1].contains("messages: [\"go\", \"first\", \"second\"]"),
        "{}",
        together[1]
    );
    assert!(together[2].starts_with("failed: "), "{}", together[2]);
    assert!(together[2].contains("stored: running/"), "{}", together[2]);
    assert!(together[3].contains("model: 500"), "{}", together[3]);
    assert!(
        together[4].starts_with("ended completed/"),
        "{}",
        together[4]
    );
    assert!(together[5].contains("\"re\\0ply\""), "{}", together[5]);
    assert!(together[6].starts_with("failed: "), "{}", together[6]);
    assert!(!together[6].contains("again"), "{}", together[6]);
    assert!(together[7].starts_with("failed: "), "{}", together[7]);
    assert!(!together[7].contains("short"), "{}", together[7]);
    assert_eq!(padding_rows_written(&fixture).await, 0);
}
