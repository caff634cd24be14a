//! SQL for users, organizations, memberships, browser sessions, sign-in throttling, the audit
//! log and token signing keys, shared by both backends like `sql.rs`.
//!
//! Backend hooks used here: `ROW_LOCK` (`FOR UPDATE` on PostgreSQL) for check-then-write
//! transactions and `lock_bootstrap` to serialise the creation of the first signing key.

pub(crate) const USER_COLS: &str = "id, email, first_name, last_name, password_hash, metadata, \
     disabled, created_at, updated_at";
pub(crate) const ORGANIZATION_COLS: &str = "id, name, slug, created_at";
pub(crate) const MEMBERSHIP_COLS: &str = "id, organization_id, user_id, role, created_at";
pub(crate) const SESSION_COLS: &str = "id, deployment_id, user_id, active_organization_id, \
     impersonator_type, impersonator_id, created_at, last_seen_at, idle_expires_at, expires_at";
pub(crate) const AUDIT_COLS: &str =
    "id, kind, actor_type, actor_id, subject_id, ip, user_agent, data, created_at";
pub(crate) const SIGNING_KEY_COLS: &str =
    "id, public_key, sealed_private_key, created_at, retired_at";

/// A session's idle expiry is written at most this often (bounded write load per request).
pub(crate) const SESSION_TOUCH_MS: i64 = 60_000;

macro_rules! impl_identity_sql {
    ($store:ident, $db:ty) => {
    /// Identity SQL, instantiated for this backend.
    mod identity_sql {
        #[allow(unused_imports)]
        use super::*;
        use super::run_sql::id;
        use super::shared_sql::{finish_page, is_unique_violation, push_page};
        use sqlx::{QueryBuilder, Row as _};
        use tessera_domain::identity::{
            AuditBy, AuditEvent, AuditKind, BrowserSession, Email, Membership, NewAuditEvent,
            NewOrganization, NewSession, NewUser, Organization, Role, SigningKeyRecord, User,
            UserCredentials, UserPatch,
        };
        use tessera_domain::password::PasswordHash;
        use tessera_domain::records::Deployment;
        use tessera_domain::secret::SecretHash;
        use tessera_domain::{
            AuditEventId, DeploymentId, MembershipId, OrganizationId, Scope, SessionId,
            SigningKeyId, Timestamp, UserId,
        };
        use $crate::sql::{corrupt, DEPLOYMENT_COLS};
        use super::shared_sql::deployment_from_row;
        use $crate::sql_identity::{
            AUDIT_COLS, MEMBERSHIP_COLS, ORGANIZATION_COLS, SESSION_COLS, SESSION_TOUCH_MS,
            SIGNING_KEY_COLS, USER_COLS,
        };
        use $crate::{
            AuditFilter, Conflict, Entity, Page, PageRequest, StoreError, StoreResult,
            SignInCount, Throttle, ThrottleBucket, UserFilter,
        };

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn opt_id<T>(
            raw: Option<String>,
            parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>,
        ) -> StoreResult<Option<T>> {
            raw.map(|r| id(r, parse)).transpose()
        }

        fn json_text(what: &str, value: &serde_json::Value) -> StoreResult<String> {
            serde_json::to_string(value).map_err(|e| corrupt(what, e))
        }

        pub(super) fn user_from_row(row: &DbRow) -> StoreResult<User> {
            let metadata: String = row.try_get("metadata")?;
            let hash: Option<String> = row.try_get("password_hash")?;
            let disabled: i64 = row.try_get("disabled")?;
            Ok(User {
                id: id(row.try_get("id")?, UserId::parse)?,
                email: row.try_get("email")?,
                first_name: row.try_get("first_name")?,
                last_name: row.try_get("last_name")?,
                metadata: serde_json::from_str(&metadata)
                    .map_err(|e| corrupt("user metadata", e))?,
                has_password: hash.is_some(),
                disabled: disabled != 0,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        fn credentials_from_row(row: &DbRow) -> StoreResult<UserCredentials> {
            let hash: Option<String> = row.try_get("password_hash")?;
            let password_hash = hash
                .map(|h| {
                    PasswordHash::from_stored(h)
                        .ok_or_else(|| corrupt("password hash", "not a PHC string"))
                })
                .transpose()?;
            Ok(UserCredentials {
                user: user_from_row(row)?,
                password_hash,
            })
        }

        fn organization_from_row(row: &DbRow) -> StoreResult<Organization> {
            Ok(Organization {
                id: id(row.try_get("id")?, OrganizationId::parse)?,
                name: row.try_get("name")?,
                slug: row.try_get("slug")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        fn membership_from_row(row: &DbRow) -> StoreResult<Membership> {
            let role: String = row.try_get("role")?;
            Ok(Membership {
                id: id(row.try_get("id")?, MembershipId::parse)?,
                organization_id: id(row.try_get("organization_id")?, OrganizationId::parse)?,
                user_id: id(row.try_get("user_id")?, UserId::parse)?,
                role: Role::parse(&role).ok_or_else(|| corrupt("membership role", &role))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        pub(super) fn session_from_row(row: &DbRow) -> StoreResult<BrowserSession> {
            Ok(BrowserSession {
                id: id(row.try_get("id")?, SessionId::parse)?,
                deployment_id: id(row.try_get("deployment_id")?, DeploymentId::parse)?,
                user_id: opt_id(row.try_get("user_id")?, UserId::parse)?,
                active_organization_id: opt_id(
                    row.try_get("active_organization_id")?,
                    OrganizationId::parse,
                )?,
                impersonator: impersonator_from(
                    row.try_get("impersonator_type")?,
                    row.try_get("impersonator_id")?,
                )?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                last_seen_at: Timestamp::from_millis(row.try_get("last_seen_at")?),
                idle_expires_at: Timestamp::from_millis(row.try_get("idle_expires_at")?),
                expires_at: Timestamp::from_millis(row.try_get("expires_at")?),
            })
        }

        fn impersonator_from(
            kind: Option<String>,
            raw: Option<String>,
        ) -> StoreResult<Option<tessera_domain::ticket::Issuer>> {
            use tessera_domain::ticket::Issuer;
            match (kind.as_deref(), raw) {
                (None, _) | (_, None) => Ok(None),
                (Some("secret_key"), Some(raw)) => {
                    Ok(Some(Issuer::SecretKey(id(raw, tessera_domain::SecretKeyId::parse)?)))
                }
                (Some("console_admin"), Some(raw)) => {
                    Ok(Some(Issuer::ConsoleAdmin(id(raw, tessera_domain::AdminId::parse)?)))
                }
                (Some(other), Some(_)) => Err(corrupt("impersonator type", other)),
            }
        }

        /// Records `event` on `conn`, in the transaction of what it records where there is one
        /// (an event written after its action's commit is lost when the node dies in between).
        /// Answers the row it wrote without reading it back (no `RETURNING`: most callers are
        /// inside a write that the writer's other work waits for, and discard it).
        pub(super) async fn insert_audit(
            conn: &mut Conn,
            scope: &Scope,
            event: &NewAuditEvent,
            now: Timestamp,
        ) -> StoreResult<AuditEvent> {
            let id = AuditEventId::generate_at(now);
            sqlx::query(
                "INSERT INTO audit_events
                   (id, deployment_id, kind, actor_type, actor_id, subject_id, ip, user_agent,
                    data, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(id.as_str())
            .bind(scope.deployment_id().as_str())
            .bind(event.kind.as_str())
            .bind(event.actor.kind())
            .bind(event.actor.id())
            .bind(event.subject_id.as_deref())
            .bind(event.ip.as_deref())
            .bind(event.user_agent.as_deref())
            .bind(json_text("audit data", &event.data)?)
            .bind(now.as_millis())
            .execute(&mut *conn)
            .await?;
            Ok(AuditEvent {
                id,
                kind: event.kind.as_str().to_owned(),
                actor_type: event.actor.kind().to_owned(),
                actor_id: event.actor.id().map(str::to_owned),
                subject_id: event.subject_id.clone(),
                ip: event.ip.clone(),
                user_agent: event.user_agent.clone(),
                data: event.data.clone(),
                created_at: now,
            })
        }

        fn audit_from_row(row: &DbRow) -> StoreResult<AuditEvent> {
            let data: String = row.try_get("data")?;
            Ok(AuditEvent {
                id: id(row.try_get("id")?, AuditEventId::parse)?,
                kind: row.try_get("kind")?,
                actor_type: row.try_get("actor_type")?,
                actor_id: row.try_get("actor_id")?,
                subject_id: row.try_get("subject_id")?,
                ip: row.try_get("ip")?,
                user_agent: row.try_get("user_agent")?,
                data: serde_json::from_str(&data).map_err(|e| corrupt("audit data", e))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        fn signing_key_from_row(row: &DbRow) -> StoreResult<SigningKeyRecord> {
            let public: Vec<u8> = row.try_get("public_key")?;
            Ok(SigningKeyRecord {
                id: id(row.try_get("id")?, SigningKeyId::parse)?,
                public_key: <[u8; 32]>::try_from(public.as_slice())
                    .map_err(|_| corrupt("signing key", "public key is not 32 bytes"))?,
                sealed_private_key: row.try_get("sealed_private_key")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                retired_at: row.try_get::<Option<i64>, _>("retired_at")?.map(Timestamp::from_millis),
            })
        }

        fn email_conflict(err: sqlx::Error) -> StoreError {
            if is_unique_violation(&err) {
                StoreError::Conflict(Conflict::EmailTaken)
            } else {
                err.into()
            }
        }

        /// Columns of a new browser session row, in the order [`push_session_row`] binds them.
        pub(super) const NEW_SESSION_COLS: &str = "id, deployment_id, token_hash, user_id, \
             active_organization_id, created_at, last_seen_at, idle_expires_at, expires_at, \
             impersonator_type, impersonator_id, ticket_id";

        /// Binds the values of `new`'s row (see [`NEW_SESSION_COLS`]); returns the session the
        /// row holds (what [`session_from_row`] would read back), so that inserts need no
        /// `RETURNING`: sqlx hands each returned row over from SQLite's connection thread on
        /// its own.
        pub(super) fn push_session_row(
            values: &mut sqlx::query_builder::Separated<'_, '_, $db, &'static str>,
            scope: &Scope,
            new: &NewSession,
        ) -> BrowserSession {
            let id = SessionId::generate_at(new.now);
            let idle_expires_at = new.idle_expires_at.min(new.expires_at);
            values.push_bind(id.as_str().to_owned());
            values.push_bind(scope.deployment_id().as_str().to_owned());
            values.push_bind(new.hash.as_bytes().to_vec());
            values.push_bind(new.user_id.as_ref().map(|u| u.as_str().to_owned()));
            values.push_bind(new.active_organization_id.as_ref().map(|o| o.as_str().to_owned()));
            values.push_bind(new.now.as_millis());
            values.push_bind(new.now.as_millis());
            values.push_bind(idle_expires_at.as_millis());
            values.push_bind(new.expires_at.as_millis());
            values.push_bind(new.impersonation.as_ref().map(|(who, _)| who.kind()));
            values.push_bind(new.impersonation.as_ref().map(|(who, _)| who.id().to_owned()));
            values.push_bind(new.impersonation.as_ref().map(|(_, ticket)| ticket.as_str().to_owned()));
            BrowserSession {
                id,
                deployment_id: scope.deployment_id().clone(),
                user_id: new.user_id.clone(),
                active_organization_id: new.active_organization_id.clone(),
                impersonator: new.impersonation.as_ref().map(|(who, _)| who.clone()),
                created_at: new.now,
                last_seen_at: new.now,
                idle_expires_at,
                expires_at: new.expires_at,
            }
        }

        /// The table counting `throttle`'s failures, and the deployment its rows are keyed
        /// by (the console's table has none).
        fn throttle_table(throttle: Throttle<'_>) -> (&'static str, Option<&str>) {
            match throttle {
                Throttle::Deployment(scope) => ("sign_in_failures", Some(scope.deployment_id().as_str())),
                Throttle::Console => ("console_sign_in_failures", None),
            }
        }

        /// Checks that the user exists and is enabled, under a lock: a sign-in racing a
        /// disable (or delete) must not leave a session behind it.
        async fn lock_enabled_user(conn: &mut Conn, scope: &Scope, user_id: &UserId) -> StoreResult<()> {
            let row = sqlx::query(&format!(
                "SELECT disabled FROM users WHERE id = $1 AND deployment_id = $2{}",
                $store::ROW_LOCK
            ))
            .bind(user_id.as_str())
            .bind(scope.deployment_id().as_str())
            .fetch_optional(&mut *conn)
            .await?;
            match row {
                Some(row) if row.try_get::<i64, _>("disabled")? == 0 => Ok(()),
                _ => Err(StoreError::not_found(Entity::User)),
            }
        }

        pub(super) async fn insert_session(
            conn: &mut Conn,
            scope: &Scope,
            new: &NewSession,
        ) -> StoreResult<BrowserSession> {
            let mut qb = sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO browser_sessions ({NEW_SESSION_COLS}) "));
            let mut session = None;
            qb.push_values([new], |mut values, new| {
                session = Some(push_session_row(&mut values, scope, new));
            });
            qb.build().execute(&mut *conn).await?;
            session.ok_or_else(|| corrupt("browser session", "an insert without its row"))
        }

        #[async_trait::async_trait]
        impl $crate::IdentityStore for $store {
            async fn create_user(
                &self,
                scope: &Scope,
                new: &NewUser,
                by: &AuditBy,
            ) -> StoreResult<User> {
                let now = Timestamp::now();
                let metadata = serde_json::to_string(new.metadata.as_map())
                    .map_err(|e| corrupt("user metadata", e))?;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO users
                       (id, deployment_id, email, first_name, last_name, password_hash, metadata,
                        disabled, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $8) RETURNING {USER_COLS}"
                ))
                .bind(UserId::generate_at(now).into_string())
                .bind(scope.deployment_id().as_str())
                .bind(new.email.as_str())
                .bind(new.first_name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(new.last_name.as_ref().map(|n| n.as_str().to_owned()))
                .bind(new.password_hash.as_ref().map(|h| h.as_str().to_owned()))
                .bind(metadata)
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(email_conflict)?;
                let user = user_from_row(&row)?;
                let created = by.event(AuditKind::UserCreated, Some(user.id.as_str().to_owned()), serde_json::json!({}));
                insert_audit(&mut tx, scope, &created, now).await?;
                tx.commit().await?;
                Ok(user)
            }

            async fn get_user(&self, scope: &Scope, user_id: &UserId) -> StoreResult<User> {
                let row = sqlx::query(&format!(
                    "SELECT {USER_COLS} FROM users WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(user_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::User))?;
                user_from_row(&row)
            }

            async fn user_credentials(
                &self,
                scope: &Scope,
                email: &Email,
            ) -> StoreResult<Option<UserCredentials>> {
                let row = sqlx::query(&format!(
                    "SELECT {USER_COLS} FROM users WHERE deployment_id = $1 AND email = $2"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(email.as_str())
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(credentials_from_row).transpose()
            }

            async fn list_users(
                &self,
                scope: &Scope,
                filter: &UserFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<User>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {USER_COLS} FROM users WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                if let Some(email) = &filter.email {
                    qb.push(" AND email = ").push_bind(email.clone());
                }
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, user_from_row)
            }

            async fn update_user(
                &self,
                scope: &Scope,
                user_id: &UserId,
                patch: &UserPatch,
            ) -> StoreResult<User> {
                let mut tx = self.begin_write().await?;
                let mut qb = QueryBuilder::<$db>::new("UPDATE users SET updated_at = ");
                qb.push_bind(Timestamp::now().as_millis());
                if let Some(email) = &patch.email {
                    qb.push(", email = ").push_bind(email.as_str().to_owned());
                }
                if let Some(first) = &patch.first_name {
                    qb.push(", first_name = ")
                        .push_bind(first.as_ref().map(|n| n.as_str().to_owned()));
                }
                if let Some(last) = &patch.last_name {
                    qb.push(", last_name = ")
                        .push_bind(last.as_ref().map(|n| n.as_str().to_owned()));
                }
                if let Some(hash) = &patch.password_hash {
                    qb.push(", password_hash = ")
                        .push_bind(hash.as_ref().map(|h| h.as_str().to_owned()));
                }
                if let Some(metadata) = &patch.metadata {
                    let text = serde_json::to_string(metadata.as_map())
                        .map_err(|e| corrupt("user metadata", e))?;
                    qb.push(", metadata = ").push_bind(text);
                }
                qb.push(" WHERE id = ").push_bind(user_id.as_str().to_owned());
                qb.push(" AND deployment_id = ")
                    .push_bind(scope.deployment_id().as_str().to_owned());
                qb.push(format!(" RETURNING {USER_COLS}"));
                let row = qb
                    .build()
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(email_conflict)?
                    .ok_or(StoreError::not_found(Entity::User))?;
                let user = user_from_row(&row)?;
                tx.commit().await?;
                Ok(user)
            }

            async fn delete_user(
                &self,
                scope: &Scope,
                user_id: &UserId,
                by: &AuditBy,
            ) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let dep = scope.deployment_id().as_str();
                let exists = sqlx::query(&format!(
                    "SELECT id FROM users WHERE id = $1 AND deployment_id = $2{}",
                    Self::ROW_LOCK
                ))
                .bind(user_id.as_str())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StoreError::not_found(Entity::User));
                }
                for table in ["browser_sessions", "memberships"] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE user_id = $1 AND deployment_id = $2"
                    ))
                    .bind(user_id.as_str())
                    .bind(dep)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query("DELETE FROM users WHERE id = $1 AND deployment_id = $2")
                    .bind(user_id.as_str())
                    .bind(dep)
                    .execute(&mut *tx)
                    .await?;
                let now = Timestamp::now();
                let deleted = by.event(AuditKind::UserDeleted, Some(user_id.as_str().to_owned()), serde_json::json!({}));
                insert_audit(&mut tx, scope, &deleted, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn set_user_disabled(
                &self,
                scope: &Scope,
                user_id: &UserId,
                disabled: bool,
                by: &AuditBy,
            ) -> StoreResult<(User, u64)> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE users SET disabled = $1, updated_at = $2
                     WHERE id = $3 AND deployment_id = $4 RETURNING {USER_COLS}"
                ))
                .bind(i64::from(disabled))
                .bind(now.as_millis())
                .bind(user_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::not_found(Entity::User))?;
                let user = user_from_row(&row)?;
                let ended = if disabled {
                    sqlx::query("DELETE FROM browser_sessions WHERE user_id = $1 AND deployment_id = $2")
                        .bind(user_id.as_str())
                        .bind(scope.deployment_id().as_str())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                } else {
                    0
                };
                let (kind, data) = if disabled {
                    (AuditKind::UserDisabled, serde_json::json!({"sessions_ended": ended}))
                } else {
                    (AuditKind::UserEnabled, serde_json::json!({}))
                };
                insert_audit(&mut tx, scope, &by.event(kind, Some(user_id.as_str().to_owned()), data), now).await?;
                tx.commit().await?;
                Ok((user, ended))
            }

            async fn create_organization(
                &self,
                scope: &Scope,
                new: &NewOrganization,
            ) -> StoreResult<Organization> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO organizations (id, deployment_id, name, slug, created_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING {ORGANIZATION_COLS}"
                ))
                .bind(OrganizationId::generate_at(now).into_string())
                .bind(scope.deployment_id().as_str())
                .bind(new.name.as_str())
                .bind(new.slug.as_ref().map(|s| s.as_str().to_owned()))
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(Conflict::OrganizationSlugTaken)
                    } else {
                        e.into()
                    }
                })?;
                let organization = organization_from_row(&row)?;
                tx.commit().await?;
                Ok(organization)
            }

            async fn get_organization(
                &self,
                scope: &Scope,
                organization_id: &OrganizationId,
            ) -> StoreResult<Organization> {
                let row = sqlx::query(&format!(
                    "SELECT {ORGANIZATION_COLS} FROM organizations WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(organization_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Organization))?;
                organization_from_row(&row)
            }

            async fn list_organizations(
                &self,
                scope: &Scope,
                page: &PageRequest,
            ) -> StoreResult<Page<Organization>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {ORGANIZATION_COLS} FROM organizations WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, organization_from_row)
            }

            async fn add_member(
                &self,
                scope: &Scope,
                organization_id: &OrganizationId,
                user_id: &UserId,
                role: Role,
            ) -> StoreResult<Membership> {
                let now = Timestamp::now();
                let dep = scope.deployment_id().as_str();
                let mut tx = self.begin_write().await?;
                // Locks both rows so that a concurrent user deletion waits for this insert.
                let organization = sqlx::query(&format!(
                    "SELECT id FROM organizations WHERE id = $1 AND deployment_id = $2{}",
                    Self::ROW_LOCK
                ))
                .bind(organization_id.as_str())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?;
                if organization.is_none() {
                    return Err(StoreError::not_found(Entity::Organization));
                }
                let user = sqlx::query(&format!(
                    "SELECT id FROM users WHERE id = $1 AND deployment_id = $2{}",
                    Self::ROW_LOCK
                ))
                .bind(user_id.as_str())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?;
                if user.is_none() {
                    return Err(StoreError::not_found_at(Entity::User, "user_id"));
                }
                let row = sqlx::query(&format!(
                    "INSERT INTO memberships (id, deployment_id, organization_id, user_id, role, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {MEMBERSHIP_COLS}"
                ))
                .bind(MembershipId::generate_at(now).into_string())
                .bind(dep)
                .bind(organization_id.as_str())
                .bind(user_id.as_str())
                .bind(role.as_str())
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(Conflict::AlreadyMember)
                    } else {
                        e.into()
                    }
                })?;
                let membership = membership_from_row(&row)?;
                tx.commit().await?;
                Ok(membership)
            }

            async fn remove_member(
                &self,
                scope: &Scope,
                organization_id: &OrganizationId,
                user_id: &UserId,
            ) -> StoreResult<()> {
                let dep = scope.deployment_id().as_str();
                let mut tx = self.begin_write().await?;
                // The user first, as a deletion of the user (and a rotation into an
                // organization) take it: users, memberships, then sessions. Taking the
                // membership first deadlocked with a deletion, which holds the user's sessions
                // when it deletes the memberships.
                sqlx::query(&format!("SELECT id FROM users WHERE id = $1 AND deployment_id = $2{}", Self::SHARE_LOCK))
                    .bind(user_id.as_str())
                    .bind(dep)
                    .fetch_optional(&mut *tx)
                    .await?;
                let removed = sqlx::query(
                    "DELETE FROM memberships
                     WHERE organization_id = $1 AND user_id = $2 AND deployment_id = $3",
                )
                .bind(organization_id.as_str())
                .bind(user_id.as_str())
                .bind(dep)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if removed == 0 {
                    return Err(StoreError::not_found(Entity::Membership));
                }
                sqlx::query(
                    "UPDATE browser_sessions SET active_organization_id = NULL
                     WHERE user_id = $1 AND active_organization_id = $2 AND deployment_id = $3",
                )
                .bind(user_id.as_str())
                .bind(organization_id.as_str())
                .bind(dep)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn list_members(
                &self,
                scope: &Scope,
                organization_id: &OrganizationId,
                page: &PageRequest,
            ) -> StoreResult<Page<Membership>> {
                // The organization itself must be visible: a foreign id is a 404, not an empty list.
                self.get_organization(scope, organization_id).await?;
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {MEMBERSHIP_COLS} FROM memberships WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                qb.push(" AND organization_id = ")
                    .push_bind(organization_id.as_str().to_owned());
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, membership_from_row)
            }

            async fn user_memberships(
                &self,
                scope: &Scope,
                user_id: &UserId,
            ) -> StoreResult<Vec<(Membership, Organization)>> {
                let rows = sqlx::query(
                    "SELECT m.id, m.organization_id, m.user_id, m.role, m.created_at,
                            o.name AS org_name, o.slug AS org_slug, o.created_at AS org_created_at
                     FROM memberships m JOIN organizations o ON o.id = m.organization_id
                     WHERE m.user_id = $1 AND m.deployment_id = $2
                     ORDER BY m.id",
                )
                .bind(user_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_all(self.reader())
                .await?;
                rows.iter()
                    .map(|row| {
                        let membership = membership_from_row(row)?;
                        let organization = Organization {
                            id: membership.organization_id.clone(),
                            name: row.try_get("org_name")?,
                            slug: row.try_get("org_slug")?,
                            created_at: Timestamp::from_millis(row.try_get("org_created_at")?),
                        };
                        Ok((membership, organization))
                    })
                    .collect()
            }

            async fn create_session(
                &self,
                scope: &Scope,
                new: &NewSession,
            ) -> StoreResult<BrowserSession> {
                let mut tx = self.begin_write().await?;
                let session = insert_session(&mut tx, scope, new).await?;
                tx.commit().await?;
                Ok(session)
            }

            async fn find_session(
                &self,
                scope: &Scope,
                hash: &SecretHash,
                now: Timestamp,
                idle_ms: i64,
            ) -> StoreResult<Option<BrowserSession>> {
                let row = sqlx::query(&format!(
                    "SELECT {SESSION_COLS}, token_hash FROM browser_sessions
                     WHERE token_hash = $1 AND deployment_id = $2
                       AND expires_at > $3 AND idle_expires_at > $3"
                ))
                .bind(hash.as_bytes().to_vec())
                .bind(scope.deployment_id().as_str())
                .bind(now.as_millis())
                .fetch_optional(self.reader())
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let stored: Vec<u8> = row.try_get("token_hash")?;
                let stored = SecretHash::from_bytes(&stored)
                    .ok_or_else(|| corrupt("session hash", "wrong length"))?;
                if !stored.matches(hash) {
                    return Ok(None);
                }
                let mut session = session_from_row(&row)?;
                if now.as_millis() - session.last_seen_at.as_millis() >= SESSION_TOUCH_MS {
                    let idle = now.plus_millis(idle_ms).min(session.expires_at);
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "UPDATE browser_sessions SET last_seen_at = $1, idle_expires_at = $2
                         WHERE id = $3 AND last_seen_at < $1",
                    )
                    .bind(now.as_millis())
                    .bind(idle.as_millis())
                    .bind(session.id.as_str())
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    session.last_seen_at = now;
                    session.idle_expires_at = idle;
                }
                Ok(Some(session))
            }

            async fn replace_session(
                &self,
                scope: &Scope,
                old: Option<&SecretHash>,
                new: &NewSession,
                audit: Option<&NewAuditEvent>,
            ) -> StoreResult<BrowserSession> {
                let mut tx = self.begin_write().await?;
                if let Some(user_id) = &new.user_id {
                    lock_enabled_user(&mut tx, scope, user_id).await?;
                }
                if let Some(old) = old {
                    sqlx::query(
                        "DELETE FROM browser_sessions WHERE token_hash = $1 AND deployment_id = $2",
                    )
                    .bind(old.as_bytes().to_vec())
                    .bind(scope.deployment_id().as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                // Expired sessions of the deployment go too, so the table does not grow with
                // abandoned browsers.
                sqlx::query(
                    "DELETE FROM browser_sessions
                     WHERE deployment_id = $1 AND (expires_at <= $2 OR idle_expires_at <= $2)",
                )
                .bind(scope.deployment_id().as_str())
                .bind(new.now.as_millis())
                .execute(&mut *tx)
                .await?;
                let session = insert_session(&mut tx, scope, new).await?;
                if let Some(event) = audit {
                    insert_audit(&mut tx, scope, event, new.now).await?;
                }
                tx.commit().await?;
                Ok(session)
            }

            async fn rotate_session(
                &self,
                scope: &Scope,
                old: &SecretHash,
                new: &NewSession,
                audit: Option<&NewAuditEvent>,
            ) -> StoreResult<BrowserSession> {
                let mut tx = self.begin_write().await?;
                let dep = scope.deployment_id().as_str();
                // A session opened by a ticket (an impersonation) takes its ticket's lock first,
                // as a replay of the ticket does before it deletes the ticket's sessions: the
                // rotated session is either refused (replayed already) or committed before the
                // replay looks for it. Tickets, then users, then sessions: the exchange's order.
                let ticket: Option<String> = sqlx::query(
                    "SELECT ticket_id FROM browser_sessions WHERE token_hash = $1 AND deployment_id = $2",
                )
                .bind(old.as_bytes().to_vec())
                .bind(dep)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::not_found(Entity::User))?
                .try_get("ticket_id")?;
                if let Some(ticket) = &ticket {
                    let locked = sqlx::query(&format!(
                        "SELECT replayed_at FROM session_tickets WHERE id = $1 AND deployment_id = $2{}",
                        Self::ROW_LOCK
                    ))
                    .bind(ticket)
                    .bind(dep)
                    .fetch_optional(&mut *tx)
                    .await?;
                    // (A ticket that is gone cannot be replayed.)
                    if let Some(locked) = locked {
                        if locked.try_get::<Option<i64>, _>("replayed_at")?.is_some() {
                            return Err(StoreError::not_found(Entity::User));
                        }
                    }
                }
                if let Some(user_id) = &new.user_id {
                    lock_enabled_user(&mut tx, scope, user_id).await?;
                }
                // The active organization must be one of the user's: its membership row is
                // locked, so a removal of the membership either waits for this transaction (and
                // then clears the organization from the new session, as from every other) or
                // commits first and the organization is refused here.
                if let Some(org) = &new.active_organization_id {
                    let member = sqlx::query(&format!(
                        "SELECT 1 FROM memberships WHERE organization_id = $1 AND user_id = $2 AND deployment_id = $3{}",
                        Self::ROW_LOCK
                    ))
                    .bind(org.as_str())
                    .bind(new.user_id.as_ref().map(|u| u.as_str()))
                    .bind(dep)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if member.is_none() {
                        return Err(StoreError::not_found(Entity::Organization));
                    }
                }
                // The old session goes only if it is still live (and the same user's); what made
                // it comes along.
                let mut delete = QueryBuilder::<$db>::new("DELETE FROM browser_sessions WHERE token_hash = ");
                delete.push_bind(old.as_bytes().to_vec()).push(" AND deployment_id = ").push_bind(dep);
                delete.push(" AND expires_at > ").push_bind(new.now.as_millis());
                delete.push(" AND idle_expires_at > ").push_bind(new.now.as_millis());
                match &new.user_id {
                    Some(user_id) => delete.push(" AND user_id = ").push_bind(user_id.as_str()),
                    None => delete.push(" AND user_id IS NULL"),
                };
                delete.push(" RETURNING impersonator_type, impersonator_id, ticket_id, expires_at");
                let row = delete
                    .build()
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::not_found(Entity::User))?;
                let deleted: Option<String> = row.try_get("ticket_id")?;
                if deleted != ticket {
                    return Err(corrupt("browser session", "its ticket changed"));
                }
                let impersonator = impersonator_from(
                    row.try_get("impersonator_type")?,
                    row.try_get("impersonator_id")?,
                )?;
                let impersonation = match (impersonator, ticket) {
                    (Some(who), Some(ticket)) => Some((who, id(ticket, tessera_domain::TicketId::parse)?)),
                    (None, _) => None,
                    (Some(_), None) => return Err(corrupt("browser session", "an impersonator without its ticket")),
                };
                let expires_at = new.expires_at.min(Timestamp::from_millis(row.try_get("expires_at")?));
                let rotated = NewSession {
                    impersonation,
                    expires_at,
                    ..new.clone()
                };
                let session = insert_session(&mut tx, scope, &rotated).await?;
                if let Some(event) = audit {
                    insert_audit(&mut tx, scope, event, new.now).await?;
                }
                tx.commit().await?;
                Ok(session)
            }

            async fn delete_session(
                &self,
                scope: &Scope,
                hash: &SecretHash,
                audit: Option<&NewAuditEvent>,
            ) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let ended = sqlx::query(
                    "DELETE FROM browser_sessions WHERE token_hash = $1 AND deployment_id = $2",
                )
                .bind(hash.as_bytes().to_vec())
                .bind(scope.deployment_id().as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if let (Some(event), true) = (audit, ended > 0) {
                    insert_audit(&mut tx, scope, event, Timestamp::now()).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn sign_in_blocked(
                &self,
                throttle: Throttle<'_>,
                buckets: &[ThrottleBucket],
                now: Timestamp,
                window_ms: i64,
            ) -> StoreResult<Option<i64>> {
                let (table, deployment) = throttle_table(throttle);
                let mut wait: Option<i64> = None;
                for bucket in buckets {
                    let mut qb = QueryBuilder::<$db>::new(format!("SELECT window_start, failures FROM {table} WHERE bucket = "));
                    qb.push_bind(bucket.key.as_str());
                    if let Some(deployment) = deployment {
                        qb.push(" AND deployment_id = ").push_bind(deployment);
                    }
                    let Some(row) = qb.build().fetch_optional(self.reader()).await? else { continue };
                    let start: i64 = row.try_get("window_start")?;
                    let failures: i64 = row.try_get("failures")?;
                    let ends = start.saturating_add(window_ms);
                    if failures >= i64::from(bucket.max_failures) && ends > now.as_millis() {
                        let left = ends - now.as_millis();
                        wait = Some(wait.map_or(left, |w| w.max(left)));
                    }
                }
                Ok(wait)
            }

            async fn count_sign_in_attempt(
                &self,
                throttle: Throttle<'_>,
                buckets: &[ThrottleBucket],
                now: Timestamp,
                window_ms: i64,
            ) -> StoreResult<SignInCount> {
                let (table, deployment) = throttle_table(throttle);
                let mut wait: Option<i64> = None;
                let mut windows = Vec::with_capacity(buckets.len());
                let mut tx = self.begin_write().await?;
                for bucket in buckets {
                    // Every SET expression sees the row as it was, so both CASEs agree on
                    // whether the window restarts.
                    let mut qb = QueryBuilder::<$db>::new(format!("INSERT INTO {table} ("));
                    qb.push(if deployment.is_some() { "deployment_id, " } else { "" });
                    qb.push("bucket, window_start, failures) VALUES (");
                    if let Some(deployment) = deployment {
                        qb.push_bind(deployment).push(", ");
                    }
                    qb.push_bind(bucket.key.as_str()).push(", ").push_bind(now.as_millis());
                    qb.push(format!(
                        ", 1) ON CONFLICT ({}bucket) DO UPDATE SET failures = CASE WHEN {table}.window_start <= ",
                        if deployment.is_some() { "deployment_id, " } else { "" }
                    ));
                    qb.push_bind(now.as_millis() - window_ms);
                    qb.push(format!(" THEN 1 ELSE {table}.failures + 1 END, window_start = CASE WHEN {table}.window_start <= "));
                    qb.push_bind(now.as_millis() - window_ms).push(" THEN ").push_bind(now.as_millis());
                    qb.push(format!(" ELSE {table}.window_start END RETURNING window_start, failures"));
                    let row = qb.build().fetch_one(&mut *tx).await?;
                    let start: i64 = row.try_get("window_start")?;
                    windows.push(start);
                    let failures: i64 = row.try_get("failures")?;
                    let ends = start.saturating_add(window_ms);
                    if failures > i64::from(bucket.max_failures) && ends > now.as_millis() {
                        let left = ends - now.as_millis();
                        wait = Some(wait.map_or(left, |w| w.max(left)));
                    }
                }
                tx.commit().await?;
                Ok(SignInCount { wait_ms: wait, windows })
            }

            async fn uncount_sign_in_attempt(
                &self,
                throttle: Throttle<'_>,
                bucket: &str,
                window: i64,
            ) -> StoreResult<()> {
                let (table, deployment) = throttle_table(throttle);
                let mut tx = self.begin_write().await?;
                // A window that started again, or a row cleared and counted anew, has another
                // start.
                let mut qb = QueryBuilder::<$db>::new(format!("UPDATE {table} SET failures = failures - 1 WHERE failures > 0 AND window_start = "));
                qb.push_bind(window);
                qb.push(" AND bucket = ");
                qb.push_bind(bucket);
                if let Some(deployment) = deployment {
                    qb.push(" AND deployment_id = ").push_bind(deployment);
                }
                qb.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn clear_sign_in_failures(&self, throttle: Throttle<'_>, bucket: &str) -> StoreResult<()> {
                let (table, deployment) = throttle_table(throttle);
                let mut tx = self.begin_write().await?;
                let mut qb = QueryBuilder::<$db>::new(format!("DELETE FROM {table} WHERE bucket = "));
                qb.push_bind(bucket);
                if let Some(deployment) = deployment {
                    qb.push(" AND deployment_id = ").push_bind(deployment);
                }
                qb.build().execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn record_audit(
                &self,
                scope: &Scope,
                event: &NewAuditEvent,
            ) -> StoreResult<AuditEvent> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let recorded = insert_audit(&mut tx, scope, event, now).await?;
                tx.commit().await?;
                Ok(recorded)
            }

            async fn list_audit_events(
                &self,
                scope: &Scope,
                filter: &AuditFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<AuditEvent>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {AUDIT_COLS} FROM audit_events WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                if let Some(kind) = &filter.kind {
                    qb.push(" AND kind = ").push_bind(kind.clone());
                }
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, audit_from_row)
            }

            async fn deployment_for_origin(
                &self,
                origins: &[String],
            ) -> StoreResult<Option<Deployment>> {
                if origins.is_empty() {
                    return Ok(None);
                }
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE backend_host IN ("
                ));
                let mut list = qb.separated(", ");
                for origin in origins {
                    list.push_bind(origin.clone());
                }
                qb.push(") OR frontend_host IN (");
                let mut list = qb.separated(", ");
                for origin in origins {
                    list.push_bind(origin.clone());
                }
                qb.push(") ORDER BY id LIMIT 1");
                let row = qb.build().fetch_optional(self.reader()).await?;
                row.as_ref().map(deployment_from_row).transpose()
            }
        }

        async fn insert_signing_key(
            conn: &mut Conn,
            new: &SigningKeyRecord,
        ) -> StoreResult<SigningKeyRecord> {
            let row = sqlx::query(&format!(
                "INSERT INTO signing_keys (id, public_key, sealed_private_key, created_at)
                 VALUES ($1, $2, $3, $4) RETURNING {SIGNING_KEY_COLS}"
            ))
            .bind(new.id.as_str())
            .bind(new.public_key.to_vec())
            .bind(new.sealed_private_key.clone())
            .bind(new.created_at.as_millis())
            .fetch_one(&mut *conn)
            .await?;
            signing_key_from_row(&row)
        }

        #[async_trait::async_trait]
        impl $crate::SigningKeyStore for $store {
            async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRecord>> {
                let rows = sqlx::query(&format!(
                    "SELECT {SIGNING_KEY_COLS} FROM signing_keys ORDER BY id DESC"
                ))
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(signing_key_from_row).collect()
            }

            async fn ensure_signing_key(
                &self,
                new: &SigningKeyRecord,
            ) -> StoreResult<SigningKeyRecord> {
                let mut tx = self.begin_write().await?;
                self.lock_bootstrap(&mut tx).await?;
                let current = sqlx::query(&format!(
                    "SELECT {SIGNING_KEY_COLS} FROM signing_keys WHERE retired_at IS NULL
                     ORDER BY id DESC LIMIT 1"
                ))
                .fetch_optional(&mut *tx)
                .await?;
                let key = match current {
                    Some(row) => signing_key_from_row(&row)?,
                    None => insert_signing_key(&mut tx, new).await?,
                };
                tx.commit().await?;
                Ok(key)
            }

            async fn rotate_signing_key(
                &self,
                new: &SigningKeyRecord,
            ) -> StoreResult<SigningKeyRecord> {
                let mut tx = self.begin_write().await?;
                self.lock_bootstrap(&mut tx).await?;
                sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(new.created_at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                let key = insert_signing_key(&mut tx, new).await?;
                tx.commit().await?;
                Ok(key)
            }
        }
    }
    };
}

pub(crate) use impl_identity_sql;
