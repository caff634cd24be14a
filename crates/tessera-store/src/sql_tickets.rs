//! SQL for session tickets, agent sessions, named sessions, the conversations (threads) of an
//! agent session's partition, and console administrators; shared by both backends like
//! `sql.rs`.
//!
//! The exchange is one write transaction whose first statement is the conditional UPDATE that
//! redeems the ticket (`… WHERE hash = $1 AND redeemed_at IS NULL AND expires_at > $now`): of any
//! number of concurrent exchanges exactly one updates the row (SQLite serialises writers;
//! PostgreSQL re-checks the condition after the row lock is released, finding it redeemed). The
//! hot writes (minting, exchanging) go through `write_hot` (SQLite runs them on its writer
//! thread, a batch of concurrent ones in one transaction). A batch's fresh exchanges
//! (`exchange_fresh`) read their tickets first and then redeem them with the same conditional
//! UPDATE, by id: SQLite's transaction is the only writer from its `BEGIN IMMEDIATE` on, so
//! what the read saw still holds.

/// Columns of a ticket row.
pub(crate) const TICKET_COLS: &str =
    "id, grant_json, issuer_type, issuer_id, created_at, expires_at, redeemed_at";
/// Columns of an agent session row.
pub(crate) const AGENT_SESSION_COLS: &str = "id, ticket_id, actor_id, agent_ids, context_group, \
     session_name, created_at, expires_at";

macro_rules! impl_ticket_sql {
    ($store:ident, $db:ty) => {
    /// Session-ticket SQL, instantiated for this backend.
    mod ticket_sql {
        #[allow(unused_imports)]
        use super::*;
        use super::identity_sql::{
            insert_audit, insert_session, push_session_row, session_from_row, user_from_row,
            NEW_SESSION_COLS,
        };
        use super::shared_sql::{actor_from_row, agent_from_row, finish_page, push_page};
        use sqlx::Row as _;
        use tessera_domain::identity::{
            AuditActor, AuditClient, AuditKind, BrowserSession, NewAuditEvent, NewSession,
        };
        use tessera_domain::records::Actor;
        use tessera_domain::password::PasswordHash;
        use tessera_domain::secret::SecretHash;
        use tessera_domain::ticket::{
            AgentSession, AppKind, Binding, ConsoleAdmin, Issuer, SessionMode, SessionTicket,
            TicketGrant,
        };
        use tessera_domain::thread::{ContextGroup, Thread};
        use tessera_domain::validate::Label;
        use tessera_domain::{
            ActorId, AdminId, AgentId, AgentSessionId, ProjectId, Scope, SecretKeyId, SessionId,
            ThreadId, TicketId, Timestamp, UserId,
        };
        use $crate::sql::corrupt;
        use $crate::sql::{ACTOR_COLS, AGENT_COLS};
        use $crate::sql_identity::USER_COLS;
        use $crate::sql_runs::THREAD_COLS;
        use super::run_sql::{id, thread_from_row};
        use $crate::sql_tickets::{AGENT_SESSION_COLS, TICKET_COLS};
        use $crate::{
            Conflict, Entity, ExchangeOutcome, ExchangeTicket, NewTicket, Page, PageRequest,
            StoreError, StoreResult,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn ticket_from_row(row: &DbRow) -> StoreResult<SessionTicket> {
            let grant: String = row.try_get("grant_json")?;
            let issuer_type: String = row.try_get("issuer_type")?;
            let issuer_id: String = row.try_get("issuer_id")?;
            let issuer = match issuer_type.as_str() {
                "secret_key" => Issuer::SecretKey(id(issuer_id, SecretKeyId::parse)?),
                "console_admin" => Issuer::ConsoleAdmin(id(issuer_id, AdminId::parse)?),
                other => return Err(corrupt("ticket issuer", other)),
            };
            Ok(SessionTicket {
                id: id(row.try_get("id")?, TicketId::parse)?,
                grant: serde_json::from_str(&grant).map_err(|e| corrupt("ticket grant", e))?,
                issuer,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
                redeemed_at: row
                    .try_get::<Option<i64>, _>("redeemed_at")?
                    .map(Timestamp::from_millis),
            })
        }

        fn agent_session_from_row(row: &DbRow) -> StoreResult<AgentSession> {
            let agents: String = row.try_get("agent_ids")?;
            let group: String = row.try_get("context_group")?;
            Ok(AgentSession {
                id: id(row.try_get("id")?, AgentSessionId::parse)?,
                ticket_id: id(row.try_get("ticket_id")?, TicketId::parse)?,
                actor_id: id(row.try_get("actor_id")?, ActorId::parse)?,
                agent_ids: serde_json::from_str(&agents)
                    .map_err(|e| corrupt("agent session agents", e))?,
                context_group: ContextGroup::parse("context_group", group)
                    .map_err(|e| corrupt("agent session context group", e))?,
                session_name: row.try_get("session_name")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
            })
        }

        fn admin_from_row(row: &DbRow) -> StoreResult<ConsoleAdmin> {
            Ok(ConsoleAdmin {
                id: id(row.try_get("id")?, AdminId::parse)?,
                username: row.try_get("username")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        /// The actor `(subject_type, external_key)`, created when missing. Safe under
        /// concurrency: the insert yields to an existing row, which is then read.
        async fn find_or_create_actor(
            conn: &mut Conn,
            deployment: &str,
            subject_type: &str,
            external_key: &str,
            now: Timestamp,
        ) -> StoreResult<Actor> {
            sqlx::query(
                "INSERT INTO actors
                   (id, deployment_id, subject_type, external_key, display_name, metadata, created_at)
                 VALUES ($1, $2, $3, $4, NULL, '{}', $5)
                 ON CONFLICT (deployment_id, subject_type, external_key) DO NOTHING",
            )
            .bind(ActorId::generate_at(now).into_string())
            .bind(deployment)
            .bind(subject_type)
            .bind(external_key)
            .bind(now.as_millis())
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query(&format!(
                "SELECT {ACTOR_COLS} FROM actors
                 WHERE deployment_id = $1 AND subject_type = $2 AND external_key = $3"
            ))
            .bind(deployment)
            .bind(subject_type)
            .bind(external_key)
            .fetch_one(&mut *conn)
            .await?;
            actor_from_row(&row)
        }

        /// A user that may be acted for: present ([`Entity::User`]) and enabled.
        async fn usable_user(
            conn: &mut Conn,
            deployment: &str,
            user: &UserId,
        ) -> StoreResult<tessera_domain::identity::User> {
            let row = sqlx::query(&format!(
                "SELECT {USER_COLS} FROM users WHERE id = $1 AND deployment_id = $2"
            ))
            .bind(user.as_str())
            .bind(deployment)
            .fetch_optional(&mut *conn)
            .await?
            .ok_or(StoreError::not_found_at(Entity::User, "user_id"))?;
            let user = user_from_row(&row)?;
            if user.disabled {
                return Err(StoreError::Conflict(Conflict::UserDisabled));
            }
            Ok(user)
        }

        /// The actor a ticket's binding names (anonymous tickets create one).
        async fn bound_actor(
            conn: &mut Conn,
            deployment: &str,
            binding: &Binding,
            anonymous_key: &str,
            now: Timestamp,
        ) -> StoreResult<Actor> {
            match binding {
                Binding::Anonymous => {
                    // The key is fresh (a time-ordered id body with 80 random bits per
                    // exchange): a plain insert, no lookup of an existing actor.
                    let row = sqlx::query(&format!(
                        "INSERT INTO actors
                           (id, deployment_id, subject_type, external_key, display_name, metadata, created_at)
                         VALUES ($1, $2, 'anonymous', $3, NULL, '{{}}', $4)
                         RETURNING {ACTOR_COLS}"
                    ))
                    .bind(ActorId::generate_at(now).into_string())
                    .bind(deployment)
                    .bind(anonymous_key)
                    .bind(now.as_millis())
                    .fetch_one(&mut *conn)
                    .await?;
                    actor_from_row(&row)
                }
                Binding::Actor(actor) => {
                    let found = session_actor(conn, deployment, actor).await?;
                    found.ok_or_else(|| StoreError::not_found_at(Entity::Actor, "actor_id"))
                }
                Binding::User(user) => {
                    usable_user(conn, deployment, user).await?;
                    find_or_create_actor(conn, deployment, "user", user.as_str(), now).await
                }
            }
        }

        /// Ends what a replayed ticket opened: its agent sessions and its (impersonation)
        /// browser session.
        async fn revoke_replayed(
            conn: &mut Conn,
            deployment: &str,
            ticket: &TicketId,
            now: Timestamp,
        ) -> StoreResult<()> {
            sqlx::query(
                "UPDATE agent_sessions SET ended_at = $1, end_reason = 'ticket_replayed'
                 WHERE ticket_id = $2 AND deployment_id = $3 AND ended_at IS NULL",
            )
            .bind(now.as_millis())
            .bind(ticket.as_str())
            .bind(deployment)
            .execute(&mut *conn)
            .await?;
            sqlx::query("DELETE FROM browser_sessions WHERE ticket_id = $1 AND deployment_id = $2")
                .bind(ticket.as_str())
                .bind(deployment)
                .execute(&mut *conn)
                .await?;
            sqlx::query("UPDATE session_tickets SET replayed_at = $1 WHERE id = $2")
                .bind(now.as_millis())
                .bind(ticket.as_str())
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        /// The audit event of an impersonation ticket's mint, in the mint's transaction
        /// (other tickets record none).
        async fn record_minted(
            conn: &mut Conn,
            scope: &Scope,
            ticket: &SessionTicket,
            client: &AuditClient,
        ) -> StoreResult<()> {
            let ticket_type = ticket.grant.ticket_type();
            if ticket_type != tessera_domain::ticket::TicketType::Impersonation {
                return Ok(());
            }
            let event = NewAuditEvent::new(
                AuditKind::TicketCreated,
                AuditActor::from(&ticket.issuer),
                Some(ticket.id.as_str().to_owned()),
                client.clone(),
                serde_json::json!({
                    "ticket_type": ticket_type.as_str(),
                    "expires_at": ticket.expires_at.as_secs(),
                }),
            );
            insert_audit(conn, scope, &event, ticket.created_at).await?;
            Ok(())
        }

        /// Appends the partition condition of an agent session to a query whose WHERE clause is
        /// open (over `threads`).
        fn push_partition<'q>(
            qb: &mut sqlx::QueryBuilder<'q, $db>,
            scope: &Scope,
            session: &AgentSession,
        ) {
            qb.push(" deployment_id = ")
                .push_bind(scope.deployment_id().as_str().to_owned());
            qb.push(" AND actor_id = ")
                .push_bind(session.actor_id.as_str().to_owned());
            qb.push(" AND context_group = ")
                .push_bind(session.context_group.as_str().to_owned());
            qb.push(" AND purpose = 'conversation' AND hidden_at IS NULL AND agent_id IN (");
            let mut list = qb.separated(", ");
            for agent in &session.agent_ids {
                list.push_bind(agent.as_str().to_owned());
            }
            qb.push(")");
        }

        /// Columns of a new agent session row, in the order [`push_agent_session_row`] binds them.
        const NEW_AGENT_SESSION_COLS: &str = "id, deployment_id, ticket_id, browser_session_id, \
             token_hash, actor_id, agent_ids, context_group, session_name, created_at, expires_at";

        /// What an exchange opens an agent session with, besides the exchange itself.
        struct NewAgentSession<'a> {
            ticket: &'a TicketId,
            browser: &'a SessionId,
            actor: &'a ActorId,
            agents: &'a [AgentId],
            group: &'a ContextGroup,
            name: Option<&'a str>,
        }

        /// Binds the values of the agent session `ex` opens in deployment `dep` (see
        /// [`NEW_AGENT_SESSION_COLS`]); returns the session the row holds (what
        /// [`agent_session_from_row`] would read back), so that inserts need no `RETURNING`.
        fn push_agent_session_row(
            values: &mut sqlx::query_builder::Separated<'_, '_, $db, &'static str>,
            dep: &str,
            ex: &ExchangeTicket,
            new: &NewAgentSession<'_>,
        ) -> StoreResult<AgentSession> {
            let agents = serde_json::to_string(new.agents).map_err(|e| corrupt("agent session agents", e))?;
            let id = AgentSessionId::generate_at(ex.now);
            let expires_at = ex.now.plus_millis(ex.session_lifetime_ms);
            values.push_bind(id.as_str().to_owned());
            values.push_bind(dep.to_owned());
            values.push_bind(new.ticket.as_str().to_owned());
            values.push_bind(new.browser.as_str().to_owned());
            values.push_bind(ex.session_token.as_bytes().to_vec());
            values.push_bind(new.actor.as_str().to_owned());
            values.push_bind(agents);
            values.push_bind(new.group.as_str().to_owned());
            values.push_bind(new.name.map(str::to_owned));
            values.push_bind(ex.now.as_millis());
            values.push_bind(expires_at.as_millis());
            Ok(AgentSession {
                id,
                ticket_id: new.ticket.clone(),
                actor_id: new.actor.clone(),
                agent_ids: new.agents.to_vec(),
                context_group: new.group.clone(),
                session_name: new.name.map(str::to_owned),
                created_at: ex.now,
                expires_at,
            })
        }

        /// The actor `actor` of deployment `deployment`, if it exists.
        async fn session_actor(conn: &mut Conn, deployment: &str, actor: &ActorId) -> StoreResult<Option<Actor>> {
            let row = sqlx::query(&format!(
                "SELECT {ACTOR_COLS} FROM actors WHERE id = $1 AND deployment_id = $2"
            ))
            .bind(actor.as_str())
            .bind(deployment)
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(actor_from_row).transpose()
        }

        /// Agents by deployment, then by id.
        type LiveAgents = std::collections::HashMap<String, std::collections::HashMap<String, tessera_domain::agent::Agent>>;

        /// The agents among `wanted` (deployment, agent) that exist: one statement, scoped by
        /// each pair's deployment.
        async fn live_agents(conn: &mut Conn, wanted: &[(&str, &AgentId)]) -> StoreResult<LiveAgents> {
            let distinct: std::collections::BTreeSet<(&str, &str)> =
                wanted.iter().map(|(dep, agent)| (*dep, agent.as_str())).collect();
            let mut found = LiveAgents::new();
            if distinct.is_empty() {
                return Ok(found);
            }
            let mut qb = sqlx::QueryBuilder::<$db>::new("WITH w (agent, dep) AS (");
            qb.push_values(&distinct, |mut values, (dep, agent)| {
                values.push_bind(agent.to_string());
                values.push_bind(dep.to_string());
            });
            qb.push(format!(
                ")
                 SELECT {AGENT_COLS}, deployment_id FROM agents
                 JOIN w ON agents.id = w.agent AND agents.deployment_id = w.dep
                 WHERE agents.deleted_at IS NULL"
            ));
            // A session's few agents give a few distinct texts, worth keeping prepared; a
            // batch's long lists are not (they would push the hot statements out of the cache).
            let rows = qb.build().persistent(distinct.len() <= 8).fetch_all(&mut *conn).await?;
            for row in &rows {
                let dep: String = row.try_get("deployment_id")?;
                let agent = agent_from_row(row)?;
                found.entry(dep).or_default().insert(agent.id.as_str().to_owned(), agent);
            }
            Ok(found)
        }

        /// The agents of `agent_ids` found in `live` for deployment `dep`, in that order.
        fn session_agents(live: &LiveAgents, dep: &str, agent_ids: &[AgentId]) -> Vec<tessera_domain::agent::Agent> {
            let Some(live) = live.get(dep) else {
                return Vec::new();
            };
            agent_ids.iter().filter_map(|a| live.get(a.as_str()).cloned()).collect()
        }

        /// A new ticket's distinct agents (none for a ticket that names none).
        fn ticket_agents(new: &NewTicket) -> Vec<&AgentId> {
            match &new.grant {
                TicketGrant::AgentAccess { agent_ids, .. } => {
                    let mut distinct: Vec<&AgentId> = agent_ids.iter().collect();
                    distinct.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
                    distinct.dedup();
                    distinct
                }
                _ => Vec::new(),
            }
        }

        /// Pushes a new ticket's row: `id, deployment_id, hash, ticket_type, grant_json,
        /// issuer_type, issuer_id, created_at, expires_at`, in that order; returns its id.
        fn push_ticket_row(
            values: &mut sqlx::query_builder::Separated<'_, '_, $db, &'static str>,
            scope: &Scope,
            new: &NewTicket,
        ) -> StoreResult<TicketId> {
            let grant = serde_json::to_string(&new.grant).map_err(|e| corrupt("ticket grant", e))?;
            let id = TicketId::generate_at(new.now);
            values.push_bind(id.as_str().to_owned());
            values.push_bind(scope.deployment_id().as_str().to_owned());
            values.push_bind(new.hash.as_bytes().to_vec());
            values.push_bind(new.grant.ticket_type().as_str().to_owned());
            values.push_bind(grant);
            values.push_bind(new.issuer.kind().to_owned());
            values.push_bind(new.issuer.id().to_owned());
            values.push_bind(new.now.as_millis());
            values.push_bind(new.expires_at.as_millis());
            Ok(id)
        }

        /// Inserts a ticket. An agent_access ticket is inserted only if every agent it names
        /// exists (checked in the same statement, so an agent deleted meanwhile cannot slip
        /// through, and minting costs no separate read); otherwise the agents are looked at one
        /// by one to name the missing one.
        async fn insert_ticket(conn: &mut Conn, scope: &Scope, new: &NewTicket) -> StoreResult<SessionTicket> {
            let dep = scope.deployment_id().as_str();
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO session_tickets
                   (id, deployment_id, hash, ticket_type, grant_json, issuer_type, issuer_id,
                    created_at, expires_at)
                 SELECT ",
            );
            push_ticket_row(&mut qb.separated(", "), scope, new)?;
            let agents = ticket_agents(new);
            if !agents.is_empty() {
                qb.push(" WHERE (SELECT COUNT(*) FROM agents WHERE deployment_id = ")
                    .push_bind(dep.to_owned())
                    .push(" AND deleted_at IS NULL AND id IN (");
                let mut list = qb.separated(", ");
                for agent in &agents {
                    list.push_bind(agent.as_str().to_owned());
                }
                qb.push(")) = ").push_bind(agents.len() as i64);
            }
            qb.push(format!(" RETURNING {TICKET_COLS}"));
            let ticket = match qb.build().fetch_optional(&mut *conn).await? {
                Some(row) => ticket_from_row(&row)?,
                None => return Err(missing_agent(conn, dep, &new.grant).await),
            };
            record_minted(conn, scope, &ticket, &new.client).await?;
            Ok(ticket)
        }

        /// Inserts many new tickets in one statement (SQLite's group commit, see
        /// `do_hot_writes`), each only if all its agents exist, like [`insert_ticket`]: one
        /// result per ticket, in order, `NotFound` naming the missing agent of one that was not
        /// written. Any other error, whole or per ticket, means the transaction must be
        /// abandoned (the caller fails the batch, and each write is retried alone).
        ///
        /// SQLite only (`json_each`); PostgreSQL writes one mint per transaction. The rows are
        /// padded (`bulk::padded`): a padding row's `agent_count` is `NULL`, which no count
        /// equals.
        pub(crate) async fn insert_tickets(
            conn: &mut Conn,
            mints: &[(&Scope, &NewTicket)],
        ) -> StoreResult<Vec<StoreResult<SessionTicket>>> {
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "WITH v (id, deployment_id, hash, ticket_type, grant_json, issuer_type, issuer_id,
                         created_at, expires_at, agents, agent_count) AS (",
            );
            let mut ids = Vec::with_capacity(mints.len());
            qb.push_values($crate::bulk::padded(mints), |mut values, mint| {
                let Some((scope, new)) = mint else {
                    return $crate::bulk::push_null_row(&mut values, 11);
                };
                let agents = ticket_agents(new);
                let agent_count = agents.len() as i64;
                let agents = serde_json::Value::from(
                    agents.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
                )
                .to_string();
                match push_ticket_row(&mut values, scope, new) {
                    Ok(id) => ids.push(id),
                    // Only a grant that does not serialise: the row is incomplete, and the
                    // check below returns before the statement runs.
                    Err(_) => return,
                }
                values.push_bind(agents);
                values.push_bind(agent_count);
            });
            if ids.len() != mints.len() {
                return Err(corrupt("ticket grant", "a grant that does not serialise"));
            }
            qb.push(format!(
                ")
                 INSERT INTO session_tickets
                   (id, deployment_id, hash, ticket_type, grant_json, issuer_type, issuer_id,
                    created_at, expires_at)
                 SELECT id, deployment_id, hash, ticket_type, grant_json, issuer_type, issuer_id,
                        created_at, expires_at
                 FROM v
                 WHERE v.agent_count = (
                   SELECT COUNT(*) FROM agents a
                   WHERE a.deployment_id = v.deployment_id AND a.deleted_at IS NULL
                     AND a.id IN (SELECT value FROM json_each(v.agents)))"
            ));
            // No `RETURNING`: sqlx hands each returned row over from its connection thread on
            // its own, while the rows hold nothing the batch does not know already.
            let inserted = qb.build().execute(&mut *conn).await?.rows_affected();
            // `None`: all of them (the usual case, known from the count alone).
            let written: Option<std::collections::HashSet<String>> = if inserted == ids.len() as u64 {
                None
            } else {
                // Some ticket named a missing agent: which ones were written?
                let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT id FROM session_tickets WHERE id IN (");
                let mut list = qb.separated(", ");
                for id in &ids {
                    list.push_bind(id.as_str().to_owned());
                }
                qb.push(")");
                let rows = qb.build().fetch_all(&mut *conn).await?;
                Some(rows.iter().map(|row| row.try_get::<String, _>("id")).collect::<Result<_, _>>()?)
            };
            let mut out = Vec::with_capacity(mints.len());
            for ((scope, new), id) in mints.iter().zip(ids) {
                out.push(if written.as_ref().is_none_or(|w| w.contains(id.as_str())) {
                    let ticket = new_ticket(id, new);
                    record_minted(conn, scope, &ticket, &new.client).await?;
                    Ok(ticket)
                } else {
                    Err(missing_agent(conn, scope.deployment_id().as_str(), &new.grant).await)
                });
            }
            Ok(out)
        }

        /// The ticket a row written from `new` holds (what `ticket_from_row` would read back).
        fn new_ticket(id: TicketId, new: &NewTicket) -> SessionTicket {
            SessionTicket {
                id,
                grant: new.grant.clone(),
                issuer: new.issuer.clone(),
                created_at: new.now,
                expires_at: new.expires_at,
                redeemed_at: None,
            }
        }

        /// The error naming the first agent of `grant` that does not exist.
        async fn missing_agent(conn: &mut Conn, dep: &str, grant: &TicketGrant) -> StoreError {
            if let TicketGrant::AgentAccess { agent_ids, .. } = grant {
                for (i, agent) in agent_ids.iter().enumerate() {
                    let found = sqlx::query(
                        "SELECT 1 FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL",
                    )
                    .bind(agent.as_str())
                    .bind(dep)
                    .fetch_optional(&mut *conn)
                    .await;
                    match found {
                        Ok(Some(_)) => {}
                        Ok(None) => return StoreError::not_found_in_list(Entity::Agent, "agent_ids", i),
                        Err(err) => return err.into(),
                    }
                }
            }
            corrupt("session ticket", "the insert of a ticket whose agents exist wrote nothing")
        }

        impl $store {
            /// Checks what a new ticket references other than its agents (reads only, before the
            /// write).
            async fn check_ticket_refs(&self, scope: &Scope, grant: &TicketGrant) -> StoreResult<()> {
                let dep = scope.deployment_id().as_str();
                match grant {
                    // The agents are checked by the insert itself (`insert_ticket`).
                    TicketGrant::AgentAccess { agent_ids: _, binding, mode, context_group } => {
                        match binding {
                            Binding::Anonymous => {}
                            Binding::Actor(actor) => {
                                let found = sqlx::query("SELECT 1 FROM actors WHERE id = $1 AND deployment_id = $2")
                                    .bind(actor.as_str())
                                    .bind(dep)
                                    .fetch_optional(self.reader())
                                    .await?;
                                if found.is_none() {
                                    return Err(StoreError::not_found_at(Entity::Actor, "actor_id"));
                                }
                            }
                            Binding::User(user) => self.check_user(dep, user).await?,
                        }
                        if let SessionMode::Named(name) = mode {
                            let existing = sqlx::query(
                                "SELECT context_group FROM named_agent_sessions WHERE deployment_id = $1 AND name = $2",
                            )
                            .bind(dep)
                            .bind(name.as_str())
                            .fetch_optional(self.reader())
                            .await?;
                            match (existing, context_group) {
                                (Some(row), Some(group)) => {
                                    let stored: String = row.try_get("context_group")?;
                                    if stored != group.as_str() {
                                        return Err(StoreError::Conflict(Conflict::NamedSessionGroupMismatch));
                                    }
                                }
                                (None, None) => {
                                    return Err(StoreError::Conflict(Conflict::NamedSessionNeedsGroup))
                                }
                                _ => {}
                            }
                        }
                        Ok(())
                    }
                    TicketGrant::Impersonation { user_id } => self.check_user(dep, user_id).await,
                    TicketGrant::App { kind, slug } => {
                        let found = sqlx::query(
                            "SELECT 1 FROM apps WHERE deployment_id = $1 AND kind = $2 AND slug = $3",
                        )
                        .bind(dep)
                        .bind(kind.as_str())
                        .bind(slug.as_str())
                        .fetch_optional(self.reader())
                        .await?;
                        match (found, kind) {
                            (Some(_), _) => Ok(()),
                            (None, AppKind::ApiAuth) => {
                                Err(StoreError::not_found_at(Entity::App, "api_auth_app_slug"))
                            }
                            (None, AppKind::Webhook) => {
                                Err(StoreError::not_found_at(Entity::App, "webhook_app_slug"))
                            }
                        }
                    }
                }
            }

            async fn check_user(&self, dep: &str, user: &UserId) -> StoreResult<()> {
                let row = sqlx::query("SELECT disabled FROM users WHERE id = $1 AND deployment_id = $2")
                    .bind(user.as_str())
                    .bind(dep)
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::not_found_at(Entity::User, "user_id"))?;
                let disabled: i64 = row.try_get("disabled")?;
                if disabled != 0 {
                    return Err(StoreError::Conflict(Conflict::UserDisabled));
                }
                Ok(())
            }

            /// A ticket's insert on `tx`, which the caller commits (a hot write, see
            /// `write_hot`).
            pub(crate) async fn ticket_in(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                scope: &Scope,
                new: &NewTicket,
            ) -> StoreResult<SessionTicket> {
                insert_ticket(tx, scope, new).await
            }

            /// An exchange's statements on `tx`, which the caller commits, or rolls back on an
            /// error or [`ExchangeOutcome::SigninRequired`] (a hot write, see `write_hot`).
            pub(crate) async fn exchange_on(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                scope: &Scope,
                ex: &ExchangeTicket,
            ) -> StoreResult<ExchangeOutcome> {
                exchange_in(tx, scope, ex).await
            }
        }

        /// The exchange's statements on `tx`, which the caller commits (or rolls back: on
        /// an error or [`ExchangeOutcome::SigninRequired`]).
        async fn exchange_in(
            tx: &mut Conn,
            scope: &Scope,
            ex: &ExchangeTicket,
        ) -> StoreResult<ExchangeOutcome> {
            let dep = scope.deployment_id().as_str();
            let now = ex.now;
            let won = sqlx::query(&format!(
                "UPDATE session_tickets SET redeemed_at = $1
                 WHERE hash = $2 AND deployment_id = $3 AND redeemed_at IS NULL AND expires_at > $1
                 RETURNING {TICKET_COLS}"
            ))
            .bind(now.as_millis())
            .bind(ex.hash.as_bytes().to_vec())
            .bind(dep)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = won else {
                // Locks the ticket row before any agent session row, the order the winner
                // took them in, so concurrent replays cannot deadlock.
                let previous = sqlx::query(&format!(
                    "SELECT {TICKET_COLS}, hash FROM session_tickets WHERE hash = $1 AND deployment_id = $2{}",
                    $store::ROW_LOCK
                ))
                .bind(ex.hash.as_bytes().to_vec())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?;
                let used = match previous {
                    Some(row) => {
                        let stored: Vec<u8> = row.try_get("hash")?;
                        let stored = SecretHash::from_bytes(&stored)
                            .ok_or_else(|| corrupt("ticket hash", "wrong length"))?;
                        let ticket = ticket_from_row(&row)?;
                        (stored.matches(&ex.hash) && ticket.redeemed_at.is_some()).then_some(ticket)
                    }
                    None => None,
                };
                if let Some(ticket) = &used {
                    revoke_replayed(tx, dep, &ticket.id, now).await?;
                    let event = NewAuditEvent::new(
                        AuditKind::TicketReplayed,
                        AuditActor::Anonymous,
                        Some(ticket.id.as_str().to_owned()),
                        ex.client.clone(),
                        serde_json::json!({"ticket_type": ticket.grant.ticket_type().as_str()}),
                    );
                    insert_audit(tx, scope, &event, now).await?;
                }
                return Ok(ExchangeOutcome::Invalid { replayed: used });
            };
            let ticket = ticket_from_row(&row)?;
            let current: Option<BrowserSession> = match &ex.browser_session {
                Some(hash) => {
                    let row = sqlx::query(&format!(
                        "SELECT {} FROM browser_sessions
                         WHERE token_hash = $1 AND deployment_id = $2
                           AND expires_at > $3 AND idle_expires_at > $3",
                        $crate::sql_identity::SESSION_COLS
                    ))
                    .bind(hash.as_bytes().to_vec())
                    .bind(dep)
                    .bind(now.as_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                    row.as_ref().map(session_from_row).transpose()?
                }
                None => None,
            };
            match ticket.grant.clone() {
                TicketGrant::AgentAccess { agent_ids, binding, mode, context_group } => {
                    let (actor, group, name) = match &mode {
                        SessionMode::Signin => {
                            let Some(user) = current.as_ref().and_then(|s| s.user_id.clone()) else {
                                // The caller rolls the redemption back.
                                return Ok(ExchangeOutcome::SigninRequired);
                            };
                            usable_user(tx, dep, &user).await?;
                            let actor = find_or_create_actor(tx, dep, "user", user.as_str(), now).await?;
                            let group = ContextGroup::parse("context_group", format!("user:{user}"))
                                .map_err(|e| corrupt("derived context group", e))?;
                            (actor, group, None)
                        }
                        SessionMode::Static => {
                            let group = context_group.ok_or_else(|| corrupt("static ticket", "no context group"))?;
                            let actor = bound_actor(tx, dep, &binding, &ex.anonymous_key, now).await?;
                            (actor, group, None)
                        }
                        SessionMode::Named(name) => {
                            let existing = sqlx::query(&format!(
                                "SELECT context_group, actor_id FROM named_agent_sessions
                                 WHERE deployment_id = $1 AND name = $2{}",
                                $store::ROW_LOCK
                            ))
                            .bind(dep)
                            .bind(name.as_str())
                            .fetch_optional(&mut *tx)
                            .await?;
                            let (group, stored_actor) = match existing {
                                Some(row) => {
                                    let g: String = row.try_get("context_group")?;
                                    (g, id(row.try_get("actor_id")?, ActorId::parse)?)
                                }
                                None => {
                                    let group = context_group
                                        .ok_or(StoreError::Conflict(Conflict::NamedSessionNeedsGroup))?;
                                    let actor = bound_actor(tx, dep, &binding, &ex.anonymous_key, now).await?;
                                    sqlx::query(
                                        "INSERT INTO named_agent_sessions
                                           (deployment_id, name, context_group, actor_id, created_at)
                                         VALUES ($1, $2, $3, $4, $5)
                                         ON CONFLICT (deployment_id, name) DO NOTHING",
                                    )
                                    .bind(dep)
                                    .bind(name.as_str())
                                    .bind(group.as_str())
                                    .bind(actor.id.as_str())
                                    .bind(now.as_millis())
                                    .execute(&mut *tx)
                                    .await?;
                                    let row = sqlx::query(
                                        "SELECT context_group, actor_id FROM named_agent_sessions
                                         WHERE deployment_id = $1 AND name = $2",
                                    )
                                    .bind(dep)
                                    .bind(name.as_str())
                                    .fetch_one(&mut *tx)
                                    .await?;
                                    let g: String = row.try_get("context_group")?;
                                    (g, id(row.try_get("actor_id")?, ActorId::parse)?)
                                }
                            };
                            // A ticket bound to a user or actor acts for them; an anonymous
                            // one resumes the named session's own actor.
                            let actor = match &binding {
                                Binding::Anonymous => session_actor(tx, dep, &stored_actor)
                                    .await?
                                    .ok_or_else(|| corrupt("named session", "its actor is missing"))?,
                                bound => bound_actor(tx, dep, bound, &ex.anonymous_key, now).await?,
                            };
                            let group = ContextGroup::parse("context_group", group)
                                .map_err(|e| corrupt("named session context group", e))?;
                            (actor, group, Some(name.as_str().to_owned()))
                        }
                    };
                    let (browser, browser_created) = match current {
                        Some(session) => (session, false),
                        None => (insert_session(tx, scope, &ex.new_browser_session).await?, true),
                    };
                    // Replacement: the browser session's previous agent session ends in the
                    // transaction that opens the new one (a browser session created just now
                    // has none).
                    if !browser_created {
                        sqlx::query(
                            "UPDATE agent_sessions SET ended_at = $1, end_reason = 'replaced'
                             WHERE browser_session_id = $2 AND deployment_id = $3 AND ended_at IS NULL",
                        )
                        .bind(now.as_millis())
                        .bind(browser.id.as_str())
                        .bind(dep)
                        .execute(&mut *tx)
                        .await?;
                    }
                    let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                        "INSERT INTO agent_sessions ({NEW_AGENT_SESSION_COLS}) "
                    ));
                    let mut pushed = Err(corrupt("agent session", "an insert without its row"));
                    qb.push_values([()], |mut values, ()| {
                        pushed = push_agent_session_row(&mut values, dep, ex, &NewAgentSession {
                            ticket: &ticket.id,
                            browser: &browser.id,
                            actor: &actor.id,
                            agents: &agent_ids,
                            group: &group,
                            name: name.as_deref(),
                        });
                    });
                    let session = pushed?;
                    qb.build().execute(&mut *tx).await?;
                    let wanted: Vec<_> = agent_ids.iter().map(|a| (dep, a)).collect();
                    let agents = session_agents(&live_agents(tx, &wanted).await?, dep, &agent_ids);
                    Ok(ExchangeOutcome::Agent { ticket, session, browser, browser_created, actor, agents })
                }
                TicketGrant::Impersonation { user_id } => {
                    let user = usable_user(tx, dep, &user_id).await?;
                    if let Some(hash) = &ex.browser_session {
                        sqlx::query("DELETE FROM browser_sessions WHERE token_hash = $1 AND deployment_id = $2")
                            .bind(hash.as_bytes().to_vec())
                            .bind(dep)
                            .execute(&mut *tx)
                            .await?;
                    }
                    let limit = now.plus_millis(ex.impersonation_ms);
                    let new = NewSession {
                        user_id: Some(user.id.clone()),
                        active_organization_id: None,
                        impersonation: Some((ticket.issuer.clone(), ticket.id.clone())),
                        expires_at: ex.new_browser_session.expires_at.min(limit),
                        idle_expires_at: ex.new_browser_session.idle_expires_at.min(limit),
                        ..ex.new_browser_session.clone()
                    };
                    let browser = insert_session(tx, scope, &new).await?;
                    // Who impersonates whom, recorded by the transaction that signs them in.
                    let event = NewAuditEvent::new(
                        AuditKind::ImpersonationStarted,
                        AuditActor::from(&ticket.issuer),
                        Some(user.id.as_str().to_owned()),
                        ex.client.clone(),
                        serde_json::json!({
                            "ticket_id": ticket.id.as_str(),
                            "impersonator_type": ticket.issuer.kind(),
                            "impersonator_id": ticket.issuer.id(),
                            "expires_at": browser.expires_at.to_rfc3339(),
                        }),
                    );
                    insert_audit(tx, scope, &event, now).await?;
                    Ok(ExchangeOutcome::Impersonation { ticket, user, browser })
                }
                TicketGrant::App { .. } => {
                    // The API-auth and webhook pages do not exist yet, and neither can the
                    // apps such a ticket names (minting checks them): leave the ticket
                    // unredeemed.
                    Err(StoreError::not_found(Entity::App))
                }
            }
        }

        /// The exchanges of a group-commit batch written together where they are the common case
        /// of opening a chat link: a browser without a session cookie presenting a live static
        /// agent_access ticket bound to nobody (the batch's first cookie-less presentation of
        /// that ticket). One read of their tickets, one conditional UPDATE redeeming them, one
        /// INSERT each for their actors, browser sessions and agent sessions and one read of
        /// their agents replace the six round trips each costs alone.
        ///
        /// One entry per exchange: `Some` for one this wrote, `None` for one the caller must
        /// write alone ([`exchange_in`]) *after* this: any other kind of ticket or browser, a
        /// ticket that is unknown, used or expired (the replay path runs there), and a ticket
        /// presented again later in the batch (it then finds the ticket redeemed here and
        /// revokes what this opened). Every outcome is one that writing the batch's exchanges
        /// one by one in some order gives: the batch's requests were concurrent. `Err` when a
        /// statement failed: the transaction as a whole failed.
        pub(crate) async fn exchange_fresh(
            conn: &mut Conn,
            exchanges: &[(&Scope, &ExchangeTicket)],
        ) -> StoreResult<Vec<Option<ExchangeOutcome>>> {
            let mut out: Vec<Option<ExchangeOutcome>> = exchanges.iter().map(|_| None).collect();
            let mut seen = std::collections::HashSet::with_capacity(exchanges.len());
            let fresh: Vec<usize> = (0..exchanges.len())
                .filter(|&i| {
                    let ex = exchanges[i].1;
                    ex.browser_session.is_none() && seen.insert(ex.hash.as_bytes())
                })
                .collect();
            if fresh.is_empty() {
                return Ok(out);
            }

            // Padded (`bulk::padded`): a `NULL` row joins nothing, here and in the statements
            // below, or is left out by their `WHERE column1 IS NOT NULL`.
            let mut qb = sqlx::QueryBuilder::<$db>::new("WITH w (h, dep) AS (");
            qb.push_values($crate::bulk::padded(&fresh), |mut values, i| {
                let Some(&i) = i else {
                    return $crate::bulk::push_null_row(&mut values, 2);
                };
                let (scope, ex) = exchanges[i];
                values.push_bind(ex.hash.as_bytes().to_vec());
                values.push_bind(scope.deployment_id().as_str().to_owned());
            });
            qb.push(format!(
                ")
                 SELECT {TICKET_COLS}, hash FROM session_tickets
                 JOIN w ON session_tickets.hash = w.h AND session_tickets.deployment_id = w.dep"
            ));
            let rows = qb.build().fetch_all(&mut *conn).await?;
            // Each hash came with one deployment (`fresh` holds one presentation per hash), and
            // the join kept only the tickets of their exchange's deployment.
            let mut found = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let hash: Vec<u8> = row.try_get("hash")?;
                found.insert(hash, row);
            }
            // (exchange, its ticket, the ticket's agents and context group)
            let mut open: Vec<(usize, SessionTicket, Vec<AgentId>, ContextGroup)> =
                Vec::with_capacity(fresh.len());
            for &i in &fresh {
                let ex = exchanges[i].1;
                let Some(row) = found.get(ex.hash.as_bytes()) else {
                    continue;
                };
                let ticket = ticket_from_row(row)?;
                if ticket.redeemed_at.is_some() || ticket.expires_at <= ex.now {
                    continue;
                }
                if let TicketGrant::AgentAccess {
                    agent_ids,
                    binding: Binding::Anonymous,
                    mode: SessionMode::Static,
                    context_group: Some(group),
                } = &ticket.grant
                {
                    let (agents, group) = (agent_ids.clone(), group.clone());
                    open.push((i, ticket, agents, group));
                }
            }
            if open.is_empty() {
                return Ok(out);
            }

            // The same condition as a lone exchange's: the transaction is the only writer, so
            // every ticket read above as live is redeemed here.
            let mut qb = sqlx::QueryBuilder::<$db>::new("WITH v (ticket_id, dep, at) AS (");
            qb.push_values($crate::bulk::padded(&open), |mut values, row| {
                let Some((i, ticket, _, _)) = row else {
                    return $crate::bulk::push_null_row(&mut values, 3);
                };
                let (scope, ex) = exchanges[*i];
                values.push_bind(ticket.id.as_str().to_owned());
                values.push_bind(scope.deployment_id().as_str().to_owned());
                values.push_bind(ex.now.as_millis());
            });
            qb.push(
                ")
                 UPDATE session_tickets SET redeemed_at = v.at FROM v
                 WHERE session_tickets.id = v.ticket_id AND session_tickets.deployment_id = v.dep
                   AND session_tickets.redeemed_at IS NULL AND session_tickets.expires_at > v.at",
            );
            // Without `RETURNING` (sqlx would hand each row over on its own); the count
            // confirms it (a shortfall fails the batch, whose writes are then retried alone).
            let redeemed = qb.build().execute(&mut *conn).await?.rows_affected();
            if redeemed != open.len() as u64 {
                return Err(corrupt(
                    "session ticket",
                    format!("{redeemed} of {} tickets read as live were redeemed", open.len()),
                ));
            }

            // The inserts below return no rows (sqlx would hand each over from its connection
            // thread on its own): the rows hold what was bound, and a row left out (none can
            // be, short of a failing statement) is caught by the count.
            let inserted = |what: &str, count: u64| {
                if count == open.len() as u64 {
                    Ok(())
                } else {
                    Err(corrupt(what, format!("{count} rows inserted for {} exchanges", open.len())))
                }
            };

            let mut actors = Vec::with_capacity(open.len());
            let mut qb = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO actors
                   (id, deployment_id, subject_type, external_key, display_name, metadata, created_at)
                 SELECT * FROM (",
            );
            qb.push_values($crate::bulk::padded(&open), |mut values, row| {
                let Some((i, _, _, _)) = row else {
                    return $crate::bulk::push_null_row(&mut values, 7);
                };
                let (scope, ex) = exchanges[*i];
                // The row as `bound_actor` inserts it for an anonymous ticket.
                let actor = tessera_domain::records::Actor {
                    id: ActorId::generate_at(ex.now),
                    subject_type: "anonymous".to_owned(),
                    external_key: ex.anonymous_key.clone(),
                    display_name: None,
                    metadata: serde_json::json!({}),
                    created_at: ex.now,
                };
                values.push_bind(actor.id.as_str().to_owned());
                values.push_bind(scope.deployment_id().as_str().to_owned());
                values.push_bind(actor.subject_type.clone());
                values.push_bind(actor.external_key.clone());
                values.push("NULL");
                values.push("'{}'");
                values.push_bind(actor.created_at.as_millis());
                actors.push(actor);
            });
            qb.push(") WHERE column1 IS NOT NULL");
            inserted("actor", qb.build().execute(&mut *conn).await?.rows_affected())?;

            let mut browsers = Vec::with_capacity(open.len());
            let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                "INSERT INTO browser_sessions ({NEW_SESSION_COLS}) SELECT * FROM ("
            ));
            qb.push_values($crate::bulk::padded(&open), |mut values, row| {
                let Some((i, _, _, _)) = row else {
                    return $crate::bulk::push_null_row(&mut values, $crate::bulk::width(NEW_SESSION_COLS));
                };
                let (scope, ex) = exchanges[*i];
                browsers.push(push_session_row(&mut values, scope, &ex.new_browser_session));
            });
            qb.push(") WHERE column1 IS NOT NULL");
            inserted("browser session", qb.build().execute(&mut *conn).await?.rows_affected())?;

            let mut sessions = Vec::with_capacity(open.len());
            let mut pushed = Ok(());
            let mut qb = sqlx::QueryBuilder::<$db>::new(format!(
                "INSERT INTO agent_sessions ({NEW_AGENT_SESSION_COLS}) SELECT * FROM ("
            ));
            qb.push_values($crate::bulk::padded(&open).enumerate(), |mut values, (k, row)| {
                let Some((i, ticket, agents, group)) = row else {
                    return $crate::bulk::push_null_row(&mut values, $crate::bulk::width(NEW_AGENT_SESSION_COLS));
                };
                let (scope, ex) = exchanges[*i];
                let new = NewAgentSession {
                    ticket: &ticket.id,
                    browser: &browsers[k].id,
                    actor: &actors[k].id,
                    agents,
                    group,
                    name: None,
                };
                match push_agent_session_row(&mut values, scope.deployment_id().as_str(), ex, &new) {
                    Ok(session) => sessions.push(session),
                    Err(err) => pushed = Err(err),
                }
            });
            // Only agents that do not serialise: the statement is incomplete and must not run.
            pushed?;
            qb.push(") WHERE column1 IS NOT NULL");
            inserted("agent session", qb.build().execute(&mut *conn).await?.rows_affected())?;

            let wanted: Vec<_> = open
                .iter()
                .flat_map(|(i, _, agents, _)| {
                    let dep = exchanges[*i].0.deployment_id().as_str();
                    agents.iter().map(move |a| (dep, a))
                })
                .collect();
            let live = live_agents(conn, &wanted).await?;
            let opened = open.into_iter().zip(browsers).zip(sessions).zip(actors);
            for ((((i, mut ticket, agent_ids, _), browser), session), actor) in opened {
                let (scope, ex) = exchanges[i];
                ticket.redeemed_at = Some(ex.now);
                let agents = session_agents(&live, scope.deployment_id().as_str(), &agent_ids);
                out[i] = Some(ExchangeOutcome::Agent { ticket, session, browser, browser_created: true, actor, agents });
            }
            Ok(out)
        }

        #[async_trait::async_trait]
        impl $crate::TicketStore for $store {
            async fn create_ticket(&self, scope: &Scope, new: &NewTicket) -> StoreResult<SessionTicket> {
                self.check_ticket_refs(scope, &new.grant).await?;
                // A hot write: SQLite shares its transaction with concurrent ones.
                let job = $crate::sql_runs::HotWrite::Ticket { scope: scope.clone(), new: new.clone() };
                self.write_hot(job).await?.ticket()
            }

            async fn exchange_ticket(
                &self,
                scope: &Scope,
                exchange: &ExchangeTicket,
            ) -> StoreResult<ExchangeOutcome> {
                let job = $crate::sql_runs::HotWrite::Exchange {
                    scope: scope.clone(),
                    exchange: exchange.clone(),
                };
                self.write_hot(job).await?.exchanged()
            }

            async fn active_agent_session(
                &self,
                scope: &Scope,
                browser_session: &SessionId,
                now: Timestamp,
            ) -> StoreResult<Option<AgentSession>> {
                let row = sqlx::query(&format!(
                    "SELECT {AGENT_SESSION_COLS} FROM agent_sessions
                     WHERE browser_session_id = $1 AND deployment_id = $2 AND ended_at IS NULL
                       AND expires_at > $3
                     ORDER BY id DESC LIMIT 1"
                ))
                .bind(browser_session.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(now.as_millis())
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(agent_session_from_row).transpose()
            }

            async fn agent_session_by_token(
                &self,
                scope: &Scope,
                token: &SecretHash,
                now: Timestamp,
            ) -> StoreResult<Option<AgentSession>> {
                let row = sqlx::query(&format!(
                    "SELECT {AGENT_SESSION_COLS}, token_hash FROM agent_sessions
                     WHERE token_hash = $1 AND deployment_id = $2 AND ended_at IS NULL
                       AND expires_at > $3"
                ))
                .bind(token.as_bytes().to_vec())
                .bind(scope.deployment_id().as_str())
                .bind(now.as_millis())
                .fetch_optional(self.reader())
                .await?;
                let Some(row) = row else { return Ok(None) };
                let stored: Vec<u8> = row.try_get("token_hash")?;
                let stored = SecretHash::from_bytes(&stored)
                    .ok_or_else(|| corrupt("session token hash", "wrong length"))?;
                if !stored.matches(token) {
                    return Ok(None);
                }
                agent_session_from_row(&row).map(Some)
            }

            async fn list_contexts(
                &self,
                scope: &Scope,
                session: &AgentSession,
                page: &PageRequest,
            ) -> StoreResult<Page<Thread>> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("SELECT {THREAD_COLS} FROM threads WHERE"));
                push_partition(&mut qb, scope, session);
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, thread_from_row)
            }

            async fn get_context(
                &self,
                scope: &Scope,
                session: &AgentSession,
                thread: &ThreadId,
            ) -> StoreResult<Thread> {
                let mut qb = sqlx::QueryBuilder::<$db>::new(format!("SELECT {THREAD_COLS} FROM threads WHERE"));
                push_partition(&mut qb, scope, session);
                qb.push(" AND id = ").push_bind(thread.as_str().to_owned());
                let row = qb
                    .build()
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or(StoreError::not_found(Entity::Context))?;
                thread_from_row(&row)
            }

            async fn create_context(
                &self,
                scope: &Scope,
                session: &AgentSession,
                agent: &AgentId,
                title: &Label,
            ) -> StoreResult<Thread> {
                if !session.agent_ids.contains(agent) {
                    return Err(StoreError::not_found_at(Entity::Agent, "agent_id"));
                }
                let dep = scope.deployment_id().as_str();
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let live = sqlx::query(&format!(
                    "SELECT id FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL{}",
                    Self::ROW_LOCK
                ))
                .bind(agent.as_str())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?;
                if live.is_none() {
                    return Err(StoreError::not_found_at(Entity::Agent, "agent_id"));
                }
                let project = sqlx::query(
                    "SELECT id FROM actor_projects
                     WHERE deployment_id = $1 AND actor_id = $2 AND agent_id = $3 AND status = 'active'
                     ORDER BY id LIMIT 1",
                )
                .bind(dep)
                .bind(session.actor_id.as_str())
                .bind(agent.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let project_id = match project {
                    Some(row) => row.try_get::<String, _>("id")?,
                    None => {
                        let created = ProjectId::generate_at(now).into_string();
                        sqlx::query(
                            "INSERT INTO actor_projects
                               (id, deployment_id, actor_id, agent_id, name, status, created_at)
                             VALUES ($1, $2, $3, $4, 'Agent sessions', 'active', $5)",
                        )
                        .bind(&created)
                        .bind(dep)
                        .bind(session.actor_id.as_str())
                        .bind(agent.as_str())
                        .bind(now.as_millis())
                        .execute(&mut *tx)
                        .await?;
                        created
                    }
                };
                let row = sqlx::query(&format!(
                    "INSERT INTO threads (id, deployment_id, project_id, actor_id, agent_id, title,
                       system_instructions, purpose, capability_tags, context_group, status,
                       created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, NULL, 'conversation', '[]', $7, 'idle', $8, $8)
                     RETURNING {THREAD_COLS}"
                ))
                .bind(ThreadId::generate_at(now).into_string())
                .bind(dep)
                .bind(project_id)
                .bind(session.actor_id.as_str())
                .bind(agent.as_str())
                .bind(title.as_str())
                .bind(session.context_group.as_str())
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                let thread = thread_from_row(&row)?;
                tx.commit().await?;
                Ok(thread)
            }

            async fn rename_context(
                &self,
                scope: &Scope,
                session: &AgentSession,
                thread: &ThreadId,
                title: &Label,
            ) -> StoreResult<Thread> {
                let mut tx = self.begin_write().await?;
                let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE threads SET title = ");
                qb.push_bind(title.as_str().to_owned());
                qb.push(", updated_at = ").push_bind(Timestamp::now().as_millis());
                qb.push(" WHERE");
                push_partition(&mut qb, scope, session);
                qb.push(" AND id = ").push_bind(thread.as_str().to_owned());
                qb.push(format!(" RETURNING {THREAD_COLS}"));
                let row = qb
                    .build()
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::not_found(Entity::Context))?;
                let updated = thread_from_row(&row)?;
                tx.commit().await?;
                Ok(updated)
            }

            async fn hide_context(
                &self,
                scope: &Scope,
                session: &AgentSession,
                thread: &ThreadId,
            ) -> StoreResult<Vec<tessera_domain::thread::Run>> {
                use super::run_sql::{lock_open_runs, open_runs};
                // A hide races the thread's worker like a close: see `retry_transient`.
                $crate::retry_transient(|| async move {
                    let dep = scope.deployment_id().as_str();
                    let mut tx = self.begin_write().await?;
                    // Only the session's own conversation is touched (no lock is taken on
                    // another's runs; the update below checks the partition again).
                    let mut qb = sqlx::QueryBuilder::<$db>::new("SELECT 1 FROM threads WHERE");
                    push_partition(&mut qb, scope, session);
                    qb.push(" AND id = ").push_bind(thread.as_str().to_owned());
                    if qb.build().fetch_optional(&mut *tx).await?.is_none() {
                        return Err(StoreError::not_found(Entity::Context));
                    }
                    // The open runs are stopped below: lock them before the thread, whose update
                    // then waits for a submission in flight, and look again once it holds it.
                    lock_open_runs(&mut tx, dep, thread.as_str(), Self::ROW_LOCK, $crate::sql_runs::RunLock::First).await?;
                    let mut qb = sqlx::QueryBuilder::<$db>::new("UPDATE threads SET hidden_at = ");
                    qb.push_bind(Timestamp::now().as_millis());
                    qb.push(" WHERE");
                    push_partition(&mut qb, scope, session);
                    qb.push(" AND id = ").push_bind(thread.as_str().to_owned());
                    let hidden = qb.build().execute(&mut *tx).await?.rows_affected();
                    if hidden == 0 {
                        return Err(StoreError::not_found(Entity::Context));
                    }
                    lock_open_runs(&mut tx, dep, thread.as_str(), Self::ROW_LOCK, $crate::sql_runs::RunLock::Recheck).await?;
                    let open = open_runs(&mut tx, thread.as_str()).await?;
                    let stopped = if open.is_empty() {
                        Vec::new()
                    } else {
                        self.stop_runs(&mut tx, dep, thread, &open).await?
                    };
                    tx.commit().await?;
                    Ok(stopped)
                })
                .await
            }
        }

        #[async_trait::async_trait]
        impl $crate::ConsoleStore for $store {
            async fn bootstrap_console_admin(
                &self,
                username: &str,
                password_hash: &PasswordHash,
            ) -> StoreResult<Option<ConsoleAdmin>> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                self.lock_bootstrap(&mut tx).await?;
                let existing = sqlx::query("SELECT 1 FROM console_admins LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
                if existing.is_some() {
                    return Ok(None);
                }
                let row = sqlx::query(
                    "INSERT INTO console_admins (id, username, password_hash, created_at)
                     VALUES ($1, $2, $3, $4) RETURNING id, username, created_at",
                )
                .bind(AdminId::generate_at(now).into_string())
                .bind(username)
                .bind(password_hash.as_str())
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                let admin = admin_from_row(&row)?;
                tx.commit().await?;
                Ok(Some(admin))
            }

            async fn console_admin_credentials(
                &self,
                username: &str,
            ) -> StoreResult<Option<(ConsoleAdmin, PasswordHash)>> {
                let row = sqlx::query(
                    "SELECT id, username, password_hash, created_at FROM console_admins WHERE username = $1",
                )
                .bind(username)
                .fetch_optional(self.reader())
                .await?;
                let Some(row) = row else { return Ok(None) };
                let hash: String = row.try_get("password_hash")?;
                let hash = PasswordHash::from_stored(hash)
                    .ok_or_else(|| corrupt("admin password hash", "not a PHC string"))?;
                Ok(Some((admin_from_row(&row)?, hash)))
            }

            async fn create_console_session(
                &self,
                admin: &AdminId,
                hash: &SecretHash,
                now: Timestamp,
                expires_at: Timestamp,
            ) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                // Expired console sessions go too, so the table does not grow.
                sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
                    .bind(now.as_millis())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO console_sessions (token_hash, admin_id, created_at, expires_at)
                     VALUES ($1, $2, $3, $4)",
                )
                .bind(hash.as_bytes().to_vec())
                .bind(admin.as_str())
                .bind(now.as_millis())
                .bind(expires_at.as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn find_console_session(
                &self,
                hash: &SecretHash,
                now: Timestamp,
            ) -> StoreResult<Option<(ConsoleAdmin, Timestamp)>> {
                let row = sqlx::query(
                    "SELECT a.id, a.username, a.created_at, s.token_hash, s.expires_at
                     FROM console_sessions s JOIN console_admins a ON a.id = s.admin_id
                     WHERE s.token_hash = $1 AND s.expires_at > $2",
                )
                .bind(hash.as_bytes().to_vec())
                .bind(now.as_millis())
                .fetch_optional(self.reader())
                .await?;
                let Some(row) = row else { return Ok(None) };
                let stored: Vec<u8> = row.try_get("token_hash")?;
                let stored = SecretHash::from_bytes(&stored)
                    .ok_or_else(|| corrupt("console session hash", "wrong length"))?;
                if !stored.matches(hash) {
                    return Ok(None);
                }
                let expires = Timestamp::from_millis(row.try_get("expires_at")?);
                Ok(Some((admin_from_row(&row)?, expires)))
            }

            async fn delete_console_session(&self, hash: &SecretHash) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
                    .bind(hash.as_bytes().to_vec())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }
        }
    }
    };
}

pub(crate) use impl_ticket_sql;
